#!/bin/bash
# Variance normalization against the default, on a training person held out whole (yweweler), seeds 0-2, interleaved.
cd /work/main
for seed in 0 1 2; do
  for arm in base var; do
    log=runs/explore/${arm}_s${seed}.log
    grep -q "final" $log 2>/dev/null && continue
    extra=""; [ $arm = var ] && extra="--normalize-variance"
    start=$(date +%s)
    python train_hf.py --hold-out-speaker yweweler --seed $seed --output-dir runs/explore/${arm}_s${seed} $extra > $log 2>&1
    echo "WALL $(( $(date +%s) - start ))" >> $log
  done
done
