"""The run's plan: printed before the first step, --time-budget, config.yaml without auto, auto by content
and by cost."""

import dataclasses

import lightning as L
import numpy as np
import pytest
import torch
import yaml

import reprlearn
from reprlearn import engine, plan
from reprlearn.augment.spec import auto_preset, preset
from reprlearn.config import RunConfig, build, parse_duration
from reprlearn.errors import ReprlearnError

FAST = dict(data="digits", batch_size=128, eval=False, progress=False, warmup_epochs=0, lr=1e-3)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


class FirstBatch(L.Callback):
    """Keeps what had been printed when the first training batch starts."""

    def __init__(self, capsys):
        self.capsys, self.printed = capsys, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.printed is None:
            self.printed = self.capsys.readouterr().out


def test_the_plan_is_printed_before_the_first_step(tmp_path, capsys):
    first = FirstBatch(capsys)
    reprlearn.train("simclr", out=tmp_path / "r", epochs=1, callbacks=[first], **FAST)
    before = first.printed
    assert before is not None and before.startswith("training simclr on digits:train")
    for line in ("data        1438 training images 8x8x1", "backbone    cnn (auto: 8 px images)",
                 "augment     digits (auto: grayscale", "batch       128",
                 "length      1 epochs x 11 steps = 11 optimiser steps", "device      cpu"):
        assert line in before, (line, before)
    assert "s a step (2 timed warm-up steps of " in before


def test_the_warm_up_leaves_weights_optimiser_and_random_streams_as_they_were(monkeypatch):
    import random

    from reprlearn.config import merge_config
    from reprlearn.methods import DataInfo
    from reprlearn.methods.byol import BYOL
    from reprlearn.methods.lookup import method_class
    from reprlearn.runs import build_method

    original = BYOL.loss

    def loss_drawing_from_the_global_streams(self, views):  # as dropout or a method's own masks would
        torch.rand(1), np.random.rand(), random.random()
        return original(self, views)

    monkeypatch.setattr(BYOL, "loss", loss_drawing_from_the_global_streams)

    cfg, method_cfg = merge_config("byol", method_class("byol").Config, [{"backbone": "cnn", "augment": "digits"}])
    info = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.3])
    method = build_method(cfg, method_cfg, info)
    weights = {k: v.clone() for k, v in method.state_dict().items()}
    images = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)

    def seed_all():
        torch.manual_seed(5), np.random.seed(5), random.seed(5)

    seed_all()
    expected = (torch.rand(3), np.random.rand(3), random.random())  # the draws the real run would make next
    seed_all()
    timing = plan.time_steps(method, cfg, images, {}, {}, torch.device("cpu"), 32, 2, 10)
    assert timing.seconds > 0 and "warm-up" in timing.how
    after = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(after[0], expected[0])
    np.testing.assert_array_equal(after[1], expected[1])
    assert after[2] == expected[2]
    for key, value in method.state_dict().items():  # the teacher's EMA included
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("2h", 7200), ("90s", 90), ("600", 600), ("1.5h", 5400),
                                           (" 45M ", 2700), (120, 120)])
def test_time_budget_parses_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0", "10x", "m", "1e999h", "nan"])
def test_a_malformed_time_budget_is_one_line(text):
    with pytest.raises(ReprlearnError, match="time-budget.*90s, 30m, 2h") as e:
        build(RunConfig, {"time_budget": text})
    assert "\n" not in str(e.value)


