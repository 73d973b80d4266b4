"""DimeNet and DimeNet++ bases: torch-geometric's own blocks, trained here in plain torch.

Config ``params``: ``architecture`` (``dimenet`` | ``dimenet++``), ``hidden_channels``,
``out_channels`` (must be 1: one energy per atom), ``num_blocks``, ``num_bilinear`` (DimeNet
only), ``int_emb_size``, ``basis_emb_size``, ``out_emb_channels`` (DimeNet++ only),
``num_spherical``, ``num_radial``, ``cutoff`` (Å), ``envelope_exponent``, ``num_before_skip``,
``num_after_skip``, ``num_output_layers``. ``training``: ``max_epochs``, ``batch_size``, ``lr``
(Adam), ``energy_weight``, ``force_weight``, ``patience`` (early stopping on the validation loss;
ReduceLROnPlateau halves the rate after ``max(2, patience // 3)`` epochs without improvement),
``seed``, ``dtype`` (``float32`` | ``float64``).

The loss is ``force_weight * MSE(forces) + energy_weight * MSE(energy)`` with the energy *per
frame* (total energy in eV, forces in eV/Å), as in the MD17 benchmark ("Forces are not Enough",
force weight 1000 : energy weight 1, the family's defaults; a config's top-level ``training``
block overrides them). The network learns a residual: a per-element linear reference energy,
fitted by least squares on the training frames, is stored in the checkpoint and added back.

What is whose. Every block (``rbf``, ``sbf``, ``emb``, ``interaction_blocks``,
``output_blocks``) is torch-geometric's ``DimeNet`` / ``DimeNetPlusPlus``, called exactly as
their stock ``forward`` calls them (:func:`atom_energies` mirrors it line by line). That stock
``forward`` cannot run here: it needs ``radius_graph`` (pyg-lib) and ``triplets``
(torch-sparse), neither installable. So the graph and the triplets are the project's own:
the graph is :func:`elmlff.meta.graph.neighbour_graph` (every pair within the cutoff in each
frame, periodic images included, no ``max_num_neighbors`` truncation) and the triplets
k->j->i are built in plain torch (:func:`triplets`: edges sorted by target, ``bincount``,
``repeat_interleave``), dropping the back edge k = i as the stock code does (for periodic
frames: k = i *in the same image*). Angles are the stock ones, with ``pos[a] - pos[b]``
written as sums of edge vectors so that periodic images are right. Forces are −dE/dx by
autograd; :meth:`DimeNetPotential.energy` keeps the graph for Hessian-vector products.

Training runs on CUDA where torch sees a GPU, else on the CPU; the model file ``model.pt`` is
a ``torch.save`` of a small dict (format tag, params, dtype, species, reference energies and
the state dict of the epoch of lowest val loss), read back with ``weights_only=True``. The
stock spherical basis spends seconds in sympy per model: its forms are memoised per process
(:func:`memoised_basis_forms`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.nn.models import DimeNet, DimeNetPlusPlus

from elmlff.bases import (
    FAMILIES,
    BaseSpec,
    check_species,
    checkpoint,
    frame_tensors,
    frames_from_tensors,
)
from elmlff.bases.epochs import epoch_info, fit_epochs
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError
from elmlff.io import atomic_path
from elmlff.meta.graph import neighbour_graph

MODEL_FILE = "model.pt"
FORMAT = "elmlff-dimenet-1"
ARCHITECTURES = ("dimenet", "dimenet++")
DEFAULT_PARAMS: dict[str, Any] = FAMILIES["dimenet"].params
DEFAULT_TRAINING: dict[str, Any] = FAMILIES["dimenet"].training
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: the stock embedding has one row per atomic number 0..94
MAX_Z = 94
#: two edge shifts (Å) that cancel within this are one image (the back edge k = i)
SHIFT_TOL = 1e-6


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ElmlffError(f"dimenet training.dtype: {name!r} unknown", f"use one of {list(DTYPES)}")
    return DTYPES[name]


#: sympy forms of torch-geometric's spherical basis, per (function, arguments), this process
_FORMS: dict[tuple, Any] = {}


def forms_cache_dir() -> Path:
    """Where the sympy forms are kept between processes: ``$ELMLFF_CACHE``, else
    ``$XDG_CACHE_HOME/elmlff``, else ``~/.cache/elmlff`` (like torch's and numba's caches)."""
    if os.environ.get("ELMLFF_CACHE"):
        return Path(os.environ["ELMLFF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "elmlff"


def _forms(fn, args: tuple) -> Any:
    """``fn(*args)`` from this process's cache, else from a pickle on disk (keyed by the
    torch-geometric and sympy versions), else computed and stored (atomically; a cache that
    cannot be written or read is only a slower start)."""
    import sympy
    import torch_geometric

    key = (fn.__name__, *args)
    if key in _FORMS:
        return _FORMS[key]
    tag = f"pyg{torch_geometric.__version__}-sympy{sympy.__version__}"
    path = forms_cache_dir() / f"dimenet-{fn.__name__}-{'-'.join(map(str, args))}-{tag}.pkl"
    try:
        _FORMS[key] = pickle.loads(path.read_bytes())
    except Exception:  # absent, or unreadable: derive anew
        _FORMS[key] = fn(*args)
        with contextlib.suppress(OSError), atomic_path(path) as tmp:
            tmp.write_bytes(pickle.dumps(_FORMS[key]))
    return _FORMS[key]


@contextlib.contextmanager
def memoised_basis_forms() -> Iterator[None]:
    """torch-geometric's ``SphericalBasisLayer`` derives its sympy forms anew for every model
    (``bessel_basis(7, 6)`` takes 5-15 s on a laptop core, at every ``load()``, in every
    prediction, meta and MD job): while building, its two pure helpers in ``dimenet_utils``
    answer from a cache (this process's, then a pickle in :func:`forms_cache_dir`). The layer
    itself, and what it computes, are torch-geometric's; the helpers are restored afterwards."""
    from torch_geometric.nn.models import dimenet_utils as utils

    saved = utils.bessel_basis, utils.real_sph_harm

    def cached(fn):
        def call(*args):
            return _forms(fn, args)

        return call

    utils.bessel_basis, utils.real_sph_harm = (cached(fn) for fn in saved)
    try:
        yield
    finally:
        utils.bessel_basis, utils.real_sph_harm = saved


def build_model(
    params: dict[str, Any], dtype: str = "float32", output_initializer: str = "zeros"
) -> DimeNet:
    """torch-geometric's ``DimeNet`` or ``DimeNetPlusPlus`` (``params['architecture']``).

    ``output_initializer`` is the stock argument: ``zeros`` (the default, E = 0 at
    initialisation) or ``glorot_orthogonal`` (tests of untrained models need non-zero forces).
    """
    p = {**DEFAULT_PARAMS, **params}
    arch = p["architecture"]
    if arch not in ARCHITECTURES:
        raise ElmlffError(
            f"unknown dimenet architecture {arch!r}", f"use one of {list(ARCHITECTURES)}"
        )
    if int(p["out_channels"]) != 1:
        raise ElmlffError(
            f"dimenet params.out_channels: {p['out_channels']} (the energy is one number per atom)",
            "leave out_channels at 1",
        )
    common = {
        "hidden_channels": int(p["hidden_channels"]),
        "out_channels": 1,
        "num_blocks": int(p["num_blocks"]),
        "num_spherical": int(p["num_spherical"]),
        "num_radial": int(p["num_radial"]),
        "cutoff": float(p["cutoff"]),
        "envelope_exponent": int(p["envelope_exponent"]),
        "num_before_skip": int(p["num_before_skip"]),
        "num_after_skip": int(p["num_after_skip"]),
        "num_output_layers": int(p["num_output_layers"]),
        "output_initializer": output_initializer,
    }
    if common["num_spherical"] < 2 or not 1 <= common["num_radial"] <= 64:
        raise ElmlffError(
            f"dimenet params: num_spherical {common['num_spherical']}, num_radial "
            f"{common['num_radial']} out of range",
            "use num_spherical >= 2 and 1 <= num_radial <= 64 (torch-geometric's limits)",
        )
    with memoised_basis_forms():
        if arch == "dimenet":
            model = DimeNet(num_bilinear=int(p["num_bilinear"]), **common)
        else:
            model = DimeNetPlusPlus(
                int_emb_size=int(p["int_emb_size"]),
                basis_emb_size=int(p["basis_emb_size"]),
                out_emb_channels=int(p["out_emb_channels"]),
                **common,
            )
    return model.to(_dtype(dtype))


# -- graph and triplets (the project's own, plain torch) -----------------------------------
@dataclass
class EdgeGraph:
    """Directed edges j -> i of a batch with their triplets k -> j -> i (torch-geometric's
    names: ``i`` the edge's target, ``j`` its source, ``idx_kj`` / ``idx_ji`` edge indices)."""

    i: torch.Tensor  # (E,) target atom of each edge
    j: torch.Tensor  # (E,) source atom of each edge
    shift: torch.Tensor  # (E, 3) periodic shift in Å: the edge vector is x_j - x_i + shift
    idx_i: torch.Tensor  # (T,) atoms of the triplets
    idx_j: torch.Tensor
    idx_k: torch.Tensor
    idx_kj: torch.Tensor  # (T,) edge k -> j of each triplet
    idx_ji: torch.Tensor  # (T,) edge j -> i of each triplet

    def to(self, device: str | torch.device, dtype: torch.dtype) -> EdgeGraph:
        return EdgeGraph(
            *(t.to(device) for t in (self.i, self.j)),
            self.shift.to(device, dtype),
            *(t.to(device) for t in (self.idx_i, self.idx_j, self.idx_k, self.idx_kj, self.idx_ji)),
        )


def triplets(
    i: torch.Tensor, j: torch.Tensor, shift: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, ...]:
    """(idx_i, idx_j, idx_k, idx_kj, idx_ji) of every triplet k -> j -> i of the directed
    edges j -> i (targets ``i``, sources ``j``), as torch-geometric's ``triplets`` gives them,
    without torch-sparse: each edge j -> i pairs with every edge k -> j into its source,
    except its own back edge (k = i in the same periodic image, i.e. the two shifts cancel).
    """
    n_edges = len(i)
    by_target = torch.argsort(i, stable=True)  # edges grouped by their target atom
    indeg = torch.bincount(i, minlength=num_nodes)
    first_in = torch.cumsum(indeg, 0) - indeg  # position in by_target of each atom's first edge
    per_edge = indeg[j]  # edge j -> i meets every edge k -> j
    idx_ji = torch.repeat_interleave(torch.arange(n_edges, device=i.device), per_edge)
    start = torch.repeat_interleave(torch.cumsum(per_edge, 0) - per_edge, per_edge)
    rank = torch.arange(len(idx_ji), device=i.device) - start
    idx_kj = by_target[first_in[j[idx_ji]] + rank]
    idx_i, idx_j, idx_k = i[idx_ji], j[idx_ji], j[idx_kj]
    same_image = (shift[idx_kj] + shift[idx_ji]).abs().amax(dim=-1) < SHIFT_TOL
    keep = (idx_i != idx_k) | ~same_image  # remove i == k triplets (of the same image)
    return idx_i[keep], idx_j[keep], idx_k[keep], idx_kj[keep], idx_ji[keep]


def edge_graph(frames: Frames, cutoff: float) -> EdgeGraph:
    """Every pair within ``cutoff`` (Å) of each frame (minimum image and beyond where periodic,
    through :func:`~elmlff.meta.graph.neighbour_graph`) with its triplets, in float64."""
    g = neighbour_graph(frames, cutoff)
    i = torch.as_tensor(g.dst, dtype=torch.long)
    j = torch.as_tensor(g.src, dtype=torch.long)
    shift = torch.as_tensor(g.shift, dtype=torch.float64).reshape(-1, 3)
    return EdgeGraph(i, j, shift, *triplets(i, j, shift, int(frames.n_atoms.sum())))


def atom_energies(model: DimeNet, z: torch.Tensor, pos: torch.Tensor, g: EdgeGraph) -> torch.Tensor:
    """(A,) per-atom outputs of ``model``: torch-geometric's ``DimeNet.forward`` after its
    ``radius_graph`` and ``triplets`` calls, with the graph ``g`` given instead."""
    # x_j - x_i (+ the periodic shift) of each edge j -> i: the stock pos[j] - pos[i]
    vec = pos[g.j] - pos[g.i] + g.shift

    # Calculate distances.
    dist = vec.pow(2).sum(dim=-1).sqrt()

    # Calculate angles (stock: pos[i] - pos[j] = -vec[ji], pos[j] - pos[k] = -vec[kj],
    # pos[k] - pos[i] = vec[kj] + vec[ji]).
    if isinstance(model, DimeNetPlusPlus):
        pos_jk, pos_ij = -vec[g.idx_kj], -vec[g.idx_ji]
        a = (pos_ij * pos_jk).sum(dim=-1)
        b = torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1)
    else:
        pos_ji, pos_ki = vec[g.idx_ji], vec[g.idx_kj] + vec[g.idx_ji]
        a = (pos_ji * pos_ki).sum(dim=-1)
        b = torch.cross(pos_ji, pos_ki, dim=1).norm(dim=-1)
    angle = torch.atan2(b, a)

    rbf = model.rbf(dist)
    sbf = model.sbf(dist, angle, g.idx_kj)

    # Embedding block.
    x = model.emb(z, rbf, g.i, g.j)
    P = model.output_blocks[0](x, rbf, g.i, num_nodes=pos.size(0))

    # Interaction blocks.
    for interaction_block, output_block in zip(
        model.interaction_blocks, model.output_blocks[1:], strict=True
    ):
        x = interaction_block(x, rbf, sbf, g.idx_kj, g.idx_ji)
        P = P + output_block(x, rbf, g.i, num_nodes=pos.size(0))
    return P[:, 0]


