#!/usr/bin/env bash
# P-Tuning v2 (Liu et al. 2022, Table 2) at CPU scale: deep prompts (method=ptuning_v2, 20
# positions per layer, AdamW lr 5e-3) against shallow Prompt Tuning (method=prompt, 20 input
# vectors, Adafactor lr 0.3) on MiniLM, SuperGLUE CB and COPA (the two small ones), 200 steps x 32,
# seeds 1-3, full dev sets. The paper's claim to check: on small backbones deep prompts beat
# shallow ones by a wide margin.
# Cluster (RTE, CB, COPA, BoolQ x 3 seeds, any model):
#   python -m spt.run -m experiment=ptuning_v2_superglue model=roberta-large hydra/launcher=slurm
# Run from the repo root:  bash experiments/ptuning_v2_superglue/run.sh   (resumable; DATASETS,
# METHODS and SEEDS narrow it)
set -euo pipefail
OUT=${OUT:-outputs/ptuning_v2_superglue}
PY=${PY:-.venv/bin/python}
for data in ${DATASETS:-cb copa}; do
  for method in ${METHODS:-ptuning_v2 prompt}; do
    for seed in ${SEEDS:-1 2 3}; do
      dir=$OUT/minilm/$data/$method/seed$seed
      [[ -f $dir/metrics.json ]] && continue
      $PY -m spt.run resume=auto method=$method data=$data seed=$seed model=minilm logger=csv \
        trainer.max_steps=200 trainer.val_check_interval=200 data.batch_size=32 \
        tags=[ptuning_v2_superglue] study=ptuning_v2_superglue hydra.run.dir="$dir"
    done
  done
done
$PY -m spt.compare "$OUT" --mean --group-by data,method \
  --done-only --csv experiments/ptuning_v2_superglue/results.csv
$PY -m spt.compare "$OUT" --done-only --csv experiments/ptuning_v2_superglue/runs.csv  # one row per run
$PY -m spt.compare "$OUT" --done-only --plot method --metric val/acc --hue data \
  --out experiments/ptuning_v2_superglue/acc_by_method.png
