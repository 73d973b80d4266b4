"""Ensemble-conserv: an E(3)-equivariant energy model over the bases, conservative through them.

θ(E_1..E_M, F_1..F_M, x) is a NequIP-style message-passing network built from e3nn pieces
(edge spherical harmonics, Bessel radial basis with a polynomial envelope, weighted tensor
products, gated nonlinearities). Per-atom inputs: species (one-hot), every base's energy per
atom (standardised, shared by the frame's atoms), every base's smoothed force magnitude
(scalars, ``0e``) and every base's force vector (``1o``). The total energy is

    E = sum_m w_m E_m + sum_i (sigma_E theta_i + b_Z(i))   (sum_m w_m = 1; w = 1/M, θ = 0 at start,
                                                            b_Z: least-squares element energies)

and the forces are ``-dE/dx`` through the bases (the paper's Eq. 6): because E_m and F_m are
computed from x by the live bases with ``create_graph=True``, autograd brings in
``(dθ/dE_m) F_m`` and the Hessian-vector products ``H_m (dθ/dF_m)`` by double backpropagation,
without forming a Hessian. With ``use_forces=False`` it is the paper's Eq. 7 ablation
θ(E_1..E_M, x), which needs first derivatives of the bases only.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
from torch import nn

from elmlff.meta.data import MetaBatch, Stats, species_index
from elmlff.meta.params import ConservParams


def bessel_envelope(d: torch.Tensor, cutoff: float, n: int, p: int = 6) -> torch.Tensor:
    """(E, n) Bessel radial basis times NequIP's smooth polynomial cutoff envelope."""
    k = torch.arange(1, n + 1, dtype=d.dtype, device=d.device)
    x = d / cutoff
    basis = math.sqrt(2.0 / cutoff) * torch.sin(k * math.pi * x[:, None]) / d[:, None]
    env = (
        1.0
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    )
    return basis * (env * (x < 1.0))[:, None]