def reference_energies(frames: Frames) -> dict[int, float]:
    """Per-element energies (eV) whose sums fit the frames' energies by least squares (the
    minimum-norm solution when compositions do not tell the elements apart, e.g. one
    molecule): the network learns the residual."""
    species = frames.species
    counts = np.zeros((len(frames), len(species)))
    col = np.searchsorted(species, frames.numbers)
    np.add.at(counts, (frames.frame_of_atom, col), 1.0)
    coef, *_ = np.linalg.lstsq(counts, frames.energy, rcond=None)
    return {int(z): float(c) for z, c in zip(species, coef, strict=True)}


def reference_table(ref: dict[int, float], device: str | torch.device = "cpu") -> torch.Tensor:
    """(MAX_Z + 1,) float64 lookup of the reference energy by atomic number (0 elsewhere)."""
    table = torch.zeros(MAX_Z + 1, dtype=torch.float64)
    for z, e in ref.items():
        table[int(z)] = float(e)
    return table.to(device)


def frame_energies(
    model: DimeNet,
    ref_table: torch.Tensor,
    z: torch.Tensor,
    pos: torch.Tensor,
    n_atoms: torch.Tensor,
    g: EdgeGraph,
) -> torch.Tensor:
    """(F,) float64 total energies: the model's atomic outputs plus the reference energies,
    summed per frame."""
    e_atom = atom_energies(model, z, pos, g).to(torch.float64) + ref_table[z]
    frame = torch.repeat_interleave(torch.arange(len(n_atoms), device=z.device), n_atoms)
    out = torch.zeros(len(n_atoms), dtype=torch.float64, device=z.device)
    return out.index_add(0, frame, e_atom)


