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
    if frames.stress is not None:
        data[keys.STRESS] = frames.stress
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
        stress=ds[keys.STRESS].values if keys.STRESS in ds else None,
    )
    return f if frames is None else f.subset(frames)


def with_bases(
    ref: xr.Dataset,
    models: Sequence[str],
    energy: np.ndarray,
    forces: np.ndarray,
    in_sample: np.ndarray,
    model_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    validated_on: np.ndarray | None = None,
) -> xr.Dataset:
    """The full store: the reference plus each base's ``energy (model, frame)`` and
    ``forces (model, atom, xyz)``; ``in_sample`` marks frames the predicting base trained on,
    ``validated_on`` those any of its fits early-stopped or chose its checkpoint on."""
    validated_on = np.zeros_like(in_sample, bool) if validated_on is None else validated_on
    nm, nf, na = len(models), ref.sizes["frame"], ref.sizes["atom"]
    for name, arr, shape in (
        ("energy", energy, (nm, nf)),
        ("forces", forces, (nm, na, 3)),
        ("in_sample", in_sample, (nm, nf)),
        ("validated_on", validated_on, (nm, nf)),
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
    ds[keys.BASE_VALIDATED_ON] = _var(keys.BASE_VALIDATED_ON, validated_on.astype(bool))
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


def with_alignment(
    ds: xr.Dataset, method: str, species: Sequence[int], offsets: np.ndarray, counts: np.ndarray
) -> xr.Dataset:
    """Per-element energy alignment (:mod:`elmlff.alignment`; ``counts``: each frame's atoms
    per element of ``species``): ``base_energy`` becomes the aligned energy, the raw one is
    kept as ``base_energy_raw`` and the offsets ``(model, element)`` as
    ``base_energy_offset``."""
    from elmlff import alignment

    raw = ds[keys.BASE_ENERGY].values
    ds = ds.copy()
    ds = ds.assign_coords(element=("element", np.asarray(species, dtype=np.int64)))
    ds[keys.BASE_ENERGY_RAW] = _var(keys.BASE_ENERGY_RAW, raw)
    ds[keys.BASE_ENERGY] = _var(keys.BASE_ENERGY, raw + alignment.shift(counts, offsets))
    ds[keys.BASE_ENERGY_OFFSET] = _var(keys.BASE_ENERGY_OFFSET, offsets)
    ds.attrs["energy_alignment"] = method
    return ds


def energy_offsets(ds: xr.Dataset) -> dict[str, dict[int, float]] | None:
    """Each base's per-element energy offsets ``{model: {Z: eV/atom}}``, or None where the
    store's energies are not aligned."""
    if keys.BASE_ENERGY_OFFSET not in ds:
        return None
    z = ds["element"].values.astype(int).tolist()
    off = ds[keys.BASE_ENERGY_OFFSET].values
    return {
        str(m): dict(zip(z, map(float, off[i]), strict=True))
        for i, m in enumerate(ds["model"].values)
    }


def with_stress(ds: xr.Dataset, stress: np.ndarray) -> xr.Dataset:
    """Add each base's stress ``(model, frame, 3, 3)`` in eV/Å³."""
    if not np.isfinite(stress).all():
        raise ElmlffError("non-finite base stress", "check the bases that predict stress")
    ds = ds.copy()
    ds[keys.BASE_STRESS] = _var(keys.BASE_STRESS, stress)
    return ds


def write(ds: xr.Dataset, path: Path | str) -> None:
    """Write a store atomically (temp directory + rename)."""
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=True, zarr_format=2)


def open_store(path: Path | str) -> xr.Dataset:
    """Open a store, loaded into memory (stores here are small), after checking it is whole:
    consolidated metadata readable, every chunk file present and of the length its header
    states, and no NaN where a value must be (reference labels, base predictions)."""
    path = Path(path)
    if not path.exists():
        raise ElmlffError(f"store not found: {path}", "run the workflow stage that writes it")
    meta = _consolidated(path)
    for name, arr in meta.items():
        _check_chunks(path, name, arr)
    try:
        with xr.open_zarr(path, consolidated=True) as ds:
            ds = ds.load()
    except Exception as exc:  # zarr/blosc/xarray raise many types for damaged stores
        raise _damaged(path, f"cannot be read ({type(exc).__name__}: {_first_line(exc)})") from exc
    _check_finite(path, ds)
    return ds


# -- checks of a store on disk (zarr v2, as `write` makes them) -------------------------------
#: variables whose every value may equal zarr's default fill (0, False, ""), so zarr may skip
#: writing a chunk of them; a missing chunk of any other variable is damage
_MAY_SKIP_CHUNKS = frozenset(
    {
        keys.PBC,
        keys.BASE_IN_SAMPLE,
        keys.BASE_VALIDATED_ON,
        keys.FOLD,
        keys.SOURCE_INDEX,
        keys.FRAME_OF_ATOM,
        keys.OFFSETS,
        keys.SOURCE_PART,
    }
)


