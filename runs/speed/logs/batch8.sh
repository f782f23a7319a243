#!/bin/bash
# Half the batch, twice the steps (batch 8 as one pass, 4,600 steps, evaluation every 920: the
# same clips seen and about the same time as the default's 2,300 steps of 16 in two micro-batches;
# measured: 1,600 clips took 25.5-28.0 s either way), validation only (the test split never read),
# against the same seeds' final runs of the default (final_d01_s*.log: their validation lines).
cd "$(dirname "$0")/../../.."
for seed in ${SEEDS:-0 1 2}; do
  log=runs/speed/logs/b8_s${seed}.log
  grep -q "validation WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --test-split "" --batch-size 8 --micro-batches 1 --max-steps 4600 --eval-steps 920 --seed $seed \
    --output-dir runs/speed/b8_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/speed/b8_s${seed} 2>/dev/null >> runs/speed/logs/rhvoice_b8.txt
done
