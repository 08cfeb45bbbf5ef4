#!/usr/bin/env bash
# Lester et al. 2021 Fig. 3(a) at CPU scale: prompt length 1, 5, 20, 100, 150 x 3 seeds on SST-2,
# MiniLM (150 steps x 32, full dev) and SmolLM2-135M (100 steps x 8, lr 0.01, 400 dev rows, batches
# grouped by length: 1.7x faster steps, see experiments/performance).
# The cluster version is one line: python -m spt.run -m experiment=lester_prompt_length hydra/launcher=slurm
# Run from the repo root:  bash experiments/lester_prompt_length/run.sh   (then see README.md; a rerun keeps
# finished jobs and resumes killed ones: resume=auto)
set -euo pipefail
OUT=${OUT:-outputs/lester_prompt_length}
PY=${PY:-.venv/bin/python}
$PY -m spt.run -m experiment=lester_prompt_length model=minilm logger=csv resume=auto \
  trainer.max_steps=150 trainer.val_check_interval=150 hydra.sweep.dir="$OUT/minilm"
$PY -m spt.run -m experiment=lester_prompt_length model=smollm2-135m logger=csv resume=auto \
  trainer.max_steps=100 trainer.val_check_interval=100 data.batch_size=8 data.eval_batch_size=32 \
  data.dev_limit=400 data.group_by_length=true method.optimizer.lr=0.01 hydra.sweep.dir="$OUT/smollm2"
$PY -m spt.compare "$OUT" --mean --group-by model,method.length \
  --csv experiments/lester_prompt_length/results.csv
$PY -m spt.compare "$OUT" --done-only --keys method.length \
  --csv experiments/lester_prompt_length/runs.csv  # one row per run
$PY -m spt.compare "$OUT" --plot method.length --metric val/acc --hue model \
  --out experiments/lester_prompt_length/acc_vs_length.png
