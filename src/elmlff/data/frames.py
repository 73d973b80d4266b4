"""`Frames`: a batch of labelled structures on a flat atom axis (see :mod:`elmlff.keys`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from elmlff.errors import ElmlffError


def degenerate_cells(cell: np.ndarray, pbc: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(F,) True for frames periodic along some axis whose cell vectors along the periodic axes
    span no length / area / volume (their Gram determinant is below ``tol``², Å units): a zero
    or degenerate cell, which gives wrong neighbour lists."""
    pbc = np.asarray(pbc, dtype=bool)
    c = np.where(pbc[:, :, None], cell, 0.0)
    # rows of non-periodic axes are zero; a 1 on their diagonal leaves the periodic block's det
    gram = c @ c.transpose(0, 2, 1) + np.eye(3) * (~pbc)[:, None, :]
    return pbc.any(axis=1) & (np.linalg.det(gram) < tol**2)


@dataclass
class Frames:
    """Structures with reference labels, in Å / eV / eV/Å.

    Shapes: ``numbers (A,)``, ``positions (A, 3)``, ``forces (A, 3)``, ``n_atoms (F,)``,
    ``cell (F, 3, 3)``, ``pbc (F, 3)``, ``energy (F,)``, ``source_index (F,)``,
    ``source_part (F,)`` where A is the total number of atoms over all F frames. ``stress
    (F, 3, 3)`` in eV/Å³ is optional (periodic solids; ASE's sign: ``(1/V) dE/dε``, negative
    under compression), ``None`` where the data have none.
    """

    numbers: np.ndarray
    positions: np.ndarray
    n_atoms: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    source_index: np.ndarray = field(default=None)  # type: ignore[assignment]
    source_part: np.ndarray = field(default=None)  # type: ignore[assignment]
    name: str = "frames"
    stress: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.n_atoms = np.asarray(self.n_atoms, dtype=np.int64)
        self.cell = np.asarray(self.cell, dtype=np.float64)
        self.pbc = np.asarray(self.pbc, dtype=bool)
        self.energy = np.asarray(self.energy, dtype=np.float64)
        self.forces = np.asarray(self.forces, dtype=np.float64)
        nf = len(self.n_atoms)
        if self.source_index is None:
            self.source_index = np.arange(nf)
        if self.source_part is None:
            self.source_part = np.full(nf, "")
        self.source_index = np.asarray(self.source_index, dtype=np.int64)
        self.source_part = np.asarray(self.source_part, dtype=str)
        if self.stress is not None:
            self.stress = np.asarray(self.stress, dtype=np.float64)
        self.validate()

    # -- shape and value checks -------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ElmlffError` on mismatched shapes or non-finite values."""
        nf, na = len(self.n_atoms), int(self.n_atoms.sum())
        expect = {
            "numbers": (self.numbers, (na,)),
            "positions": (self.positions, (na, 3)),
            "forces": (self.forces, (na, 3)),
            "cell": (self.cell, (nf, 3, 3)),
            "pbc": (self.pbc, (nf, 3)),
            "energy": (self.energy, (nf,)),
            "source_index": (self.source_index, (nf,)),
            "source_part": (self.source_part, (nf,)),
        }
        if self.stress is not None:
            expect["stress"] = (self.stress, (nf, 3, 3))
        for key, (arr, shape) in expect.items():
            if arr.shape != shape:
                raise ElmlffError(
                    f"{self.name}: array '{key}' has shape {arr.shape}, expected {shape} "
                    f"for {nf} frames with {na} atoms in all",
                    "make every per-frame array hold one entry per frame and every per-atom "
                    "array one row per atom",
                )
        for key in ("positions", "forces", "energy", "cell", "stress"):
            arr = getattr(self, key)
            if arr is None:
                continue
            bad = ~np.isfinite(arr)
            if bad.any():
                idx = np.argwhere(bad)[0][0]
                frame = int(self.frame_of_atom[idx]) if arr.shape[0] == na and nf else int(idx)
                raise ElmlffError(
                    f"{self.name}: {int(bad.sum())} non-finite values (NaN/inf) in '{key}', "
                    f"first in frame {frame} (source index {int(self.source_index[frame])})",
                    "remove or relabel those frames in the source data",
                )
        if (self.n_atoms <= 0).any():
            raise ElmlffError(f"{self.name}: a frame has no atoms", "drop empty frames")
        self._check_periodic_cells()

    def _check_periodic_cells(self) -> None:
        """A frame periodic along any axis needs cell vectors along its periodic axes that span
        a non-zero length/area/volume: a zero or degenerate cell gives wrong neighbour lists."""
        if not self.pbc.any():
            return
        bad = np.flatnonzero(degenerate_cells(self.cell, self.pbc))
        if len(bad):
            f = int(bad[0])
            part = str(self.source_part[f])
            flags = "".join("T" if p else "F" for p in self.pbc[f])
            raise ElmlffError(
                f"{self.name}: {len(bad)} of {len(self)} frames are periodic but have a zero or "
                f"degenerate cell, first frame {f} (part {part!r}, source index "
                f"{int(self.source_index[f])}, pbc {flags}, |det cell| = "
                f"{abs(np.linalg.det(self.cell[f])):.3g} Å³)",
                "give every periodic frame its cell (DeePMD box.npy, npz 'cell', extxyz "
                "Lattice=) or, for molecules in vacuum, set `datasets.<name>.pbc: false` in the "
                "config",
            )

    # -- indexing -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def offsets(self) -> np.ndarray:
        """(F,) index of each frame's first atom."""
        return np.concatenate([[0], np.cumsum(self.n_atoms)[:-1]]).astype(np.int64)

    @property
    def frame_of_atom(self) -> np.ndarray:
        """(A,) frame index of each atom."""
        return np.repeat(np.arange(len(self.n_atoms)), self.n_atoms)

    def atom_index(self, frames: Sequence[int] | np.ndarray) -> np.ndarray:
        """Flat atom indices of the given frames, in order."""
        frames = np.asarray(frames, dtype=np.int64)
        off, n = self.offsets[frames], self.n_atoms[frames]
        if len(frames) == 0:
            return np.zeros(0, dtype=np.int64)
        starts = np.repeat(off - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
        return starts + np.arange(int(n.sum()))

    def subset(self, frames: Sequence[int] | np.ndarray) -> Frames:
        """The given frames (in that order) as a new `Frames`."""
        frames = np.asarray(frames, dtype=np.int64)
        a = self.atom_index(frames)
        return Frames(
            numbers=self.numbers[a],
            positions=self.positions[a],
            n_atoms=self.n_atoms[frames],
            cell=self.cell[frames],
            pbc=self.pbc[frames],
            energy=self.energy[frames],
            forces=self.forces[a],
            source_index=self.source_index[frames],
            source_part=self.source_part[frames],
            name=self.name,
            stress=None if self.stress is None else self.stress[frames],
        )

    @staticmethod
    def concatenate(parts: Sequence[Frames], name: str | None = None) -> Frames:
        """Join frames end to end (with stress only where every part has it)."""
        if not parts:
            raise ElmlffError("no frames to join", "check the data set's parts in the config")
        cat = np.concatenate
        return Frames(
            numbers=cat([p.numbers for p in parts]),
            positions=cat([p.positions for p in parts]),
            n_atoms=cat([p.n_atoms for p in parts]),
            cell=cat([p.cell for p in parts]),
            pbc=cat([p.pbc for p in parts]),
            energy=cat([p.energy for p in parts]),
            forces=cat([p.forces for p in parts]),
            source_index=cat([p.source_index for p in parts]),
            source_part=cat([p.source_part for p in parts]),
            name=name or parts[0].name,
            stress=(
                cat([p.stress for p in parts]) if all(p.stress is not None for p in parts) else None
            ),
        )

    @property
    def species(self) -> list[int]:
        """Sorted atomic numbers present."""
        return sorted(int(z) for z in np.unique(self.numbers))

    @property
    def element_symbols(self) -> list[str]:
        """Element symbols of :attr:`species`, in that order (a type map)."""
        from ase.data import chemical_symbols

        return [chemical_symbols[z] for z in self.species]

    # -- ASE ------------------------------------------------------------------------------
    def to_atoms(self) -> list:
        """One ASE ``Atoms`` per frame, labels attached through a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        out = []
        for f, (o, n) in enumerate(zip(self.offsets, self.n_atoms, strict=True)):
            s = slice(o, o + n)
            at = Atoms(
                numbers=self.numbers[s],
                positions=self.positions[s],
                cell=self.cell[f],
                pbc=self.pbc[f],
            )
            labels = {"energy": float(self.energy[f]), "forces": self.forces[s].copy()}
            if self.stress is not None:
                labels["stress"] = self.stress[f].copy()
            at.calc = SinglePointCalculator(at, **labels)
            out.append(at)
        return out

    @staticmethod
    def from_atoms(images: Sequence, name: str = "frames", part: str = "") -> Frames:
        """Frames from ASE ``Atoms`` carrying energy and forces (already in eV, Å)."""
        if not images:
            raise ElmlffError(f"{name}: no structures read", "check the file and its format")
        energy, forces = [], []
        for i, at in enumerate(images):
            try:
                energy.append(at.get_potential_energy())
                forces.append(at.get_forces())
            except Exception as exc:  # ASE raises several types for missing labels
                raise ElmlffError(
                    f"{name}: structure {i} has no energy/forces ({type(exc).__name__})",
                    "give labelled structures (extxyz with energy= and forces columns)",
                ) from exc
        return Frames(
            numbers=np.concatenate([at.numbers for at in images]),
            positions=np.concatenate([at.positions for at in images]),
            n_atoms=[len(at) for at in images],
            cell=np.stack([np.asarray(at.cell[:]) for at in images]),
            pbc=np.stack([at.pbc for at in images]),
            energy=energy,
            forces=np.concatenate(forces),
            source_part=np.full(len(images), part),
            name=name,
        )
