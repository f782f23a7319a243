#!/bin/bash
# Today's default (dropout 0.1 with the 16-bit-word mask, 2,300 steps), data to test, seeds 0-2;
# after each run its saved model scores the diagnostic RHVoice set (an engine in no split;
# runs/synth/logs/make_rhvoice_set.py makes it).
cd "$(dirname "$0")/../../.."
for seed in 0 1 2; do
  log=runs/speed/logs/final_d01_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --output-dir runs/speed/final_d01_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/speed/final_d01_s${seed} 2>/dev/null >> runs/speed/logs/rhvoice_final_d01.txt
done
