#!/usr/bin/env bash
# E2E NLG with SmolLM2-135M: every decoder method's BLEU / ROUGE-L on the held-out dev MRs
# (experiment=e2e_smollm2: 300 steps x batch 8, greedy decoding, 64 new tokens).
# Run from the repo root:  bash experiments/text_methods/run_e2e.sh   (METHODS="dept ..." for some)
set -euo pipefail
OUT=${OUT:-outputs/text_methods}
PY=${PY:-.venv/bin/python}
# The input-prompt methods start from sampled vocabulary (E2E has no label words) at the
# SmolLM2-scaled Adafactor/AdamW prompt lr 0.01 of run_smollm2.sh; the others keep their YAMLs.
declare -A args=([prefix]="" [prompt]="method.init=sampled_vocab method.optimizer.lr=0.01"
                 [dept]="method.init=sampled_vocab method.optimizer.lr=0.01"
                 [prompt_residual]="method.init=sampled_vocab method.optimizer.lr=0.01 method.residual=400"
                 [adaption_prompt]="" [prefix_plus]="")
for method in ${METHODS:-prefix prompt dept prompt_residual adaption_prompt prefix_plus}; do
  [[ -f "$OUT/smollm2/e2e/$method/metrics.json" ]] && continue
  $PY -m spt.run resume=auto experiment=e2e_smollm2 method=${method%_residual} ${args[$method]} \
    logger=csv hydra.run.dir="$OUT/smollm2/e2e/$method"
done
