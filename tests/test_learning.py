"""Learning itself: a short real training run on digits beats the random-init encoder.

Registry-driven: every registered method (and each two-view loss) gets a real run.
"""

import numpy as np
import pytest

import reprlearn
from reprlearn.api import build_encoder
from reprlearn.data import load_source
from reprlearn.evaluate import extract, few_label, knn_top1, linear_top1
from reprlearn.methods import METHODS

SHORT = dict(data="digits", epochs=25, batch_size=256, warmup_epochs=2, eval=False, progress=False,
             checkpoint_every=100)
# where a method needs more than SHORT to learn, and which probe shows it (README reports why)
OVERRIDES = {
    "hvae": {"batch_size": 128},  # two latent groups: 25 epochs of batch 256 are too few steps
    "mae": {"epochs": 60, "batch_size": 256},  # 4 visible 2x2 patches of an 8x8 digit: slow to learn
}
PROBE = {"mae": "linear"}  # MAE's features need a linear read-out; kNN does not beat random init (README)


def probe(encoder, train, test, kind):
    tr, te = extract(encoder, train.tensor()), extract(encoder, test.tensor())
    if kind == "linear":
        few = few_label(tr, train.labels, te, test.labels, per_class=20, draws=2)
        return linear_top1(tr, train.labels, te, test.labels), few["linear_top1_few"]
    few = few_label(tr, train.labels, te, test.labels, per_class=5, draws=3)
    return knn_top1(tr, train.labels, te, test.labels), few["knn_top1_few"]


@pytest.fixture(scope="module")
def digits():
    return load_source("digits"), load_source("digits:test")


@pytest.mark.parametrize("method,extra", [(m, {}) for m in METHODS.names()] + [
    ("simclr", {"loss": "margin"}), ("simclr", {"loss": "triplet"}), ("moco", {"loss": "triplet"})])
def test_short_training_beats_random_init(tmp_path, digits, method, extra):
    train, test = digits
    run = reprlearn.train(method, out=tmp_path / "run", **{**SHORT, **OVERRIDES.get(method, {}), **extra})
    trained = reprlearn.load(run)
    random_init = build_encoder(trained.run_config, trained.data_info)
    kind = PROBE.get(method, "knn")
    full, few = probe(trained, train, test, kind)
    full0, few0 = probe(random_init, train, test, kind)
    print(f"{method} {extra}: {kind} {full:.3f} vs random {full0:.3f}; few-label {few:.3f} vs {few0:.3f}")
    assert full > full0 + 0.03 and few > few0 + 0.02


@pytest.mark.slow
def test_cifar10_simclr_beats_random_init_and_pixels(tmp_path):
    from pathlib import Path

    shards = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
    if not shards.is_dir():
        pytest.skip("needs ../shared/data/cifar10")
    run = reprlearn.train("simclr", out=tmp_path / "c", data=str(shards / "train-000000.tar.gz"),
                          eval_data=str(shards / "test-000000.tar.gz"), epochs=5, batch_size=256, lr=2e-3,
                          warmup_epochs=1, eval=False, progress=False)
    trained = reprlearn.load(run)
    train, test = load_source(str(shards / "train-000000.tar.gz")), load_source(str(shards / "test-000000.tar.gz"))
    tr, te = extract(trained, train.tensor()), extract(trained, test.tensor())
    r = build_encoder(trained.run_config, trained.data_info)
    r_tr, r_te = extract(r, train.tensor()), extract(r, test.tensor())
    pix = lambda s: s.images.reshape(len(s), -1).astype(np.float32)  # noqa: E731
    knn = knn_top1(tr, train.labels, te, test.labels)
    assert knn > knn_top1(r_tr, train.labels, r_te, test.labels)
    assert knn > knn_top1(pix(train), train.labels, pix(test), test.labels)
