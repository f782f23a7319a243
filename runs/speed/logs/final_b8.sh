#!/bin/bash
# Today's default (CTC 0.3; greedy evaluations during training pick the checkpoint; the final validation
# and test scores, and the saved model, decode with a beam of 8 rescored with CTC), data to test, seeds
# given; after each run its saved model scores the diagnostic RHVoice set (runs/synth/logs/make_rhvoice_set.py).
cd "$(dirname "$0")/../../.."
for seed in "$@"; do
  log=runs/speed/logs/final_b8_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --output-dir runs/speed/final_b8_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/speed/final_b8_s${seed} 2>/dev/null >> runs/speed/logs/rhvoice_final_b8.txt
done
