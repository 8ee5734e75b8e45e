#!/usr/bin/env bash
# Trains the fast recipe and one variant per piece left out, at the same epoch budget,
# and prints each run's final validation accuracy (the table in docs/RECIPES.md).
#
#   scripts/recipe_ablation.sh DATA_DIR [EPOCHS] [OUT_DIR]
#
# TTA needs no retraining: it is measured on the full run's model with
# scripts/evaluate.py --tta (see docs/RECIPES.md).
set -euo pipefail
data_dir=${1:?usage: $0 DATA_DIR [EPOCHS] [OUT_DIR]}
epochs=${2:-4}
out=${3:-runs/ablation}
mkdir -p "$out"
common=(--flagfile=configs/cifar10_fast.flags --dataset=folder "--data_dir=$data_dir"
        --val_split=0.1 "--epochs=$epochs" --eval_every=100000 --log_every=44)
declare -A variants=(
  [full]=""
  [no_whitening]="--model=airbench_nowhiten --param_rules=batchnorm(lr_scale=64)"
  [no_identity_init]="--model=airbench_noidentity"
  [no_bn_lr_scale]="--param_rules=whitening_bias(epochs=3)"
  [no_label_smoothing]="--loss=cross_entropy"
  [random_flip]="--augment=crop(padding=2),flip"
  [no_lookahead]="--lookahead_every=0"
  [ema_not_lookahead]="--lookahead_every=0 --ema_decay=0.98"
  [whiten_bias_always]="--param_rules=batchnorm(lr_scale=64)"
)
all="full no_whitening no_identity_init no_bn_lr_scale no_label_smoothing random_flip"
all+=" no_lookahead ema_not_lookahead whiten_bias_always"
for name in ${VARIANTS:-$all}; do
  if [ ! -f "$out/$name/model.keras" ]; then
    python train.py "${common[@]}" ${variants[$name]} "--model_dir=$out/$name" \
      > "$out.$name.log" 2>&1 || { echo "$name failed: see $out.$name.log"; continue; }
  fi
  accuracy=$(grep -o "eval at step [0-9]*: [0-9]* validation examples | loss [0-9.]* accuracy [0-9.]*" \
             "$out.$name.log" | tail -1 | awk '{print $NF}')
  echo "$name ${variants[$name]:-(recipe)} accuracy=$accuracy"
done
