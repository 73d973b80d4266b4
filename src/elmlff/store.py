"""The per-data-set prediction store: ``results/{dataset}/predictions.zarr`` (xarray + zarr).

Dims: ``frame``, ``atom`` (flat over all frames, see :mod:`elmlff.keys`), ``xyz``,
``cell_vector``, ``model``. Every variable, its dims and its unit are listed in
:data:`elmlff.keys.VARIABLES`; each variable also carries ``units`` as an attribute.
The data stage writes the reference part (``reference.zarr``, no ``model`` dim); the store
stage adds every base's energies and forces.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from elmlff import __version__, keys
from elmlff.data.frames import Frames
from elmlff.data.split import Split
from elmlff.errors import ElmlffError
from elmlff.io import atomic_path

#: distributions whose versions every store records (beside each base family's own)
CORE_PACKAGES = ("torch", "torch-geometric", "e3nn", "ase", "xarray", "zarr", "numpy", "snakemake")


def config_hash(cfg: Mapping[str, Any]) -> str:
    """Short stable hash of a (JSON-able) config."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit(cwd: Path | None = None) -> str:
    """The project's git commit (with ``-dirty``), or ``unknown`` outside a checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(cfg: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Attributes recording how a store was made."""
    from elmlff.bases import distributions

    versions = {}
    for p in (*CORE_PACKAGES, *distributions()):
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return {
        "elmlff_version": __version__,
        "git_commit": git_commit(),
        "config_hash": config_hash(cfg or {}),
        "package_versions": json.dumps(versions, sort_keys=True),
        "units": json.dumps({"length": "Å", "energy": "eV", "forces": "eV/Å"}),
    }


def _var(name: str, data: np.ndarray) -> xr.Variable:
    v = keys.VARIABLES[name]
    return xr.Variable(v.dims, data, attrs={"units": v.unit, "description": v.doc})


def reference_dataset(
    frames: Frames, split: Split, attrs: Mapping[str, Any] | None = None
) -> xr.Dataset:
    """The reference part of the store: structures, labels and split labels."""
    nf = len(frames)
    data = {
        keys.NUMBERS: frames.numbers,
        keys.POSITIONS: frames.positions,
        keys.CELL: frames.cell,
        keys.PBC: frames.pbc,
        keys.N_ATOMS: frames.n_atoms,
        keys.OFFSETS: frames.offsets,
        keys.FRAME_OF_ATOM: frames.frame_of_atom,
        keys.ENERGY: frames.energy,
        keys.FORCES: frames.forces,
        keys.SOURCE_INDEX: frames.source_index,
        keys.SOURCE_PART: frames.source_part.astype(str),
        keys.SPLIT: split.labels(nf),
        keys.FOLD: split.fold_of(nf),
    }
    ds = xr.Dataset({k: _var(k, v) for k, v in data.items()})
    ds.attrs.update(attrs or {})
    ds.attrs["split_seed"] = split.seed
    ds.attrs["split_method"] = split.method
    ds.attrs["kfold"] = split.kfold
    return ds


def frames_from_dataset(ds: xr.Dataset, frames: Sequence[int] | np.ndarray | None = None) -> Frames:
    """Reference `Frames` from a store (optionally only the given frame indices)."""
    f = Frames(
        numbers=ds[keys.NUMBERS].values,
        positions=ds[keys.POSITIONS].values,
        n_atoms=ds[keys.N_ATOMS].values,
        cell=ds[keys.CELL].values,
        pbc=ds[keys.PBC].values,
        energy=ds[keys.ENERGY].values,
        forces=ds[keys.FORCES].values,
        source_index=ds[keys.SOURCE_INDEX].values,
        source_part=ds[keys.SOURCE_PART].values.astype(str),
        name=ds.attrs.get("dataset", "store"),
    )
    return f if frames is None else f.subset(frames)


