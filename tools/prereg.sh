#!/usr/bin/env bash
# The pre-registered confirmatory runs (README, "A confirmatory test of bRoPE, pre-registered", and
# "... of blended attention"): `bash tools/prereg.sh` (bRoPE) or `bash tools/prereg.sh blend`;
# `python -m tools.prereg [--treatment blend]` analyzes them. Both tests share the plain arm (rope_s*).
# Resumable: a run whose log holds its test WER is not trained again. Each run is scored on the
# 8-20-digit strings right after it trains (run folders do not outlive their machine), and each log
# is committed as soon as it is written, so results do.
treatment=${1:-brope}
case $treatment in
  brope) flag=--betweenness ;;
  blend) flag=--blend-attention ;;
  brope_blend) flag="--betweenness --blend-attention" ;;
  *) echo "usage: bash tools/prereg.sh [brope|blend|brope_blend]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
logs=runs/prereg/logs
mkdir -p $logs
commit_log() {
  for try in 1 2 3 4 5 6 7 8 9 10; do
    git add -f "$1" && git commit -q -m "prereg: $(basename "$1" .log) log" -- "$1" && return 0
    sleep 3
  done
}
[ -d runs/long8_20 ] || python -m tools.make_corpus --long 200 --out runs/long8_20 > $logs/make_long.log 2>&1
for s in 10 11 12 13 14 15; do
  for arm in rope $treatment; do
    run=${arm}_s$s; log=$logs/$run.log
    if ! grep -q 'test WER' "$log" 2>/dev/null; then
      extra=""; [ $arm = $treatment ] && extra=$flag
      echo "$(date -u +%FT%TZ) start $run" >> $logs/status
      t0=$(date +%s)
      python train_hf.py --seed $s $extra --output-dir runs/prereg/$run > "$log" 2>&1
      rc=$?
      echo "WALL $(( $(date +%s) - t0 )) s rc=$rc" >> "$log"
      echo "$(date -u +%FT%TZ) end $run" >> $logs/status
      commit_log "$log"
    fi
    long=$logs/long_$run.log
    if ! grep -q 'long_wer' "$long" 2>/dev/null && [ -d runs/prereg/$run ]; then
      python -m tools.ablate --long runs/long8_20 --score-long runs/prereg/$run > "$long" 2>&1
      commit_log "$long"
    fi
  done
done
echo "$(date -u +%FT%TZ) ALLDONE $treatment" >> $logs/status
