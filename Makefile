# Two entry points, both safe to repeat: `make demo` and `make test`.
# The virtual environment is created on first use and refreshed when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test lint venv

venv: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,plot,slurm,ray,extract]'
	touch $(INSTALLED)

# The MedFuse-era built-ins. drfuse is left out of `make demo`: its two ResNet-50 trunks and its
# transformer cost about as much training time as the other entries together (CONTRIBUTING, "The
# built-in DrFuse"); the committed board adds it with
# `fusebench leaderboard --preset quick --jobs 2 --methods drfuse` (about 10 min on 2 cores).
DEMO_METHODS := daft,early,joint,late,medfuse,medfuse-ri,mmtm,uni-cxr,uni-ehr

demo: $(INSTALLED)
	$(BIN)/fusebench leaderboard --preset quick --jobs 2 --methods $(DEMO_METHODS)

lint: $(INSTALLED)
	$(BIN)/ruff check .

# One test process per core, at most 4 (each holds torch); a file's tests stay in one process, so
# its module fixtures are built once.
test: lint
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile
