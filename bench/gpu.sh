#!/usr/bin/env bash
# The GPU benchmark (issue 18), one short run on a machine with a CUDA GPU and a Python whose
# torch sees it. Each part prints ratios measured in that one run:
#   1. the subset study, dedicated and amortized (bench/subsets.py --method both);
#   2. meta-model inference against the summed bases (bench/meta_inference.py);
#   3. ensemble MD steps per second against the summed bases' own steps (bench/md_steps.py).
# Parts 2 and 3 need the base families' packages (schnetpack, deepmd-kit, nequip); where one is
# missing the part says so and is skipped. Output goes to $OUT (default bench/measured/gpu) as
# one text file per part plus the machine's facts; splice a summary into the README by hand
# only from these files.
#   PYTHON=python3 bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench/measured/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
{
  date -u +"%Y-%m-%dT%H:%MZ"
  git rev-parse --short HEAD 2>/dev/null || echo "(no git)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'visible', torch.cuda.is_available())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" || {
  echo "no CUDA GPU visible to torch: nothing measured"; exit 3; }
part() {  # name, python module that must import, command...
  local name=$1 need=$2; shift 2
  if ! "$PY" -c "import $need" 2>/dev/null; then
    echo "$name: skipped ($need is not installed here)" | tee "$OUT/$name.txt"; return 0
  fi
  echo "== $name: $*"
  ( time "$PY" "$@" ) > "$OUT/$name.txt" 2>&1
  echo "rc $? ($name)" >> "$OUT/$name.txt"
  grep -v -i "warn" "$OUT/$name.txt" | tail -n 30
}
part subsets torch_geometric bench/subsets.py --device cuda --epochs 5 --method both
part meta_inference "schnetpack, deepmd, nequip" bench/meta_inference.py --device cuda
part md_steps "schnetpack, deepmd, nequip" bench/md_steps.py --device cuda --steps 100
