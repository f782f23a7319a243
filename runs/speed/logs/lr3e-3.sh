#!/bin/bash
# Candidate: learning rate 3e-3 instead of 2e-3 (today's default otherwise), validation only, seeds 0-2.
cd "$(dirname "$0")/../../.."
for seed in 0 1 2; do
  /usr/bin/time -f "wall %e s" python train_hf.py --test-split "" --learning-rate 3e-3 --seed $seed \
    --output-dir /tmp/runs/lr3_s$seed > runs/speed/logs/lr3_s$seed.log 2>&1
done
