#!/bin/bash
# The new default (50 dB floor), data to test, seeds 0-2, on idle cores after the exploration ends.
cd /work/main
while pgrep -f "floor60_s0" > /dev/null; do sleep 5; done
for seed in 0 1 2; do
  log=runs/explore/final_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --output-dir runs/explore/final_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start ))" >> $log
done
