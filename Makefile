# Two commands do all the set-up on a fresh machine:
#   make demo   # create .venv, install crackscope with training extras, run the demo on generated data
#   make test   # same install, then the linter and the test suite
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.crackscope-installed
EXTRAS ?= train,votes,review,plant,line,opcua,dev

.PHONY: demo test lint format install benchmarks clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/crackscope demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf demo-out runs .pytest_cache .ruff_cache build *.egg-info
