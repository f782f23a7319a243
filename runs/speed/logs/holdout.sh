#!/bin/bash
# Today's default with a training person held out whole (yweweler: his 500 recordings are the final
# split; the test split is not read), seeds 0-2: a guide for unheard real people, against the same
# runs of the default before (runs/synth/logs/synth_s*.log: 30.40 / 25.40 / 27.40%).
cd "$(dirname "$0")/../../.."
for seed in 0 1 2; do
  /usr/bin/time -f "wall %e s" python train_hf.py --hold-out-speaker yweweler --seed $seed \
    --output-dir /tmp/runs/hold_s$seed > runs/speed/logs/hold_s$seed.log 2>&1
done
