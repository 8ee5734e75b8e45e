#!/usr/bin/env bash
# Trains each model for 2 epochs with nothing but --model and the data flags, so with its
# own training defaults, and prints its validation accuracy and wall time (the table in
# docs/RECIPES.md).
#
#   scripts/model_defaults_table.sh DATA_DIR [OUT_DIR]      (MODELS="baseline_cnn ...")
set -euo pipefail
data_dir=${1:?usage: $0 DATA_DIR [OUT_DIR]}
out=${2:-runs/defaults}
mkdir -p "$out"
data=(--dataset=folder "--data_dir=$data_dir")
# Decode and cache the folder once, so that no row pays for it.
python train.py "${data[@]}" --model=baseline_cnn --train_steps=1 "--model_dir=$out/warmup" \
  > "$out/warmup.log" 2>&1
for model in ${MODELS:-baseline_cnn baseline_cnn_aux improved_cnn resnet8 resnet20 resnet56 airbench}; do
  began=$(date +%s)
  if python train.py "${data[@]}" "--model=$model" --epochs=2 "--model_dir=$out/$model" \
       > "$out/$model.log" 2>&1; then
    accuracy=$(grep "eval at step" "$out/$model.log" | tail -1 | grep -o "accuracy [0-9.]*" | cut -d' ' -f2)
    echo "$model accuracy=$accuracy seconds=$(( $(date +%s) - began ))"
  else
    echo "$model failed: $(grep '^error' "$out/$model.log" | tail -1) (see $out/$model.log)"
  fi
done
