"""DDP on 2 CPU processes (gloo): the distributed NT-Xent equals the single-process loss
on the same global batch, and so do the gradients DDP hands the optimiser."""

import os

import torch
import torch.distributed as dist

from gloo_ranks import run_on_ranks
from reprlearn.losses import barlow_twins_loss, koleo_loss, nt_xent, sinkhorn_knopp, vicreg_loss

N_PER_RANK, DIM_IN, DIM_OUT, T = 6, 5, 4, 0.3


def _data():
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(2 * N_PER_RANK, DIM_IN, generator=g, dtype=torch.float64)
    x_b = torch.randn(2 * N_PER_RANK, DIM_IN, generator=g, dtype=torch.float64)
    return x_a, x_b


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(DIM_IN, DIM_OUT).double()


def _worker(rank: int, world: int, out_dir: str) -> None:
    x_a, x_b = _data()
    local = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    loss = nt_xent(model(x_a[local]), model(x_b[local]), temperature=T, gather=True)
    loss.backward()  # DDP averages the parameter gradients over ranks
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    torch.save({"loss": mean_loss, "grad_w": model.module.weight.grad, "grad_b": model.module.bias.grad},
               os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_nt_xent_equals_single_process(tmp_path):
    run_on_ranks(_worker, 2, tmp_path)
    x_a, x_b = _data()
    model = _model()
    loss = nt_xent(model(x_a), model(x_b), temperature=T)
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["grad_w"], model.weight.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got["grad_b"], model.bias.grad, rtol=1e-9, atol=1e-12)


def test_cli_trains_with_two_ddp_processes(tmp_path):
    """Lightning's own launcher runs two CPU ranks; the run writes one checkpoint and loads."""
    import subprocess
    import sys

    import reprlearn

    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "reprlearn.cli", "train", "simclr", "--devices", "2",
                           "--strategy", "ddp", "--accelerator", "cpu", "--epochs", "1", "--batch-size", "128",
                           "--no-eval", "--no-progress", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1438 // 128  # 11 steps of a 128 global batch: 64 per rank
    assert reprlearn.embed(out, "digits:test").shape[0] == 359


def test_cli_trains_siglip_with_two_ddp_processes(tmp_path):
    """The ring exchange of SigLIP's distributed loss inside Lightning's DDP: two CPU ranks train
    on scenes, every step passes caption embeddings between them, and the run loads."""
    import subprocess
    import sys

    from reprlearn.api import load_method

    out = tmp_path / "ddp-siglip"
    proc = subprocess.run([sys.executable, "-m", "reprlearn.cli", "train", "siglip", "--data", "scenes:n=256",
                           "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu", "--epochs", "1",
                           "--batch-size", "64", "--text-width", "32", "--text-layers", "1", "--no-eval",
                           "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 256 // 64
    method, _, _ = load_method(out)
    assert method.embed_texts(["a red circle."]).shape == (1, method.config.embed_dim)


# the losses that need batch statistics: each rank's loss on its half, DDP's averaged gradients
BATCH_LOSSES = {
    "barlow_twins": lambda a, b: barlow_twins_loss(a, b, lambda_=0.1),
    "vicreg": lambda a, b: vicreg_loss(a, b, 2.0, 3.0, 0.5),
    "koleo": lambda a, b: koleo_loss(a) + koleo_loss(b),
}


def _batch_stat_worker(rank: int, world: int, out_dir: str) -> None:
    x_a, x_b = _data()
    local = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    out = {}
    for name, fn in BATCH_LOSSES.items():
        model = torch.nn.parallel.DistributedDataParallel(_model())
        loss = fn(model(x_a[local]), model(x_b[local]))
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        out[name] = {"loss": mean_loss / world, "grad_w": model.module.weight.grad, "grad_b": model.module.bias.grad}
    out["sinkhorn"] = sinkhorn_knopp(torch.tanh(x_a[local, :4]), iterations=3, epsilon=0.1)
    # a rank without rows (dinov2: no masked patch on it this step) still joins the all-reduces
    mine = x_a[:N_PER_RANK, :4] if rank == 0 else x_a[:0, :4]
    out["sinkhorn_one_side"] = sinkhorn_knopp(torch.tanh(mine), iterations=3, epsilon=0.1)
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


def test_ddp_batch_statistic_losses_equal_single_process(tmp_path):
    """Barlow Twins' cross-correlation, VICReg's variance and covariance, KoLeo's neighbours and
    Sinkhorn's marginals over the global batch: 2 ranks give one process's loss, gradients and codes."""
    run_on_ranks(_batch_stat_worker, 2, tmp_path)
    x_a, x_b = _data()
    got = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for name, fn in BATCH_LOSSES.items():
        model = _model()
        loss = fn(model(x_a), model(x_b))
        loss.backward()
        for rank in range(2):
            torch.testing.assert_close(got[rank][name]["loss"], loss.detach(), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got[rank][name]["grad_w"], model.weight.grad, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(got[rank][name]["grad_b"], model.bias.grad, rtol=1e-9, atol=1e-12)
    codes = sinkhorn_knopp(torch.tanh(x_a[:, :4]), iterations=3, epsilon=0.1)
    torch.testing.assert_close(torch.cat([got[0]["sinkhorn"], got[1]["sinkhorn"]]), codes, rtol=1e-10, atol=1e-12)
    # and the global batch matters: one rank's half alone gives other codes
    alone = sinkhorn_knopp(torch.tanh(x_a[:N_PER_RANK, :4]), 3, 0.1)
    assert not torch.allclose(alone, codes[:N_PER_RANK])
    torch.testing.assert_close(got[0]["sinkhorn_one_side"], alone, rtol=1e-10, atol=1e-12)
    assert got[1]["sinkhorn_one_side"].shape == (0, 4)
