#!/usr/bin/env bash
# The transfer table of docs/TRANSFER.md: pretrain on 5 CIFAR-10 classes, then learn the
# other 5 from 10% of their images, from scratch or from the pretrained run, at the same
# budget. Prints one line per run and the median accuracy per arm.
#
#   scripts/transfer_experiment.sh CIFAR10_TRAIN_DIR [OUT_DIR]
#
# Environment: MODEL (resnet8), EPOCHS of fine-tuning (30), PRETRAIN_EPOCHS (15),
# SEEDS ("0 1 2"), ARMS (all four). Finished runs are not rerun.
set -euo pipefail
src=${1:?usage: $0 CIFAR10_TRAIN_DIR [OUT_DIR]}
out=${2:-runs/transfer}
model=${MODEL:-resnet8}
mkdir -p "$out"
subset() { [ -d "$out/$1" ] || python scripts/subset_folder.py "--data_dir=$src" \
             "--output=$out/$1" "${@:2}" | tail -1; }
subset first5 --classes=airplane,automobile,bird,cat,deer              # 25,000 images
subset last5_train --classes=dog,frog,horse,ship,truck --count=500     # 2,500: 10%
subset last5_test --classes=dog,frog,horse,ship,truck --skip=4000      # 5,000 others

if [ ! -f "$out/pretrain/model.keras" ]; then
  python train.py --dataset=folder "--data_dir=$out/first5" "--model=$model" \
    "--epochs=${PRETRAIN_EPOCHS:-15}" "--model_dir=$out/pretrain" > "$out/pretrain.log" 2>&1
fi

declare -A arms=(
  [scratch]=""
  [init_from]="--init_from=$out/pretrain"
  [init_from_freeze]="--init_from=$out/pretrain --freeze_epochs=5"
  [init_from_lr]="--init_from=$out/pretrain --backbone_lr_scale=0.1"
)
common=(--dataset=folder "--data_dir=$out/last5_train" --val_split=0
        "--eval_data_dir=$out/last5_test" "--model=$model" "--epochs=${EPOCHS:-30}"
        --log_every=50 --eval_every=1000000 --hooks=none)
for seed in ${SEEDS:-0 1 2}; do
  for arm in ${ARMS:-scratch init_from init_from_freeze init_from_lr}; do
    run="$out/$arm-$seed"
    if [ ! -f "$run/model.keras" ]; then
      python train.py "${common[@]}" ${arms[$arm]} "--seed=$seed" "--model_dir=$run" \
        > "$run.log" 2>&1 || { echo "$arm seed $seed failed: see $run.log"; continue; }
    fi
    accuracy=$(grep "eval at step" "$run.log" | tail -1 | grep -o "accuracy [0-9.]*" | cut -d' ' -f2)
    echo "$arm seed=$seed accuracy=$accuracy"
  done
done | tee "$out/results.txt"
python - "$out/results.txt" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
  arm, _, accuracy = line.split()[:3]
  if accuracy.startswith("accuracy=") and accuracy != "accuracy=":
    runs[arm].append(float(accuracy.split("=")[1]))
for arm, values in runs.items():
  print(f"median {arm}: {statistics.median(values):.4f} ({len(values)} runs: "
        f"{', '.join(f'{v:.4f}' for v in values)})")
PY
