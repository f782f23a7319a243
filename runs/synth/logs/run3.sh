#!/bin/bash
# The corpus before MBROLA and Pico, seeds 1-2 of the same guide (seed 0 is run2.sh's), so the engines'
# diagnostic (RHVoice, validation's unheard MBROLA voices) is paired over three seeds.
cd /work/main
while pgrep -f "pytest test_brope_asr.py" > /dev/null; do sleep 10; done
for seed in 1 2; do
  log=runs/synth/logs/old_s${seed}.log
  grep -q "test WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --data-dir ../data_old_corpus --hold-out-speaker yweweler --seed $seed --output-dir runs/synth/old_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
done
python runs/synth/logs/score.py 2 /tmp/rhvoice_set test runs/synth/old_s0 runs/synth/old_s1 runs/synth/old_s2 runs/synth/synth_s0 runs/synth/synth_s1 runs/synth/synth_s2 2>/dev/null > runs/synth/logs/rhvoice_heldout.txt
python runs/synth/logs/score.py 2 data validation runs/synth/old_s0 runs/synth/old_s1 runs/synth/old_s2 2>/dev/null > runs/synth/logs/validation_old.txt
