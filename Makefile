# calib-mpi: every target installs what it needs first (idempotent), then does its job.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
NP ?= 4
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1
# as root, the set-up installs the Debian packages it needs (MPI, parallel HDF5); otherwise it
# uses the MPI and HDF5 it finds (modules, HDF5_DIR, h5pcc): see scripts/setup-env.sh
export CALIB_MPI_APT ?= $(shell [ "$$(id -u)" = 0 ] && echo 1 || echo 0)

.PHONY: setup demo demo-drscs test lint bench clean

setup:
	@bash scripts/setup-env.sh

demo: setup
	@bash scripts/demo.sh $(NP)

demo-drscs: setup
	@bash scripts/demo_drscs.sh $(NP)

test:
	@WITH_SLURM=1 bash scripts/setup-env.sh
	@echo "[test] ruff check"
	@$(VENV)/bin/ruff check calib_mpi tests benchmarks
	@echo "[test] pytest"
	@$(PY) -m pytest -ra $(PYTEST_ARGS)

lint: setup
	@$(VENV)/bin/ruff check calib_mpi tests benchmarks

bench: setup
	@$(PY) benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf demo demo-drscs bench-out .pytest_cache