def made_at(path: Path | str) -> str:
    """The short commit a store was written at (``-dirty`` kept), ``unknown`` when not recorded
    or when there is no store."""
    if not Path(path).exists():
        return "unknown"
    commit = str(open_store(path).attrs.get("git_commit", "unknown"))
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]


def _damaged(path: Path, what: str) -> ElmlffError:
    from elmlff.layout import DatasetLayout

    reference = Path(DatasetLayout(path.parent.name).reference).name
    rule = "prepare_dataset" if path.name == reference else "merge_store"
    return ElmlffError(
        f"store {path} is damaged: {what}",
        f"rerun the rule that writes it: snakemake --forcerun {rule}",
    )


def _consolidated(path: Path) -> dict[str, dict[str, Any]]:
    """{variable: its .zarray} from the store's consolidated metadata (``.zmetadata``)."""
    if (path / "zarr.json").exists():  # zarr v3: no .zmetadata; zarr checks it when reading
        return {}
    try:
        meta = json.loads((path / ".zmetadata").read_text())["metadata"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(
            path, f"consolidated metadata .zmetadata missing or unreadable ({type(exc).__name__})"
        ) from exc
    return {
        k.removesuffix("/.zarray"): v
        for k, v in meta.items()
        if k.endswith("/.zarray") and isinstance(v, dict)
    }


def _check_chunks(path: Path, name: str, arr: dict[str, Any]) -> None:
    """Every chunk file of a zarr v2 array present (unless zarr may have skipped it as all
    fill value) and, for blosc, exactly as long as its header says."""
    import itertools
    import math
    import struct

    try:
        shape, chunks = arr["shape"], arr["chunks"]
        dtype = np.dtype(arr["dtype"])
    except (KeyError, TypeError) as exc:
        raise _damaged(path, f"metadata of '{name}' unreadable") from exc
    sep = arr.get("dimension_separator") or "."
    codec = (arr.get("compressor") or {}).get("id")
    fill = arr.get("fill_value")
    # a skipped float chunk reads as its fill value: NaN for the stores `write` makes
    finite_fill = isinstance(fill, int | float) and np.isfinite(fill)
    may_skip = name in _MAY_SKIP_CHUNKS or (dtype.kind in "fc" and finite_fill)
    grid = [range(math.ceil(n / c)) if n else range(0) for n, c in zip(shape, chunks, strict=True)]
    expect = math.prod(chunks) * dtype.itemsize
    for idx in itertools.product(*grid) if shape else [()]:
        key = sep.join(str(i) for i in idx) or "0"
        chunk = path / name / key
        if not chunk.is_file():
            if may_skip:
                continue
            raise _damaged(path, f"chunk file {name}/{key} is missing")
        if codec != "blosc" or arr.get("filters"):
            continue
        with chunk.open("rb") as fh:
            head = fh.read(16)
        size = chunk.stat().st_size
        if len(head) < 16:
            raise _damaged(path, f"chunk file {name}/{key} is truncated ({size} bytes)")
        nbytes, cbytes = struct.unpack("<I4xI", head[4:16])
        if cbytes != size or (dtype.kind != "O" and nbytes != expect):
            raise _damaged(
                path,
                f"chunk file {name}/{key} is truncated or corrupt ({size} bytes, its header "
                f"says {cbytes})",
            )


def _check_finite(path: Path, ds: xr.Dataset) -> None:
    """No NaN/inf in any float variable (reference labels, positions, cells, base predictions):
    zarr reads a lost chunk of them as NaN."""
    for name, var in ds.data_vars.items():
        if var.dtype.kind != "f":
            continue
        bad = ~np.isfinite(var.values)
        if bad.any():
            first = dict(zip(var.dims, (int(i) for i in np.argwhere(bad)[0]), strict=True))
            models = ds["model"].values if "model" in ds.coords else None
            where = [
                f"model {models[i]}" if d == "model" and models is not None else f"{d} {i}"
                for d, i in first.items()
                if d not in ("xyz", "cell_vector")
            ]
            if "atom" in first and keys.FRAME_OF_ATOM in ds:
                where.append(f"frame {int(ds[keys.FRAME_OF_ATOM].values[first['atom']])}")
            raise _damaged(
                path, f"{int(bad.sum())} NaN/inf values in '{name}' (first: {', '.join(where)})"
            )


def block(
    ds: xr.Dataset, frames: Frames, idx: np.ndarray, models: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Base predictions and labels of the store frames ``idx`` (bases ``models``, default all):
    ``energy (M, F)``, ``forces (M, A, 3)``, ``ref_energy``, ``ref_forces``, ``n_atoms``,
    ``numbers (A,)``.
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
        "numbers": frames.numbers[a],
    }


def package_version(dist: str) -> str:
    """``"dist version"`` of an installed distribution (``dist`` alone if it is not)."""
    try:
        return f"{dist} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return dist
