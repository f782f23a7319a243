#!/bin/bash
# The default of 2026-12-06 (the other engines' voices twice an epoch, as the real people's; CTC 0.3; greedy evaluations
# during training pick the checkpoint; the final validation and test scores, and the saved model, decode with a beam of
# 8 rescored with CTC), data to test, seeds given: final.sh rep, from a worktree of that commit (3aad3ca's successors).
exec "$(dirname "$0")/final.sh" rep "$@"
