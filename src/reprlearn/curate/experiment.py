"""The DataComp protocol end to end (``reprlearn curate experiment``): score a pool, build each
strategy's filtered subset, train the same clip configuration on each for the same number of
samples seen, and evaluate every run on the same clean held-out pairs.

A subset smaller than the budget is repeated by epochs (DataComp resamples); the learning-rate
schedule is the same in steps for every subset (no warm-up counted in epochs, which would
depend on the subset's size: ``warmup_epochs`` is 0 unless given). The scoring model is
``model`` (any clip/siglip run), or one trained first on the clean ``seed_data`` with the same
budget (the data-filtering-network idea: a small clean seed set filters a larger noisy pool).

Evaluations (clean held-out pairs): zero-shot top-1 (mean over the held-out tasks, where the
pairs have any), image->text and text->image Recall@1 and @5, and their average (DataComp's
table averages its evaluations the same way).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from ..errors import fail
from ..files import atomic_write

STRATEGIES = {"none": "none", "clip-score-30": "clip-score:top=0.3", "clip-score-45": "clip-score:top=0.45",
              "image-based": "image-based", "image-based+clip-score-30": "image-based&clip-score:top=0.3"}
DEFAULT_POOL = "scenes:corrupt=0.5"
SCENES_SEED = "scenes:n=1000,seed=1"  # clean, and drawn apart from the pool (seed 0)
# sized for 2 CPU cores: six runs of this budget and the scoring fit in 10 minutes
TRAIN = {"batch_size": 128, "lr": 2e-3, "warmup_epochs": 0, "eval": False, "progress": False}
DEFAULT_SAMPLES_SEEN = 12_000
EVALS = ("zeroshot_top1", "i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5")


def train_clip(run_dir: Path, options: dict):
    """(trained method, run data) of one clip run with ``options``; an existing run is loaded."""
    from ..data.run_data import load_run_data
    from ..engine import train_run
    from ..runs import CHECKPOINT, load_method, resolve_config

    if (run_dir / "checkpoints" / CHECKPOINT).is_file():
        method, cfg, _ = load_method(run_dir)
        return method, load_run_data(cfg, True)
    cfg, method_cfg = resolve_config("clip", options)
    method, _, data, _ = train_run(cfg, method_cfg, run_dir, None, [])
    return method, data


def evaluate_pairs(method, pairs) -> dict:
    from ..evaluate.image_text_harness import image_text_metrics

    m = image_text_metrics(method, pairs, "cpu")
    row = {k: float(m[k]) for k in EVALS if k in m}
    if not row:
        raise fail(f"{pairs.name} gives no zero-shot or retrieval evaluation; give --eval with captioned pairs")
    row["average"] = float(np.mean(list(row.values())))
    return row


def run_experiment(out: str | Path, pool: str = DEFAULT_POOL, eval_spec: str | None = None,
                   samples_seen: int = DEFAULT_SAMPLES_SEEN, model: str | Path | None = None,
                   seed_data: str | None = None, strategies: dict[str, str] | None = None,
                   target: str | None = None, clusters: int = 20, train_options: dict | None = None,
                   seed: int = 0, corrupt: float | None = None, seed_size: int = 0,
                   progress: bool = True) -> list[dict]:
    """Run the protocol into ``out`` and return the table's rows (also ``table.csv``, ``table.png``).
    A rerun reuses the scores, subsets and runs already finished.

    ``corrupt``: first make a noisy pool of ``pool`` (that share of its images given another image's
    captions, noisy.py), holding ``seed_size`` clean pairs apart as the scorer's seed data."""
    from .noisy import make_noisy_pool
    from .scoring import score_pool
    from .subsets import select, write_kept, write_kept_shards

    if samples_seen < 1 or clusters < 1:
        raise fail(f"--samples-seen and --clusters must be at least 1, got {samples_seen} and {clusters}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if corrupt is not None:
        if pool.partition(":")[0] == "scenes":
            raise fail("--corrupt is for real caption sources; scenes corrupts itself (scenes:corrupt=0.5)")
        pool, held_seed = make_noisy_pool(pool, corrupt, out, seed_size, seed)
        seed_data = seed_data or held_seed
    is_scenes = pool.partition(":")[0] == "scenes"
    eval_spec = eval_spec or (pool if is_scenes else None)
    if eval_spec is None:
        raise fail(f"give --eval SOURCE: held-out pairs to evaluate on ({pool} is not scenes, whose test split "
                   "is the default)")
    options = {**TRAIN, **(train_options or {}), "samples_seen": samples_seen, "seed": seed}
    times: dict[str, float] = {}
    start = time.perf_counter()
    if model is None:
        seed_data = seed_data or (SCENES_SEED if is_scenes else None)
        if seed_data is None:
            raise fail("give --model RUN (a clip/siglip run to score with) or --seed-data SOURCE (clean pairs to "
                       "train one on)")
        _say(progress, f"training the scorer on {seed_data} ({samples_seen} samples seen)")
        train_clip(out / "scorer", {**options, "data": seed_data, "eval_data": eval_spec})
        model = out / "scorer"
    times["scorer"] = time.perf_counter() - start
    t = time.perf_counter()
    summary = score_pool(pool, model, out / "scores", progress=progress)
    times["scoring"] = time.perf_counter() - t
    _say(progress, f"scored {summary['pairs']} pairs ({summary['skipped']} unreadable skipped)")
    rules = {**STRATEGIES, **(strategies or {})}
    rows = []
    for name, rule in rules.items():
        t = time.perf_counter()
        table, keep, manifest = select(out / "scores", [rule], target or eval_spec, seed, clusters)
        write_kept(table, keep, out / "subsets" / f"{name}.parquet")
        row = {"strategy": name, "rule": rule, "size": int(keep.sum())}
        if "corrupted" in table.column_names:
            corrupted = table["corrupted"].to_numpy()
            row["corrupted_kept"] = float((corrupted & keep).sum() / max(corrupted.sum(), 1))
            row["corrupted_share"] = float(corrupted[keep].mean()) if keep.any() else 0.0
        result_file = out / "runs" / name / "curate.json"
        if result_file.is_file():
            row.update(json.loads(result_file.read_text()))
        else:
            shards = out / "subsets" / name
            if not (shards / "train-000000.tar").is_file():
                write_kept_shards(manifest, set(table.filter(keep)["key"].to_pylist()), shards)
            _say(progress, f"training clip on {name} ({row['size']} pairs, {samples_seen} samples seen)")
            method, data = train_clip(out / "runs" / name, {**options, "data": str(shards), "eval_data": eval_spec})
            row.update(evaluate_pairs(method, data.eval_pairs))
            row["seconds"] = time.perf_counter() - t
            with atomic_write(result_file, "w") as f:
                json.dump({k: v for k, v in row.items() if k in (*EVALS, "average", "seconds")}, f)
        rows.append(row)
    write_table(rows, out / "table.csv")
    bar_chart(rows, out / "table.png", f"{pool}: {samples_seen} samples seen")
    times["total"] = time.perf_counter() - start
    with atomic_write(out / "times.json", "w") as f:
        json.dump(times, f, indent=1)
    return rows


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def columns(rows: list[dict]) -> list[str]:
    evals = [k for k in EVALS if any(k in r for r in rows)]
    extra = [k for k in ("corrupted_kept", "corrupted_share") if any(k in r for r in rows)]
    return ["strategy", "size", *extra, *evals, "average"]


def write_table(rows: list[dict], path: Path) -> Path:
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, columns(rows), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def format_rows(rows: list[dict]) -> str:
    """The table in DataComp's shape: strategy, subset size, each evaluation, average."""
    cols = columns(rows)
    width = max(len("strategy"), *(len(r["strategy"]) for r in rows))
    head = f"{'strategy':{width}s}" + "".join(f" {c:>14s}" for c in cols[1:])
    lines = [head]
    for r in rows:
        cells = [f" {r[c]:14.3f}" if isinstance(r.get(c), float) else f" {r.get(c, ''):>14}" for c in cols[1:]]
        lines.append(f"{r['strategy']:{width}s}" + "".join(cells))
    return "\n".join(lines)


def bar_chart(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [c for c in columns(rows) if c in (*EVALS, "average")]
    fig, ax = plt.subplots(figsize=(1.6 * len(evals) + 2, 3.6))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar(np.arange(len(evals)) + i * width, [r.get(e, 0) for e in evals], width,
               label=f"{r['strategy']} ({r['size']})")
    ax.set_xticks(np.arange(len(evals)) + 0.4 - width / 2, evals, fontsize=8)
    ax.set_ylabel("score on clean held-out pairs")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
