#!/bin/bash
# The other engines heard three times an epoch (--source-repeats fsdd=2,mbrola=3,pico=3; default fsdd=2),
# validation only (--test-split ""), seeds given; then the diagnostic RHVoice set. Run from a worktree of the code.
cd "$(dirname "$0")/../../.."
logs=/work/main/runs/speed/logs
for seed in "$@"; do
  log=$logs/rep_other3_s${seed}.log
  grep -q "validation WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --test-split "" --source-repeats fsdd=2,mbrola=3,pico=3 --output-dir /work/main/runs/speed/rep_other3_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test /work/main/runs/speed/rep_other3_s${seed} 2>/dev/null >> $logs/rhvoice_rep_other3.txt
done
