#!/bin/bash
# Probe (validation only, the test split never read): moving averages of the weights, decays 0.99,
# 0.995 and 0.998, against the raw weights of the same run (ema_probe.py), seeds 0-2; each
# checkpoint's averages scored on all of validation and on the RHVoice set.
# (Ran first with ema_score.py, a copy of score.py without its yweweler filter; score.py --every-speaker
# is that code, and gives the same figures on the same models: 10.41% and 19.86% for avg0/step2300.)
cd "$(dirname "$0")/../../.."
for seed in 0 1 2; do
  log=runs/speed/logs/ema_s${seed}.log
  grep -q "validation WER" $log 2>/dev/null && continue
  out=/tmp/runs/ema_s${seed}
  python runs/speed/logs/ema_probe.py --test-split "" --seed $seed --output-dir $out > $log 2>&1
  python runs/synth/logs/score.py --every-speaker 2 data validation $out/avg*/step* 2>/dev/null > runs/speed/logs/ema_validation_s${seed}.txt
  python runs/synth/logs/score.py --every-speaker 2 /tmp/rhvoice_set test $out/avg*/step2300 2>/dev/null > runs/speed/logs/ema_rhvoice_s${seed}.txt
done
