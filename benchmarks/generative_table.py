"""One table of generative models: vae, hvae, ddpm and flow on the same data and budget.

For each method: train (same epochs and batch size, each method's other defaults), then on the
test set: bits/dim (which bound, labelled), the time to draw 64 samples, the linear probe (and kNN)
of its encoder's features beside the same encoder untrained, and a sample grid (PNG).

    PYTHONPATH=src python benchmarks/generative_table.py --data digits --epochs 30
    PYTHONPATH=src python benchmarks/generative_table.py --data ../shared/data/cifar10/train-000000.tar.gz \
        --eval-data ../shared/data/cifar10/test-000000.tar.gz --test-images 1000 --epochs 3

Prints a Markdown table and writes it with the figures' paths to OUT/generative_table.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import reprlearn
from reprlearn.data import load_source
from reprlearn.evaluate import extract, knn_top1, linear_top1
from reprlearn.evaluate.generative import density, samples_figure
from reprlearn.runs import load_method, untrained_encoder

METHODS = ("vae", "hvae", "ddpm", "flow")


def bound_label(method, result: dict) -> str:
    if not method.importance_weighted:
        return "variational bound (" + method.density_spec["bound"].split("(")[1].split(")")[0] + ")"
    if type(method).__name__ == "Flow":
        return f"dequantised: −log mean_K p, K = {result['iwae_k']} (upper bound)"
    return f"IWAE bound, K = {result['iwae_k']}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--eval-data", default=None, help="default: the source's test split (digits:test)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--test-images", type=int, default=None, help="first N test images for bits/dim and probes")
    p.add_argument("--iwae-k", type=int, default=50)
    p.add_argument("--out", default="runs/generative_table")
    p.add_argument("--figures", default="docs/figures", help="where the sample grids go")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out, figures = Path(args.out), Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    eval_spec = args.eval_data or (f"{args.data}:test" if args.data == "digits" else None)
    train_set = load_source(args.data)
    test_set = load_source(eval_spec) if eval_spec else None
    if test_set is None:
        raise SystemExit("give --eval-data for a source without a test split")
    if args.test_images:
        test_set = test_set.subset(np.arange(min(args.test_images, len(test_set))))
    tag = "digits" if args.data == "digits" else Path(args.data).name.split(".")[0]
    rows = []
    for name in args.methods.split(","):
        run_dir = out / f"{name}-{tag}"
        start = time.time()
        run = reprlearn.train(name, out=run_dir, data=args.data, eval_data=eval_spec, epochs=args.epochs,
                              batch_size=args.batch_size, eval=False, progress=False, checkpoint_every=10000)
        train_s = time.time() - start
        method, cfg, info = load_method(run)
        x = test_set.tensor().float() / 255
        torch.manual_seed(0)
        d = density(method, x, None, args.iwae_k)
        g = torch.Generator().manual_seed(0)
        start = time.time()
        method.sample(64, generator=g)
        sample_s = time.time() - start
        grid = samples_figure(method, figures / f"generative_{tag}_{name}_samples.png", info.num_classes, n=64)
        feats = {}
        for kind, enc in (("trained", method.encoder), ("random", untrained_encoder(method, cfg, info))):
            tr, te = extract(enc, train_set.tensor()), extract(enc, test_set.tensor())
            feats[kind] = {"linear": linear_top1(tr, train_set.labels, te, test_set.labels),
                           "knn": knn_top1(tr, train_set.labels, te, test_set.labels), "dim": tr.shape[1]}
        rows.append({"method": name, "train_s": train_s, "bits_per_dim": d["bits_per_dim"], "nelbo_nats": d["nelbo_nats"],
                     "iwae_nats": d["iwae_nats"], "bound": bound_label(method, d), "terms": d["kl_per_group"],
                     "sample64_s": sample_s, "features": feats, "samples_png": str(grid)})
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| method | test bits/dim | which | 64 samples, s | linear probe (random init) | kNN (random init) | "
             "feature dim | train, s | samples |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        f = r["features"]
        lines.append(f"| {r['method']} | {r['bits_per_dim']:.3f} | {r['bound']} | {r['sample64_s']:.2f} | "
                     f"{f['trained']['linear']:.3f} ({f['random']['linear']:.3f}) | {f['trained']['knn']:.3f} "
                     f"({f['random']['knn']:.3f}) | {f['trained']['dim']} | {r['train_s']:.0f} | {r['samples_png']} |")
    table = "\n".join(lines)
    print(table)
    (out / "generative_table.json").write_text(json.dumps({"args": vars(args), "rows": rows, "table": table}, indent=2))


if __name__ == "__main__":
    main()
