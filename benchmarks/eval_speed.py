"""Time `reprlearn eval` of a short CIFAR-10 run before and after the torch probes, side by side.

    python benchmarks/eval_speed.py [--run DIR] [--before COMMIT] [--linear-c C]
    python benchmarks/eval_speed.py --run DIR --stages torch [--linear-c C]   # only the after

Trains the run first when DIR has no checkpoint (SimCLR, small CNN, one epoch on one shard:
``TRAIN`` below), then runs `reprlearn eval DIR` twice, one after the other: with the library
as it was at ``--before`` (sklearn probes, NN-descent UMAP) and with this tree (timed by
stage, with an empty baseline cache), then once more, when the baselines' scores are reused
(evaluate/baseline_cache.py). Prints the tables, the ratios of the times and every figure's difference.
Probes fit on the shard's 10,000 training images (eval_max_train 20,000) and score on the
10,000 test images, for the encoder and three baselines, plus UMAP of the test features.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
TRAIN = ["train", "simclr", "--data", str(DATA / "train-000000.tar.gz"), "--eval-data", str(DATA / "test-000000.tar.gz"),
         "--epochs", "1", "--no-eval", "--backbone", "cnn", "--no-progress"]


def timed(module, name: str, clock: dict):
    """Wrap ``module.name`` so its calls add their seconds to ``clock[name]``."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            clock[name] += time.perf_counter() - start

    setattr(module, name, wrapper)
    return inner


def evaluate_once(run: Path, backend: str, linear_c: float | None = None) -> tuple[dict, dict]:
    from reprlearn import api
    from reprlearn.evaluate import figures, harness

    clock: dict = defaultdict(float)
    stages = [(harness, n) for n in ("extract", "knn_top1", "linear_probe", "linear_top1", "few_label",
                                     "cluster_scores", "pca_project")] + [(figures, "umap_plot")]
    originals = [(m, n, timed(m, n, clock)) for m, n in stages]
    try:
        start = time.perf_counter()
        result = api.evaluate_run(run, probe_backend=backend, linear_c=linear_c)
        clock["total"] = time.perf_counter() - start
    finally:
        for m, n, f in originals:
            setattr(m, n, f)
    (run / f"eval-{backend}.json").write_text(json.dumps(result, indent=2))
    return result, dict(clock)


BEFORE = "3476fd3"  # the commit before the torch probes: its `reprlearn eval` is the "before"


def timed_run(cmd: list[str], src: Path, env: dict | None = None) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of a command run with the library at ``src``. CPU time (user +
    system of the child) is the steadier figure on a machine shared with other work."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(src), **(env or {})})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/eval-speed", help="run directory (trained first when it has no checkpoint)")
    p.add_argument("--before", default=BEFORE, help="git commit whose `reprlearn eval` is timed as the before")
    p.add_argument("--linear-c", type=float, help="the after's linear probe at this fixed C (default: its sweep)")
    p.add_argument("--stages", metavar="BACKEND", help="only this tree's eval with this probe backend, by stage")
    a = p.parse_args()
    run = Path(a.run)
    if a.stages:
        from reprlearn.evaluate import format_table

        result, clock = evaluate_once(run, a.stages, a.linear_c)
        print(format_table(result))
        print("seconds by stage (calls summed; few_label holds its own kNN and linear fits; "
              "cluster_scores is k-means):")
        for name, sec in sorted(clock.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<16s}{sec:8.1f}")
        return 0
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", str(repo), "archive", a.before, "src"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        if not (run / "checkpoints" / "last.ckpt").is_file():
            # trained by the old code: the new one reads its config (new options take their
            # defaults), while the old one would refuse the options added since
            cmd = [sys.executable, "-m", "reprlearn.cli", *TRAIN, "--out", str(run)]
            print("training:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(Path(old) / "src")})
        print(f"== before ({a.before}): reprlearn eval {run}", flush=True)
        t_old = timed_run([sys.executable, "-m", "reprlearn.cli", "eval", str(run)], Path(old) / "src")
        old_result = json.loads((run / "eval.json").read_text())
        (run / "eval-before.json").write_text(json.dumps(old_result, indent=2))
    print("== after (this tree): the same, timed by stage, with no stored baseline scores", flush=True)
    c = ["--linear-c", str(a.linear_c)] if a.linear_c else []
    with tempfile.TemporaryDirectory() as fresh:
        # an empty baseline cache; the decoded shards and the shards' sample counts stay the warm
        # ones, as for the before (which decodes from the same cache and counts no shards)
        from reprlearn.data.cache import cache_dir

        if (cache_dir() / "decoded").is_dir():
            os.symlink(cache_dir() / "decoded", Path(fresh) / "decoded")
        if (cache_dir() / "shard-counts.json").is_file():
            shutil.copy(cache_dir() / "shard-counts.json", Path(fresh) / "shard-counts.json")
        env = {"REPRLEARN_CACHE": fresh}
        after = [sys.executable, __file__, "--run", str(run), "--stages", "torch", *c]
        t_new = timed_run(after, repo / "src", env)
        new_result = json.loads((run / "eval-torch.json").read_text())
        print("== after, evaluated again: the baselines' scores reused", flush=True)
        t_warm = timed_run(after, repo / "src", env)
        warm_result = json.loads((run / "eval-torch.json").read_text())
    same = {k: v for k, v in warm_result.items() if k != "baselines_reused"} == new_result
    print(f"\nwhole `reprlearn eval`: before {t_old[0]:.1f} s wall / {t_old[1]:.1f} s CPU, after {t_new[0]:.1f} s "
          f"wall / {t_new[1]:.1f} s CPU: {t_old[0] / t_new[0]:.2f}x faster by the clock, "
          f"{t_old[1] / t_new[1]:.2f}x by CPU time")
    print(f"evaluated again (baselines reused: {', '.join(warm_result.get('baselines_reused', []))}): "
          f"{t_warm[0]:.1f} s wall / {t_warm[1]:.1f} s CPU: {t_old[0] / t_warm[0]:.2f}x by the clock, "
          f"{t_old[1] / t_warm[1]:.2f}x by CPU time; eval.json identical to the first after: {same}")
    print("\nmetric".ljust(19) + "column".ljust(14) + "before".rjust(9) + "after".rjust(9) + "  diff (points)")
    for column in [None, *old_result["baselines"]]:
        ro = old_result if column is None else old_result["baselines"][column]
        rn = new_result if column is None else new_result["baselines"][column]
        for m in (m for m in ro if isinstance(ro[m], float) and m in rn):
            print(f"{m:<18s}{column or 'encoder':<14s}{ro[m]:9.4f}{rn[m]:9.4f}{100 * (rn[m] - ro[m]):+9.2f}")
    print(f"\nhardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, cuda {torch.cuda.is_available()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
