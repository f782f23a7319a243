#!/bin/bash
# The default run of the checkout this runs from, data to test, for each seed given; after each run its saved model
# scores the diagnostic RHVoice set (runs/synth/logs/make_rhvoice_set.py). Run it from a worktree of the code: logs
# (final_NAME_sSEED.log, rhvoice_final_NAME.txt) and models (runs/speed/final_NAME_sSEED) go to /work/main.
# Usage: runs/speed/logs/final.sh NAME SEED...
# What ran:
#   final.sh rep 0 1 2 3 4    (the other engines twice an epoch; as final_rep.sh)
#   final.sh vtlp 0 1 2 3 4   (and VTLP on their clips)
#   final.sh vtlp_all 0 1 2 3 4   (VTLP on every synthetic source)
#   final.sh floor60 0 1 2 3 4    (and the log-mel floor at 60 dB, adopted by floor60_ten_rule.md; run from a8b1275)
cd "$(dirname "$0")/../../.."
name=$1; shift
logs=/work/main/runs/speed/logs
for seed in "$@"; do
  log=$logs/final_${name}_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --output-dir /work/main/runs/speed/final_${name}_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test /work/main/runs/speed/final_${name}_s${seed} 2>/dev/null >> $logs/rhvoice_final_${name}.txt
done
