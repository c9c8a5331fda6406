"""Any method on the CIFAR-10 shards: steady-state images/s, kNN (and linear) top-1 after fixed epochs.

    python benchmarks/train_cifar.py --method simclr --data 'SHARDS/train-*.tar.gz' \
        --eval-data SHARDS/test-000000.tar.gz --backbone resnet18 --batch-size 512 --precision bf16-mixed --epochs 20

Prints one Markdown table row (for benchmarks/RESULTS.md) with the hardware named.
Throughput counts training images (each gives two views) per second, timed between
synchronised steps after the first epoch (compilation, caches and warm-up excluded).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import lightning as L
import torch

import reprlearn
from reprlearn.api import build_encoder
from reprlearn.data import load_source
from reprlearn.evaluate import extract, knn_top1, linear_top1


class Throughput(L.Callback):
    """Wall time of every step after the first epoch, synchronised with the device."""

    def __init__(self):
        self.times: list[float] = []
        self.batch = 0

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch >= 1:
            self.times.append(self._now())
            self.batch = len(batch[0])

    def images_per_second(self) -> float:
        if len(self.times) < 2:
            return float("nan")
        return (len(self.times) - 1) * self.batch / (self.times[-1] - self.times[0])


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="simclr")
    p.add_argument("--data", required=True)
    p.add_argument("--eval-data", required=True)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the method's)")
    p.add_argument("--out", default=None, help="run directory (default runs/bench-METHOD)")
    p.add_argument("--linear", action="store_true", help="also a linear probe (logistic regression)")
    p.add_argument("--eval", action="store_true", help="also run the full `reprlearn eval` (figures, density)")
    p.add_argument("--eval-max-train", type=int, default=10000, help="training images for --eval's probes")
    p.add_argument("--json", help="also write the figures to this JSON file")
    a = p.parse_args()

    clock = Throughput()
    start = time.perf_counter()
    options = {"lr": a.lr} if a.lr else {}
    options["eval_max_train"] = a.eval_max_train
    run = reprlearn.train(a.method, out=a.out or f"runs/bench-{a.method}", data=a.data, eval_data=a.eval_data,
                          backbone=a.backbone, batch_size=a.batch_size, precision=a.precision, epochs=a.epochs,
                          warmup_epochs=min(10, max(1, a.epochs // 10)), eval=False, progress=False,
                          checkpoint_every=a.epochs, callbacks=[clock], **options)
    train_seconds = time.perf_counter() - start
    encoder = reprlearn.load(run).to("cuda" if torch.cuda.is_available() else "cpu")
    train_set, test_set = load_source(a.data), load_source(a.eval_data)
    random_init = build_encoder(encoder.run_config, encoder.data_info).to(next(encoder.parameters()).device)
    tr_f, te_f = extract(encoder, train_set.tensor()), extract(encoder, test_set.tensor())
    r_tr, r_te = extract(random_init, train_set.tensor()), extract(random_init, test_set.tensor())
    extra = {}
    if a.linear:
        extra["linear_top1"] = linear_top1(tr_f, train_set.labels, te_f, test_set.labels)
        extra["linear_top1_random_init"] = linear_top1(r_tr, train_set.labels, r_te, test_set.labels)
    if a.eval:
        full = reprlearn.evaluate_run(run)
        keep = ("recon_mse", "nelbo_nats", "iwae_nats", "bits_per_dim", "figures")
        extra.update({k: v for k, v in full.items() if k in keep})
    knn = knn_top1(tr_f, train_set.labels, te_f, test_set.labels)
    knn0 = knn_top1(r_tr, train_set.labels, r_te, test_set.labels)
    result = {"method": a.method, "backbone": a.backbone, "batch_size": a.batch_size, "precision": a.precision,
              "epochs": a.epochs, "train_images": len(train_set), "images_per_s": clock.images_per_second(),
              "train_seconds_total": train_seconds, "knn_top1": knn, "knn_top1_random_init": knn0,
              "hardware": hardware(), **extra}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"| {a.method} | {a.backbone} | {a.batch_size} | {a.precision} | {a.epochs} | "
          f"{result['images_per_s']:.0f} | {knn:.4f} | {knn0:.4f} | {extra.get('linear_top1', float('nan')):.4f} | "
          f"{extra.get('linear_top1_random_init', float('nan')):.4f} | {result['hardware']} |")


if __name__ == "__main__":
    main()
