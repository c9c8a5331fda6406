"""The linear probe's inner pieces side by side on CIFAR-10 pixels, one process, alternating rounds.

    python benchmarks/probe_fit_speed.py [--shard PATH] [--rounds 3]

On the shard's 10,000 images (the probe's 8,001-row fit split, standardised, 3,072-d):
- the two products with the fixed features, x W^T and G x (10 class rows): torch's GEMM with
  the rows padded to 16 (the former path) against oneDNN (evaluate/fixed_rows.py);
- one probe fit (L2 0.1 and 1e-3, 50 iterations from zeros): torch.optim.LBFGS with a strong-Wolfe
  search on the same objective and products (the former fit) against evaluate/softmax_fit.py,
  with each one's final objective, so that speed is not bought with a worse optimum;
- k-means (10 starts, k = 10) on the L2-normalised pixels, its products by GEMM or by oneDNN,
  with each one's inertia;
- feature extraction of the small CNN in 256- and 64-image batches, with the page faults.
Each pair runs alternately ``--rounds`` times; the table gives the median of each.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reprlearn.evaluate import softmax_fit
from reprlearn.evaluate.fixed_rows import FixedRows

SHARD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train-000000.tar.gz"


def pixels(shard: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from reprlearn.data.sources import load_shards

    images = load_shards([shard], None, False, "cifar10")
    raw = images.tensor()  # (N, C, H, W) uint8
    x = raw.reshape(len(raw), -1).float() / 255
    x = (x - x.mean(0)) / x.std(0, unbiased=False)
    keep = torch.from_numpy(np.random.default_rng(0).permutation(len(x))[:8001])
    return x[keep].contiguous(), torch.as_tensor(images.labels)[keep], raw


def torch_lbfgs_fit(x: FixedRows, y: torch.Tensor, classes: int, l2: float, max_iter: int = 50) -> torch.Tensor:
    """The probe's former fit: torch.optim.LBFGS, strong Wolfe, history 20, on the same objective."""
    w = torch.zeros(x.x.shape[1] + 1, classes, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-5,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")
    onehot = F.one_hot(y, classes).float()

    def closure():
        loss, w.grad = softmax_fit.loss_and_grad(x, onehot, w.detach(), l2)
        return loss

    opt.step(closure)
    return w.detach()


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shard", default=str(SHARD))
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    x, y, raw = pixels(Path(a.shard))
    rows = {False: FixedRows(x, onednn=False), True: FixedRows(x, onednn=True)}
    w, g = torch.randn(10, x.shape[1]), torch.randn(10, len(x))
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    for _ in range(a.rounds):
        for onednn in (False, True):
            fx = rows[onednn]
            fx.times(w), fx.left(g)  # oneDNN's transposed copy made outside the timing
            label = "oneDNN" if onednn else "GEMM, padded to 16"
            record(f"x W^T, {label} (ms)", 1000 * statistics.median(timed(fx.times, w)[0] for _ in range(10)))
            record(f"G x, {label} (ms)", 1000 * statistics.median(timed(fx.left, g)[0] for _ in range(10)))
    onehot = F.one_hot(y, 10).float()
    fx = rows[True]
    for l2 in (0.1, 1e-3):
        for _ in range(a.rounds):
            for name, fit in (("torch.optim.LBFGS", torch_lbfgs_fit), ("softmax_fit", softmax_fit.fit_softmax)):
                seconds, fitted = timed(fit, fx, y, 10, l2)
                record(f"fit at L2 {l2:g}, {name} (s)", seconds)
                record(f"fit at L2 {l2:g}, {name}: final objective", float(softmax_fit.loss_and_grad(
                    fx, onehot, fitted, l2)[0]))
    from reprlearn.evaluate import fixed_rows, kmeans

    unit, usable = F.normalize(x, dim=1), fixed_rows.onednn_usable
    for _ in range(a.rounds):
        for onednn in (False, True):
            fixed_rows.onednn_usable = usable if onednn else (lambda t: False)
            seconds, (_, inertia) = timed(kmeans.kmeans, unit, 10)
            label = "oneDNN" if onednn else "GEMM"
            record(f"k-means, {label} (s)", seconds)
            record(f"k-means, {label}: inertia", inertia)
    fixed_rows.onednn_usable = usable
    from reprlearn.evaluate.harness import extract
    from reprlearn.nets.cnn import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN(3, 32).eval()
    extract(net, raw[:512])
    for _ in range(a.rounds):
        for batch in (256, 64):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            record(f"extract 10,000 images, batch {batch} (s)", timed(extract, net, raw, batch)[0])
            record(f"extract 10,000 images, batch {batch}: page faults",
                   resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(f"{'measure':<58s}{'median':>12s}   all rounds")
    for name, values in times.items():
        print(f"{name:<58s}{statistics.median(values):12.6g}   {', '.join(f'{v:.6g}' for v in values)}")
    print(f"\nhardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