# -- training ------------------------------------------------------------------------------
@dataclass
class Batch:
    """Tensors of a few frames, graph included, on the training device."""

    z: torch.Tensor
    pos: torch.Tensor
    n_atoms: torch.Tensor
    graph: EdgeGraph
    energy: torch.Tensor  # (F,) float64
    forces: torch.Tensor  # (A, 3) in the model dtype

    @classmethod
    def of(cls, frames: Frames, cutoff: float, device: str, dtype: torch.dtype) -> Batch:
        return cls(
            z=torch.as_tensor(frames.numbers, dtype=torch.long, device=device),
            pos=torch.as_tensor(frames.positions, dtype=dtype, device=device),
            n_atoms=torch.as_tensor(frames.n_atoms, dtype=torch.long, device=device),
            graph=edge_graph(frames, cutoff).to(device, dtype),
            energy=torch.as_tensor(frames.energy, dtype=torch.float64, device=device),
            forces=torch.as_tensor(frames.forces, dtype=dtype, device=device),
        )


def _predict_batch(model, ref_table, b: Batch, create_graph: bool):
    pos = b.pos.detach().requires_grad_(True)
    e = frame_energies(model, ref_table, b.z, pos, b.n_atoms, b.graph)
    (g,) = torch.autograd.grad(e.sum(), pos, create_graph=create_graph)
    return e, -g


