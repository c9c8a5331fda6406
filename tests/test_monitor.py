"""Collapse metrics on collapsed and healthy embeddings, and the warning in a real run."""

import lightning as L
import numpy as np
import pytest
import torch

from reprlearn.monitor import COMPLETE_COLLAPSE_STD, collapse_report, effective_rank, embedding_std, relative_floors


def test_healthy_embedding_is_spread_and_full_rank():
    z = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))
    assert embedding_std(z) == pytest.approx(1.0, abs=0.05)
    assert effective_rank(z) > 28
    assert collapse_report(z)[1] is None


def test_complete_collapse():
    z = torch.ones(512, 32) * torch.randn(1, 32)
    assert embedding_std(z) < 1e-3 and effective_rank(z) == 0.0
    assert "collapsed" in collapse_report(z)[1]


def test_dimensional_collapse_to_a_line():
    g = torch.Generator().manual_seed(1)
    scale = (1 + torch.rand(1024, 1, generator=g)) * torch.randn(1024, 1, generator=g).sign()
    z = scale * torch.randn(1, 32, generator=g) + 0.001 * torch.randn(1024, 32, generator=g)
    assert effective_rank(z) < 1.2
    assert "effective rank" in collapse_report(z)[1]


def test_effective_rank_of_k_equal_directions():
    # rows +q_i and -q_i for k orthonormal q_i: centred, k equal singular values -> entropy log k, rank k
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2)))
    for k in (1, 3, 8):
        z = torch.cat([q[:k], -q[:k]])
        assert effective_rank(z) == pytest.approx(k, rel=1e-4)


def test_collapse_metrics_logged_during_training(tmp_path):
    import reprlearn

    run = reprlearn.train("simclr", out=tmp_path / "r", epochs=2, batch_size=128, eval=False, progress=False)
    header = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "collapse/embedding_std" in header and "collapse/effective_rank" in header


def test_umap_figure_leaves_torch_thread_count_alone(tmp_path):
    # numba (UMAP) shares torch's OpenMP runtime and used to raise its thread count to all cores
    import torch

    from reprlearn.evaluate.figures import umap_plot

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = np.random.default_rng(0).random((200, 8)).astype(np.float32)
        umap_plot(x, np.arange(200) % 4, ["a", "b", "c", "d"], tmp_path / "u.png")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_floors_follow_an_init_that_is_already_narrow():
    # a random ViT's tokens: one large shared component plus small per-image parts (std ~0.1)
    g = torch.Generator().manual_seed(3)
    common = torch.randn(1, 64, generator=g)
    init = common + 0.012 * torch.randn(2048, 64, generator=g)
    start, _ = collapse_report(init)
    assert start["embedding_std"] < 0.1 and collapse_report(init)[1] is not None  # fixed floors: a false alarm
    floors = relative_floors(start)
    assert floors == (COMPLETE_COLLAPSE_STD, 2.0)
    assert collapse_report(init, *floors)[1] is None  # training starts healthy by its own measure
    # the shared component grows (a third of the start's spread, as healthy ijepa runs do): same
    # directions at a smaller scale, which is not collapse
    shrunk = common + 0.004 * torch.randn(2048, 64, generator=g)
    assert collapse_report(shrunk, *floors)[1] is None
    # ... but the embedding no longer depending on the input is
    constant = common + 1e-5 * torch.randn(2048, 64, generator=g)
    assert "collapsed" in collapse_report(constant, *floors)[1]
    # a healthy init keeps the usual floors
    assert relative_floors(collapse_report(torch.randn(2048, 64, generator=g))[0]) == (0.1, 2.0)


def test_collapse_floors_are_kept_in_the_checkpoint(tmp_path):
    import reprlearn
    from reprlearn.engine import CollapseWatch

    run = reprlearn.train("simclr", out=tmp_path / "r", epochs=1, batch_size=128, eval=False, progress=False)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "CollapseWatch" in k]
    assert state["floors"] is not None and 0 < state["floors"][0] <= 0.1
    watch = CollapseWatch(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    watch.load_state_dict(state)
    assert watch.floors == tuple(state["floors"])


class KillLastNorm(L.Callback):
    """From the second epoch on, the backbone's last normalisation layer (a cnn's last BatchNorm, a
    ViT's final LayerNorm) outputs 0 and is frozen: every unit after it is dead (ReLU(0)) or 0, so
    the features are all zero: a collapsed run, made on purpose."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            norms = (torch.nn.BatchNorm2d, torch.nn.LayerNorm)
            norm = [m for m in pl_module.method.encoder.backbone.modules() if isinstance(m, norms)][-1]
            with torch.no_grad():
                norm.weight.zero_()
                norm.bias.zero_()
            norm.weight.requires_grad_(False)
            norm.bias.requires_grad_(False)


def few_digits(tmp_path, n=320):
    """The first n digits as an .npz (288 after the 10% hold-out): a ViT epoch in seconds."""
    from reprlearn.data import load_source

    digits, path = load_source("digits"), tmp_path / "few.npz"
    np.savez(path, images=digits.images[:n], labels=digits.labels[:n])
    return str(path)


# the ViT methods on 288 digits with small heads, so that two epochs take seconds
VIT_RUNS = {"ijepa": dict(batch_size=64, predictor_dim=32, predictor_depth=1),
            "dinov2": dict(batch_size=64, out_dim=16, patch_out_dim=12, head_hidden=32, bottleneck_dim=8, n_local=0)}


def collapse_warnings(tmp_path, method, callbacks=()):
    import warnings

    import reprlearn

    options = VIT_RUNS.get(method, dict(batch_size=256))
    data = {"data": few_digits(tmp_path)} if method in VIT_RUNS else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reprlearn.train(method, out=tmp_path / "r", epochs=2, eval=False, progress=False,
                        callbacks=list(callbacks), **data, **options)
    return [str(w.message) for w in caught if "looks collapsed" in str(w.message)]


@pytest.mark.parametrize("method", ["barlow-twins", "vicreg", "simsiam", "swav", "ijepa", "dinov2"])
def test_collapse_watch_catches_a_collapsed_run(tmp_path, method):
    """The watch, with floors from each method's own start, stays quiet after a healthy first epoch
    and warns (naming the epoch) once the run's features have collapsed."""
    collapsed = collapse_warnings(tmp_path, method, [KillLastNorm()])
    assert len(collapsed) == 1 and collapsed[0].startswith("epoch 2:"), collapsed


@pytest.mark.parametrize("method", ["ijepa", "dinov2"])
def test_collapse_watch_is_quiet_on_healthy_vit_runs(tmp_path, method):
    # ijepa's embedding std falls from 0.096 to about 0.01 here as a shared component grows, while its
    # kNN accuracy rises and the effective rank stays near 20: the old half-of-init floor warned
    assert collapse_warnings(tmp_path, method) == []
