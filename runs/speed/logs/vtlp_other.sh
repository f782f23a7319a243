#!/bin/bash
# The default (other engines twice an epoch) with vocal tract length perturbation on the other engines' clips only
# (--augment vtlp --augment-sources mbrola,pico), validation only (--test-split ""), seeds given; then the diagnostic
# RHVoice set. Run from a worktree of the code; logs and models go to /work/main.
cd "$(dirname "$0")/../../.."
logs=/work/main/runs/speed/logs
for seed in "$@"; do
  log=$logs/vtlp_other_s${seed}.log
  grep -q "validation WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --test-split "" --augment vtlp --augment-sources mbrola,pico --output-dir /work/main/runs/speed/vtlp_other_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test /work/main/runs/speed/vtlp_other_s${seed} 2>/dev/null >> $logs/rhvoice_vtlp_other.txt
done
