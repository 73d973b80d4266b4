# The two commands of the README:
#   make run    set up .venv (once) and run the default campaign -> results/
#   make test   set up .venv (once) and run the test suite (what .ci/run calls)
#   make test-slurm   the SLURM tier: a live single-node cluster (root, ../shared/tools)
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export OMP_NUM_THREADS ?= 2

.PHONY: setup run test test-slurm lint dag readme-table readme-md17 readme-methanol readme-materials bench clean-results

setup:
	bash envs/pip/install.sh $(VENV)

run: setup
	$(PY) -m snakemake

test: setup
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest -q

test-slurm: setup
	PYTHON=$(PY) bash tests/slurm/run-tier.sh

bench: setup
	$(PY) bench/dag_build.py
	$(PY) bench/meta_inference.py
	$(PY) bench/subsets.py --epochs 3
	$(PY) bench/md_steps.py

lint: setup
	$(PY) -m ruff check src tests bench
	$(PY) -m snakemake --lint

# splice results/methane/summary.md and findings.md (made by the workflow's campaign_summary
# and findings rules from results/ only) into README.md
readme-table: setup
	$(PY) -m snakemake results/methane/summary.md results/methane/findings.md
	$(PY) -m elmlff splice results/methane/summary.md --into README.md --marker summary:methane
	$(PY) -m elmlff splice results/methane/findings.md --into README.md --marker findings:methane
	$(PY) -m elmlff splice bench/measured/subsets_cuda_h200.md --into README.md --marker bench:subsets-cuda
	$(PY) -m elmlff splice bench/measured/md_steps_cpu.md --into README.md --marker bench:md-steps
	$(PY) -m elmlff splice bench/measured/meta_inference_cpu.md --into README.md --marker bench:meta-inference
	$(PY) -m elmlff splice bench/measured/subsets_amortized_methanol_cu_cpu.md --into README.md --marker bench:subsets-amortized-slab

# the MD17 laptop campaign's Table 1 and figures (config/campaigns/md17_laptop.yaml; needs
# the rMD17 split files) into README.md and docs/md17/
MD17 := aspirin ethanol naphthalene salicylic
readme-md17: setup
	$(PY) -m snakemake -c2 --configfile config/campaigns/md17_laptop.yaml
	$(PY) -m elmlff splice results/table1.md --into README.md --marker table1:md17
	mkdir -p docs/md17 && cp results/figures/stability.png docs/md17/stability.png
	for m in $(MD17); do cp results/$$m/figures/learning_curves.png docs/md17/learning_curves_$$m.png; done

# the methanol/Cu(100) campaign (config/campaigns/methanol_cu.yaml; needs the data set in
# ../shared) into README.md and docs/methanol_cu/: its summary, findings, Fig. 2b and Fig. 3a
readme-methanol: setup
	$(PY) -m snakemake -c2 --configfile config/campaigns/methanol_cu.yaml
	$(PY) -m elmlff splice results/methanol_cu/summary.md --into README.md --marker summary:methanol_cu
	$(PY) -m elmlff splice results/methanol_cu/findings.md --into README.md --marker findings:methanol_cu
	mkdir -p docs/methanol_cu
	for f in force_rmse subsets_raincloud md_hr; do cp results/methanol_cu/figures/$$f.png docs/methanol_cu/; done

# the materials campaign (config/campaigns/materials.yaml; needs mlearn in ../shared) into
# README.md and docs/materials/: Table 2, the equations of state, its summary and findings
readme-materials: setup
	$(PY) -m snakemake -c2 --configfile config/campaigns/materials.yaml
	$(PY) -m elmlff splice results/mlearn/table2.md --into README.md --marker table2:materials
	$(PY) -m elmlff splice results/mlearn/eos.md --into README.md --marker eos:materials
	$(PY) -m elmlff splice results/mlearn/summary.md --into README.md --marker summary:mlearn
	$(PY) -m elmlff splice results/mlearn/findings.md --into README.md --marker findings:mlearn
	mkdir -p docs/materials
	for f in force_rmse parity subsets_raincloud uncertainty md_hr; do cp results/mlearn/figures/$$f.png docs/materials/; done

dag: setup
	$(PY) -m snakemake --dag | dot -Tsvg > results/dag.svg

clean-results:
	rm -rf results/* logs .snakemake
