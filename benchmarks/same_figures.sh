#!/usr/bin/env bash
# Does a refactor keep every figure? Trains the same methods, same seed, one thread, on two
# commits (git worktrees under /tmp) and compares every number of their eval.json files.
#   bash benchmarks/same_figures.sh OLD_COMMIT [NEW_COMMIT]     (default NEW: HEAD)
# Example: b693d4a against the package split into its layers gave identical eval.json files.
set -euo pipefail
old=$1; new=${2:-HEAD}
export OMP_NUM_THREADS=1 MKL_CBWR=AUTO,STRICT
out=$(mktemp -d)
for tree in old new; do
  git worktree add -q --detach "$out/$tree" "${!tree}"
  for spec in "simclr --epochs 30" "cvae --epochs 30" "byol --epochs 20" "clip --epochs 5"; do
    set -- $spec
    (cd "$out/$tree" && PYTHONPATH="$out/$tree/src" python -m reprlearn.cli train $spec --out "$out/$tree-$1" \
       --no-progress > "$out/$tree-$1.log" 2>&1)
  done
done
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def flat(d, p=""):
    r = {}
    for k, v in d.items():
        if isinstance(v, dict):
            r.update(flat(v, p + k + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            r[p + k] = v
    return r
for m in ("simclr", "cvae", "byol", "clip"):
    a, b = (flat(json.load(open(f"{out}/{t}-{m}/eval.json"))) for t in ("old", "new"))
    diff = [k for k in a if a[k] != b.get(k)]
    print(f"{m}: {len(a)} numbers, " + ("identical" if not diff else f"{len(diff)} differ: {diff[:5]}"))
PY
git worktree remove --force "$out/old"; git worktree remove --force "$out/new"
