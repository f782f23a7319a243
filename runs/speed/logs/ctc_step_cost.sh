#!/bin/bash
# What the CTC head and loss cost a training step: 200 steps of today's default with and without CTC
# (--ctc-weight 0), three interleaved pairs, no evaluation inside; prints each run's training time.
cd "$(dirname "$0")/../../.."
for pair in 1 2 3; do
  for weight in 0.3 0; do
    t=$(python train_hf.py --test-split "" --max-steps 200 --eval-steps 100000 --ctc-weight $weight \
        --output-dir /tmp/ctc_cost_$weight 2>/dev/null | tr '\r' '\n' | grep -ao "'train_runtime': '[0-9.]*'")
    echo "pair $pair ctc $weight: $t"
  done
done
