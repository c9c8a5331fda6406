#!/usr/bin/env bash
# One call on a GPU machine: install, check, measure. Run from the repo root with `.whl`
# (webdataset, braceexpand, umap-learn, pynndescent wheels) and `.devdata/cifar10` (the CIFAR-10
# shards) carried. RUNS picks the measurements (default: simclr mae vae; eval times `reprlearn eval`).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src REPRLEARN_CACHE=/tmp/rl-cache PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
# correctness on the GPU first: losses, views, backbones, autoencoder and VAE maths
python3 -m pytest -q -x -p no:cacheprovider tests/test_losses.py tests/test_augment.py tests/test_nets.py \
    tests/methods/test_vaes.py tests/methods/test_mae.py -k "not train and not smoke" 2>&1 | tail -2
DATA=(--data '.devdata/cifar10/train-*.tar.gz' --eval-data .devdata/cifar10/test-000000.tar.gz)
bench() {  # name, then train_cifar.py arguments
    local name=$1; shift
    timeout "${LIMIT:-240}" python3 benchmarks/train_cifar.py "${DATA[@]}" --out "/tmp/bench-$name" \
        --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1 || echo "$name failed or timed out"
    tail -1 "$OUT/$name.log"
}
for run in ${RUNS:-simclr mae vae}; do
    case $run in
        simclr) bench simclr --method simclr --backbone resnet18 --batch-size 512 --precision bf16-mixed --epochs "${EPOCHS:-20}" ;;
        mae) bench mae --method mae --backbone vit-tiny --batch-size 512 --precision bf16-mixed --epochs "${MAE_EPOCHS:-30}" --linear
             python3 -c "from reprlearn.api import reconstruct_images as r; r('/tmp/bench-mae', '.devdata/cifar10/test-000000.tar.gz', '$OUT/mae_reconstructions.png')" 2>&1 | tail -1 ;;
        vae) bench vae --method vae --backbone cnn --batch-size 512 --precision 32 --epochs "${VAE_EPOCHS:-30}" --linear --eval
             cp /tmp/bench-vae/reconstructions.png /tmp/bench-vae/samples.png "$OUT/" 2>/dev/null || true ;;
        eval)  # `reprlearn eval` of eval_speed.py's run (one epoch of simclr on one shard) on the GPU
             python3 -m reprlearn.cli train simclr --data .devdata/cifar10/train-000000.tar.gz \
                 --eval-data .devdata/cifar10/test-000000.tar.gz --epochs 1 --no-eval --backbone cnn --no-progress \
                 --out /tmp/bench-eval > "$OUT/eval-train.log" 2>&1 || echo "eval's training failed"
             for pass in first again; do  # the second reuses the baselines' stored scores
                 TIMEFORMAT="reprlearn eval ($pass): %R s wall, %U s user"
                 time (python3 -m reprlearn.cli eval /tmp/bench-eval > "$OUT/eval-$pass.log" 2>&1 || echo "eval ($pass) failed")
             done
             cp /tmp/bench-eval/eval.json "$OUT/eval.json" 2>/dev/null || true ;;
    esac
done
