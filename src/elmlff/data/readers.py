"""Readers for the data formats the campaign ingests. Units are converted here, once.

Every reader returns :class:`Frames` in Å / eV / eV/Å from files whose units the config
declares (``units: {energy: ..., length: ...}``); nothing is guessed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.units import factors, stress_factor

Reader = Callable[..., Frames]


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise ElmlffError(
            f"{what} not found: {path}",
            "check the data set's `path` and `parts` in the config (paths are relative to "
            "the directory snakemake runs in)",
        )
    return path


def _why(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 120 characters) of a reader's exception."""
    msg = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {msg[:120]}" if msg else type(exc).__name__


def _numeric(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``arr`` if it holds numbers, else an error naming the file and the key."""
    if arr.dtype.kind not in "iuf":
        raise ElmlffError(
            f"{path}: '{key}' holds {arr.dtype} values, not numbers",
            f"store '{key}' as a numeric array",
        )
    return arr


def _np_load(path: Path, what: str, fix: str):
    """``np.load`` of a file, or one error naming it (numpy raises several types for empty or
    damaged files)."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ElmlffError(f"{path}: not a readable {what} ({_why(exc)})", fix) from exc


def _load_npy(path: Path, key: str) -> np.ndarray:
    """A numeric ``.npy`` array, or an error naming the file."""
    _need(path, f"DeePMD {key}.npy")
    arr = _np_load(
        path, ".npy array", "rewrite the file with numpy.save (a numeric array), or remove the set"
    )
    if not isinstance(arr, np.ndarray):
        raise ElmlffError(f"{path}: not a .npy array", "rewrite the file with numpy.save")
    return _numeric(arr, path, key)


def _per_frame(arr: np.ndarray, shape: tuple[int, ...], path: Path, key: str) -> np.ndarray:
    """``arr`` reshaped to ``(-1, *shape)`` (one row per frame), or an error naming the key."""
    per = int(np.prod(shape))
    if arr.size % per:
        raise ElmlffError(
            f"{path}: '{key}' holds {arr.size} numbers, not a multiple of {per} "
            f"(one row of shape {shape} per frame)",
            f"give '{key}' one row of {per} numbers per frame",
        )
    return arr.reshape(-1, *shape)


def _no_frames(path: Path, key: str) -> ElmlffError:
    return ElmlffError(
        f"{path}: no frames ('{key}' is empty)",
        "point the data set's `path`/`parts` at a file with frames, or drop the part",
    )


def _pbc_flags(pbc: bool | str, default: bool, nf: int) -> np.ndarray:
    flag = default if pbc == "auto" else bool(pbc)
    return np.full((nf, 3), flag)


def _fixed_size(
    path: Path,
    units: tuple[float, float, float],
    z: np.ndarray,
    r: np.ndarray,
    e: np.ndarray,
    f: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    part: str,
) -> Frames:
    """Frames of equal size from ``z (F,N)``, ``r (F,N,3)``, ``e (F,)``, ``f (F,N,3)``,
    ``cell (F,3,3)`` in source units; ``units`` = (energy, length, force) factors."""
    fe, fl, ff = units
    nf, nat = r.shape[:2]
    return Frames(
        numbers=np.broadcast_to(z, (nf, nat)).reshape(-1),
        positions=r.reshape(-1, 3) * fl,
        n_atoms=np.full(nf, nat),
        cell=cell * fl,
        pbc=pbc,
        energy=e.reshape(-1) * fe,
        forces=f.reshape(-1, 3) * ff,
        source_part=np.full(nf, part),
        name=str(path),
    )


def read_deepmd(
    path: Path, *, energy_unit: str, length_unit: str, pbc: bool | str = "auto", part: str = ""
) -> Frames:
    """A DeePMD npy system: ``type.raw``, ``type_map.raw``, ``set.*/{coord,energy,force,box}.npy``.

    Periodic unless the system holds a ``nopbc`` file (DeePMD's own convention), or the config
    says otherwise.
    """
    from ase.data import atomic_numbers

    path = _need(Path(path), "DeePMD system")
    units = factors(energy_unit, length_unit, str(path))
    type_raw = _need(path / "type.raw", "DeePMD type.raw")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on an empty file; we say so below
            types = np.loadtxt(type_raw, dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise ElmlffError(
            f"{type_raw}: not a list of integer atom types ({_why(exc)})",
            "write one integer type per atom (0, 1, ...) into type.raw",
        ) from exc
    if types.size == 0 or types.ndim != 1:
        raise ElmlffError(
            f"{type_raw}: {'empty' if types.size == 0 else 'not one type per line'}",
            "write one integer type per atom (0, 1, ...) into type.raw",
        )
    tmap = (path / "type_map.raw").read_text().split() if (path / "type_map.raw").exists() else []
    if not tmap:
        raise ElmlffError(
            f"{path}: type_map.raw missing or empty",
            "write the element symbols, one per type, into type_map.raw",
        )
    try:
        z_of_type = np.array([atomic_numbers[s] for s in tmap])
    except KeyError as exc:
        raise ElmlffError(
            f"{path}/type_map.raw: {exc.args[0]!r} is not an element symbol",
            "list element symbols such as C, H, O",
        ) from exc
    if types.min() < 0 or types.max() >= len(tmap):
        raise ElmlffError(
            f"{path}: type.raw uses type {types.max() if types.min() >= 0 else types.min()} "
            f"but type_map.raw lists {len(tmap)} types",
            "make type_map.raw name every type",
        )
    sets = sorted(p for p in path.glob("set.*") if p.is_dir())
    if not sets:
        raise ElmlffError(f"{path}: no set.* folders", "point `path`/`parts` at a DeePMD system")
    nat = len(types)
    coords, energies, forces, boxes = [], [], [], []
    for s in sets:
        c = _per_frame(_load_npy(s / "coord.npy", "coord"), (nat, 3), s / "coord.npy", "coord")
        e = _load_npy(s / "energy.npy", "energy").reshape(-1)
        f = _per_frame(_load_npy(s / "force.npy", "force"), (nat, 3), s / "force.npy", "force")
        b = (
            _per_frame(_load_npy(s / "box.npy", "box"), (3, 3), s / "box.npy", "box")
            if (s / "box.npy").exists()
            else None
        )
        if not (len(c) == len(e) == len(f)) or (b is not None and len(b) != len(c)):
            raise ElmlffError(
                f"{s}: coord/energy/force/box hold different frame counts "
                f"({len(c)}, {len(e)}, {len(f)}, {None if b is None else len(b)})",
                "repair the set so every array has one row per frame",
            )
        if len(c) == 0:
            raise _no_frames(s / "coord.npy", "coord")
        coords.append(c)
        energies.append(e)
        forces.append(f)
        boxes.append(b if b is not None else np.zeros((len(c), 3, 3)))
    c, e, f, b = (np.concatenate(x) for x in (coords, energies, forces, boxes))
    default_pbc = not (path / "nopbc").exists() and bool(np.abs(b).sum() > 0)
    return _fixed_size(
        path, units, z_of_type[types], c, e, f, b, _pbc_flags(pbc, default_pbc, len(c)), part
    )


def _npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz archive, or an error naming the file (and the key that fails)."""
    path = _need(Path(path), "npz file")
    z = _np_load(
        path, "npz archive", "rewrite it with numpy.savez, or check the data set's `format`"
    )
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ElmlffError(
            f"{path}: a single .npy array, not an npz archive of named arrays",
            "rewrite it with numpy.savez(path, key=array, ...), or check the `format`",
        )
    out = {}
    with z:
        for k in z.files:
            try:
                out[k] = z[k]
            except Exception as exc:  # a damaged or object (pickled) member
                raise ElmlffError(
                    f"{path}: key '{k}' cannot be read ({_why(exc)})",
                    f"rewrite '{k}' as a numeric array with numpy.savez",
                ) from exc
    return out


def _require_keys(d: dict, keys: tuple[str, ...], path: Path, fmt: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ElmlffError(
            f"{path}: keys {missing} missing for format '{fmt}' (has {sorted(d)})",
            f"give a file with keys {list(keys)} or choose another `format`",
        )


def read_rmd17(
    path: Path, *, energy_unit: str, length_unit: str, pbc: bool | str = "auto", part: str = ""
) -> Frames:
    """rMD17 npz: ``nuclear_charges (N,)``, ``coords (F,N,3)``, ``energies (F,)``,
    ``forces (F,N,3)``.

    The ``old_*`` arrays (original MD17 labels at another level of theory) are never read.
    Molecules in vacuum: no cell, no periodicity.
    """
    path = Path(path)
    d = _npz(path)
    _require_keys(d, ("nuclear_charges", "coords", "energies", "forces"), path, "rmd17")
    units = factors(energy_unit, length_unit, str(path))
    z, r, e, f = (
        _numeric(d[k], path, k) for k in ("nuclear_charges", "coords", "energies", "forces")
    )
    if z.ndim != 1 or r.ndim != 3:
        raise ElmlffError(
            f"{path}: nuclear_charges {z.shape} must be (atoms,) and coords {r.shape} "
            "(frames, atoms, 3)",
            "reshape the arrays",
        )
    nf, nat = r.shape[0], len(z)
    if nf == 0:
        raise _no_frames(path, "coords")
    if r.shape != (nf, nat, 3) or f.shape != (nf, nat, 3) or e.reshape(-1).shape != (nf,):
        raise ElmlffError(
            f"{path}: shapes do not agree (nuclear_charges {z.shape}, coords {r.shape}, "
            f"energies {e.shape}, forces {f.shape})",
            "give coords/forces as (frames, atoms, 3) and energies as (frames,)",
        )
    return _fixed_size(
        path, units, z, r, e, f, np.zeros((nf, 3, 3)), _pbc_flags(pbc, False, nf), part
    )


def read_npz(
    path: Path, *, energy_unit: str, length_unit: str, pbc: bool | str = "auto", part: str = ""
) -> Frames:
    """Generic npz: ``R (F,N,3)``, ``z (N,)`` or ``(F,N)``, ``E (F,)``, ``F (F,N,3)``, optional
    ``cell (3,3)`` or ``(F,3,3)``. Periodic when a non-zero cell is given (unless config says)."""
    path = Path(path)
    d = _npz(path)
    _require_keys(d, ("R", "z", "E", "F"), path, "npz")
    units = factors(energy_unit, length_unit, str(path))
    r, z, e, f = (_numeric(d[k], path, k) for k in ("R", "z", "E", "F"))
    if r.ndim != 3 or f.shape != r.shape:
        raise ElmlffError(
            f"{path}: R {r.shape} and F {f.shape} must both be (frames, atoms, 3)",
            "reshape the arrays",
        )
    nf, nat = r.shape[:2]
    if nf == 0:
        raise _no_frames(path, "R")
    z = np.broadcast_to(z, (nf, nat)) if z.ndim == 1 and z.shape == (nat,) else z
    e = e.reshape(-1)
    if z.shape != (nf, nat) or e.shape != (nf,):
        raise ElmlffError(
            f"{path}: z {z.shape} / E {e.shape} do not match R {r.shape}",
            "give z as (atoms,) or (frames, atoms) and E as (frames,)",
        )
    cell = d.get("cell")
    if cell is None:
        cell = np.zeros((nf, 3, 3))
    elif _numeric(cell, path, "cell").size in (9, 9 * nf):
        cell = np.broadcast_to(cell.reshape(-1, 3, 3), (nf, 3, 3))
    else:
        raise ElmlffError(
            f"{path}: cell {cell.shape} must be (3, 3) or (frames, 3, 3) with {nf} frames",
            "give one cell for all frames or one per frame",
        )
    has_cell = bool(np.abs(cell).sum() > 0)
    return _fixed_size(path, units, z, r, e, f, cell, _pbc_flags(pbc, has_cell, nf), part)


def read_ase(
    path: Path, *, energy_unit: str, length_unit: str, pbc: bool | str = "auto", part: str = ""
) -> Frames:
    """Anything ``ase.io.read`` reads with energies and forces (extxyz, traj, ...).

    ASE files are taken as eV/Å; declaring other units converts them all the same.
    """
    import ase.io

    path = _need(Path(path), "structure file")
    fe, fl, ff = factors(energy_unit, length_unit, str(path))
    try:
        images = ase.io.read(path, index=":")
    except Exception as exc:  # ASE raises many types for empty or unparsable files
        raise ElmlffError(
            f"{path}: ASE cannot read it ({_why(exc)})",
            "give a structure file ASE reads (extxyz, traj, ...) with energies and forces, or "
            "check the data set's `format`",
        ) from exc
    frames = Frames.from_atoms(images, name=str(path), part=part)
    frames.positions *= fl
    frames.cell *= fl
    frames.energy *= fe
    frames.forces *= ff
    if pbc != "auto":
        frames.pbc[:] = bool(pbc)
    return frames


#: VASP's stress components (OUTCAR "in kB": XX YY ZZ XY YZ ZX) as (row, column) of the tensor
_VASP_VOIGT = ((0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (2, 0))


def read_mlearn(
    path: Path,
    *,
    energy_unit: str,
    length_unit: str,
    stress_unit: str | None = None,
    pbc: bool | str = "auto",
    part: str = "",
) -> Frames:
    """An mlearn data file (materialsvirtuallab/mlearn, ``{element}/{training,test}.json``): a
    JSON list of records with ``structure`` (a pymatgen ``Structure`` dict: ``lattice.matrix``,
    ``sites[].xyz`` and ``sites[].species``), ``outputs.energy``, ``outputs.forces`` and
    ``outputs.virial_stress`` (VASP's six components XX YY ZZ XY YZ ZX, its sign: positive
    under compression), read without pymatgen. The stress becomes a symmetric 3x3 tensor in
    ASE's sign (negated) and eV/Å³. Periodic in all three directions. Order and sign were
    checked against CHGNet 0.3.0 on the Si and Mo test files: the diagonal correlates at
    ρ 0.98 with the same sign, and each shear component correlates best with its own slot of
    this order (ρ 0.94 / 0.44 / 0.55 for xy / yz / zx; with any other slot ≤ 0.40); the stored
    (rotated) lattices agree with the forces (ρ 0.95-0.99)."""
    import json

    from ase.data import atomic_numbers

    path = _need(Path(path), "mlearn JSON file")
    fe, fl, ff = factors(energy_unit, length_unit, str(path))
    fs = stress_factor(stress_unit, str(path))
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ElmlffError(
            f"{path}: not a readable JSON file ({_why(exc)})",
            "give an mlearn data file (a JSON list of structure/outputs records)",
        ) from exc
    if not isinstance(records, list) or not records:
        raise ElmlffError(f"{path}: no records (expected a JSON list)", "check the file")
    z, r, nat, cell, e, f, s = [], [], [], [], [], [], []
    for i, rec in enumerate(records):
        try:
            sites = rec["structure"]["sites"]
            cell.append(np.asarray(rec["structure"]["lattice"]["matrix"], dtype=float))
            z += [atomic_numbers[st["species"][0]["element"]] for st in sites]
            r.append(np.asarray([st["xyz"] for st in sites], dtype=float))
            out = rec["outputs"]
            e.append(float(out["energy"]))
            f.append(np.asarray(out["forces"], dtype=float))
            v = np.asarray(out["virial_stress"], dtype=float)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ElmlffError(
                f"{path}: record {i} is not an mlearn record ({_why(exc)})",
                "give records with structure.lattice.matrix, structure.sites[].xyz and "
                "outputs.energy/forces/virial_stress",
            ) from exc
        if f[-1].shape != r[-1].shape or v.shape != (6,) or cell[-1].shape != (3, 3):
            raise ElmlffError(
                f"{path}: record {i}: forces {f[-1].shape}, positions {r[-1].shape}, "
                f"virial_stress {v.shape}, lattice {cell[-1].shape} do not agree",
                "give one force per site, six stress components and a 3x3 lattice",
            )
        t = np.zeros((3, 3))
        for (a, b), val in zip(_VASP_VOIGT, v, strict=True):
            t[a, b] = t[b, a] = val
        s.append(-t)
        nat.append(len(sites))
    nf = len(records)
    return Frames(
        numbers=np.asarray(z),
        positions=np.concatenate(r) * fl,
        n_atoms=np.asarray(nat),
        cell=np.stack(cell) * fl,
        pbc=_pbc_flags(pbc, True, nf),
        energy=np.asarray(e) * fe,
        forces=np.concatenate(f) * ff,
        source_part=np.full(nf, part),
        name=str(path),
        stress=np.stack(s) * fs,
    )


READERS: dict[str, Reader] = {
    "deepmd": read_deepmd,
    "rmd17": read_rmd17,
    "npz": read_npz,
    "ase": read_ase,
    "mlearn": read_mlearn,
}


#: the formats that carry a stress label (their reader takes ``stress_unit``)
WITH_STRESS = frozenset({"mlearn"})


def read(fmt: str, path: Path, **kw) -> Frames:
    """Read one source part with the named reader."""
    if fmt not in READERS:
        raise ElmlffError(f"unknown data format {fmt!r}", f"use one of {sorted(READERS)}")
    if fmt not in WITH_STRESS and kw.pop("stress_unit", None) is not None:
        raise ElmlffError(
            f"{path}: format '{fmt}' has no stress, but `units.stress` is declared",
            f"remove `stress` from the data set's `units` (formats with stress: "
            f"{sorted(WITH_STRESS)})",
        )
    return READERS[fmt](path, **kw)
