"""benchmarks/simclr_race.py end to end on CPU at toy size (lightly absent here: its side is skipped
with a message), and its FLOP count per source image against the count written by hand."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from fakedata import SHARED

ROOT = Path(__file__).resolve().parents[1]
CIFAR = SHARED / "cifar10"


def race_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("simclr_race", ROOT / "benchmarks" / "simclr_race.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_per_source_image_counts_two_views_forward_and_backward():
    race = race_module()
    d_in, hidden, out = 3 * 4 * 4, 32, 8
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d_in, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, out))
    forward = 2 * (d_in * hidden + hidden * out)
    # backward: both weight gradients, and the input gradient of the second layer only (the images need none)
    backward = 2 * (d_in * hidden + hidden * out) + 2 * hidden * out
    assert race.flops_per_source_image(model, 4) == 2 * (forward + backward)


@pytest.mark.skipif(not (CIFAR / "train-000000.tar.gz").is_file(), reason="needs ../shared/data/cifar10")
def test_the_race_runs_end_to_end_at_toy_size(tmp_path, capsys):
    race = race_module()
    results = tmp_path / "RESULTS.md"
    rows = race.main(["--data", str(CIFAR / "train-000000.tar.gz"), "--eval-data", str(CIFAR / "test-000000.tar.gz"),
                      "--max-images", "128", "--image-size", "8", "--epochs", "2", "--batch-size", "32",
                      "--precision", "32", "--workers", "0", "--out", str(tmp_path / "race"), "--results", str(results)])
    by_side = {r["side"]: r for r in rows}
    if race.lightly_missing():
        assert "skipped" in by_side["lightly"] and "lightly side skipped" in capsys.readouterr().out
    ours = by_side["reprlearn"]
    assert math.isfinite(ours["images_per_s"]) and ours["images_per_s"] > 0
    assert 0.0 <= ours["knn_top1"] <= 1.0 and ours["flops_per_image"] > 0
    text = results.read_text()
    assert "| reprlearn |" in text and "MFU" in text
