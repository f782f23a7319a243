#!/bin/bash
# Candidate: dropout 0.1 at 2,300 steps, validation only, seeds 0-2; against d0_s*.log (dropout 0, same steps).
cd "$(dirname "$0")/../../.."
for seed in 0 1 2; do
  /usr/bin/time -f "wall %e s" python train_hf.py --test-split "" --dropout 0.1 --max-steps 2300 --seed $seed \
    --output-dir /tmp/runs/d01_s$seed > runs/speed/logs/d01_s$seed.log 2>&1
done