def test_time_budget_ends_training_with_a_checkpoint_and_evaluates(tmp_path, capsys):
    full_steps = 10_000 * (1438 // 128)
    run = reprlearn.train("simclr", out=tmp_path / "r", epochs=10_000, time_budget="6s", checkpoint_every=10_000,
                          **{**FAST, "eval": True, "eval_max_train": 200})
    out = capsys.readouterr().out
    assert "time budget of 6 s reached at step" in out and "checkpoint written" in out
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < ckpt["global_step"] < full_steps
    assert ckpt["callbacks"]["TimeBudget"]["spent"] < 600  # a sanity bound, not a timing claim
    assert (run / "eval.json").is_file()  # evaluated what it had
    # --epochs fixed the length: the schedule spans it, the budget only ended it early
    assert yaml.safe_load((run / "config.yaml").read_text())["max_steps"] is None


def test_a_bare_number_of_seconds_is_a_budget_too():
    assert build(RunConfig, {"time_budget": 90}).time_budget == "90"  # as YAML reads `time_budget: 90`


def test_a_resumed_run_counts_the_time_already_trained(tmp_path, capsys):
    run = reprlearn.train("simclr", out=tmp_path / "r", epochs=10_000, time_budget="3s", checkpoint_every=10_000,
                          **FAST)
    ended = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ended["callbacks"]["TimeBudget"]["spent"] >= 3
    capsys.readouterr()
    reprlearn.train("simclr", out=run, resume=True)
    assert "time budget of 3 s is spent" in capsys.readouterr().out
    again = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert again["global_step"] == ended["global_step"]  # nothing more trained


def test_time_budget_plans_the_schedule_when_the_length_is_auto(tmp_path):
    run = reprlearn.train("simclr", out=tmp_path / "r", time_budget="3s", **FAST)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    planned = saved["max_steps"]
    assert planned is not None and 1 <= planned < 150 * (1438 // 128)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] <= planned
    assert ckpt["lr_schedulers"][0]["last_epoch"] == ckpt["global_step"]
    assert ckpt["callbacks"]["TimeBudget"]["planned_steps"] == planned


def _values(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _values(value)
    else:
        yield tree


def test_config_yaml_has_no_auto_and_reproduces_the_run(tmp_path):
    first = reprlearn.train("simclr", out=tmp_path / "a", epochs=1, **FAST)
    text = (first / "config.yaml").read_text()
    saved = yaml.safe_load(text)
    assert "auto" not in [str(v) for v in _values(saved)]
    assert (saved["augment"], saved["backbone"], saved["image_size"], saved["loader"]) == ("digits", "cnn", 8,
                                                                                             "memory")
    assert "# " in text and "augment: digits (auto: grayscale" in text  # the auto choices explained
    second = reprlearn.train("simclr", out=tmp_path / "b", config=str(first / "config.yaml"))
    assert yaml.safe_load((second / "config.yaml").read_text()) == saved


def test_auto_augmentation_by_content():
    assert auto_preset(28, 1)[0] == "digits" and auto_preset(8, 1)[0] == "digits"
    assert auto_preset(32, 3)[0] == "simclr" and auto_preset(64, 1)[0] == "simclr"
    mnist = preset("auto", 28, 1)
    assert mnist.hflip_p == 0.0 and mnist.crop_scale == (0.5, 1.0)  # a flipped glyph is another glyph
    photos = preset("auto", 32, 3)
    assert photos == preset("simclr", 32, 3) and photos.hflip_p == 0.5 and photos.crop_scale == (0.08, 1.0)


def _cfg(**values) -> RunConfig:
    return dataclasses.replace(RunConfig(), **{"epochs": 150, "batch_size": 256, **values})


def test_cpu_cost_cap_reduces_a_224_px_folder_and_says_how_to_keep_it():
    # a CPU whose step costs 2 s per 10,000 pixels of the image side squared, at any backbone
    def measure(cfg):
        backbone = "cnn" if cfg.image_size <= 64 else "resnet18"
        return plan.StepTiming(2.0 * cfg.image_size ** 2 / 10_000, "hand-made"), backbone

    images = 2000  # 7 steps an epoch at batch 256, 1050 steps in 150 epochs
    # 96 px: 1050 x 1.84 s = 32 min fits an hour; 128 px: 1050 x 3.28 s = 57.3 min fits too; 160 px: 89.6 min
    chosen, timing, reduced = plan.fit_to_budget(_cfg(), set(plan.SIZED_OPTIONS), images, 224, 3600, measure, True)
    assert chosen.image_size == 128 and chosen.backbone == "resnet18" and chosen.epochs == 150
    assert reduced == ["image size 224 -> 128 to fit 60 min on this CPU (at 224 px about 2.9 h); "
                       "pass --image-size 224 to keep it"]
    # 10 min: even 32 px (1050 x 0.2 s = 3.5 min) fits, 48 px (8.1 min) fits, 64 px (14.3 min) does not
    chosen, _, reduced = plan.fit_to_budget(_cfg(), set(plan.SIZED_OPTIONS), images, 224, 600, measure, True)
    assert chosen.image_size == 48 and chosen.backbone == "cnn"
    assert reduced[1] == "backbone resnet18 -> cnn at 48 px on this CPU; pass --backbone resnet18 to keep it"
    # 1 min: nothing fits at 150 epochs; 32 px takes 7 x 0.2048 s an epoch, so 41 epochs fit
    chosen, _, reduced = plan.fit_to_budget(_cfg(), set(plan.SIZED_OPTIONS), images, 224, 60, measure, True)
    assert (chosen.image_size, chosen.epochs) == (32, 41)
    assert reduced[-1] == "epochs 150 -> 41 to fit 60 s on this CPU; pass --epochs 150 to keep them"


def test_cpu_cost_cap_never_overrides_explicit_values():
    def measure(cfg):
        return plan.StepTiming(100.0, "hand-made"), "resnet18"

    chosen, _, reduced = plan.fit_to_budget(_cfg(), {"backbone"}, 2000, 224, 3600, measure, False)
    assert (chosen.image_size, chosen.epochs, reduced) == (224, 150, [])


def test_auto_options_are_those_not_given():
    assert plan.auto_options({}, []) == set(plan.SIZED_OPTIONS)
    assert plan.auto_options({"image-size": 64, "backbone": "auto"}, [{"epochs": 3}]) == {"backbone", "batch_size"}


@pytest.mark.slow
def test_a_224_px_folder_on_a_cpu_is_stored_smaller_and_the_plan_says_so(tmp_path, capsys, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "photos" / f"c{c}").mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / f"c{c}" / f"{i}.png")
    monkeypatch.setattr(plan, "SIZE_LADDER", (32,))  # one smaller size to try keeps the test short
    monkeypatch.setattr(plan, "PROBE_BATCH", 2)  # and timing ResNet-18 at 224 px on 2 images a step
    monkeypatch.setattr(engine, "CPU_TIME_BUDGET", 1e-6)  # nothing fits: the smallest size, 1 epoch
    run = reprlearn.train("simclr", data=str(tmp_path / "photos"), out=tmp_path / "r", eval=False, progress=False)
    out = capsys.readouterr().out
    assert "auto: image size 224 -> 32 to fit under a second on this CPU" in out
    assert "pass --image-size 224 to keep it" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["image_size"], saved["backbone"], saved["epochs"], saved["batch_size"]) == (32, "cnn", 1, 16)


def test_a_budget_on_several_devices_needs_the_length_given(tmp_path):
    with pytest.raises(ReprlearnError, match="one device, not 2; give --max-steps or --epochs"):
        reprlearn.train("simclr", out=tmp_path / "r", time_budget="30m", devices=2, **FAST)
