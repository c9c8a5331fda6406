"""Self-supervised methods side by side on one CIFAR-10 shard: kNN top-1 and images/s, one after another.

    python benchmarks/ssl_table.py --epochs 5 --out /tmp/ssl_table.md
    python benchmarks/ssl_table.py --methods simclr,byol,barlow-twins,vicreg,simsiam,swav,ijepa,dinov2

Each method trains on the same shard (10,000 images, ``--train``) with the same backbone,
epochs, batch size and seed; its other run options (learning rate, warm-up ...) are its own
defaults. Methods run one after another in this process, so on a shared machine the images/s
of one are not disturbed by another of ours (run it on an otherwise idle machine). images/s
counts training images (each gives its views) per second between steps after the first epoch.
kNN top-1: the encoder's features of the training shard against those of the test shard
(``--test``), k = 200, t = 0.1, as every probe here; each backbone's random-init encoder has a row.
Writes a Markdown table (with the command and the hardware) to ``--out`` and to stdout.
``--subset N`` trains and evaluates on N images of each shard (a quick check of the script).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import reprlearn
from reprlearn.api import build_encoder
from reprlearn.data import load_source
from reprlearn.evaluate import extract, knn_top1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cifar import Throughput, hardware  # noqa: E402

DEFAULT_METHODS = "simclr,byol,barlow-twins,vicreg,simsiam,swav"


def default_shards() -> Path:
    """../shared/data/cifar10 beside the repository (or beside the folder holding its worktrees)."""
    root = Path(__file__).resolve().parents[1]
    for base in (root.parent, root.parent.parent):
        if (base / "shared" / "data" / "cifar10").is_dir():
            return base / "shared" / "data" / "cifar10"
    return root.parent / "shared" / "data" / "cifar10"


def subset_npz(spec: str, n: int, folder: Path, name: str) -> str:
    """The first n images of a stratified shuffle of ``spec``, as an .npz in ``folder`` (outside the repo)."""
    data = load_source(spec)
    keep = np.sort(np.random.default_rng(0).permutation(len(data))[:n])
    path = folder / f"{name}.npz"
    np.savez(path, images=data.images[keep], labels=data.labels[keep])
    return str(path)


def knn_of(encoder, train, test) -> float:
    return knn_top1(extract(encoder, train.tensor()), train.labels, extract(encoder, test.tensor()), test.labels)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=DEFAULT_METHODS, help="registered method names, comma-separated, in order")
    shards = default_shards()
    p.add_argument("--train", default=str(shards / "train-000000.tar.gz"), help="training shard")
    p.add_argument("--test", default=str(shards / "test-000000.tar.gz"), help="evaluation shard")
    p.add_argument("--backbone", default="cnn")
    p.add_argument("--backbone-of", default="", help="per-method backbones, e.g. ijepa=vit-tiny,dinov2=vit-tiny "
                   "(methods that need patch tokens)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset", type=int, help="use only this many images of each shard (a quick check)")
    p.add_argument("--runs", default=None, help="folder for the runs (default: a temporary folder)")
    p.add_argument("--out", default=None, help="also write the Markdown table here")
    a = p.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    backbone_of = dict(pair.split("=", 1) for pair in a.backbone_of.split(",") if "=" in pair)
    unknown = [m for m in [*methods, *backbone_of] if m not in reprlearn.methods()]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; registered: {', '.join(reprlearn.methods())}")
    for path in (a.train, a.test):
        if not Path(path).exists():
            raise SystemExit(f"{path} not found; give --train and --test (CIFAR-10 shards, see ../shared/data/README.md)")

    scratch = Path(tempfile.mkdtemp(prefix="ssl-table-"))
    train_spec, test_spec = a.train, a.test
    if a.subset:
        train_spec = subset_npz(a.train, a.subset, scratch, "train")
        test_spec = subset_npz(a.test, a.subset, scratch, "test")
    train, test = load_source(train_spec), load_source(test_spec)
    runs = Path(a.runs) if a.runs else scratch / "runs"

    rows, random_done = [], set()
    for method in methods:
        clock = Throughput()
        start = time.perf_counter()
        run = reprlearn.train(method, out=runs / method, data=train_spec, eval_data=test_spec, backbone=backbone_of.get(method, a.backbone),
                              epochs=a.epochs, batch_size=a.batch_size, warmup_epochs=a.warmup_epochs, seed=a.seed,
                              eval=False, progress=False, checkpoint_every=a.epochs, callbacks=[clock])
        seconds = time.perf_counter() - start
        encoder = reprlearn.load(run)
        backbone = encoder.run_config.backbone
        if backbone not in random_done:  # the random-init encoder of each backbone, once
            random_done.add(backbone)
            random_init = build_encoder(encoder.run_config, encoder.data_info)
            rows.append((f"random init ({backbone})", knn_of(random_init, train, test), float("nan"), 0.0))
        rows.append((f"{method} ({backbone})", knn_of(encoder, train, test), clock.images_per_second(), seconds))
        print(f"{method}: kNN {rows[-1][1]:.4f}, {rows[-1][2]:.0f} images/s, {seconds:.0f} s", flush=True)

    command = "python benchmarks/ssl_table.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    lines = [f"CIFAR-10, {len(train)} training images ({Path(a.train).name}), kNN on {len(test)} test images; "
             f"backbone {a.backbone} unless named, {a.epochs} epochs, batch {a.batch_size}, seed {a.seed}; {hardware()}.",
             f"Command: `{command.strip()}`", "",
             "| method | kNN top-1 | images/s | training wall time |", "| --- | --- | --- | --- |"]
    for name, knn, speed, seconds in rows:
        lines.append(f"| {name} | {knn:.4f} | {'' if speed != speed else f'{speed:.0f}'} | "
                     f"{'' if not seconds else f'{seconds:.0f} s'} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if a.out:
        Path(a.out).write_text(table)


if __name__ == "__main__":
    main()
