#!/usr/bin/env bash
# The example report of the ablation and cost sections (issue 18), at CPU scale: tiny models of
# the smoke space on the first 100,000 training tokens of Penn Treebank, 6 epochs. About 20
# minutes on 2 CPU cores (25 measured). Numbers at this scale say how the platform answers the questions, not
# what the answers are at the paper's scale (that is a GPU search: the same commands with
# --space awd_ptb / compare_ptb and no --set train_tokens).
#
#   bash docs/examples/ablation_cost/run.sh [WORKDIR]     (default /tmp/awd_example)
#
# Stopped half-way, it continues where it was (each search resumes with --resume).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-/tmp/awd_example}"
mkdir -p "$work" && cd "$work"
export PYTHONPATH="$here/../../..${PYTHONPATH:+:$PYTHONPATH}"

search() {  # NAME ARGS...: a search, or its resume if it was started
  local name=$1; shift
  if [ -d "ray_results/$name" ]; then
    python -m search.run --experiment "$name" "$@" --resume
  else
    python -m search.run --experiment "$name" "$@"
  fi
}

# 1. AWD-LSTM only: its winner confirmed on 3 new seeds, then Table 4's ablation on those seeds
search ablate-lstm --space smoke --set model=awd_lstm --num-samples 10 --max-epochs 6 \
  --set train_tokens=100000 --seed 1 --confirm-top 1 --seeds 3 --ablate
# 2. the three models in one search, two objectives: validation perplexity and parameters
search compare-cost --space smoke --num-samples 16 --max-epochs 6 \
  --set train_tokens=100000 --seed 2 --objectives val_ppl,num_params
# 3. the report of both
python -m reports --experiment ablate-lstm compare-cost --out "$here/report" --no-log
