"""The engine: checkpoints are atomic and safe to load, resume continues the schedule exactly."""

import re

import lightning as L
import pytest
import torch

import reprlearn
from reprlearn.engine import AtomicCheckpointIO
from reprlearn.errors import ReprlearnError
from reprlearn.optim import LARS, warmup_cosine

FAST = dict(data="digits", epochs=4, batch_size=128, checkpoint_every=1, eval=False, progress=False,
            warmup_epochs=1, lr=1e-3)


class StopAfter(L.Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def final_state(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt


def test_resume_continues_lr_schedule_and_matches_uninterrupted(tmp_path):
    full = reprlearn.train("simclr", out=tmp_path / "full", **FAST)
    part = reprlearn.train("simclr", out=tmp_path / "part", callbacks=[StopAfter(2)], **FAST)
    mid = final_state(part)
    assert mid["epoch"] == 1 and mid["global_step"] == 2 * (1438 // 128)
    resumed = reprlearn.train("simclr", out=tmp_path / "part", resume=True, **FAST)
    a, b = final_state(full), final_state(resumed)
    assert a["global_step"] == b["global_step"] == 4 * (1438 // 128)
    # the scheduler state carried on from the checkpoint: same step count and learning rate
    sa, sb = a["lr_schedulers"][0], b["lr_schedulers"][0]
    assert sa["last_epoch"] == sb["last_epoch"] and sa["_last_lr"] == pytest.approx(sb["_last_lr"])
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_refuses_to_overwrite_a_run_and_resume_needs_a_run(tmp_path):
    reprlearn.train("simclr", out=tmp_path / "r", **{**FAST, "epochs": 1})
    with pytest.raises(ReprlearnError, match="--resume"):
        reprlearn.train("simclr", out=tmp_path / "r", **{**FAST, "epochs": 1})
    with pytest.raises(ReprlearnError, match="no config.yaml"):
        reprlearn.train("simclr", out=tmp_path / "empty", resume=True)


def test_load_and_embed_use_the_trained_encoder(tmp_path):
    run = reprlearn.train("moco", out=tmp_path / "m", **{**FAST, "epochs": 1})
    encoder = reprlearn.load(run)
    assert not encoder.training and not any(k.startswith("projector") for k in encoder.state_dict())
    ckpt = final_state(run)
    w = ckpt["state_dict"]["method.encoder.backbone.net.0.0.weight"]
    torch.testing.assert_close(encoder.backbone.net[0][0].weight.detach(), w)
    features = reprlearn.embed(run, "digits:test")
    assert features.shape == (359, encoder.feature_dim)


def test_atomic_checkpoint_keeps_previous_file_when_write_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    original = torch.save

    def broken_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", original)
    assert io.load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"reprlearn": Evil()}, path)
    with pytest.raises(ReprlearnError, match="cannot be loaded safely"):
        reprlearn.load(tmp_path)


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, 10, 100) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[9:], values[10:]))  # decays monotonically after warm-up
    assert values[-1] < 0.01


def test_lars_trust_ratio_step():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    w.grad = torch.tensor([0.0, 1.0])  # |g| = 1
    opt = LARS([{"params": [w], "weight_decay": 0.0}], lr=1.0, momentum=0.0, eta=0.1)
    opt.step()
    # local lr = 0.1 * 5 / 1 = 0.5
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 3.5]))


@pytest.mark.parametrize("budget, steps", [({"max_steps": 7}, 7), ({"samples_seen": 1000}, 8)])
def test_a_step_budget_replaces_epochs_and_the_schedule_spans_it(tmp_path, budget, steps):
    import csv

    run = reprlearn.train("simclr", out=tmp_path / "r", epochs=100, batch_size=128, warmup_epochs=0, eval=False,
                          progress=False, **budget)  # 1000 samples / 128 per step: 8 steps (rounded up)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == steps  # mid-epoch (11 steps an epoch), checkpoint written at the end
    sched = ckpt["lr_schedulers"][0]
    assert sched["last_epoch"] == steps and sched["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)  # cosine at its end


def test_two_budgets_are_refused():
    from reprlearn.errors import ReprlearnError

    with pytest.raises(ReprlearnError, match="one budget"):
        reprlearn.train("simclr", max_steps=5, samples_seen=100)


def test_auto_backbone_is_chosen_by_image_size_and_device_and_recorded(tmp_path, capsys):
    from reprlearn.config import RunConfig
    from reprlearn.methods import DataInfo
    from reprlearn.runs import resolve_backbone

    def info(size):
        return DataInfo(channels=3, image_size=size, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)

    cpu = RunConfig(accelerator="cpu")
    assert resolve_backbone(cpu, info(32))[0] == "cnn"
    name, why = resolve_backbone(cpu, info(64))
    assert name == "cnn" and "CPU" in why  # resnet18 would keep 64 px at full resolution
    assert resolve_backbone(cpu, info(96))[0] == "resnet18"
    assert resolve_backbone(RunConfig(backbone="mlp"), info(64)) == ("mlp", "as asked")
    run = reprlearn.train("ae", out=tmp_path / "r", epochs=1, batch_size=128, eval=False, progress=False)
    out = capsys.readouterr().out
    assert re.search(r"\n  backbone +cnn \(auto: 8 px images\)\n", out)  # a line of the plan block
    assert "backbone: cnn" in (run / "config.yaml").read_text()  # loads as cnn on any device
    assert "images/s; the 11 steps of this run take about" in out  # said once, after the first steps
