"""Observables of MD trajectories, as in the "Forces are not Enough" benchmark (Fu et al.):

* h(r) (their Eq. 10): the distribution of all interatomic distances i < j of a molecule,
  histogrammed on 500 bins over 0-10 Å and normalised as a probability density (∫h dr = 1),
  averaged over the frames; its error against the reference data (Eq. 11) is the integral
  ∫|h_sim - h_ref| dr (between 0 and 2);
* stability (Eq. 12): bonds are the pairs of the initial frame that ASE's
  ``NeighborList(natural_cutoffs(atoms), skin=0.3)`` lists, as the benchmark's code does: ASE
  adds the skin to *each* atom's cutoff, so a pair is bonded when d < r_i + r_j + 0.6 Å with
  r the covalent radii (C-H: 1.67 Å); a run collapses at the first frame where any bond length
  deviates from its reference length by more than Δ = 0.5 Å; only bonds between non-metal
  atoms count (:func:`covalent_bonds`: every bond of the benchmark's molecules);
* molecule or condensed phase, from the structure rather than the ``pbc`` flag (a molecule in
  a periodic box, DeePMD's convention, is still a molecule): :func:`is_molecule`;
* RDF g_ab(r) for periodic condensed phases (minimum-image neighbour lists through vesin), its
  MAE, and the RDF-window stability criterion (a window whose RDF MAE exceeds a threshold);
* diffusivity from the mean-squared displacement of unwrapped positions, MSD = 6 D t;
* NVE energy drift: slope of the total energy per atom against time;
* loop work ∮ F·dx around a small closed loop in configuration space: zero for a conservative
  force field, so it measures the non-conservation of a model without an energy (a direct
  force model), where an NVE drift cannot be computed.

Shapes: ``positions (T, N, 3)`` Å for T frames of one system; times in ps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from elmlff.errors import ElmlffError

HR_BINS = np.linspace(0.0, 10.0, 501)  # the benchmark's 500 bins on 0-10 Å


def pair_distances(positions: np.ndarray) -> np.ndarray:
    """(T, N(N-1)/2) distances of every unique pair i < j in every frame (no periodicity)."""
    positions = np.asarray(positions, dtype=float)
    if positions.ndim == 2:
        positions = positions[None]
    i, j = np.triu_indices(positions.shape[1], 1)
    return np.linalg.norm(positions[:, i] - positions[:, j], axis=-1)


def h_of_r(positions: np.ndarray, bins: np.ndarray = HR_BINS) -> np.ndarray:
    """h(r): probability density of interatomic distances over ``bins`` (Å⁻¹), all frames."""
    d = pair_distances(positions).ravel()
    if d.size == 0:
        raise ElmlffError("h(r) needs at least two atoms and one frame", "pass a trajectory")
    hist, _ = np.histogram(d, bins=bins)
    return hist / (d.size * np.diff(bins))


def h_of_r_error(h_sim: np.ndarray, h_ref: np.ndarray, bins: np.ndarray = HR_BINS) -> float:
    """∫|h_sim(r) - h_ref(r)| dr (dimensionless, 0 = identical, 2 = disjoint)."""
    return float(np.sum(np.abs(np.asarray(h_sim) - np.asarray(h_ref)) * np.diff(bins)))


def _bond_list(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray | None = None,
    pbc: Sequence[bool] = (False, False, False),
    skin: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, shifts): every pair ASE's ``NeighborList(natural_cutoffs(atoms), skin=skin,
    self_interaction=False, bothways=False)`` lists, each once; atom j's partner of atom i sits at
    ``positions[j] + shift @ cell`` (shifts are 0 without periodicity)."""
    from ase import Atoms
    from ase.neighborlist import NeighborList, natural_cutoffs

    numbers = np.asarray(numbers)
    pbc = np.asarray(pbc, dtype=bool)
    atoms = Atoms(numbers=numbers, positions=np.asarray(positions, dtype=float), pbc=pbc)
    if cell is not None:
        atoms.cell = np.asarray(cell, dtype=float)
    if len(atoms) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros((0, 3), dtype=np.int64)
    nl = NeighborList(natural_cutoffs(atoms), skin=skin, self_interaction=False, bothways=False)
    nl.update(atoms)
    i, j, shifts = [], [], []
    for a in range(len(atoms)):
        nb, off = nl.get_neighbors(a)
        i.append(np.full(len(nb), a))
        j.append(nb)
        shifts.append(np.asarray(off).reshape(-1, 3))
    return (
        np.concatenate(i).astype(np.int64),
        np.concatenate(j).astype(np.int64),
        np.concatenate(shifts).astype(np.int64),
    )


