#!/usr/bin/env bash
# E2E NLG with SmolLM2-135M: prefix tuning vs prompt tuning, BLEU / ROUGE-L on the held-out dev
# MRs (experiment=e2e_smollm2: 300 steps x batch 8, greedy decoding, 64 new tokens).
# Run from the repo root:  bash experiments/text_methods/run_e2e.sh
set -euo pipefail
OUT=${OUT:-outputs/text_methods}
PY=${PY:-.venv/bin/python}
declare -A args=([prefix]="" [prompt]="method.init=sampled_vocab method.optimizer.lr=0.01")
for method in ${METHODS:-prefix prompt}; do
  [[ -f "$OUT/smollm2/e2e/$method/metrics.json" ]] && continue
  $PY -m spt.run resume=auto experiment=e2e_smollm2 method=$method ${args[$method]} logger=csv \
    hydra.run.dir="$OUT/smollm2/e2e/$method"
done
