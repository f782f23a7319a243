#!/bin/bash
# The corpus with three more synthesizers (MBROLA, Pico, RHVoice), the default recipe, on a training
# person held out whole (yweweler), seeds 0-2; compare with runs/explore/logs/floor50_s*.log (the same
# recipe and guide on the corpus before).
cd /work/main
for seed in 0 1 2; do
  log=runs/synth/logs/synth_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --hold-out-speaker yweweler --seed $seed --output-dir runs/synth/synth_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s rc=$?" >> $log
done
