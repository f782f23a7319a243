#!/bin/bash
# Candidate: no dropout, 2,300 steps (about the time of 2,000 steps with dropout after conv_frames), validation only.
cd "$(dirname "$0")/../../.."
for seed in 0 1 2; do
  /usr/bin/time -f "wall %e s" python train_hf.py --test-split "" --dropout 0 --max-steps 2300 --seed $seed \
    --output-dir /tmp/runs/d0_s$seed > runs/speed/logs/d0_s$seed.log 2>&1
done
