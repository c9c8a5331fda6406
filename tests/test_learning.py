"""Learning itself: a short real training run on digits beats the random-init encoder.

Registry-driven: every registered method (and each two-view loss) gets a real run.
"""

import numpy as np
import pytest

import reprlearn
from reprlearn.api import build_encoder
from reprlearn.data import load_source
from reprlearn.evaluate import extract, few_label, knn_top1
from reprlearn.methods import METHODS

SHORT = dict(data="digits", epochs=25, batch_size=256, warmup_epochs=2, eval=False, progress=False,
             checkpoint_every=100)


def probe(encoder, train, test):
    tr, te = extract(encoder, train.tensor()), extract(encoder, test.tensor())
    knn = knn_top1(tr, train.labels, te, test.labels)
    few = few_label(tr, train.labels, te, test.labels, per_class=5, draws=3)
    return knn, few["knn_top1_few"]


@pytest.fixture(scope="module")
def digits():
    return load_source("digits"), load_source("digits:test")


@pytest.mark.parametrize("method,extra", [(m, {}) for m in METHODS.names()] + [
    ("simclr", {"loss": "margin"}), ("simclr", {"loss": "triplet"}), ("moco", {"loss": "triplet"})])
def test_short_training_beats_random_init(tmp_path, digits, method, extra):
    train, test = digits
    run = reprlearn.train(method, out=tmp_path / "run", **SHORT, **extra)
    trained = reprlearn.load(run)
    random_init = build_encoder(trained.run_config, trained.data_info)
    knn, knn_few = probe(trained, train, test)
    knn0, knn_few0 = probe(random_init, train, test)
    print(f"{method} {extra}: knn {knn:.3f} vs random {knn0:.3f}; 5-label knn {knn_few:.3f} vs {knn_few0:.3f}")
    assert knn > knn0 + 0.03 and knn_few > knn_few0 + 0.03


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
