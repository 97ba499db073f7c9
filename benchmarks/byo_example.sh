#!/usr/bin/env bash
# Reproduces the README's "Your own model and data" figures: the example CNN and
# dataset of examples/byo/model_and_data.py through train (DP-SGD + secagg, three
# seeds, default and smaller learning rates), attack invert, attack poison and
# audit empirical. Usage: bash benchmarks/byo_example.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/byo}
B=examples/byo/model_and_data.py
S=".venv/bin/securefl"
for lr in default 1 0.5; do
  for seed in 0 1 2; do
    extra=(); [ "$lr" != default ] && extra=(--lr "$lr")
    $S train --model $B:relu_cnn --dataset $B:digits_images --clients 10 --rounds 30 --dp sample --epsilon 3 \
      --protect secagg "${extra[@]}" --seed "$seed" --out "$OUT/train-lr$lr-s$seed" --overwrite --no-progress
  done
done
$S attack invert --model $B:relu_cnn --dataset $B:digits_images --images 10 --out "$OUT/invert-dlg"
$S attack invert --model $B:relu_cnn --dataset $B:digits_images --images 10 --method ig --out "$OUT/invert-ig"
$S attack poison --model $B:relu_cnn --dataset $B:digits_images --attack ipm --attack-arg epsilon=100 \
  --aggregator median --byzantine 2 --clients 10 --rounds 20 --partition iid --out "$OUT/poison"
$S audit empirical --model $B:relu_cnn --dataset $B:digits_images --dp sample --epsilon 3 --clients 10 --rounds 30 \
  --out "$OUT/audit"
