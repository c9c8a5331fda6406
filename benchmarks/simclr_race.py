"""SimCLR on CIFAR-10, lightly's way and reprlearn's, side by side in one call on one device.

    python benchmarks/simclr_race.py --data 'SHARDS/train-*.tar.gz' --eval-data SHARDS/test-000000.tar.gz \
        --epochs 30 --batch-size 512 --precision bf16-mixed --results benchmarks/RESULTS.md

(a) lightly as its CIFAR-10 benchmark uses it: torchvision's ResNet-18 with a CIFAR stem (3x3/1 first
conv, no max-pool), ``SimCLRTransform(input_size=32, gaussian_blur=0.0)``, ``SimCLRProjectionHead(512,
512, 128)``, ``NTXentLoss`` (τ 0.5), SGD (momentum 0.9, lr 0.06 x batch/128, weight decay 5e-4, cosine),
a DataLoader with one worker per CPU core and pinned memory, bf16 autocast. The loop is a plain
PyTorch loop (lightly's benchmark wraps the same step in Lightning, which only adds overhead to the
reference). (b) ``reprlearn train simclr`` with the same architecture (resnet18 with its CIFAR stem,
a 512-512-128 projector), batch, optimiser, learning rate, τ and epochs. Augmentation: both sides
use crop scale (0.08, 1), flip 0.5, colour jitter 0.8 with (0.4, 0.4, 0.4, 0.1), grayscale 0.2 and
no blur: reprlearn's ``simclr`` preset, and lightly's transform with ``cj_strength=0.5`` (SimCLR's
CIFAR-10 strength, which lightly's own docstring recommends for CIFAR; its default 1.0 is the
ImageNet value).

Prints, and with --results appends to that Markdown file: steady-state source images/s (the first
epoch excluded), seconds per epoch, peak device memory, kNN top-1 (k 200, τ 0.1) of the backbone
features after the epochs, both sides' ratio, the model-FLOP utilisation (model FLOPs per source
image x images/s / the matmul rate measured in this call, bf16 on a GPU), and lightly's model step
alone on one resident batch (no data loading), which says what bounds the reference.

Where lightly or torchvision is missing (CPU machines here), side (a) is skipped with a message.
``--max-images`` and ``--image-size`` make a toy run (the test runs it on CPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cifar import Throughput, hardware  # noqa: E402

import reprlearn  # noqa: E402
from reprlearn.data import load_source  # noqa: E402
from reprlearn.data.imageset import ImageSet  # noqa: E402
from reprlearn.evaluate import extract, knn_top1  # noqa: E402

TEMPERATURE, PROJ_HIDDEN, PROJ_DIM = 0.5, 512, 128


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_memory_gb() -> float:
    if not torch.cuda.is_available():
        return float("nan")
    return torch.cuda.max_memory_allocated() / 2**30


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def matmul_rate(precision: str) -> float:
    """FLOP/s of a large square matmul on the device, in the precision the runs use (bf16 on a GPU)."""
    dev = device()
    dtype = torch.bfloat16 if dev.type == "cuda" and precision.startswith("bf16") else torch.float32
    n = 8192 if dev.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 50 if dev.type == "cuda" else 5
    start = sync()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (sync() - start)


def flops_per_source_image(model: torch.nn.Module, image_size: int) -> float:
    """Forward + backward FLOPs of two views through backbone and projector, per source image
    (torch's FlopCounterMode counts matmuls and convolutions, which dominate)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(4, 3, image_size, image_size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return 2 * counter.get_total_flops() / len(x)  # two views per source image


def subset(images: ImageSet, n: int | None, size: int | None) -> ImageSet:
    x, y = images.images, images.labels
    if n:
        x, y = x[:n], y[:n]
    if size and size != x.shape[1]:
        t = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).float(), size=(size, size),
                                            mode="bilinear", antialias=True, align_corners=False)
        x = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return ImageSet(np.ascontiguousarray(x), y, images.class_names, images.name)


def knn(encoder, train: ImageSet, test: ImageSet) -> float:
    tensor = lambda s: torch.from_numpy(s.images).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return knn_top1(extract(encoder, tensor(train)), train.labels, extract(encoder, tensor(test)), test.labels,
                    k=min(200, len(train) - 1), temperature=0.1)


