#!/bin/bash
# Runs exit_abort.py N times each way, interleaved (return, os_exit, return, ...), and counts the aborts and the
# nonzero exits of each; ABORT_LOG=FILE keeps what each aborted run printed. Usage: runs/torchrun/count_aborts.sh N  (from the repository root)
n=$1; declare -A aborts fails
for i in $(seq $n); do
  for mode in return os_exit; do
    out=$(EXIT=$mode OMP_NUM_THREADS=1 timeout 120 torchrun --standalone --nproc_per_node 2 runs/torchrun/exit_abort.py 2>&1); rc=$?
    if grep -q "terminate called without an active exception" <<< "$out"; then
      aborts[$mode]=$(( ${aborts[$mode]:-0} + 1 )); printf '%s\n' "--- $mode, pair $i, rc $rc" "$out" >> ${ABORT_LOG:-/dev/null}
    fi
    [ $rc -ne 0 ] && fails[$mode]=$(( ${fails[$mode]:-0} + 1 ))
  done
  echo "after $i: return aborts ${aborts[return]:-0} nonzero ${fails[return]:-0}; os_exit aborts ${aborts[os_exit]:-0} nonzero ${fails[os_exit]:-0}"
done
