#!/bin/bash
# Today's default (an auxiliary CTC loss of weight 0.3, its beam of 4 rescored with CTC at 0.3), data to test,
# seeds 0-2; after each run its saved model scores the diagnostic RHVoice set (an engine in no split;
# runs/synth/logs/make_rhvoice_set.py makes it).
cd "$(dirname "$0")/../../.."
for seed in "$@"; do
  log=runs/speed/logs/final_ctc_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --output-dir runs/speed/final_ctc_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/speed/final_ctc_s${seed} 2>/dev/null >> runs/speed/logs/rhvoice_final_ctc.txt
done