# ---------------------------------------------------------------- (b) reprlearn

def run_reprlearn(a, train_path: Path, test_path: Path, train: ImageSet, test: ImageSet) -> dict:
    clock = Throughput()
    reset_peak()
    start = time.perf_counter()
    run = reprlearn.train("simclr", out=a.out / "reprlearn", data=str(train_path), eval_data=str(test_path),
                          backbone="resnet18", batch_size=a.batch_size, optimizer="sgd", lr=a.lr_per_128 * a.batch_size / 128,
                          momentum=0.9, weight_decay=5e-4, warmup_epochs=0, precision=a.precision, epochs=a.epochs,
                          temperature=TEMPERATURE, proj_hidden=PROJ_HIDDEN, proj_dim=PROJ_DIM, augment="simclr",
                          loader="memory", eval=False, progress=False, checkpoint_every=a.epochs, callbacks=[clock])
    total = time.perf_counter() - start
    encoder = reprlearn.load(run).to(device())
    steps_per_epoch = len(train) // a.batch_size
    ips = clock.images_per_second()
    return {"side": "reprlearn", "images_per_s": ips, "seconds_per_epoch": len(train) / ips if ips else float("nan"),
            "train_seconds_total": total, "peak_memory_gb": peak_memory_gb(), "knn_top1": knn(encoder, train, test),
            "steps_per_epoch": steps_per_epoch,
            "flops_per_image": flops_per_source_image(_with_projector(run), a.image_size or 32)}


def _with_projector(run: Path) -> torch.nn.Module:
    from reprlearn.runs import load_method

    method, _, _ = load_method(run)
    method = method.to(device()).train()
    return torch.nn.Sequential(method.encoder, method.projector)


# ---------------------------------------------------------------- (a) lightly

def lightly_missing() -> str | None:
    import importlib

    try:
        for name in ("lightly", "torchvision"):
            importlib.import_module(name)
    except Exception as e:  # ImportError, or a torchvision built for another torch
        return f"{type(e).__name__}: {e}"
    return None


def lightly_model() -> torch.nn.Module:
    import torchvision
    from lightly.models.modules import SimCLRProjectionHead

    resnet = torchvision.models.resnet18()
    resnet.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    resnet.maxpool, resnet.fc = torch.nn.Identity(), torch.nn.Identity()
    return torch.nn.Sequential(resnet, SimCLRProjectionHead(512, PROJ_HIDDEN, PROJ_DIM))


class PILViews(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]))


