# Every target sets up what it needs: .venv is created, and the project installed into it
# with its dev extra, whenever it is missing or pyproject.toml is newer than the last install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m study.run

test: $(STAMP)
	$(BIN)/python -m pytest

# Everything but the tests marked slow (Ray clusters, whole studies, benches): minutes. One
# pytest worker per core (pytest-xdist), each on one torch thread: most of these tests keep
# one core busy, and two workers' default threads would fight over the cores.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -n auto

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) results runs .pytest_cache .ruff_cache
