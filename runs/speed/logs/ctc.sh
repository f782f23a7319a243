#!/bin/bash
# An auxiliary CTC loss on the encoder (--ctc-weight W, hybrid CTC/attention) on today's default, validation
# only (the test split never read), against the same seeds' final runs of the default (final_d01_s*.log:
# their validation lines); after each run its saved model scores the diagnostic RHVoice set.
# Usage: ctc.sh WEIGHT SEED...
cd "$(dirname "$0")/../../.."
weight=$1; shift
for seed in "$@"; do
  log=runs/speed/logs/ctc${weight}_s${seed}.log
  grep -q "validation WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --test-split "" --ctc-weight $weight --seed $seed --output-dir runs/speed/ctc${weight}_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/speed/ctc${weight}_s${seed} 2>/dev/null >> runs/speed/logs/rhvoice_ctc${weight}.txt
done
