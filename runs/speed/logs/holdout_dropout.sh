#!/bin/bash
# Today's default but with dropout 0.1 (2,300 steps, conv_frames), a training person held out whole
# (yweweler), seeds 0-2: does dropout help with a voice never heard? Against hold_s*.log (no dropout).
cd "$(dirname "$0")/../../.."
for seed in 0 1 2; do
  /usr/bin/time -f "wall %e s" python train_hf.py --hold-out-speaker yweweler --dropout 0.1 --seed $seed \
    --output-dir /tmp/runs/holddrop_s$seed > runs/speed/logs/holddrop_s$seed.log 2>&1
done
