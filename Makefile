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

# Everything but the tests marked slow (Ray clusters, whole studies, benches): minutes. One
# pytest worker per core (pytest-xdist), each on one torch thread: most of these tests keep
# one core busy, and two workers' default threads would fight over the cores.
FAST_TESTS := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -n auto

# Every test: test-fast's, then the slow ones in one pytest process, one after another (their
# Ray processes keep every core busy themselves: side by side they only slowed each other,
# docs/performance.md). Both parts run whatever the first one's outcome.
test: $(STAMP)
	$(FAST_TESTS); fast=$$?; \
	$(BIN)/python -m pytest -m slow; slow=$$?; \
	test $$fast -eq 0 -a $$slow -eq 0

test-fast: $(STAMP)
	$(FAST_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) results runs .pytest_cache .ruff_cache
