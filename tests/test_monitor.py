"""Collapse metrics on collapsed and healthy embeddings, and the warning in a real run."""

import numpy as np
import pytest
import torch

from reprlearn.monitor import collapse_report, effective_rank, embedding_std


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
