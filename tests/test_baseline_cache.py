"""The baselines' scores are reused only for byte-identical inputs, options and probe code, and
a reused score is exactly the one computed afresh."""

import numpy as np
import pytest
import torch

from reprlearn.data import load_source
from reprlearn.data.imageset import ImageSet
from reprlearn.evaluate import evaluate


@pytest.fixture
def sets(monkeypatch, tmp_path):
    monkeypatch.setenv("REPRLEARN_CACHE", str(tmp_path / "cache"))
    digits = load_source("digits")
    train = ImageSet(digits.images[:200], digits.labels[:200], digits.class_names)
    test = ImageSet(digits.images[200:260].copy(), digits.labels[200:260], digits.class_names)
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
    random_init = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
    return encoder, random_init, train, test, tmp_path / "cache" / "baselines"


def run(sets, **options):
    encoder, random_init, train, test, _ = sets
    return evaluate(encoder, random_init, train, test, max_train=None, **options)


def test_a_second_evaluation_reuses_every_baseline_with_the_same_scores(sets):
    first = run(sets)
    assert "baselines_reused" not in first and len(list(sets[-1].iterdir())) == 3
    second = run(sets)
    assert second["baselines_reused"] == ["raw_pixels", "pca", "random_init"]
    assert second["baselines"] == first["baselines"]  # float for float, through the stored JSON
    fresh = run(sets, baseline_cache=False)
    assert "baselines_reused" not in fresh and fresh["baselines"] == first["baselines"]
    assert len(list(sets[-1].iterdir())) == 3  # and it wrote nothing


def test_a_changed_pixel_option_or_encoder_is_scored_afresh(sets):
    encoder, random_init, train, test, _ = sets
    run(sets)
    assert "baselines_reused" not in run(sets, knn_k=20)  # another option
    test.images[0, 0, 0, 0] ^= 1  # one pixel of one test image
    assert "baselines_reused" not in run(sets)
    test.images[0, 0, 0, 0] ^= 1
    with torch.no_grad():
        random_init[1].bias[0] += 1e-3  # another random init: only its row is scored afresh
    assert run(sets)["baselines_reused"] == ["raw_pixels", "pca"]


def test_a_corrupt_entry_is_scored_afresh_and_replaced(sets):
    first = run(sets)
    for entry in sets[-1].iterdir():
        entry.write_text("{not json")
    again = run(sets)
    assert "baselines_reused" not in again and again["baselines"] == first["baselines"]
    assert run(sets)["baselines_reused"] == ["raw_pixels", "pca", "random_init"]
    assert np.isfinite(first["baselines"]["pca"]["knn_top1"])


def test_a_change_to_the_kmeans_code_changes_every_key(monkeypatch):
    """The clustering scores come from evaluate/kmeans.py: an edit to it must not reuse old scores."""
    from pathlib import Path

    from reprlearn.evaluate import baseline_cache

    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([0, 1, 0])]
    before = baseline_cache.baseline_key("raw_pixels", {"knn_k": 200}, arrays)
    real = Path.read_bytes

    def edited(path):
        data = real(path)
        return data + b"\n# an edit" if path.name == "kmeans.py" else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert baseline_cache.baseline_key("raw_pixels", {"knn_k": 200}, arrays) != before