def bonds(numbers: np.ndarray, positions: np.ndarray, skin: float = 0.3) -> np.ndarray:
    """(B, 2) bonded atom pairs i < j of one frame (sorted, molecules: no periodicity): the pairs
    ASE's ``NeighborList(natural_cutoffs(atoms), skin=0.3, self_interaction=False,
    bothways=False)`` lists, as the benchmark's code does. ASE adds the skin to each atom's
    cutoff, so a pair is bonded when d < r_i + r_j + 2 x ``skin`` (r: ASE's covalent radii;
    C-H 1.67 Å, C-C 2.12 Å)."""
    i, j, _ = _bond_list(numbers, positions, skin=skin)
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1).reshape(-1, 2)
    return np.unique(pairs, axis=0).astype(np.int64)


#: Z of the non-metals and metalloids (H, He, B-Ne, Si-Ar, Ge-Kr, Sb-Xe, At, Rn)
NON_METALS = frozenset([1, 2, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 18, 32, 33, 34, 35, 36])
NON_METALS |= frozenset([51, 52, 53, 54, 85, 86])


def covalent_bonds(numbers: np.ndarray, positions: np.ndarray, skin: float = 0.3) -> np.ndarray:
    """(B, 2) the bonds whose deviation decides a collapse: :func:`bonds` between two
    non-metal atoms (:data:`NON_METALS`). Natural cutoffs also list a metal's contacts (a
    surface Cu and an adsorbate's H, neighbouring Cu atoms), which stretch and change in a
    healthy run of a surface or a metal (an adsorbate moving over sites, a surface atom at
    500 K); a covalent bond that stretches by 0.5 Å has broken. The benchmark's molecules
    (H, C, N, O) keep every bond."""
    numbers = np.asarray(numbers)
    pairs = bonds(numbers, positions, skin)
    keep = np.isin(numbers[pairs], list(NON_METALS)).all(axis=1)
    return pairs[keep].reshape(-1, 2)


#: packing fraction of van der Waals spheres below which a periodic cell is far from condensed
#: (liquids and solids: about 0.5 or more; methane in its 15 Å box: 0.015)
CONDENSED_PACKING = 0.1


def packing_fraction(numbers: np.ndarray, cell: np.ndarray) -> float:
    """Σ (4/3) π r_vdW³ / V: the fraction of the cell the atoms' van der Waals spheres fill
    (Alvarez's radii, ASE's where his are missing, else covalent + 0.8 Å); 0 without a volume."""
    from ase.data import covalent_radii, vdw_radii
    from ase.data.vdw_alvarez import vdw_radii as alvarez

    z = np.asarray(numbers)
    r = np.where(np.isnan(alvarez[z]), vdw_radii[z], alvarez[z])
    r = np.where(np.isnan(r), covalent_radii[z] + 0.8, r)
    volume = abs(float(np.linalg.det(np.asarray(cell, dtype=float))))
    return 0.0 if volume < 1e-9 else float(np.sum(4.0 / 3.0 * np.pi * r**3) / volume)


def is_molecule(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc: Sequence[bool],
    skin: float = 0.3,
    max_packing: float = CONDENSED_PACKING,
) -> bool:
    """Whether one frame is a molecule or finite cluster (True) rather than a condensed phase
    (False), from its structure, not its ``pbc`` flag.

    A frame without periodicity (or without a cell) is a molecule. A periodic frame is
    condensed when its bond network (the pairs of :func:`bonds`, across the cell's boundaries
    too) is infinite: some closed path of bonds ends in another image of its first atom, as in
    a crystal, a slab (periodic in-plane) or a polymer. A bond that merely crosses the
    boundary, as in a molecule wrapped into its box, is not enough. A periodic frame without
    such a network is still condensed when its atoms fill the cell densely (a molecular
    liquid or crystal: van der Waals packing fraction ≥ ``max_packing``); otherwise it is a
    molecule or cluster in a box (DeePMD's convention for gas-phase data)."""
    pbc = np.asarray(pbc, dtype=bool).reshape(-1)
    if cell is None or not pbc.any():
        return True
    if bond_images(numbers, positions, cell, pbc, skin) is None:
        return False
    return packing_fraction(numbers, cell) < max_packing


