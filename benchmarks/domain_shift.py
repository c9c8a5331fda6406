"""domain-invariant over seeds: target accuracy beside source-only, λ = 0 and the oracle, the domain
classifier before and after, the critic's W1; --align marginal and joint.

    python benchmarks/domain_shift.py --seeds 0 1 2 --align marginal joint --out /tmp/domain-shift
    python benchmarks/domain_shift.py --labelled-per-class 5 --align joint --out /tmp/domain-multi   # multi-domain
    python benchmarks/domain_shift.py --data cifar10 --subset 8000 --image-size 16 --epochs 20 --batch-size 64 \
        --lambda-warmup 2.5 --align marginal joint --out /tmp/domain-cifar

Each run is the method's defaults (``reprlearn train domain-invariant --seed S --align A``) plus
the options given here; the references (source only, λ = 0, target oracle) are trained beside it
from the same initialisation and batches. ``--data cifar10 --subset N``: a small CIFAR-10 ->
cifar10-shifted task for a short budget, written as .npz files under --out: the source is the
first N training images, the target the shifted next N (other images than the source's), the
held-out sets the first N // 2 test images, plain and shifted. Prints one Markdown table (mean ±
sample standard deviation over the seeds) for benchmarks/RESULTS.md, and writes every run's
eval.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import reprlearn
from reprlearn.files import atomic_write

ROWS = [("target_top1", "target top-1, adapted"), ("source_only_top1", "target top-1, source only (source images alone)"),
        ("lambda0_top1", "target top-1, λ = 0 on the same batches"),
        ("target_oracle_top1", "target top-1, oracle (target labels)"), ("source_top1", "source top-1, adapted"),
        ("dc_before", "domain classifier, before training"), ("dc_after", "domain classifier, after (adapted)"),
        ("dc_source_only", "domain classifier, after (source only)"),
        ("dc_lambda0", "domain classifier, after (λ = 0)"), ("critic_w1", "critic W1 (held-out)"),
        ("seconds", "seconds per run (training + evaluation)")]
MULTI_ROWS = [("worst_domain_top1", "worst domain top-1, adapted"), ("lambda0_worst_top1", "worst domain top-1, λ = 0")]


def cifar_subset(out: Path, n: int) -> dict[str, str]:
    """The small CIFAR-10 -> cifar10-shifted task of --subset, as .npz files under ``out``."""
    from reprlearn.data import load_source
    from reprlearn.data.domains import shift_images

    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{k}-{n}.npz" for k in ("data", "target_data", "eval_data", "target_eval_data")}
    if not all(p.is_file() for p in paths.values()):
        train, test = load_source("cifar10:train"), load_source("cifar10:test")
        if len(train) < 2 * n or len(test) < n // 2:
            raise SystemExit(f"--subset {n} needs {2 * n} CIFAR-10 training images and {n // 2} test images")
        parts = {"data": (train.images[:n], train.labels[:n]),
                 "target_data": (shift_images(train.images[n:2 * n]), train.labels[n:2 * n]),
                 "eval_data": (test.images[:n // 2], test.labels[:n // 2]),
                 "target_eval_data": (shift_images(test.images[:n // 2]), test.labels[:n // 2])}
        for k, (images, labels) in parts.items():  # atomically: two runs started together may both build them
            with atomic_write(paths[k]) as f:
                np.savez(f, images=images, labels=labels)
    return {k: str(p) for k, p in paths.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--align", nargs="+", default=["marginal", "joint"], choices=["marginal", "joint"])
    p.add_argument("--data", default="digits")
    p.add_argument("--target-data", default="auto")
    p.add_argument("--epochs", type=int, default=None, help="default: the method's")
    p.add_argument("--subset", type=int, default=None, help="--data cifar10: N source and N target training images")
    p.add_argument("--labelled-per-class", type=int, default=None,
                   help="the multi-domain setting: N labelled images per class in each domain")
    p.add_argument("--lambda-schedule", default=None, choices=["linear", "dann"], help="default: the method's")
    p.add_argument("--pseudo-threshold", type=float, default=None, help="joint: confident target predictions only")
    p.add_argument("--image-size", type=int, default=None, help="resize both domains to this side")
    p.add_argument("--batch-size", type=int, default=None, help="default: the method's")
    p.add_argument("--lambda-warmup", type=float, default=None, help="epochs; default: the method's")
    p.add_argument("--out", default="/tmp/domain-shift")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    table: dict[str, dict[str, list[float]]] = {}
    data = {"data": a.data, "target_data": a.target_data}
    if a.subset:
        if a.data != "cifar10":
            raise SystemExit("--subset is for --data cifar10")
        data = cifar_subset(Path(a.out) / "data", a.subset)
    extra = {k: v for k, v in (("epochs", a.epochs), ("labelled_per_class", a.labelled_per_class),
                               ("lambda_schedule", a.lambda_schedule), ("pseudo_threshold", a.pseudo_threshold),
                               ("image_size", a.image_size), ("batch_size", a.batch_size),
                               ("lambda_warmup", a.lambda_warmup)) if v is not None}
    rows = ROWS + (MULTI_ROWS if a.labelled_per_class else [])
    for align in a.align:
        for seed in a.seeds:
            out = Path(a.out) / f"{align}-seed{seed}"
            if (out / "eval.json").is_file():
                result = json.loads((out / "eval.json").read_text())
                seconds = result.get("_seconds", float("nan"))
            else:
                start = time.perf_counter()
                reprlearn.train("domain-invariant", out=out, seed=seed, align=align, progress=False, **data, **extra)
                seconds = time.perf_counter() - start
                result = json.loads((out / "eval.json").read_text())
                result["_seconds"] = seconds
                (out / "eval.json").write_text(json.dumps(result, indent=2))
            dc = result["domain_classifier"]
            row = {k: result[k] for k in ("target_top1", "source_only_top1", "lambda0_top1", "target_oracle_top1",
                                          "source_top1", "critic_w1")}
            row.update(dc_before=dc["before"], dc_after=dc["after"], dc_source_only=dc.get("source_only"),
                       dc_lambda0=dc.get("lambda0"), seconds=seconds)
            if a.labelled_per_class:
                row.update(worst_domain_top1=result["worst_domain_top1"],
                           lambda0_worst_top1=min(result["lambda0_top1"], result["lambda0_source_top1"]))
            print(f"{align} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            for k, v in row.items():
                table.setdefault(align, {}).setdefault(k, []).append(v)
    target = "cifar10-shifted" if a.subset else a.target_data
    print(f"\n{a.data} -> {target}{f' (subset {a.subset})' if a.subset else ''}, options {extra}, seeds {a.seeds}, "
          f"mean ± std; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| | " + " | ".join(f"--align {al}" for al in table) + " |")
    print("|---|" + "---|" * len(table))
    for key, label in rows:
        cells = []
        for al in table:
            v = np.asarray(table[al][key], dtype=float)
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    pairs = [("target_top1", "source_only_top1"), ("target_top1", "lambda0_top1")]
    if a.labelled_per_class:
        pairs.append(("worst_domain_top1", "lambda0_worst_top1"))
    for al in table:
        for mine, ref in pairs:
            gain = np.asarray(table[al][mine]) - np.asarray(table[al][ref])
            print(f"\n{al}: {mine} adapted − {ref} per seed {np.round(gain, 3).tolist()}, mean {gain.mean():+.3f}")


if __name__ == "__main__":
    main()