def run_lightly(a, train: ImageSet, test: ImageSet) -> dict:
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform

    dev, bf16 = device(), a.precision.startswith("bf16")
    torch.manual_seed(0)
    model = lightly_model().to(dev)
    transform = SimCLRTransform(input_size=a.image_size or 32, gaussian_blur=0.0, cj_strength=0.5)
    loader = torch.utils.data.DataLoader(PILViews(train.images, transform), batch_size=a.batch_size, shuffle=True,
                                         drop_last=True, num_workers=a.workers, pin_memory=dev.type == "cuda",
                                         persistent_workers=a.workers > 0)
    criterion = NTXentLoss(temperature=TEMPERATURE)
    optimizer = torch.optim.SGD(model.parameters(), lr=a.lr_per_128 * a.batch_size / 128, momentum=0.9,
                                weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, a.epochs * len(loader))

    def step(x0, x1):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(model(x0), model(x1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    reset_peak()
    start, times = time.perf_counter(), []
    for epoch in range(a.epochs):
        for x0, x1 in loader:
            step(x0.to(dev, non_blocking=True), x1.to(dev, non_blocking=True))
            if epoch >= 1:
                times.append(sync())
    total = time.perf_counter() - start
    ips = (len(times) - 1) * a.batch_size / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    memory = peak_memory_gb()
    # the model step alone, on one batch already on the device: what the reference could reach without its loader
    x0, x1 = (v.to(dev) for v in next(iter(loader)))
    for _ in range(3):
        step(x0, x1)
    reps, t0 = 20, sync()
    for _ in range(reps):
        step(x0, x1)
    step_ips = reps * a.batch_size / (sync() - t0)
    backbone = model[0]
    normalised = torch.nn.Sequential(_ImagenetNormalize().to(dev), backbone)
    return {"side": "lightly", "images_per_s": ips, "seconds_per_epoch": len(train) / ips if ips else float("nan"),
            "train_seconds_total": total, "peak_memory_gb": memory, "knn_top1": knn(normalised, train, test),
            "model_step_images_per_s": step_ips, "flops_per_image": flops_per_source_image(model, a.image_size or 32)}


class _ImagenetNormalize(torch.nn.Module):
    """The test-time transform of lightly's benchmark: ImageNet mean/std on [0, 1] pixels."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


# ---------------------------------------------------------------- the table

def table(rows: list[dict], rate: float, a, where: str) -> str:
    head = ("| side | source images/s | s/epoch | peak GPU memory (GB) | kNN top-1 | MFU | model step alone (images/s) |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = [f"\n### SimCLR race: {a.epochs} epochs, batch {a.batch_size}, {a.precision}, {where}\n",
             f"`python benchmarks/simclr_race.py {' '.join(sys.argv[1:])}`; matmul rate measured in the call: "
             f"{rate / 1e12:.1f} TFLOP/s\n", head]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['side']} | skipped: {r['skipped']} | | | | | |")
            continue
        mfu = r["flops_per_image"] * r["images_per_s"] / rate
        step = r.get("model_step_images_per_s")
        lines.append(f"| {r['side']} | {r['images_per_s']:.0f} | {r['seconds_per_epoch']:.1f} | "
                     f"{r['peak_memory_gb']:.2f} | {r['knn_top1']:.4f} | {mfu:.1%} | "
                     f"{'' if step is None else f'{step:.0f}'} |")
    done = {r["side"]: r for r in rows if "skipped" not in r}
    if len(done) == 2:
        lines.append(f"\nreprlearn / lightly: {done['reprlearn']['images_per_s'] / done['lightly']['images_per_s']:.2f}x "
                     f"images/s, kNN {100 * (done['reprlearn']['knn_top1'] - done['lightly']['knn_top1']):+.1f} points")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="training shards (CIFAR-10)")
    p.add_argument("--eval-data", required=True, help="test shard(s) for the kNN probe")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr-per-128", type=float, default=0.06, help="SGD lr per 128 images (lightly's 6e-2 x batch/128)")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="lightly's DataLoader workers")
    p.add_argument("--sides", default="lightly,reprlearn")
    p.add_argument("--max-images", type=int, help="a toy run: the first N training and N/4 test images")
    p.add_argument("--image-size", type=int, help="a toy run: resize to this side")
    p.add_argument("--out", type=Path, default=Path("runs/simclr-race"))
    p.add_argument("--json", type=Path)
    p.add_argument("--results", type=Path, help="append the table to this Markdown file")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    train = subset(load_source(a.data), a.max_images, a.image_size)
    test = subset(load_source(a.eval_data), a.max_images and max(a.max_images // 4, 10), a.image_size)
    # both sides read the very same decoded images
    train_path, test_path = a.out / "train.npz", a.out / "test.npz"
    np.savez(train_path, images=train.images, labels=train.labels)
    np.savez(test_path, images=test.images, labels=test.labels)
    rows = []
    for side in a.sides.split(","):
        if side == "lightly":
            missing = lightly_missing()
            if missing:
                print(f"lightly side skipped: {missing} (install lightly and torchvision to race it)", flush=True)
                rows.append({"side": "lightly", "skipped": missing.splitlines()[0][:120]})
                continue
            rows.append(run_lightly(a, train, test))
        elif side == "reprlearn":
            rows.append(run_reprlearn(a, train_path, test_path, train, test))
        else:
            p.error(f"unknown side {side!r}; choose from lightly, reprlearn")
        print(json.dumps(rows[-1]), flush=True)
    rate = matmul_rate(a.precision)
    text = table(rows, rate, a, hardware())
    print(text)
    if a.results:
        with open(a.results, "a") as f:
            f.write(text)
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "matmul_flops": rate, "hardware": hardware()}, indent=2))
    if not all(math.isfinite(r.get("images_per_s", 0.0)) for r in rows if "skipped" not in r):
        print("warning: too few steps after the first epoch to time the steady state", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
