#!/bin/bash
# A validation probe of the default with extra flags: python train_hf.py --test-split "" FLAGS for each seed given
# (the test split is never read), then the saved model scores the diagnostic RHVoice set
# (runs/synth/logs/make_rhvoice_set.py). Logs: NAME_sSEED.log and rhvoice_NAME.txt beside this script; models:
# runs/speed/NAME_sSEED. OUT=DIR puts both under DIR's runs/speed instead, for a run from a separate checkout.
# Usage: runs/speed/logs/probe.sh NAME "FLAGS" SEED...
# What ran:
#   probe.sh rep_other "--source-repeats fsdd=2,mbrola=2,pico=2" 0 1 2      (the other engines twice an epoch)
#   probe.sh rep_other3 "--source-repeats fsdd=2,mbrola=3,pico=3" 0 1       (three times)
#   probe.sh vtlp_other "--augment vtlp --augment-sources mbrola,pico" 0 1 2 (VTLP on their clips, with twice the default)
#   probe.sh vtlp_synth "--augment vtlp --augment-sources espeak-ng,mbrola,pico" 0 1 2 3 4 (VTLP on every synthetic source)
#   probe.sh vtlp_wide "--vtlp-range 0.8,1.2" 0 1 2 3 4                    (with the default of VTLP on every synthetic source)
#   probe.sh specaug_synth "--augment vtlp,specaugment --augment-sources espeak-ng,mbrola,pico" 0 1 2 3 4
#   probe.sh brope_engaged "--betweenness --betweenness-max-shift 8 --betweenness-gate-init 0.5" 0 1 2 3 4
#   probe.sh wideband "--spectrogram-max-hz 0 --augment vtlp,narrowband --augment-sources espeak-ng,mbrola,pico" 0 1 2 3 4
#   probe.sh floor60 "--spectrogram-floor-db 60" 0 1 2 3 4
#   probe.sh rotation "" 0                                                  (the default after Rotation wrote its halves in place)
#   then, alternating seed by seed, probe.sh vtlp_synth "--augment vtlp --augment-sources espeak-ng,mbrola,pico" S and
#   probe.sh floor60 "--spectrogram-floor-db 60" S for S = 5..9 (floor60_ten_rule.md)
cd "$(dirname "$0")/../../.."
name=$1 flags=$2; shift 2
out=${OUT:-.}/runs/speed
for seed in "$@"; do
  log=$out/logs/${name}_s${seed}.log
  grep -q "validation WER" $log 2>/dev/null && continue
  start=$(date +%s)
  python train_hf.py --seed $seed --test-split "" $flags --output-dir $out/${name}_s${seed} > $log 2>&1
  echo "WALL $(( $(date +%s) - start )) s" >> $log
  python runs/synth/logs/score.py 2 /tmp/rhvoice_set test $out/${name}_s${seed} 2>/dev/null >> $out/logs/rhvoice_${name}.txt
done
