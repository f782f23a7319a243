#!/bin/bash
# old code (c6a4344), 300 default-run steps, glibc default vs the keep_freed_memory settings through glibc's env vars, interleaved
# Usage: git worktree add /tmp/old c6a4344 && OLD=/tmp/old runs/speed/logs/keep_memory_default_run.sh   (output: keep_memory_default_run.txt)
cd "${OLD:?a checkout of c6a4344}"
for i in 1 2 3 4; do
  for side in default keep; do
    if [ $side = keep ]; then export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647; else unset MALLOC_MMAP_MAX_ MALLOC_TRIM_THRESHOLD_; fi
    /usr/bin/time -f "%M KB %R faults" python train_hf.py --max-steps 300 --eval-steps 300 --test-split "" --output-dir ${TMPDIR:-/tmp}/env_${side}_$i > ${TMPDIR:-/tmp}/env_${side}_$i.log 2>&1
    echo "$side $i $(grep -a "'train_runtime'" ${TMPDIR:-/tmp}/env_${side}_$i.log | tail -1 | grep -o "'train_runtime': '[0-9.]*'") $(tail -1 ${TMPDIR:-/tmp}/env_${side}_$i.log)"
  done
done
