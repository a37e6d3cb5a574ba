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

# The MedFuse-era built-ins. drfuse is left out of the CPU demo: its two ResNet-50 trunks cost
# about 12 CPU minutes per quick in-hospital-mortality epoch here (CONTRIBUTING, "The built-in
# DrFuse"), more than the rest of the board together; add it with --methods on a GPU.
DEMO_METHODS := daft,early,joint,late,medfuse,medfuse-ri,mmtm,uni-cxr,uni-ehr

demo: $(INSTALLED)
	$(BIN)/fusebench leaderboard --preset quick --jobs 2 --methods $(DEMO_METHODS)

lint: $(INSTALLED)
	$(BIN)/ruff check .

# One test process per core, at most 4 (each holds torch); a file's tests stay in one process, so
# its module fixtures are built once.
test: lint
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile
