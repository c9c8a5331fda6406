"""The experiments: the registry and --list, the runner's table / chart / summary and its one
verdict rule (against hand-computed means and sds), one-line errors, and a real end-to-end run
of the cheapest experiment (linear-ae-pca on digits: the known fact that a linear autoencoder
spans the PCA subspace)."""

import csv
import json
import math

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from reprlearn.cli import main
from reprlearn.errors import ReprlearnError
from reprlearn.experiments import EXPERIMENTS, Experiment, experiment_list, run_experiment, verdict
from reprlearn.experiments.linear_ae_pca import principal_angles

ISSUE_19 = {"augmentations", "projection-head", "linear-ae-pca", "mae-mask-ratio", "siglip-small-batch", "moco-queue",
            "clip-score-filtering", "data-quantity", "input-corruption", "domain-invariance", "ssl-anomaly", "transfer"}


def test_registry_holds_every_claim_and_list_shows_data_and_time(capsys):
    assert set(EXPERIMENTS.names()) == ISSUE_19
    for row in experiment_list():
        cls = EXPERIMENTS.get(row["name"])
        assert cls.name == row["name"] and cls.claim and cls.protocol and cls.effect_text and cls.cost
        assert cls.data in cls.data_choices
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ISSUE_19:
        assert name in out
    assert out.count("time:") == len(ISSUE_19) and out.count("data:") == len(ISSUE_19)


@pytest.mark.parametrize("effects,margin,expected", [
    ([0.1, 0.2, 0.3], 0.0, "held"),  # mean 0.2 > sd 0.1
    ([0.05, 0.15, -0.05], 0.0, "did not hold"),  # mean 0.05 < sd 0.1
    ([-0.1, -0.2, -0.3], 0.0, "did not hold"),  # the effect goes the other way
    ([0.95, 0.96, 0.97], 0.9, "held"),  # mean - δ = 0.06 > sd 0.01
    ([0.95, 0.96, 0.97], 0.96, "did not hold"),  # mean - δ = 0
    ([0.3, 0.3], 0.0, "held"),  # no spread at all
])
def test_verdict_rule_by_hand(effects, margin, expected):
    outcome, mean, sd = verdict(effects, margin)
    assert outcome == expected
    assert mean == pytest.approx(sum(effects) / len(effects))
    by_hand = math.sqrt(sum((e - mean) ** 2 for e in effects) / (len(effects) - 1))
    assert sd == pytest.approx(by_hand)


def test_one_seed_is_undecided():
    outcome, mean, sd = verdict([0.4])
    assert outcome.startswith("undecided") and mean == 0.4 and math.isnan(sd)


class Fake(Experiment):
    """Arm b beats arm a by 0.1 (seed 0), 0.2 (seed 1), 0.3 (seed 2)."""

    name = "fake"
    claim = "b beats a"
    protocol = "nothing is trained."
    effect_text = "b minus a"
    metric = "score"
    data_choices = ("digits",)
    cost = "none"
    calls = 0

    def arms(self, data, seed, work):
        type(self).calls += 1
        return {"a": {"score": 0.5 + 0.1 * seed, "other": 1.0}, "b": {"score": 0.6 + 0.2 * seed, "other": 2.0}}

    def effect(self, arms):
        return arms["b"]["score"] - arms["a"]["score"]


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(EXPERIMENTS._items, "fake", Fake)
    Fake.calls = 0
    return Fake


def test_runner_writes_table_chart_summary_and_verdict(tmp_path, fake):
    r = run_experiment("fake", tmp_path, seeds=3, progress=False)
    assert r["effects"] == pytest.approx([0.1, 0.2, 0.3])
    assert r["effect_mean"] == pytest.approx(0.2) and r["effect_sd"] == pytest.approx(0.1)
    assert r["verdict"] == "held" and fake.calls == 3
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [(row["seed"], row["arm"]) for row in rows] == [(s, a) for s in "012" for a in "ab"]
    assert float(rows[5]["score"]) == pytest.approx(1.0) and float(rows[5]["effect"]) == pytest.approx(0.3)
    summary = (tmp_path / "summary.md").read_text()
    assert "+0.2 ± 0.1 (mean ± sd over 3 seeds) → held" in summary
    assert "| b | 0.8 ± 0.2 | 2 ± 0 |" in summary  # b's score 0.6, 0.8, 1.0
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "result.json").read_text())["verdict"] == "held"
    # a rerun reads the finished seeds back; a fourth seed is the only new work
    r4 = run_experiment("fake", tmp_path, seeds=4, progress=False)
    assert fake.calls == 4 and len(r4["effects"]) == 4


