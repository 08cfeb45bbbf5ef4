# The two commands of the README:  make run   and   make test
VENV ?= .venv
PY := $(VENV)/bin/python
# The benchmark data lives beside the repo (../shared/data) unless SPT_DATA_DIR says otherwise.
export SPT_DATA_DIR ?= $(abspath ../shared/data)
export WANDB_MODE ?= offline

.PHONY: setup run test test-all lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh dev
	touch $@

# The default main job: Prompt Tuning on SST-2 with the packaged MiniLM, offline.
run: setup
	$(PY) -m spt.run $(ARGS)

# The default suite (tiny models) plus the few real-backbone tests marked `ci`.
# Two pytest workers (pytest-xdist), one per core of the 2-core machines this runs on.
test: setup
	$(PY) -m pytest -m "not slow or ci" -n 2 $(ARGS)

# Everything, including every real-backbone test.
test-all: setup
	$(PY) -m pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff check spt tests scripts
