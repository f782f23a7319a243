#!/bin/bash
# 300-step default runs, old code (c6a4344) and the code with keep_freed_memory (42adbb3), interleaved
# Usage: git worktree add /tmp/old c6a4344 && OLD=/tmp/old runs/speed/logs/keep_memory_code_ab300.sh  (run from a checkout of 42adbb3)
for i in 1 2 3; do
  for side in old new; do
    dir=$([ $side = old ] && echo "${OLD:?a checkout of c6a4344}" || pwd)
    (cd $dir && s=$(date +%s.%N) && python train_hf.py --max-steps 300 --eval-steps 300 --test-split "" --output-dir ${TMPDIR:-/tmp}/ab_${side}_$i > ${TMPDIR:-/tmp}/ab_${side}_$i.log 2>&1; echo "$side $i $(python -c "print(round($(date +%s.%N)-$s,1))") s wall; $(grep -a "train_seconds\|'train_runtime'\|train_runtime" ${TMPDIR:-/tmp}/ab_${side}_$i.log | tail -1 | cut -c1-200)")
  done
done