def bond_images(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc: Sequence[bool],
    skin: float = 0.3,
) -> np.ndarray | None:
    """(N, 3) integer cell image of every atom such that bonded atoms (the pairs of
    :func:`bonds`, across the cell's boundaries too) sit side by side, or None when the bond
    network is infinite (some closed path of bonds ends in another image of its first atom: a
    crystal, a slab, a polymer). Zeros without periodicity or a cell."""
    n = len(np.asarray(numbers))
    pbc = np.asarray(pbc, dtype=bool).reshape(-1)
    if cell is None or not pbc.any():
        return np.zeros((n, 3), dtype=np.int64)
    cell = np.asarray(cell, dtype=float)
    if (np.linalg.norm(cell, axis=1)[pbc] < 1e-9).any():
        return np.zeros((n, 3), dtype=np.int64)  # no cell vector along a periodic direction
    i, j, shifts = _bond_list(numbers, positions, cell, pbc, skin)
    adjacency: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n)]
    for a, b, s in zip(i.tolist(), j.tolist(), shifts, strict=True):
        if a == b:  # an atom bonded to its own image: an infinite chain
            return None
        adjacency[a].append((b, s))
        adjacency[b].append((a, -s))
    image = np.zeros((n, 3), dtype=np.int64)
    seen = np.zeros(n, dtype=bool)
    for root in range(n):
        if seen[root]:
            continue
        seen[root] = True
        stack = [root]
        while stack:
            a = stack.pop()
            for b, s in adjacency[a]:
                want = image[a] + s
                if not seen[b]:
                    image[b], seen[b] = want, True
                    stack.append(b)
                elif (image[b] != want).any():  # a closed path that lands in another image
                    return None
    return image


def make_whole(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc: Sequence[bool],
    skin: float = 0.3,
) -> np.ndarray:
    """Positions (N, 3) of one frame with every molecule made whole: a molecule wrapped across
    a periodic boundary gets its atoms moved by whole cell vectors next to their bonded
    partners, so bonds and h(r) see the molecule, not its broken image. Unchanged without
    periodicity, and for an infinite bond network (nothing finite to make whole)."""
    positions = np.asarray(positions, dtype=float)
    image = bond_images(numbers, positions, cell, pbc, skin)
    if image is None or not image.any():
        return positions.copy()
    return positions + image @ np.asarray(cell, dtype=float)


def make_adsorbates_whole(
    numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray | None, pbc: Sequence[bool]
) -> np.ndarray:
    """:func:`make_whole` of the non-metal atoms alone (:data:`NON_METALS`: the molecule on a
    metal surface, the molecules of a liquid): a condensed phase's metal network is infinite,
    so the whole structure has nothing finite to make whole, but its molecules do, and their
    covalent bonds (:func:`covalent_bonds`) must not straddle a boundary."""
    numbers = np.asarray(numbers)
    out = np.array(positions, dtype=float)
    keep = np.isin(numbers, list(NON_METALS))
    if keep.any():
        out[keep] = make_whole(numbers[keep], out[keep], cell, pbc)
    return out


