#!/bin/bash
# The new default (the corpus with MBROLA and Pico), data to test, seeds 0-2, idle cores; after each
# run its saved model scores the diagnostic RHVoice set (an engine in no split; make_rhvoice_set.py).
cd /work/main
for seed in 0 1 2; do
  log=runs/synth/logs/final_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --output-dir runs/synth/final_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/synth/final_s${seed} 2>/dev/null >> runs/synth/logs/rhvoice.txt
done
