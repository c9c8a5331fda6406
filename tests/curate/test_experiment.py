"""The DataComp-style experiment: a tiny end-to-end configuration by default; the full scenes
experiment (CLIP-score filtering beats no filtering at equal samples seen) under -m slow."""

import csv

import pytest

from reprlearn.cli import main
from reprlearn.curate.experiment import run_experiment

SMALL = {"text_layers": 1, "text_width": 32, "embed_dim": 32, "vocab_size": 400, "context_length": 24,
         "batch_size": 32}


def test_a_tiny_experiment_writes_the_table_chart_and_runs(tmp_path):
    rows = run_experiment(tmp_path, "scenes:n=240,test_n=100,corrupt=0.5", samples_seen=128,
                          seed_data="scenes:n=128,seed=1", strategies={"short": "min-words=9"},
                          clusters=3, train_options=SMALL, progress=False)
    names = [r["strategy"] for r in rows]
    assert names == ["none", "clip-score-30", "clip-score-45", "image-based", "image-based+clip-score-30", "short"]
    by = {r["strategy"]: r for r in rows}
    assert by["none"]["size"] == 240 and by["none"]["corrupted_kept"] == 1.0
    assert by["clip-score-30"]["size"] >= 72 and by["clip-score-45"]["size"] >= 108
    assert by["image-based+clip-score-30"]["size"] <= min(by["image-based"]["size"], by["clip-score-30"]["size"])
    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["strategy", "size", "corrupted_kept", "corrupted_share", "zeroshot_top1",
                              "i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5", "average"]
    for r in rows:  # the same budget for every subset, whatever its size
        assert (tmp_path / "runs" / r["strategy"] / "checkpoints").is_dir()
        assert 0 <= r["average"] <= 1
    assert (tmp_path / "table.png").stat().st_size > 1000
    # a rerun reuses every finished part: nothing is trained again
    again = run_experiment(tmp_path, "scenes:n=240,test_n=100,corrupt=0.5", samples_seen=128,
                           seed_data="scenes:n=128,seed=1", strategies={"short": "min-words=9"},
                           clusters=3, train_options=SMALL, progress=False)
    assert [r["average"] for r in again] == [r["average"] for r in rows]


def test_the_experiment_needs_an_evaluation_and_a_scorer_off_scenes(tmp_path, capsys):
    assert main(["curate", "experiment", str(tmp_path / "pool.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "--eval" in capsys.readouterr().err
    assert main(["curate", "experiment", str(tmp_path / "pool.csv"), "--eval", "scenes",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--seed-data" in capsys.readouterr().err


@pytest.mark.slow
def test_clip_score_filtering_beats_no_filtering_at_equal_samples_seen(tmp_path):
    rows = {r["strategy"]: r for r in run_experiment(tmp_path, progress=False)}
    for name in ("clip-score-30", "clip-score-45"):
        assert rows[name]["average"] > rows["none"]["average"], rows
        assert rows[name]["corrupted_share"] < 0.25 < rows["none"]["corrupted_share"]
