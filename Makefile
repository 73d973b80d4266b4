# The two commands of the README:
#   make run    set up .venv (once) and run the default campaign -> results/
#   make test   set up .venv (once) and run the test suite (what .ci/run calls)
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export OMP_NUM_THREADS ?= 2
export DP_INTRA_OP_PARALLELISM_THREADS ?= 2

.PHONY: setup run test lint dag readme-table clean-results

setup:
	bash envs/pip/install.sh $(VENV)

run: setup
	$(PY) -m snakemake

test: setup
	$(PY) -m ruff check src tests
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check src tests
	$(PY) -m snakemake --lint

# splice results/methane/summary.md (made by the workflow) into README.md's marked block
readme-table: setup
	$(PY) -m elmlff summary results/methane --out results/methane/summary.md --readme README.md

dag: setup
	$(PY) -m snakemake --dag | dot -Tsvg > results/dag.svg

clean-results:
	rm -rf results/* logs .snakemake