class Interaction(nn.Module):
    """One NequIP-style block: linear, channel-wise (``uvu``) tensor product of each neighbour's
    features with the edge spherical harmonics, weighted per edge and path by a radial MLP, sum
    over neighbours, linear, self-connection, gate; residual when shapes agree. (Channel-wise
    products keep ~90 radial weights per edge where a fully connected one needs ~2,000.)"""

    def __init__(self, irreps_in, irreps_sh, scalars: int, vectors: int, p: ConservParams):
        super().__init__()
        from e3nn import o3
        from e3nn.nn import FullyConnectedNet, Gate

        self.gate = Gate(
            f"{scalars}x0e",
            [nn.functional.silu],
            f"{vectors}x0e",
            [torch.sigmoid],
            f"{vectors}x1o",
        )
        irreps_in = o3.Irreps(irreps_in)
        keep = {o3.Irrep("0e"), o3.Irrep("1o")}
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_edge) in enumerate(o3.Irreps(irreps_sh)):
                for ir_out in ir_in * ir_edge:
                    if ir_out in keep:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        irreps_mid, perm, _ = o3.Irreps(mid).sort()
        instructions = [(i, j, perm[k], mode, w) for i, j, k, mode, w in instructions]
        self.lin_up = o3.Linear(irreps_in, irreps_in)
        self.tp = o3.TensorProduct(
            irreps_in,
            irreps_sh,
            irreps_mid,
            instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.radial = FullyConnectedNet(
            [p.n_rbf, p.radial_hidden, self.tp.weight_numel], nn.functional.silu
        )
        self.lin_down = o3.Linear(irreps_mid, self.gate.irreps_in)
        self.self_lin = o3.Linear(irreps_in, self.gate.irreps_in)
        self.residual = irreps_in == self.gate.irreps_out
        self.avg_neighbors = p.avg_neighbors
        self.irreps_out = self.gate.irreps_out

    def forward(self, h, sh, radial, src, dst):
        msg = self.tp(self.lin_up(h)[src], sh, self.radial(radial))
        agg = torch.zeros(len(h), msg.shape[1], dtype=msg.dtype, device=msg.device)
        agg = agg.index_add(0, dst, msg) / self.avg_neighbors
        out = self.gate(self.self_lin(h) + self.lin_down(agg))
        return h + out if self.residual else out


class EnsembleConserv(nn.Module):
    """θ: an invariant per-frame energy from base energies/forces and geometry."""

    kind = "conserv"

    def __init__(self, n_models: int, species: list[int], stats: Stats, **params) -> None:
        super().__init__()
        from e3nn import o3

        p = ConservParams(**params)
        self.params, self.n_models, self.species = asdict(p), n_models, list(species)
        self.stats = stats
        self.register_buffer("z_to_index", species_index(species))
        n_scalar_in = len(species) + n_models + (n_models if p.use_forces else 0)
        irreps_in = o3.Irreps(f"{n_scalar_in}x0e" + (f" + {n_models}x1o" if p.use_forces else ""))
        self.irreps_sh = o3.Irreps.spherical_harmonics(p.l_max)
        self.sh = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.embed = o3.Linear(irreps_in, f"{p.scalars}x0e + {p.vectors}x1o")
        blocks, irreps = [], self.embed.irreps_out
        for _ in range(p.layers):
            blocks.append(Interaction(irreps, self.irreps_sh, p.scalars, p.vectors, p))
            irreps = blocks[-1].irreps_out
        self.blocks = nn.ModuleList(blocks)
        self.readout = o3.Linear(irreps, "1x0e")
        with torch.no_grad():  # start at the plain mean of the bases
            for w in self.readout.parameters():
                w.zero_()
        # affine blend: weights sum to one, so a step in them moves the energy by differences
        # between bases (meV), not by a fraction of the total energy (tens of eV)
        self.blend_free = nn.Parameter(torch.zeros(n_models))
        self.atom_shift = nn.Parameter(torch.zeros(len(species)))  # eV per atom of each element

    def init_atom_shift(self, numbers, n_atoms, residual) -> None:
        """Least-squares per-element energies for ``residual`` (F,) = E_ref - blended E_m."""
        import numpy as np

        frame = np.repeat(np.arange(len(n_atoms)), n_atoms)
        counts = np.zeros((len(n_atoms), len(self.species)))
        np.add.at(counts, (frame, self.z_to_index.cpu()[torch.as_tensor(numbers)].numpy()), 1.0)
        shift, *_ = np.linalg.lstsq(counts, residual, rcond=None)
        with torch.no_grad():
            self.atom_shift.copy_(torch.as_tensor(shift))

    def node_inputs(self, b: MetaBatch, base_energy, base_forces) -> torch.Tensor:
        s = self.stats
        z = nn.functional.one_hot(self.z_to_index[b.numbers], len(self.species)).to(
            base_energy.dtype
        )
        e = (base_energy / b.n_atoms[:, None] - s.energy_mu) / s.energy_sigma  # (F, M)
        parts = [z, e[b.batch]]
        if self.params["use_forces"]:
            f = base_forces / s.force_rms  # (A, M, 3)
            # |F| smoothed near zero (sqrt(|f|²+δ²)-δ, δ = 0.1 force RMS): a plain norm has
            # unbounded curvature at F = 0, where the chain rule through the bases needs it
            parts.append(torch.sqrt((f**2).sum(-1) + 0.01) - 0.1)
            parts.append(f.reshape(len(f), -1))  # M x 1o, (x, y, z) each
        return torch.cat(parts, dim=1)

    def forward(self, b: MetaBatch, positions, base_energy, base_forces) -> torch.Tensor:
        """Total energy (F,) in eV; ``positions`` (A, 3) and the base outputs may carry graphs."""
        vec = positions[b.src] - positions[b.dst] + b.shift
        d = vec.norm(dim=1)
        sh = self.sh(vec)
        radial = bessel_envelope(d, self.params["cutoff"], self.params["n_rbf"])
        h = self.embed(self.node_inputs(b, base_energy, base_forces))
        for block in self.blocks:
            h = block(h, sh, radial, b.src, b.dst)
        atom = self.readout(h)[:, 0] * self.stats.energy_sigma
        theta = torch.zeros(len(b.n_atoms), dtype=atom.dtype, device=atom.device)
        theta = theta.index_add(0, b.batch, atom)
        z = self.z_to_index[b.numbers]
        theta = theta.index_add(0, b.batch, self.atom_shift[z].to(atom.dtype))
        return base_energy @ self.blend + theta

    @property
    def blend(self) -> torch.Tensor:
        """(M,) base weights w_m, summing to one (1/M at the start)."""
        return self.blend_free - self.blend_free.mean() + 1.0 / self.n_models
