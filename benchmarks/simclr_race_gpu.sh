#!/usr/bin/env bash
# The SimCLR race (benchmarks/simclr_race.py) in one call on a GPU machine: install, check, measure.
# Prepare here, then carry `.whl` and `.devdata`:
#   pip download --no-deps -d .whl lightly webdataset braceexpand umap-learn pynndescent faiss-cpu
#   mkdir -p .devdata && cp -r ../shared/data/cifar10 .devdata/
# and run from the repo root:  EPOCHS=30 bash benchmarks/simclr_race_gpu.sh
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src REPRLEARN_CACHE=/tmp/rl-cache PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, lightly; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightly', lightly.__version__)"
# the race on CPU at toy size first (the test CI runs), then the real one
python3 -m pytest -q -x -p no:cacheprovider tests/test_simclr_race.py 2>&1 | tail -2
python3 benchmarks/simclr_race.py --data '.devdata/cifar10/train-*.tar.gz' --eval-data .devdata/cifar10/test-000000.tar.gz \
    --epochs "${EPOCHS:-30}" --batch-size 512 --precision bf16-mixed --out /tmp/race \
    --json "$OUT/simclr_race.json" --results "$OUT/simclr_race.md" 2>&1 | tee "$OUT/simclr_race.log" | tail -12
