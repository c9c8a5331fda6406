#!/usr/bin/env bash
# One call on a lent GPU machine: install, check, measure. Run from the repo root with
# `.whl` (webdataset + braceexpand wheels) and `.devdata/cifar10` (the CIFAR-10 shards) carried.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src REPRLEARN_CACHE=/tmp/rl-cache PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
# correctness on the GPU first: losses, views and backbones
python3 -m pytest -q -x -p no:cacheprovider tests/test_losses.py tests/test_augment.py tests/test_nets.py 2>&1 | tail -2
EPOCHS=${EPOCHS:-20}
python3 benchmarks/train_cifar.py --method simclr --data '.devdata/cifar10/train-*.tar.gz' \
    --eval-data .devdata/cifar10/test-000000.tar.gz --backbone resnet18 --batch-size 512 \
    --precision bf16-mixed --epochs "$EPOCHS" --out /tmp/bench-simclr --json "$OUT/simclr_cifar.json" 2>&1 \
    | grep -v Warning | tee "$OUT/simclr_cifar.log" | tail -25