def _evaluate(model, ref_table, batches: list[Batch], tr: dict[str, Any]) -> dict[str, float]:
    """Loss and errors over all of ``batches`` (means over every frame / force component)."""
    se_e = se_f = ae_f = 0.0
    n_f = n_c = 0
    for b in batches:
        e, f = _predict_batch(model, ref_table, b, create_graph=False)
        se_e += float(((e.detach() - b.energy) ** 2).sum())
        df = (f.detach() - b.forces).double()
        se_f += float((df**2).sum())
        ae_f += float(df.abs().sum())
        n_f += len(e)
        n_c += df.numel()
    mse_e, mse_f = se_e / n_f, se_f / n_c
    return {
        "loss": float(tr["force_weight"]) * mse_f + float(tr["energy_weight"]) * mse_e,
        "energy_rmse": mse_e**0.5,
        "force_mae": ae_f / n_c,
    }


def _batches(frames: Frames, order: np.ndarray, size: int, cutoff, device, dtype) -> list[Batch]:
    return [
        Batch.of(frames.subset(order[s : s + size]), cutoff, device, dtype)
        for s in range(0, len(order), size)
    ]


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class DimeNetFamily:
    """torch-geometric's DimeNet / DimeNet++ on the project's graph, trained in plain torch."""

    name = "dimenet"

    def train(self, spec: BaseSpec, train: Frames, val: Frames, outdir: Path) -> dict[str, Any]:
        params = {**DEFAULT_PARAMS, **spec.params}
        tr = {**DEFAULT_TRAINING, **spec.training}
        outdir = Path(outdir)
        if len(train) == 0 or len(val) == 0:
            raise ElmlffError(
                f"base '{spec.name}': {len(train)} train and {len(val)} val frames",
                "give the dimenet base training and validation frames (val early-stops it)",
            )
        dtype = _dtype(tr["dtype"])
        if max(train.species) > MAX_Z:
            raise ElmlffError(
                f"base '{spec.name}': Z={max(train.species)} in the training frames",
                f"DimeNet's embedding holds elements up to Z={MAX_Z}; drop heavier elements",
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        seed, max_epochs = int(tr["seed"]), int(tr["max_epochs"])
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = build_model(params, tr["dtype"]).to(device)
        cutoff = float(params["cutoff"])
        ref = reference_energies(train)
        ref_table = reference_table(ref, device)
        val_batches = _batches(
            val, np.arange(len(val)), int(tr["batch_size"]), cutoff, device, dtype
        )
        opt = torch.optim.Adam(model.parameters(), lr=float(tr["lr"]))
        fw, ew = float(tr["force_weight"]), float(tr["energy_weight"])

        def train_epoch(epoch: int) -> float:
            total, n = 0.0, 0
            order = rng.permutation(len(train))
            for b in _batches(train, order, int(tr["batch_size"]), cutoff, device, dtype):
                e, f = _predict_batch(model, ref_table, b, create_graph=True)
                loss = fw * torch.mean((f - b.forces) ** 2) + ew * torch.mean((e - b.energy) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(e)
                n += len(e)
            return total / n

        fit = fit_epochs(
            model,
            opt,
            train_epoch,
            lambda: _evaluate(model, ref_table, val_batches, tr),
            max_epochs,
            int(tr["patience"]),
            f"[{spec.name}]",
        )
        if fit.best_state is None:
            raise ElmlffError(
                f"base '{spec.name}': training kept no model (no epoch with a finite val loss)",
                "check the training log; raise max_epochs above 0 or lower lr",
            )
        outdir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": FORMAT,
                "params": params,
                "dtype": tr["dtype"],
                "species": train.species,
                "reference_energy": ref,
                "state_dict": fit.best_state,
            },
            outdir / MODEL_FILE,
        )
        return {
            "params": params,
            "training": tr,
            **epoch_info(fit),
            "species": train.species,
            "n_parameters": n_parameters(model),
            "energy_loss": "total energy per frame (eV)",
            "reference_energy": {str(z): e for z, e in ref.items()},
            "device": device,
        }

    def load(self, outdir: Path, device: str = "cpu") -> DimeNetPotential:
        info, path = checkpoint(outdir, MODEL_FILE)
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if ckpt.get("format") != FORMAT:
            raise ElmlffError(
                f"base '{info.get('name')}': {path} is no {FORMAT} checkpoint",
                "retrain the base (delete its folder and rerun snakemake)",
            )
        model = build_model(ckpt["params"], ckpt["dtype"])
        model.load_state_dict(ckpt["state_dict"])
        return DimeNetPotential(
            info["name"], model.to(device), ckpt["species"], ckpt["reference_energy"], device
        )


