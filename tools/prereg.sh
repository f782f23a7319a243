#!/usr/bin/env bash
# The pre-registered confirmatory runs (README, "A confirmatory test of bRoPE, pre-registered"); `python -m tools.prereg` analyzes them.
# Each finished run's log is committed at once, so results survive the machine.
cd "$(dirname "$0")/.."
logs=runs/prereg/logs
commit_log() {
  for try in 1 2 3 4 5 6 7 8 9 10; do
    git add -f "$1" && git commit -q -m "prereg: $(basename "$1" .log) log" -- "$1" && return 0
    sleep 3
  done
}
for s in 10 11 12 13 14 15; do
  for arm in rope brope; do
    run=${arm}_s$s; log=$logs/$run.log
    grep -q '^test WER' "$log" 2>/dev/null && continue
    extra=""; [ $arm = brope ] && extra="--betweenness"
    echo "$(date -u +%FT%TZ) start $run" >> $logs/status
    t0=$(date +%s)
    python train_hf.py --seed $s $extra --output-dir runs/prereg/$run > "$log" 2>&1
    rc=$?
    echo "WALL $(( $(date +%s) - t0 )) s rc=$rc" >> "$log"
    echo "$(date -u +%FT%TZ) end $run rc=$rc" >> $logs/status
    commit_log "$log"
  done
done
[ -d runs/long8_20 ] || python -m tools.make_corpus --long 200 --out runs/long8_20 > $logs/make_long.log 2>&1
python -m tools.ablate --long runs/long8_20 --score-long runs/prereg/*_s1? > $logs/long.log 2>&1
commit_log $logs/long.log
echo ALLDONE >> $logs/status
