"""Writers of `Frames` into other packages' training formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError


def composition_groups(frames: Frames) -> dict[tuple, np.ndarray]:
    """Frame indices grouped by (atomic numbers in order, periodic): the unit of a DeePMD system."""
    groups: dict[tuple, list[int]] = {}
    for f, (o, n) in enumerate(zip(frames.offsets, frames.n_atoms, strict=True)):
        key = (tuple(frames.numbers[o : o + n].tolist()), bool(frames.pbc[f].any()))
        groups.setdefault(key, []).append(f)
    return {k: np.array(v) for k, v in groups.items()}


def write_deepmd(frames: Frames, root: Path, type_map: list[str]) -> list[Path]:
    """DeePMD npy systems (one per composition) under ``root``; returns their paths.

    ``type_map`` lists element symbols; a system's ``type.raw`` indexes into it.
    """
    from ase.data import chemical_symbols

    root = Path(root)
    index = {s: i for i, s in enumerate(type_map)}
    systems = []
    for k, ((numbers, periodic), idx) in enumerate(composition_groups(frames).items()):
        symbols = [chemical_symbols[z] for z in numbers]
        missing = sorted(set(symbols) - set(index))
        if missing:
            raise ElmlffError(
                f"elements {missing} not in the type map {type_map}", "add them to the type map"
            )
        sub = frames.subset(idx)
        nat, nf = len(numbers), len(idx)
        d = root / f"sys{k:03d}"
        (d / "set.000").mkdir(parents=True, exist_ok=True)
        np.savetxt(d / "type.raw", [index[s] for s in symbols], fmt="%d")
        (d / "type_map.raw").write_text("\n".join(type_map) + "\n")
        np.save(d / "set.000" / "coord.npy", sub.positions.reshape(nf, nat * 3))
        np.save(d / "set.000" / "force.npy", sub.forces.reshape(nf, nat * 3))
        np.save(d / "set.000" / "energy.npy", sub.energy)
        if periodic:
            np.save(d / "set.000" / "box.npy", sub.cell.reshape(nf, 9))
        else:
            (d / "nopbc").touch()
        systems.append(d)
    return systems
