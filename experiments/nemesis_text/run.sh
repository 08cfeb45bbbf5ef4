#!/usr/bin/env bash
# Nemesis on text prompts: Prompt Tuning on SST-2 with MiniLM (encoder-only, pooled head) and
# SmolLM2-135M (decoder-only, verbalizer), with and without regularizer=nemesis (PUN + PAN,
# beta 0.5), 3 seeds; then the Low-Norm analysis (each position rescaled by 0.5) of the seed-1
# prompt of each setting.
# The budgets are those of experiments/text_methods (MiniLM 300 x 32, SmolLM2 150 x 8, lr 0.01).
# Run from the repo root:  bash experiments/nemesis_text/run.sh   (resumable)
set -euo pipefail
OUT=${OUT:-outputs/nemesis_text}
PY=${PY:-.venv/bin/python}
declare -A model_args=(
  [minilm]="model=minilm trainer.max_steps=300 trainer.val_check_interval=300 data.batch_size=32"
  [smollm2-135m]="model=smollm2-135m trainer.max_steps=150 trainer.val_check_interval=150 data.batch_size=8 data.eval_batch_size=32 method.optimizer.lr=0.01"
)
for model in ${MODELS:-minilm smollm2-135m}; do
  for seed in ${SEEDS:-1 2 3}; do
    for reg in ${REGULARIZERS:-none nemesis}; do
      dir=$OUT/$model/$reg/seed$seed
      [[ -f $dir/metrics.json ]] && continue
      $PY -m spt.run resume=auto method=prompt data=sst2 regularizer=$reg seed=$seed ${model_args[$model]} \
        logger=csv tags=[nemesis_text] hydra.run.dir="$dir"
    done
  done
  for reg in ${REGULARIZERS:-none nemesis}; do  # the Low-Norm Effect, seed 1
    dir=$OUT/$model/$reg/seed1
    [[ -f $dir/metrics.json && ! -f $dir/low_norm_rescale.csv ]] && \
      $PY -m spt.analysis "$dir" --mode rescale --weight 0.5
  done
done
$PY -m spt.compare "$OUT" --csv experiments/nemesis_text/results.csv
