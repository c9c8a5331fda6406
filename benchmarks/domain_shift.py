"""domain-invariant on digits -> digits-m over seeds: target accuracy beside source-only and the oracle,
the domain classifier before and after, the critic's W1; --align marginal and joint.

    python benchmarks/domain_shift.py --seeds 0 1 2 --align marginal joint --out /tmp/domain-shift

Each run is the method's defaults (``reprlearn train domain-invariant --seed S --align A``); the
references (source-only, target oracle) are trained beside it from the same initialisation and
batches. Prints one Markdown table (mean ± sample standard deviation over the seeds) for
benchmarks/RESULTS.md, and writes every run's eval.json under --out.
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

ROWS = [("target_top1", "target top-1, adapted"), ("source_only_top1", "target top-1, source only (source images alone)"),
        ("lambda0_top1", "target top-1, λ = 0 on the same batches"),
        ("target_oracle_top1", "target top-1, oracle (target labels)"), ("source_top1", "source top-1, adapted"),
        ("dc_before", "domain classifier, before training"), ("dc_after", "domain classifier, after (adapted)"),
        ("dc_source_only", "domain classifier, after (source only)"),
        ("dc_lambda0", "domain classifier, after (λ = 0)"), ("critic_w1", "critic W1 (held-out)"),
        ("seconds", "seconds per run (training + evaluation)")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--align", nargs="+", default=["marginal", "joint"], choices=["marginal", "joint"])
    p.add_argument("--data", default="digits")
    p.add_argument("--target-data", default="auto")
    p.add_argument("--epochs", type=int, default=None, help="default: the method's")
    p.add_argument("--out", default="/tmp/domain-shift")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    table: dict[str, dict[str, list[float]]] = {}
    for align in a.align:
        for seed in a.seeds:
            out = Path(a.out) / f"{align}-seed{seed}"
            if (out / "eval.json").is_file():
                result = json.loads((out / "eval.json").read_text())
                seconds = result.get("_seconds", float("nan"))
            else:
                start = time.perf_counter()
                extra = {"epochs": a.epochs} if a.epochs else {}
                reprlearn.train("domain-invariant", out=out, data=a.data, target_data=a.target_data, seed=seed,
                                align=align, progress=False, **extra)
                seconds = time.perf_counter() - start
                result = json.loads((out / "eval.json").read_text())
                result["_seconds"] = seconds
                (out / "eval.json").write_text(json.dumps(result, indent=2))
            dc = result["domain_classifier"]
            row = {k: result[k] for k in ("target_top1", "source_only_top1", "lambda0_top1", "target_oracle_top1",
                                          "source_top1", "critic_w1")}
            row.update(dc_before=dc["before"], dc_after=dc["after"], dc_source_only=dc.get("source_only"),
                       dc_lambda0=dc.get("lambda0"), seconds=seconds)
            print(f"{align} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            for k, v in row.items():
                table.setdefault(align, {}).setdefault(k, []).append(v)
    print(f"\n{a.data} -> {a.target_data}, seeds {a.seeds}, mean ± std; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| | " + " | ".join(f"--align {al}" for al in table) + " |")
    print("|---|" + "---|" * len(table))
    for key, label in ROWS:
        cells = []
        for al in table:
            v = np.asarray(table[al][key], dtype=float)
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for al in table:
        for ref in ("source_only_top1", "lambda0_top1"):
            gain = np.asarray(table[al]["target_top1"]) - np.asarray(table[al][ref])
            print(f"\n{al}: adapted − {ref[:-5]} target top-1 per seed {np.round(gain, 3).tolist()}, "
                  f"mean {gain.mean():+.3f}")


if __name__ == "__main__":
    main()
