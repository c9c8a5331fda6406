"""The README's table of claims from `reprlearn experiment` output folders.

    python benchmarks/experiments_table.py /tmp/experiments

Reads DIR/NAME/result.json for every registered experiment; one Markdown row each (claim,
measured effect mean ± sd over its seeds, verdict, command, time); an experiment with no
result.json under DIR is listed as not run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from reprlearn.experiments import EXPERIMENTS


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "experiments")
    print("| experiment | claim | effect (positive supports the claim) | measured: mean ± sd (seeds) | verdict here "
          "| command | time |")
    print("|---|---|---|---|---|---|---|")
    for name in EXPERIMENTS.names():
        exp = EXPERIMENTS.get(name)
        path = root / name / "result.json"
        margin = f"; needs > {exp.margin:g}" if exp.margin else ""
        if not path.is_file():
            print(f"| `{name}` | {exp.claim} | {exp.effect_text}{margin} | — | not run "
                  f"| `reprlearn experiment {name} --out DIR` | {exp.cost} |")
            continue
        r = json.loads(path.read_text())
        print(f"| `{name}` | {exp.claim} | {exp.effect_text}{margin} | {r['effect_mean']:+.3f} ± {r['effect_sd']:.3f} "
              f"({r['seeds']}) | **{r['verdict']}** | `reprlearn experiment {name} --data {r['data']} --seeds "
              f"{r['seeds']} --out DIR` | {r['seconds'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
