#!/bin/bash
# After the final runs, not a choice: seed 4 of today's default (dropout 0.1) and of the previous one
# (--dropout 0), data to test, to pair a fifth seed; RHVoice after each.
cd "$(dirname "$0")/../../.."
for arm in d01 d0; do
  log=runs/speed/logs/final_${arm}_s4.log
  extra=$([ $arm = d0 ] && echo "--dropout 0")
  start=$(date +%s)
  python train_hf.py --seed 4 $extra --output-dir runs/speed/final_${arm}_s4 > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/speed/final_${arm}_s4 2>/dev/null >> runs/speed/logs/rhvoice_seed4.txt
done