def with_bases(
    ref: xr.Dataset,
    models: Sequence[str],
    energy: np.ndarray,
    forces: np.ndarray,
    in_sample: np.ndarray,
    model_attrs: Mapping[str, Mapping[str, Any]] | None = None,
) -> xr.Dataset:
    """The full store: the reference plus each base's ``energy (model, frame)`` and
    ``forces (model, atom, xyz)``; ``in_sample`` marks frames the predicting base trained on."""
    nm, nf, na = len(models), ref.sizes["frame"], ref.sizes["atom"]
    for name, arr, shape in (
        ("energy", energy, (nm, nf)),
        ("forces", forces, (nm, na, 3)),
        ("in_sample", in_sample, (nm, nf)),
    ):
        if arr.shape != shape:
            raise ElmlffError(
                f"base {name} have shape {arr.shape}, expected {shape}",
                "predict every frame of the reference store with every base",
            )
    if not np.isfinite(energy).all() or not np.isfinite(forces).all():
        bad = [
            m
            for i, m in enumerate(models)
            if not (np.isfinite(energy[i]).all() and np.isfinite(forces[i]).all())
        ]
        raise ElmlffError(
            f"non-finite base predictions from {bad}",
            "retrain those bases (training diverged) or lower their learning rate",
        )
    ds = ref.copy()
    ds = ds.assign_coords(model=("model", np.asarray(models, dtype=str)))
    ds[keys.BASE_ENERGY] = _var(keys.BASE_ENERGY, energy)
    ds[keys.BASE_FORCES] = _var(keys.BASE_FORCES, forces)
    ds[keys.BASE_IN_SAMPLE] = _var(keys.BASE_IN_SAMPLE, in_sample.astype(bool))
    ds.attrs["model_info"] = json.dumps(dict(model_attrs or {}), sort_keys=True, default=str)
    return ds


def with_hvp(ds: xr.Dataset, hvp: np.ndarray, directions: np.ndarray, seed: int) -> xr.Dataset:
    """Add each base's Hessian-vector product along ``hvp_direction`` (one unit vector per
    frame, the same for every base)."""
    if not np.isfinite(hvp).all():
        raise ElmlffError("non-finite Hessian-vector products", "retrain the affected bases")
    ds = ds.copy()
    ds[keys.HVP_DIRECTION] = _var(keys.HVP_DIRECTION, directions)
    ds[keys.BASE_HVP] = _var(keys.BASE_HVP, hvp)
    ds.attrs["hvp_seed"] = seed
    return ds


def write(ds: xr.Dataset, path: Path | str) -> None:
    """Write a store atomically (temp directory + rename)."""
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=True, zarr_format=2)


def open_store(path: Path | str) -> xr.Dataset:
    """Open a store, loaded into memory (stores here are small)."""
    path = Path(path)
    if not path.exists():
        raise ElmlffError(f"store not found: {path}", "run the workflow stage that writes it")
    with xr.open_zarr(path, consolidated=True) as ds:
        return ds.load()


def block(
    ds: xr.Dataset, frames: Frames, idx: np.ndarray, models: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Base predictions and labels of the store frames ``idx`` (bases ``models``, default all):
    ``energy (M, F)``, ``forces (M, A, 3)``, ``ref_energy``, ``ref_forces``, ``n_atoms``.
    ``frames`` is :func:`frames_from_dataset` of ``ds`` (read once by the caller)."""
    a = frames.atom_index(idx)
    names = ds["model"].values.astype(str).tolist()
    m = [names.index(x) for x in models] if models is not None else slice(None)
    return {
        "energy": ds[keys.BASE_ENERGY].values[m][:, idx],
        "forces": ds[keys.BASE_FORCES].values[m][:, a],
        "ref_energy": frames.energy[idx],
        "ref_forces": frames.forces[a],
        "n_atoms": frames.n_atoms[idx],
    }


def package_version(dist: str) -> str:
    """``"dist version"`` of an installed distribution (``dist`` alone if it is not)."""
    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return dist
