# Two entry points for a fresh clone (only Python >= 3.10 and git needed):
#   make lab   set everything up, open JupyterLab on the getting-started notebook (embedded emulator)
#   make test  set everything up, run linters, type checks and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test lint typecheck pytest sysdeps bench emulator clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/01-getting-started.ipynb

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check dsql_magic tests bench
	$(BIN)/ruff format --check dsql_magic tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

sysdeps:
	bash tools/ensure-system-deps.sh

pytest: $(STAMP) sysdeps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench

emulator: $(STAMP)
	$(BIN)/dsql-emulator serve --data-dir .emulator-data

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
