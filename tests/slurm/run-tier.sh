#!/usr/bin/env bash
# The SLURM test tier: start a real single-node SLURM cluster (fake GPU) with the shared tool,
# run the tests marked `slurm` through snakemake-executor-plugin-slurm, stop the daemons.
# Skips (exit 0, saying why) where the tool or root is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
tool=../shared/tools/start-local-slurm.sh
if [ ! -f "$tool" ]; then echo "slurm tier skipped: $tool not found"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "slurm tier skipped: starting slurmctld needs root"; exit 0; fi
trap 'bash "$tool" stop' EXIT
SLURM_FAKE_GPUS=1 bash "$tool"
ELMLFF_SLURM=1 OMP_NUM_THREADS=1 "${PYTHON:-.venv/bin/python}" -m pytest -q -p no:cacheprovider \
  -m slurm tests/test_slurm.py
