#!/usr/bin/env bash
# MPT transfer study on SmolLM2-135M (see README.md): teachers -> distilled source stage ->
# target stage on FewGLUE-32 RTE, against single-task Prompt Tuning at the same budget.
# Run from the repo root:  bash experiments/mpt_transfer/run.sh
set -euo pipefail
export SPT_MPT_RUNS=${SPT_MPT_RUNS:-outputs/mpt}
PY=${PY:-.venv/bin/python}
run() {  # run <dir> <overrides...>; skips a step that already finished (resumable)
  local dir=$SPT_MPT_RUNS/$1; shift
  [[ -f $dir/metrics.json ]] && return 0
  $PY -m spt.run resume=auto "$@" logger=csv hydra.run.dir="$dir"
}
for task in sst2 agnews trec; do
  run teacher_$task experiment=mpt_teacher data=$task
done
run source experiment=mpt_source
# Ablation: the same source stage without distillation.
run source_nodistill experiment=mpt_source method.teachers=null
# The comparison, seeds 1-3 per arm (SEEDS narrows it): MPT from the distilled source, MPT
# from the undistilled one, and single-task Prompt Tuning, at the same data, steps and lr.
for seed in ${SEEDS:-1 2 3}; do
  run target_rte/seed$seed experiment=mpt_target seed=$seed
  run baseline_rte/seed$seed experiment=fewglue32_rte seed=$seed
  run target_rte_nodistill/seed$seed experiment=mpt_target seed=$seed \
    method.source_file=$SPT_MPT_RUNS/source_nodistill/prompt.safetensors
done
$PY -m spt.compare "$SPT_MPT_RUNS" --done-only --csv experiments/mpt_transfer/results.csv
