#!/bin/bash
# The log-mel floor at 50 dB below each clip's loudest cell, same guide and seeds, after run.sh.
cd /work/main
while pgrep -f "explore/run.sh" > /dev/null; do sleep 10; done
for seed in 0 1 2; do
  log=runs/explore/floor50_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --hold-out-speaker yweweler --seed $seed --output-dir runs/explore/floor50_s${seed} --spectrogram-floor-db 50 > $log 2>&1
  echo "WALL $(( $(date +%s) - start ))" >> $log
done
