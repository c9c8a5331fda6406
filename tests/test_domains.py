"""The shifted domains (data/domains.py), --target-data in RunData, and the domain evaluation's parts."""

from pathlib import Path

import numpy as np
import pytest

from fakedata import one_line_error
from reprlearn.data import load_source
from reprlearn.data.domains import blend_digits, shift_images
from reprlearn.data.run_data import load_run_data
from reprlearn.evaluate.domain import domain_classifier_top1

CIFAR = next((p / "shared" / "data" / "cifar10" for p in Path(__file__).resolve().parents
              if (p / "shared" / "data" / "cifar10" / "train-000000.tar.gz").is_file()), None)
needs_cifar = pytest.mark.skipif(CIFAR is None, reason="digits-m needs ../shared/data/cifar10")


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _private_cache(module_cache, monkeypatch):
    # one cache for the module: the CIFAR-10 shard under digits-m is decoded once, not per test
    monkeypatch.setenv("REPRLEARN_CACHE", str(module_cache))


def test_blend_digits_is_mnist_m_by_a_loop():
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, (3, 4, 4)).astype(np.uint8)
    backgrounds = rng.integers(0, 256, (2, 6, 6, 3)).astype(np.uint8)
    out = blend_digits(digits, backgrounds, seed=7)
    # the same draws, in the same order, by hand
    draw = np.random.default_rng(7)
    which, top, left = draw.integers(0, 2, 3), draw.integers(0, 3, 3), draw.integers(0, 3, 3)
    from reprlearn.data.domains import COLOUR_LOW

    colour = draw.integers(COLOUR_LOW, 256, (3, 1, 1, 3))
    for i in range(3):
        for r in range(4):
            for c in range(4):
                for k in range(3):
                    patch = int(backgrounds[which[i], top[i] + r, left[i] + c, k])
                    want = round(abs(patch - colour[i, 0, 0, k] * digits[i, r, c] / 255))
                    assert abs(int(out[i, r, c, k]) - want) <= 0, (i, r, c, k)
    np.testing.assert_array_equal(out, blend_digits(digits, backgrounds, seed=7))  # deterministic


def test_shift_is_the_colour_transform_then_the_blur_by_a_loop():
    from reprlearn.data.domains import BLUR_SIGMA, COLOUR_MIX, GAMMA

    img = np.random.default_rng(1).integers(0, 256, (1, 5, 6, 3)).astype(np.uint8)
    out = shift_images(img)
    x = np.clip((img[0] / 255.0) @ COLOUR_MIX.T, 0, 1) ** GAMMA
    taps = [np.exp(-0.5 * (d / BLUR_SIGMA) ** 2) for d in range(-2, 3)]
    taps = [t / sum(taps) for t in taps]
    h, w = x.shape[:2]
    rows = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            rows[i, j] = sum(t * x[min(max(i + d, 0), h - 1), j] for t, d in zip(taps, range(-2, 3)))
    both = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            both[i, j] = sum(t * rows[i, min(max(j + d, 0), w - 1)] for t, d in zip(taps, range(-2, 3)))
    np.testing.assert_array_equal(out[0], np.round(both * 255).clip(0, 255).astype(np.uint8))


@needs_cifar
def test_digits_m_keeps_the_digits_labels_and_is_deterministic(monkeypatch, module_cache):
    from reprlearn.data.cache import content_key
    from reprlearn.data.domains import COLOUR_LOW, DIGITS_M_SEED, patch_shard
    from reprlearn.data.sources import file_digest

    monkeypatch.setenv("REPRLEARN_CIFAR10", str(CIFAR))
    first = load_source("digits-m")
    digits = load_source("digits")
    assert first.images.shape == (len(digits), 8, 8, 3) and np.array_equal(first.labels, digits.labels)
    entry = module_cache / "decoded" / (content_key("digits-m", "train", DIGITS_M_SEED, COLOUR_LOW,
                                                    file_digest(patch_shard())) + ".npz")
    entry.unlink()  # built again from the seed, not read back
    np.testing.assert_array_equal(load_source("digits-m").images, first.images)
    assert entry.is_file()
    assert not np.array_equal(load_source("digits-m:test").images[:10], first.images[:10])


def test_digits_m_without_the_cifar_shards_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("REPRLEARN_CIFAR10", str(tmp_path))
    one_line_error(lambda: load_source("digits-m"), "train-000000.tar.gz", "REPRLEARN_CIFAR10")


def cfg(**kw):
    from reprlearn.config import RunConfig

    return RunConfig(**{"method": "domain-invariant", **kw})


@needs_cifar
def test_target_data_brings_both_domains_to_one_shape(monkeypatch):
    monkeypatch.setenv("REPRLEARN_CIFAR10", str(CIFAR))
    data = load_run_data(cfg(target_data="auto"), captions=False)
    assert data.target.name == "digits-m:train" and data.target_eval.name == "digits-m:test"
    for images in (data.train, data.eval, data.target, data.target_eval):
        assert images.images.shape[1:] == (8, 8, 3)
    assert np.array_equal(data.train.images[..., 0], data.train.images[..., 2])  # grey replicated
    assert "8x8x1" in data.shapes and "both as 8x8x3 (grey replicated to RGB)" in data.shapes
    resized = load_run_data(cfg(target_data="digits-m", image_size=12), captions=False)
    assert resized.target.images.shape[1:] == (12, 12, 3) and resized.train.images.shape[1:] == (12, 12, 3)


def test_target_auto_without_a_known_shift_is_one_line(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((30, 8, 8), np.uint8), labels=np.arange(30) % 3)
    one_line_error(lambda: load_run_data(cfg(data=str(tmp_path / "x.npz"), target_data="auto"), False),
                   "--target-data auto", "--target-data SOURCE")


def test_domain_classifier_is_chance_on_one_domain_and_sure_on_two():
    rng = np.random.default_rng(0)
    same = domain_classifier_top1(rng.normal(size=(400, 5)), rng.normal(size=(300, 5)))
    apart = domain_classifier_top1(rng.normal(size=(400, 5)), rng.normal(size=(300, 5)) + 3)
    assert abs(same - 0.5) < 0.08 and apart > 0.99
