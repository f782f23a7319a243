#!/bin/bash
# The corpus before MBROLA and Pico (the parent commit's data/, copied to ../data_old_corpus), the same
# guide, seed 0: its saved model scores the unseen engines (validation's MBROLA voices, RHVoice).
cd /work/main
while pgrep -f "synth/logs/run.sh" > /dev/null; do sleep 10; done
for seed in 0; do
  log=runs/synth/logs/old_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --data-dir ../data_old_corpus --hold-out-speaker yweweler --seed $seed --output-dir runs/synth/old_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
done
