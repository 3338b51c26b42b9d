# `make run`: set up (first time only) and run the embedded default sweep.
# `make test`: set up (first time only) and run the test suite.
# `make test-fast`: the same, less the tests marked cluster, browser or slow (docs/tests.md).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Without a GPU, take torch's CPU build first: the open range in pyproject would otherwise
# pull a CUDA build and gigabytes of CUDA libraries that a CPU-only machine never uses.
CPU_TORCH ?= torch==2.13.*

.PHONY: run test test-fast setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PYTHON) -m pip install --quiet "$(CPU_TORCH)"; fi
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $@

run: setup
	$(PYTHON) -m orchestrator.run

test: setup
	$(PYTHON) -m pytest -q

test-fast: setup
	$(PYTHON) -m pytest -q -m "not cluster and not browser and not slow"

clean:
	rm -rf $(VENV)
