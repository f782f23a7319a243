#!/bin/bash
# Today's default (the other engines' voices twice an epoch, as the real people's; CTC 0.3; greedy evaluations during training pick the checkpoint; the final validation
# and test scores, and the saved model, decode with a beam of 8 rescored with CTC), data to test, seeds
# given; after each run its saved model scores the diagnostic RHVoice set (runs/synth/logs/make_rhvoice_set.py).
cd "$(dirname "$0")/../../.."  # run from a worktree of the code; logs and models go to /work/main
logs=/work/main/runs/speed/logs
for seed in "$@"; do
  log=$logs/final_rep_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --output-dir /work/main/runs/speed/final_rep_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test /work/main/runs/speed/final_rep_s${seed} 2>/dev/null >> $logs/rhvoice_final_rep.txt
done
