#!/bin/bash
# CTC with K symbols per encoder frame (--ctc-outputs-per-frame K) on today's default, validation only (the
# test split never read), against the same seeds' final runs of the default (final_ctc_s*.log: their
# validation lines); after each run its saved model scores the diagnostic RHVoice set.
# Usage: ctc_k.sh K SEED...
cd "$(dirname "$0")/../../.."
k=$1; shift
for seed in "$@"; do
  log=runs/speed/logs/ctck${k}_s${seed}.log
  grep -q "validation WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --test-split "" --ctc-outputs-per-frame $k --seed $seed --output-dir runs/speed/ctck${k}_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/speed/ctck${k}_s${seed} 2>/dev/null >> runs/speed/logs/rhvoice_ctck${k}.txt
done
