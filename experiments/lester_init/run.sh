#!/usr/bin/env bash
# Lester et al. 2021 Fig. 3(b) at CPU scale: init uniform, sampled_vocab, class_labels x 3 seeds (100 tokens) on SST-2,
# MiniLM (150 steps x 32, full dev) and SmolLM2-135M (100 steps x 8, lr 0.01, 400 dev rows, batches
# grouped by length: 1.7x faster steps, see experiments/performance).
# The cluster version is one line: python -m spt.run -m experiment=lester_init hydra/launcher=slurm
# Run from the repo root:  bash experiments/lester_init/run.sh   (then see README.md; a rerun keeps
# finished jobs and resumes killed ones: resume=auto)
set -euo pipefail
OUT=${OUT:-outputs/lester_init}
PY=${PY:-.venv/bin/python}
$PY -m spt.run -m experiment=lester_init model=minilm logger=csv resume=auto \
  trainer.max_steps=150 trainer.val_check_interval=150 hydra.sweep.dir="$OUT/minilm"
$PY -m spt.run -m experiment=lester_init model=smollm2-135m logger=csv resume=auto \
  trainer.max_steps=100 trainer.val_check_interval=100 data.batch_size=8 data.eval_batch_size=32 \
  data.dev_limit=400 data.group_by_length=true method.optimizer.lr=0.01 hydra.sweep.dir="$OUT/smollm2"
$PY -m spt.compare "$OUT" --mean --group-by model,method.init \
  --csv experiments/lester_init/results.csv
$PY -m spt.compare "$OUT" --done-only --keys method.init --csv experiments/lester_init/runs.csv  # per run
$PY -m spt.compare "$OUT" --plot method.init --metric val/acc --hue model \
  --out experiments/lester_init/acc_vs_init.png