def test_errors_are_one_line(tmp_path, capsys, fake):
    for argv, words in [(["experiment", "nope", "--out", str(tmp_path)], ["unknown experiment 'nope'", "fake"]),
                        (["experiment", "fake", "--seeds", "two", "--out", str(tmp_path)], ["--seeds", "'two'"]),
                        (["experiment", "fake", "--seeds", "0", "--out", str(tmp_path)], ["--seeds", "at least 1"]),
                        (["experiment", "fake", "--data", "scenes", "--out", str(tmp_path)], ["--data digits"]),
                        (["experiment", "fake"], ["--out"])]:
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own errors (a missing flag) exit, one line too
            rc = e.code
        assert rc == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    with pytest.raises(ReprlearnError, match="--seeds"):
        run_experiment("fake", tmp_path, seeds=True)


def test_principal_angles_match_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    np.testing.assert_allclose(np.sort(principal_angles(a, b)), np.sort(subspace_angles(a, b)), atol=1e-10)
    assert np.allclose(principal_angles(a, a @ rng.normal(size=(4, 4))), 0, atol=1e-6)  # same span


def test_linear_ae_pca_end_to_end_on_digits(tmp_path, capsys):
    """The real protocol at 2 seeds through the CLI: the decoder's span is close to the top-8 PCs
    and its reconstruction error close to PCA's, which no rank-8 linear map beats."""
    assert main(["experiment", "linear-ae-pca", "--seeds", "2", "--out", str(tmp_path)]) == 0
    assert "linear-ae-pca on digits: effect" in capsys.readouterr().out
    for f in ("table.csv", "chart.png", "summary.md", "result.json"):
        assert (tmp_path / f).is_file()
    rows = {(r["seed"], r["arm"]): r for r in csv.DictReader((tmp_path / "table.csv").open())}
    for seed in "01":
        ae, pca = rows[(seed, "linear-ae")], rows[(seed, "pca")]
        assert float(ae["overlap"]) > 0.7 > 3 * float(ae["random_overlap"])  # 0.91, 0.88 measured
        assert float(ae["median_angle_deg"]) < 10
        assert 0.98 * float(pca["test_recon_error"]) < float(ae["test_recon_error"]) < 1.1 * float(pca["test_recon_error"])
    assert json.loads((tmp_path / "result.json").read_text())["verdict"] in ("held", "did not hold")


def test_a_run_stopped_part_way_is_resumed_not_reused(tmp_path):
    """A protocol's run with a checkpoint but no finished marker (killed mid-training: checkpoints are
    also written every --checkpoint-every epochs) is continued to its end, not read as finished."""
    import torch

    from reprlearn.experiments.base import FINISHED, train

    work = tmp_path / "run"
    train("ae", work, seed=0, epochs=2, checkpoint_every=1, max_steps=None)
    assert (work / FINISHED).is_file()
    finished_at = torch.load(work / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    # as a run killed after its first epoch leaves it: a first-epoch checkpoint and no marker
    (work / FINISHED).unlink()
    short = tmp_path / "short"
    train("ae", short, seed=0, epochs=1)
    (short / FINISHED).unlink()
    (work / "checkpoints" / "last.ckpt").write_bytes((short / "checkpoints" / "last.ckpt").read_bytes())
    train("ae", work, seed=0, epochs=2, checkpoint_every=1, max_steps=None)
    assert torch.load(work / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == finished_at
    assert (work / FINISHED).is_file()
