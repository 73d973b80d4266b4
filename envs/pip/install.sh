#!/usr/bin/env bash
# Create (or refresh) the project's venv with the whole stack, pip only, CPU torch.
# Usage: envs/pip/install.sh [VENV_DIR]   (default .venv)
# Idempotent: a stamp holding the hash of the pin files skips work already done.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv}"
c="$here/constraints.txt"
stamp="$venv/.elmlff-stack"
want="$(cat "$here/constraints.txt" "$here/requirements.txt" "$here/install.sh" | sha256sum | cut -c1-16)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" >/dev/null
  echo "elmlff: venv $venv is up to date"
  exit 0
fi
t0=$SECONDS
[[ -x "$venv/bin/python" ]] || python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
# (the grep drops pip's warnings about this machine's optional local indexes)
pipq() { "$venv/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip=(pipq)
log() { echo "elmlff install [$((SECONDS - t0)) s]: $*"; }

log "pip/setuptools/wheel"
"${pip[@]}" install -q --no-warn-script-location --upgrade "pip==25.3" "setuptools==80.9.0" "wheel==0.45.1"
# 1. torch first, exactly 2.13.0 (CPU wheel); the constraints file keeps every later step on it.
log "torch==2.13.0 (CPU)"
"${pip[@]}" install -q --no-warn-script-location "torch==2.13.0" -c "$c"
# 2. everything else that has a normal install, all pinned.
log "stack (snakemake, xarray/zarr, ase, torch-geometric, e3nn, nequip, ...)"
"${pip[@]}" install -q --no-warn-script-location -r "$here/requirements.txt" -c "$c"
# 3. schnetpack 2.2.0 declares Python>=3.12 but runs on 3.11; 2.1.1 pins sympy<=1.12 which
#    torch 2.13 cannot use. Its runtime deps are in requirements.txt.
log "schnetpack 2.2.0"
"${pip[@]}" install -q --no-warn-script-location --no-deps --ignore-requires-python "schnetpack==2.2.0"
# 4. deepmd-kit 3.2.0: the wheel's C++ op is built for torch 2.11, so build the sdist against
#    the installed torch (PyTorch backend only; TensorFlow never needed).
if ! "$venv/bin/python" -c "import deepmd.pt" 2>/dev/null; then
  log "deepmd-kit 3.2.0 from its sdist (~2 min)"
  DP_VARIANT=cpu DP_ENABLE_TENSORFLOW=0 DP_ENABLE_PYTORCH=1 CMAKE_BUILD_PARALLEL_LEVEL=2 \
    "${pip[@]}" install -q --no-warn-script-location -c "$c" --no-build-isolation --no-deps --no-binary deepmd-kit "deepmd-kit==3.2.0"
fi
# 5. orb-models 0.5.5 (the orb_direct family: the orb-v3-direct architecture, trained from
#    scratch) with --no-deps: its cached_path is only for downloading pretrained weights, which
#    the project never uses, and pins rich<14 and filelock<4 against the stack's rich 15
#    (schnetpack) and filelock 4 (torch), so it is left out. Its other deps (dm-tree 0.1.8,
#    ase, numpy, scipy, torch, tqdm) are in requirements.txt.
log "orb-models 0.5.5 (without cached_path)"
"${pip[@]}" install -q --no-warn-script-location --no-deps "orb-models==0.5.5" -c "$c"
# 6. this project, editable.
log "elmlff (editable)"
"${pip[@]}" install -q --no-warn-script-location --no-deps --no-build-isolation -e "$root"
# pip check, where the one missing requirement allowed is orb-models' cached_path (step 5)
if ! check="$("$venv/bin/python" -m pip --disable-pip-version-check check 2>&1)"; then
  if grep -qv "^orb-models 0.5.5 requires cached-path, which is not installed.$" <<<"$check"; then
    echo "$check"
    echo "elmlff install: pip check failed (see above)"
    exit 1
  fi
fi
"$venv/bin/python" -c "import torch, schnetpack, deepmd.pt, nequip, torch_geometric, e3nn, snakemake, orb_models.forcefield.direct_regressor, chgnet.model, sevenn.calculator, diep.pretrained; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "$want" > "$stamp"
log "done"