def bond_lengths(positions: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(T, B) lengths of the bonds ``pairs`` in every frame."""
    positions = np.asarray(positions, dtype=float)
    if positions.ndim == 2:
        positions = positions[None]
    return np.linalg.norm(positions[:, pairs[:, 0]] - positions[:, pairs[:, 1]], axis=-1)


def first_collapse(
    positions: np.ndarray, pairs: np.ndarray, reference: np.ndarray, delta: float = 0.5
) -> int | None:
    """Index of the first frame where some bond deviates from its ``reference`` length by more
    than ``delta`` Å (Eq. 12), or None when every frame is stable."""
    if len(pairs) == 0:
        raise ElmlffError("no bonds found in the initial frame", "check the structure's units")
    bad = np.abs(bond_lengths(positions, pairs) - np.asarray(reference)).max(axis=1) > delta
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else None


def rdf(
    positions: np.ndarray,
    cell: np.ndarray,
    numbers: np.ndarray,
    pair: tuple[int, int] | None = None,
    r_max: float = 6.0,
    n_bins: int = 120,
    pbc: Sequence[bool] = (True, True, True),
) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, g(r)) of a periodic system averaged over frames; ``pair`` = (Z_a, Z_b)
    restricts to one element pair (None: all atoms). g → 1 for an ideal gas."""
    from vesin import NeighborList

    positions = np.asarray(positions, dtype=float)
    if positions.ndim == 2:
        positions = positions[None]
    cell = np.asarray(cell, dtype=float)
    numbers = np.asarray(numbers)
    a = np.ones(len(numbers), bool) if pair is None else numbers == pair[0]
    b = np.ones(len(numbers), bool) if pair is None else numbers == pair[1]
    if not a.any() or not b.any():
        raise ElmlffError(f"RDF pair {pair}: element not in the system", "choose present elements")
    edges = np.linspace(0.0, r_max, n_bins + 1)
    counts = np.zeros(n_bins)
    nl = NeighborList(cutoff=r_max, full_list=True)
    for x in positions:
        i, j, d = nl.compute(points=x, box=cell, periodic=list(pbc), quantities="ijd")
        keep = a[i] & b[j]
        counts += np.histogram(d[keep], bins=edges)[0]
    volume = abs(np.linalg.det(cell))
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    same = pair is None or pair[0] == pair[1]
    n_b = b.sum() - (1 if same else 0)  # partners per a-atom in an ideal gas: n_b / V
    g = counts / (len(positions) * a.sum() * shell * n_b / volume)
    return 0.5 * (edges[1:] + edges[:-1]), g


def rdf_error(g_sim: np.ndarray, g_ref: np.ndarray) -> float:
    """Mean absolute difference of two RDFs on the same bins."""
    return float(np.mean(np.abs(np.asarray(g_sim) - np.asarray(g_ref))))


def rdf_window_collapse(
    positions: np.ndarray,
    cell: np.ndarray,
    numbers: np.ndarray,
    g_ref: np.ndarray,
    window: int = 10,
    threshold: float = 0.1,
    r_max: float = 6.0,
    n_bins: int = 120,
) -> int | None:
    """The benchmark's stability criterion for periodic systems: the first frame that starts a
    window of ``window`` frames whose RDF deviates from ``g_ref`` by an MAE above
    ``threshold``, or None when every window stays close."""
    positions = np.asarray(positions, dtype=float)
    for start in range(0, len(positions) - window + 1, window):
        _, g = rdf(positions[start : start + window], cell, numbers, r_max=r_max, n_bins=n_bins)
        if rdf_error(g, g_ref) > threshold:
            return start
    return None


def diffusivity(
    positions: np.ndarray, dt_ps: float, mask: np.ndarray | None = None, fit_from: float = 0.2
) -> float:
    """Self-diffusion coefficient (Å²/ps) of the atoms in ``mask`` from unwrapped positions:
    the slope of the mean-squared displacement (averaged over atoms and time origins) against
    lag time, fitted on lags from ``fit_from`` to 1/2 of the trajectory, divided by 6."""
    positions = np.asarray(positions, dtype=float)
    if mask is not None:
        positions = positions[:, np.asarray(mask)]
    t = len(positions)
    if t < 10:
        raise ElmlffError(
            f"diffusivity needs a longer trajectory ({t} frames)", "run longer MD (>= 10 frames)"
        )
    lags = np.arange(max(1, int(fit_from * t)), t // 2 + 1)
    msd = np.array([np.mean(np.sum((positions[k:] - positions[:-k]) ** 2, axis=-1)) for k in lags])
    slope = np.polyfit(lags * dt_ps, msd, 1)[0]
    return float(slope / 6.0)


def energy_drift(total_energy: np.ndarray, n_atoms: int, dt_ps: float) -> float:
    """Slope of the total energy per atom against time (eV/atom/ps), by least squares."""
    e = np.asarray(total_energy, dtype=float) / n_atoms
    if len(e) < 2:
        return float("nan")
    return float(np.polyfit(np.arange(len(e)) * dt_ps, e, 1)[0])


def loop_work(
    forces: Callable[[np.ndarray], np.ndarray],
    positions: np.ndarray,
    radius: float = 0.1,
    n_points: int = 32,
    directions: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
) -> float:
    """Work of a force field around a closed loop in configuration space, ∮ F·dx (eV): zero for
    any conservative field F = -∇E, non-zero where the field has a curl (a direct force model).

    The loop is the circle x0 + r (cos θ u + sin θ v) in the plane of two orthonormal
    3N-dimensional directions (random unless given), integrated by the trapezoid rule in θ,
    which is spectrally accurate for a smooth periodic integrand. ``forces(x)`` maps positions
    (N, 3) to forces (N, 3)."""
    x0 = np.asarray(positions, dtype=float)
    if directions is None:
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(x0.size, 2)))
        u, v = q[:, 0], q[:, 1]
    else:
        u, v = (np.asarray(d, dtype=float).ravel() for d in directions)
    theta = 2 * np.pi * np.arange(n_points) / n_points
    work = 0.0
    for t in theta:
        x = x0.ravel() + radius * (np.cos(t) * u + np.sin(t) * v)
        dl = radius * (-np.sin(t) * u + np.cos(t) * v)
        work += float(np.asarray(forces(x.reshape(x0.shape))).ravel() @ dl)
    return work * 2 * np.pi / n_points
