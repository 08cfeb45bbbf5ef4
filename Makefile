# The two commands of the README:  make run   and   make test
VENV ?= .venv
PY := $(VENV)/bin/python
# The benchmark data lives beside the repo (../shared/data) unless SPT_DATA_DIR says otherwise.
export SPT_DATA_DIR ?= $(abspath ../shared/data)
export WANDB_MODE ?= offline

.PHONY: setup run test test-all test-latest lock lint
setup: $(VENV)/.installed

# The venv holds exactly requirements-lock.txt (+ requirements-backbones.txt).
$(VENV)/.installed: pyproject.toml requirements-lock.txt requirements-backbones.txt scripts/setup.sh
	SPT_VENV=$(VENV) bash scripts/setup.sh
	touch $@

# The default main job: Prompt Tuning on SST-2 with the packaged MiniLM, offline.
run: setup
	$(PY) -m spt.run $(ARGS)

# The default suite (tiny models) plus the few real-backbone tests marked `ci`.
# Two pytest workers (pytest-xdist), one per core of the 2-core machines this runs on, each
# with one torch/OpenMP thread (two workers of two threads oversubscribe the cores: a third
# slower; the runs they start inherit it).
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow or ci" -n 2 --dist worksteal $(ARGS)

# Everything, including every real-backbone test.
test-all: setup
	$(PY) -m pytest $(ARGS)

# The suite on the newest releases pyproject.toml allows, in a second venv made anew
# (.venv-latest), so an upgrade's failures are seen before users see them. Not part of CI.
# SPT_UNTESTED_TRANSFORMERS=1: the T5 version guard warns instead of refusing, so the tests
# show whether the new release still works.
test-latest:
	bash scripts/setup.sh latest
	OMP_NUM_THREADS=1 SPT_TEST_LATEST=1 SPT_UNTESTED_TRANSFORMERS=1 .venv-latest/bin/python -m pytest \
	  -m "not slow or ci" -n 2 --dist worksteal $(ARGS)

# Refresh requirements-lock.txt after editing pyproject.toml (ARGS=--upgrade to move every
# pin to the newest allowed). uv pip compile writes a plain requirements file that pip
# installs; torch's CPU build is read from TORCH_WHEELS.
TORCH_WHEELS ?= /opt/wheels
lock: setup
	$(VENV)/bin/uv pip compile pyproject.toml --all-extras --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) \
	  -c scripts/lock-constraints.txt --custom-compile-command "make lock" \
	  -o requirements-lock.txt $(ARGS)

# Style and layering, run by CI after the tests (and by pre-commit before each commit): ruff's
# lint rules and formatting, and the import contracts of pyproject.toml (lint-imports).
lint: setup
	$(VENV)/bin/ruff check spt tests scripts
	$(VENV)/bin/ruff format --check spt tests scripts
	$(VENV)/bin/lint-imports
