#!/bin/bash
# The 60-dB floor, seeds 1 and 2, on the held-out person (the 60-dB row's remaining seeds).
cd /work/main
for seed in 1 2; do
  log=runs/explore/floor60_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --hold-out-speaker yweweler --seed $seed --output-dir runs/explore/floor60_s${seed} --spectrogram-floor-db 60 > $log 2>&1
  echo "WALL $(( $(date +%s) - start ))" >> $log
done
