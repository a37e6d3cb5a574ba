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

demo: $(INSTALLED)
	$(BIN)/fusebench leaderboard --preset quick --jobs 2

lint: $(INSTALLED)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest
