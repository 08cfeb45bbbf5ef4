#!/usr/bin/env bash
# SST-2 and RTE dev accuracy of every encoder-capable method on all-MiniLM-L6-v2 (encoder-only).
# One seed, 300 steps x batch 32, each method at its YAML defaults; the last prompt is scored on
# the full dev split. Run from the repo root:  bash experiments/text_methods/run_minilm.sh
set -euo pipefail
OUT=${OUT:-outputs/text_methods}
PY=${PY:-.venv/bin/python}
common=(model=minilm logger=csv trainer.max_steps=300 trainer.val_check_interval=300
        data.batch_size=32 tags=[text_methods])
for data in ${DATASETS:-sst2 rte}; do
  # P-Tuning places its pseudo-tokens in two slots of the template, the rest one block.
  case $data in
    sst2) pt_template='{soft:3}Review: {sentence}{soft:3} Sentiment:' ;;
    rte)  pt_template='{soft:3}Premise: {premise} Hypothesis: {hypothesis}{soft:3} Relation:' ;;
  esac
  for method in ${METHODS:-prompt prefix ptuning ptuning_v2 mpt}; do
    extra=()
    [[ $method == ptuning ]] && extra=("data.template=\"$pt_template\"")
    [[ -f "$OUT/minilm/$data/$method/metrics.json" ]] && continue  # resume a partial sweep
    $PY -m spt.run resume=auto method=$method data=$data "${common[@]}" "${extra[@]}" \
      hydra.run.dir="$OUT/minilm/$data/$method"
  done
done