class DimeNetPotential:
    """A DimeNet / DimeNet++ model behind the :class:`~elmlff.bases.Potential` Protocol."""

    family = "dimenet"

    def __init__(
        self,
        name: str,
        model: DimeNet,
        species: list[int],
        reference_energy: dict[int, float],
        device: str = "cpu",
    ) -> None:
        self.name = name
        self.model = model.eval()
        self.species = [int(z) for z in species]
        self.reference_energy = {int(z): float(e) for z, e in reference_energy.items()}
        self.device = device
        self.cutoff = float(model.cutoff)
        self.dtype = next(model.parameters()).dtype
        self.ref_table = reference_table(self.reference_energy, device)

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        energies, forces = [], []
        for s in range(0, len(frames), batch_size):
            part = frames.subset(np.arange(s, min(s + batch_size, len(frames))))
            pos = torch.as_tensor(part.positions, dtype=torch.float64).requires_grad_(True)
            e = self.energy(pos, *frame_tensors(part))
            (g,) = torch.autograd.grad(e.sum(), pos)
            energies.append(e.detach().cpu().numpy())
            forces.append(-g.detach().cpu().double().numpy())
        return np.concatenate(energies), np.concatenate(forces)

    def energy(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        frames = frames_from_tensors(positions, numbers, n_atoms, cell, pbc, self.name)
        check_species(self.name, self.species, frames.numbers)
        g = edge_graph(frames, self.cutoff).to(self.device, self.dtype)
        z = torch.as_tensor(numbers).to(self.device, torch.long)  # rMD17's are uint8
        pos = positions.to(self.device, self.dtype)
        n = torch.as_tensor(n_atoms).to(self.device, torch.long)
        return frame_energies(self.model, self.ref_table, z, pos, n, g)
