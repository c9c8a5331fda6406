"""The two data paths side by side: peak resident memory of one SimCLR epoch on 1x and Kx the
same images, and training images/s of each path on the same data.

    python benchmarks/stream_memory.py --shard ../shared/data/cifar10/train-000000.tar.gz --times 1 8

Each run is a fresh `reprlearn train` process (no evaluation); its memory is the peak of the sum
of the resident set sizes of its whole process tree (the training process and its DataLoader
workers), sampled every 50 ms from /proc. Shared pages of forked workers are counted once per
process, so the streamed figures are an upper bound. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and all its descendants now."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        pid = int(entry)
        ppid = int(re.search(r"PPid:\s+(\d+)", status).group(1))
        m = re.search(r"VmRSS:\s+(\d+) kB", status)
        rss[pid] = int(m.group(1)) * 1024 if m else 0
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run(args: list[str]) -> tuple[float, float, float | None]:
    """(peak tree RSS in MB, wall seconds, images/s the run reported)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "reprlearn.cli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(args)}\n{out[-2000:]}")
    speed = re.search(r"(\d+) images/s", out)
    return peak / 1e6, time.perf_counter() - start, float(speed.group(1)) if speed else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shard", default="../shared/data/cifar10/train-000000.tar.gz")
    p.add_argument("--times", type=int, nargs="+", default=[1, 8], help="copies of the shard's images")
    p.add_argument("--backbone", default="cnn")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loaders", nargs="+", default=["memory", "stream"])
    p.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps (smoke test)")
    a = p.parse_args()
    shard = str(Path(a.shard).resolve())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"  # a cold cache: the in-memory path decodes what it holds
        os.environ["REPRLEARN_CACHE"] = str(cache)
        for times in a.times:
            data = ",".join([shard] * times)
            for loader in a.loaders:
                budget = ["--max-steps", str(a.max_steps)] if a.max_steps else ["--epochs", "1"]
                peak, wall, speed = run(["simclr", "--data", data, "--loader", loader, "--workers", str(a.workers),
                                         "--backbone", a.backbone, "--batch-size", str(a.batch_size), *budget,
                                         "--warmup-epochs", "0", "--no-eval", "--no-progress",
                                         "--out", str(Path(tmp) / f"{loader}-{times}")])
                rows.append((loader, times, peak, wall, speed))
                print(f"{loader:7s} {times}x: peak RSS {peak:.0f} MB, {wall:.0f} s, {speed} images/s", flush=True)
    print(f"\n| path | data | peak RSS (MB) | wall (s) | images/s |\n| --- | --- | ---: | ---: | ---: |")
    for loader, times, peak, wall, speed in rows:
        print(f"| {loader} | {times}x | {peak:.0f} | {wall:.0f} | {speed or '-'} |")
    for loader in a.loaders:
        peaks = {t: pk for ld, t, pk, _, _ in rows if ld == loader}
        if len(peaks) > 1:
            lo, hi = min(peaks), max(peaks)
            print(f"{loader}: peak RSS at {hi}x / at {lo}x = {peaks[hi] / peaks[lo]:.2f}")


if __name__ == "__main__":
    main()
