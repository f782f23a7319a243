#!/bin/bash
# Weight decay 0.1 (AdamW; the default 0.01) on today's default, validation only (the test split never read), seeds 0-2,
# against the same seeds' final runs of the default (final_d01_s*.log: their validation lines);
# after each run its saved model scores the diagnostic RHVoice set.
cd "$(dirname "$0")/../../.."
for seed in 0 1 2; do
  log=runs/speed/logs/wd01_s${seed}.log
  grep -q "validation WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --test-split "" --weight-decay 0.1 --seed $seed --output-dir runs/speed/wd01_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/speed/wd01_s${seed} 2>/dev/null >> runs/speed/logs/rhvoice_wd01.txt
done
