# sgm — the two commands a new user needs: `make demo` and `make test`.
# Both create .venv (Python >= 3.11) and install the project on first use.

PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; override on GPU machines, e.g. `make TORCH=torch demo`.
TORCH ?= torch==2.13.0
CORES ?= 2
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.sgm-installed

.PHONY: setup demo test lint schemas bench clean-results help

help:
	@echo "make demo   run the default workflow (HadCM3 x4 downscaling) on $(CORES) cores"
	@echo "make test   run the test suite"
	@echo "make lint   ruff + snakemake --lint"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[workflow,dev]"
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	snakemake --cores $(CORES)
	@echo
	@echo "Report: $$(ls -1 results/*/*/report/index.html | head -n 5)"
	@echo "Open it in a browser; the posterior ensemble is in results/<spec>/<model>/posterior.zarr"

test: $(STAMP)
	python -m pytest -q

lint: $(STAMP)
	ruff check sgm tests benchmarks
	snakemake --lint

schemas: $(STAMP)
	sgm export-schemas --out workflow/schemas

bench: $(STAMP)
	python benchmarks/sampler_steps.py

clean-results:
	rm -rf results .snakemake
