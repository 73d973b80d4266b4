"""Cutoff graphs of frames on a flat atom axis (PBC aware, through ``vesin``).

PyG's ``radius_graph`` needs pyg-lib, which does not install here; vesin gives the same edges
for molecules and periodic cells alike. An edge ``(i, j)`` with shift ``S`` has the vector
``r_ij = x_j - x_i + S @ cell`` (the convention of vesin, ASE and matscipy), so edge vectors
stay differentiable functions of the positions once the graph is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from elmlff.data.frames import Frames


@dataclass
class Graph:
    """Directed edges of a batch of frames.

    ``src``, ``dst`` (E,): global atom indices (messages flow ``src -> dst``, i.e. ``j -> i``);
    ``shift`` (E, 3): Cartesian periodic shift ``S @ cell`` in Å (zeros for molecules).
    """

    src: np.ndarray
    dst: np.ndarray
    shift: np.ndarray

    def __len__(self) -> int:
        return len(self.src)


def neighbour_graph(frames: Frames, cutoff: float) -> Graph:
    """All pairs closer than ``cutoff`` (Å) within each frame, both directions, no self pairs;
    edges ordered by frame. Molecules (and orthorhombic cells at least twice the cutoff wide)
    take a vectorised path over frames of equal size; other cells go through vesin."""
    small = _minimum_image_ok(frames, cutoff)
    parts = [_pairs_vectorised(frames, np.flatnonzero(small), cutoff)]
    parts += [_pairs_vesin(frames, f, cutoff) for f in np.flatnonzero(~small)]
    src = np.concatenate([p[0] for p in parts])
    dst = np.concatenate([p[1] for p in parts])
    shift = np.concatenate([p[2] for p in parts])
    frame = frames.frame_of_atom[dst]
    if len(frame) > 1 and bool((frame[1:] < frame[:-1]).any()):  # frames mixed: reorder
        order = np.argsort(frame, kind="stable")
        src, dst, shift = src[order], dst[order], shift[order]
    return Graph(src, dst, shift)


def _minimum_image_ok(frames: Frames, cutoff: float) -> np.ndarray:
    """(F,) frames where the minimum image is the only image within the cutoff: no periodic
    direction, or an orthorhombic cell at least 2 x cutoff wide along every periodic one."""
    cell, pbc = frames.cell, frames.pbc.astype(bool)
    if not pbc.any():  # molecules
        return np.ones(len(frames), dtype=bool)
    diag = np.einsum("fii->fi", cell)
    ortho = np.abs(cell - diag[:, :, None] * np.eye(3)).max(axis=(1, 2)) < 1e-12
    wide = np.where(pbc, np.abs(diag) >= 2 * cutoff, True).all(axis=1)
    return ~pbc.any(axis=1) | (ortho & wide)


def _pairs_vectorised(frames: Frames, which: np.ndarray, cutoff: float):
    """Edges of the frames ``which`` by dense distance matrices, per atom count (one Cartesian
    axis at a time: numpy is slow on a trailing axis of three)."""
    out = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)))]
    for n in np.unique(frames.n_atoms[which]):
        fs = which[frames.n_atoms[which] == n]
        start = frames.offsets[fs]
        x = frames.positions[start[:, None] + np.arange(n)]  # (G, n, 3)
        pbc = frames.pbc[fs].astype(bool)
        box = np.einsum("fii->fi", frames.cell[fs])  # (G, 3), orthorhombic here
        inv = np.where(pbc, 1.0 / np.where(box == 0, 1.0, box), 0.0)
        r2 = np.zeros((len(fs), n, n))
        images = []  # (axis, whole boxes subtracted (G, n, n)) along periodic axes
        for k in range(3):
            dk = x[:, None, :, k] - x[:, :, None, k]  # dk[g, i, j] = x_j - x_i along k
            if pbc[:, k].any():  # minimum image
                im = np.rint(dk * inv[:, k, None, None])
                dk -= im * box[:, k, None, None]
                images.append((k, im))
            r2 += np.square(dk, out=dk)
        close = r2 < cutoff**2
        close[:, np.arange(n), np.arange(n)] = False
        flat = np.flatnonzero(close)  # ordered by frame, then receiving atom i
        g, rest = np.divmod(flat, n * n)
        i, j = np.divmod(rest, n)
        shift = np.zeros((len(flat), 3))
        for k, im in images:
            shift[:, k] = -im.reshape(-1)[flat] * box[g, k]
        out.append((start[g] + j, start[g] + i, shift))
    return tuple(np.concatenate(z) for z in zip(*out, strict=True))


def _pairs_vesin(frames: Frames, f: int, cutoff: float):
    from vesin import NeighborList

    o, n = frames.offsets[f], frames.n_atoms[f]
    periodic = np.asarray(frames.pbc[f], dtype=bool)
    box = frames.cell[f] if periodic.any() else np.zeros((3, 3))
    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = nl.compute(
        points=frames.positions[o : o + n], box=box, periodic=periodic, quantities="ijS"
    )
    # vesin's "i" is the centre that receives; its vector is x_j - x_i + S @ box
    return j.astype(np.int64) + o, i.astype(np.int64) + o, s.astype(np.float64) @ box
