"""Run an experiment over seeds; write table.csv, chart.png and summary.md; apply the verdict rule.

The verdict rule, one for every experiment, stated before anything is run: each seed s gives
an effect e_s, signed so that e_s > 0 supports the claim, and the experiment names the margin
δ the claim needs (0 unless said: "better" means better at all). With the mean m and the
sample standard deviation sd (ddof 1) of e over the seeds,

    held          when m - δ > 0 and m - δ > sd      (the effect clears δ by more than its spread)
    did not hold  otherwise
    undecided     with a single seed (no spread to compare with)

With 3 seeds, m - δ > sd is a one-sided t of sqrt(3) = 1.73 (p of about 0.11): a lenient bar,
so "held" here means "measured, consistent over seeds", not "significant".
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import fail
from ..files import atomic_write
from .base import EXPERIMENTS, Experiment

HELD, NOT_HELD, UNDECIDED = "held", "did not hold", "undecided (one seed: no spread)"


def verdict(effects: list[float], margin: float = 0.0) -> tuple[str, float, float]:
    """(verdict, mean, sd) of per-seed effects under the rule above; sd is nan for one seed."""
    e = np.asarray(effects, dtype=np.float64)
    if e.size == 0:
        raise ValueError("no effects to judge")
    mean = float(e.mean())
    if e.size == 1:
        return UNDECIDED, mean, float("nan")
    sd = float(e.std(ddof=1))
    return (HELD if mean - margin > 0 and mean - margin > sd else NOT_HELD), mean, sd


def run_experiment(name: str, out: str | Path, data: str | None = None, seeds: int = 3,
                   progress: bool = True) -> dict:
    """Run experiment ``name`` for ``seeds`` seeds (0 .. seeds-1) into ``out``; returns the result
    (also ``out/result.json``). A seed already finished in ``out`` is read back, not rerun."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise fail(f"--seeds must be a whole number of at least 1, got {seeds!r}")
    exp: Experiment = EXPERIMENTS.get(name)()
    data = data or exp.data
    exp.check_data(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed, start = [], time.perf_counter()
    for seed in range(seeds):
        cache = out / "work" / f"seed{seed}" / "arms.json"
        if cache.is_file() and json.loads(cache.read_text()).get("data") == data:
            record = json.loads(cache.read_text())
        else:
            _say(progress, f"experiment {name}: seed {seed + 1} of {seeds} on {data}")
            t = time.perf_counter()
            cache.parent.mkdir(parents=True, exist_ok=True)
            arms = exp.arms(data, seed, cache.parent)
            record = {"data": data, "seed": seed, "arms": arms, "seconds": time.perf_counter() - t}
            with atomic_write(cache, "w") as f:
                f.write(json.dumps(record, indent=2))
        record["effect"] = float(exp.effect(record["arms"]))
        per_seed.append(record)
    effects = [r["effect"] for r in per_seed]
    outcome, mean, sd = verdict(effects, exp.margin)
    result = {"experiment": name, "claim": exp.claim, "protocol": exp.protocol, "data": data, "seeds": seeds,
              "effect": exp.effect_text, "margin": exp.margin, "effects": effects, "effect_mean": mean,
              "effect_sd": sd, "verdict": outcome, "metric": exp.metric,
              "seconds": sum(r["seconds"] for r in per_seed), "wall_seconds": time.perf_counter() - start}
    write_table(per_seed, out / "table.csv")
    write_chart(exp, per_seed, result, out / "chart.png")
    (out / "summary.md").write_text(summary(exp, per_seed, result))
    with atomic_write(out / "result.json", "w") as f:
        f.write(json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------- the outputs


def _columns(per_seed: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in per_seed:
        for metrics in r["arms"].values():
            cols += [k for k in metrics if k not in cols]
    return cols


def arm_stats(per_seed: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """{arm: {metric: (mean, sd)}} over seeds (sd nan for one seed)."""
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    for arm in per_seed[0]["arms"]:
        stats[arm] = {}
        for col in _columns(per_seed):
            v = np.array([r["arms"][arm].get(col, np.nan) for r in per_seed], dtype=np.float64)
            stats[arm][col] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"))
    return stats


def write_table(per_seed: list[dict], path: Path) -> None:
    """One row per (seed, arm) with every metric, then the seed's effect on each row."""
    cols = _columns(per_seed)
    with atomic_write(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["seed", "arm", *cols, "effect"])
        for r in per_seed:
            for arm, metrics in r["arms"].items():
                w.writerow([r["seed"], arm, *[_num(metrics.get(c)) for c in cols], _num(r["effect"])])


def write_chart(exp: Experiment, per_seed: list[dict], result: dict, path: Path) -> None:
    """Bars: each arm's mean ``exp.metric`` with its seed sd; dots: the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(per_seed[0]["arms"])
    values = np.array([[r["arms"][a][exp.metric] for a in arms] for r in per_seed])
    fig, ax = plt.subplots(figsize=(1.2 * len(arms) + 2.5, 3.6))
    x = np.arange(len(arms))
    ax.bar(x, values.mean(0), yerr=values.std(0, ddof=1) if len(values) > 1 else None, capsize=4,
           color="#8fb3d9", edgecolor="#2f5d8a")
    for row in values:
        ax.scatter(x, row, color="#1b2a3a", s=12, zorder=3)
    lo, hi = values.min(), values.max()
    pad = 0.15 * (hi - lo) + 1e-3
    ax.set_ylim(lo - pad if lo - pad > 0 or lo < 0 else 0, hi + pad)
    ax.set_xticks(x, arms, rotation=20 if len(arms) > 4 else 0)
    ax.set_ylabel(exp.metric)
    sd = "" if math.isnan(result["effect_sd"]) else f" ± {result['effect_sd']:.3g}"
    ax.set_title(f"{exp.name} on {result['data']}: effect {result['effect_mean']:+.3g}{sd} → {result['verdict']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(exp: Experiment, per_seed: list[dict], result: dict) -> str:
    stats = arm_stats(per_seed)
    cols = _columns(per_seed)
    sd = "n/a" if math.isnan(result["effect_sd"]) else f"{result['effect_sd']:.4g}"
    lines = [f"# {exp.name}", "", f"**Claim.** {exp.claim}", "", f"**Protocol.** {exp.protocol} "
             f"Data: `{result['data']}`; seeds 0..{result['seeds'] - 1}.", "",
             f"**Effect.** {exp.effect_text} (positive supports the claim; margin δ = {exp.margin:g}).", "",
             "**Verdict rule** (every experiment): held when mean − δ > 0 and mean − δ > the seeds' sd; "
             "undecided with one seed.", "",
             "| arm | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for arm, metric_stats in stats.items():
        lines.append(f"| {arm} | " + " | ".join(_pm(*metric_stats[c]) for c in cols) + " |")
    lines += ["", "Effect per seed: " + ", ".join(f"{e:+.4g}" for e in result["effects"]), "",
              f"**Measured effect: {result['effect_mean']:+.4g} ± {sd} (mean ± sd over {result['seeds']} seeds) "
              f"→ {result['verdict']}.**", "",
              f"Time: {result['seconds']:.0f} s of protocol ({result['seconds'] / 60:.1f} min).", ""]
    return "\n".join(lines)


def experiment_list() -> list[dict]:
    """Each registered experiment's name, claim, default data, accepted data and measured cost."""
    return [{"name": n, "claim": c.claim, "data": c.data, "data_choices": c.data_choices, "cost": c.cost}
            for n, c in ((n, EXPERIMENTS.get(n)) for n in EXPERIMENTS.names())]


def _pm(mean: float, sd: float) -> str:
    if math.isnan(mean):  # a metric this arm does not have
        return "—"
    return f"{mean:.4g}" if math.isnan(sd) else f"{mean:.4g} ± {sd:.2g}"


def _num(v) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)
