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

The e3nn modules own the parameters and define the model; ``forward`` evaluates them in fused
form (:class:`FusedInteraction`): each ``o3.Linear`` as its dense matrix, the channel-wise tensor
product as a few batched products with e3nn's own Wigner 3j symbols and path weights, the
gate's input order folded into the matrices before it. The same numbers as the modules'
(``forward(..., fused=False)``; tested to float64 rounding), in about a third of the tensor
operations: θ runs beside the bases at every MD step on a small molecule, where the cost of
each operation, not arithmetic, decides. Without autograd to the weights (MD, prediction) the
matrices are built once for the current weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from elmlff.meta.data import MetaBatch, Stats, species_index, version_key
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


def dense(lin: nn.Module, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(in, out) matrix of an e3nn ``o3.Linear`` without biases: the layer applied to the
    identity (differentiable in its weights)."""
    return lin(torch.eye(lin.irreps_in.dim, dtype=dtype, device=device))


@dataclass
class _TPSlot:
    """One input irrep of the channel-wise (``uvu``) tensor product: its columns in the input
    (``start``, ``mul`` channels of dimension ``dim``), the Wigner 3j symbols times path
    weights of every path from it, ``coef`` (sh dim, dim * P) over the paths' output
    components P, and for each (channel, output component) its weight column ``wcol``."""

    start: int
    mul: int
    dim: int
    coef: torch.Tensor
    wcol: torch.Tensor


@dataclass
class _TPPlan:
    """The constants of an e3nn ``uvu`` tensor product with per-edge weights, for
    :meth:`FusedInteraction.tensor_product`: per input irrep a :class:`_TPSlot`, and ``order``:
    the output's columns among the slots' concatenated results."""

    slots: list[_TPSlot]
    order: torch.Tensor

    @staticmethod
    def of(tp: nn.Module, dtype: torch.dtype, device: torch.device) -> _TPPlan:
        """Read ``tp``'s instructions: out[e, u, k] = path_weight w[e, (path, u)] sum_ij
        w3j[i, j, k] x1[e, u, i] sh[e, j], as e3nn's code generator computes them."""
        from e3nn import o3

        in1, in2, out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        s1, s2, so = in1.slices(), in2.slices(), out.slices()
        offsets, flat = [], 0
        for ins in tp.instructions:
            if ins.connection_mode != "uvu" or not ins.has_weight or in2[ins.i_in2].mul != 1:
                raise NotImplementedError("fused form: channel-wise paths with weights only")
            offsets.append(flat)
            flat += math.prod(ins.path_shape)
        slots, columns, where = [], [], 0
        for i, (mul, ir) in enumerate(in1):
            paths = [(n, ins) for n, ins in enumerate(tp.instructions) if ins.i_in1 == i]
            if not paths:
                continue
            n_p = sum(out[ins.i_out].ir.dim for _, ins in paths)
            coef = torch.zeros(in2.dim, ir.dim, n_p, dtype=torch.float64)
            wcol = torch.zeros(mul, n_p, dtype=torch.long)
            k0 = 0
            for n, ins in paths:
                ir2, ir_out = in2[ins.i_in2].ir, out[ins.i_out].ir
                w3j = o3.wigner_3j(ir.l, ir2.l, ir_out.l, dtype=torch.float64)  # (i, j, k)
                block = coef[s2[ins.i_in2], :, k0 : k0 + ir_out.dim]
                block += ins.path_weight * w3j.permute(1, 0, 2)
                wcol[:, k0 : k0 + ir_out.dim] = offsets[n] + torch.arange(mul)[:, None]
                u, k = torch.arange(mul)[:, None], torch.arange(ir_out.dim)
                # output column (u, k) of the path's irrep <- result column (u, k0 + k)
                columns.append((so[ins.i_out].start + u * ir_out.dim + k, where + u * n_p + k0 + k))
                k0 += ir_out.dim
            slots.append(
                _TPSlot(
                    s1[i].start,
                    mul,
                    ir.dim,
                    coef.reshape(in2.dim, -1).to(dtype=dtype, device=device),
                    wcol.flatten().to(device),
                )
            )
            where += mul * n_p
        order = torch.full((out.dim,), -1, dtype=torch.long)
        for target, source in columns:
            if bool((order[target.flatten()] >= 0).any()):
                raise NotImplementedError("fused form: one path per output irrep")
            order[target.flatten()] = source.flatten()
        if bool((order < 0).any()):
            raise NotImplementedError("fused form: every output irrep needs a path")
        return _TPPlan(slots, order.to(device))


@dataclass
class FusedInteraction:
    """An :class:`Interaction`'s linear maps as matrices (``self_lin`` and ``down`` with
    their columns in the gate's order, ``down`` divided by the neighbour normalisation and
    with its rows in the order of :meth:`tensor_product`'s columns) and what its tensor
    product and gate need: the radial network's hidden layers, and per input irrep its last
    layer's matrix with the columns that irrep's paths read (so no column is gathered per
    edge)."""

    up: torch.Tensor
    self_lin: torch.Tensor
    down: torch.Tensor
    radial_hidden: list[nn.Module]
    radial_out: list[torch.Tensor]
    plan: _TPPlan
    gate_module: nn.Module
    n_scalars: int
    n_gates: int
    gated_scale: float

    def tensor_product(self, x1: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor):
        """(E, out): e3nn's channel-wise tensor product of the senders' features ``x1`` with
        the edge harmonics ``sh``, weighted per edge by the radial network, its columns per
        input irrep (``plan.order`` maps e3nn's output columns to them; ``down`` reads them
        in this order); per input irrep one product with the harmonics, one batched product
        over channels, one product of the radial network's last hidden layer, one weighting."""
        hid = radial
        for layer in self.radial_hidden:
            hid = layer(hid)
        e = len(x1)
        parts = []
        for s, w in zip(self.plan.slots, self.radial_out, strict=True):
            a = torch.mm(sh, s.coef).view(e, s.dim, -1)  # (E, i, P)
            x = x1[:, s.start : s.start + s.mul * s.dim].view(e, s.mul, s.dim)
            z = torch.bmm(x, a)  # (E, u, P)
            parts.append((z * torch.mm(hid, w).view(e, s.mul, -1)).view(e, -1))
        return torch.cat(parts, dim=1)

    def gate(self, y: torch.Tensor) -> torch.Tensor:
        """e3nn's gate on ``y`` whose columns are scalars, gates, gated vectors in that order."""
        s, v = self.n_scalars, self.n_gates
        scalars = self.gate_module.act_scalars(y[:, :s])
        g = self.gate_module.act_gates(y[:, s : s + v]) * self.gated_scale
        gated = y[:, s + v :].reshape(len(y), v, -1) * g[..., None]
        return torch.cat([scalars, gated.reshape(len(y), -1)], dim=1)


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
        # the fused form: where the gate reads its scalars, gates and gated vectors, and the
        # constant of its elementwise product (1o x 0e -> 1o), read off the e3nn modules
        with torch.no_grad():
            probe = torch.arange(self.gate.irreps_in.dim, dtype=torch.float64)[None]
            parts = self.gate.sc(probe)
            self._gate_columns = torch.cat([q[0] for q in parts]).long()
            self._gate_sizes = (parts[0].shape[1], parts[1].shape[1])
            v = self._gate_sizes[1]
            scale = self.gate.mul(torch.ones(1, 3 * v), torch.ones(1, v))
            if not torch.allclose(scale, scale.flatten()[0]):
                raise NotImplementedError("the gate's product is not one constant")
            self._gated_scale = float(scale.flatten()[0])
        self._plan: dict = {}

    def forward(self, h, sh, radial, src, dst, fused: FusedInteraction | None = None):
        """The block on node features ``h``; ``fused``: its matrices (:meth:`fuse`), else the
        e3nn modules' own evaluation."""
        if fused is None:
            msg = self.tp(self.lin_up(h)[src], sh, self.radial(radial))
            agg = torch.zeros(len(h), msg.shape[1], dtype=msg.dtype, device=msg.device)
            agg = agg.index_add(0, dst, msg) / self.avg_neighbors
            out = self.gate(self.self_lin(h) + self.lin_down(agg))
            return h + out if self.residual else out
        msg = fused.tensor_product(torch.mm(h, fused.up).index_select(0, src), sh, radial)
        agg = torch.zeros(len(h), msg.shape[1], dtype=msg.dtype, device=msg.device)
        agg = agg.index_add(0, dst, msg)
        out = fused.gate(torch.addmm(torch.mm(h, fused.self_lin), agg, fused.down))
        return h + out if self.residual else out

    def fuse(self, dtype: torch.dtype, device: torch.device) -> FusedInteraction:
        """The block's matrices for the current weights (differentiable in them)."""
        plan = self._plan.get((dtype, device))
        if plan is None:
            plan = self._plan[dtype, device] = _TPPlan.of(self.tp, dtype, device)
        cols = self._gate_columns.to(device)
        down = (dense(self.lin_down, dtype, device) / self.avg_neighbors).index_select(1, cols)
        width = sum(len(s.wcol) for s in plan.slots)  # the tensor product's columns
        *hidden, last = self.radial.children()  # e3nn's FullyConnectedNet layers
        if last.act is not None:
            raise NotImplementedError("fused form: a radial network with a linear last layer")
        w_last = last.weight / (last.h_in * last.var_in / last.var_out) ** 0.5  # as e3nn's
        return FusedInteraction(
            up=dense(self.lin_up, dtype, device),
            self_lin=dense(self.self_lin, dtype, device).index_select(1, cols),
            down=down.new_zeros(width, down.shape[1]).index_copy(0, plan.order, down),
            radial_hidden=hidden,
            radial_out=[w_last.to(dtype).index_select(1, s.wcol) for s in plan.slots],
            plan=plan,
            gate_module=self.gate,
            n_scalars=self._gate_sizes[0],
            n_gates=self._gate_sizes[1],
            gated_scale=self._gated_scale,
        )


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
        self._frozen, self._matrix_cache = False, None  # the fused form's (see frozen)

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

    def forward(
        self, b: MetaBatch, positions, base_energy, base_forces, fused: bool = True
    ) -> torch.Tensor:
        """Total energy (F,) in eV; ``positions`` (A, 3) and the base outputs may carry graphs.
        ``fused=False``: through the e3nn modules one by one (the reference the fused form is
        tested against)."""
        vec = positions[b.src] - positions[b.dst] + b.shift
        d = vec.norm(dim=1)
        sh = self.sh(vec)
        radial = bessel_envelope(d, self.params["cutoff"], self.params["n_rbf"])
        x = self.node_inputs(b, base_energy, base_forces)
        if fused:
            mats = self._matrices(x.dtype, x.device)
            h = torch.mm(x, mats["embed"])
            for block, f in zip(self.blocks, mats["blocks"], strict=True):
                h = block(h, sh, radial, b.src, b.dst, f)
            atom = torch.mv(h, mats["readout"]) * self.stats.energy_sigma
        else:
            h = self.embed(x)
            for block in self.blocks:
                h = block(h, sh, radial, b.src, b.dst)
            atom = self.readout(h)[:, 0] * self.stats.energy_sigma
        theta = torch.zeros(len(b.n_atoms), dtype=atom.dtype, device=atom.device)
        theta = theta.index_add(0, b.batch, atom)
        z = self.z_to_index[b.numbers]
        theta = theta.index_add(0, b.batch, self.atom_shift[z].to(atom.dtype))
        return base_energy @ self.blend + theta

    def _matrices(self, dtype: torch.dtype, device: torch.device) -> dict:
        """The fused form's matrices for the current weights: rebuilt at every call while the
        weights train, built once (without autograd to them) under :meth:`frozen` or without
        autograd."""
        if not self._frozen and torch.is_grad_enabled():
            return self._build_matrices(dtype, device)
        key = (dtype, device, version_key(*self.parameters()))
        if self._matrix_cache is None or self._matrix_cache[0] != key:
            with torch.no_grad():
                self._matrix_cache = (key, self._build_matrices(dtype, device))
        return self._matrix_cache[1]

    def _build_matrices(self, dtype: torch.dtype, device: torch.device) -> dict:
        return {
            "embed": dense(self.embed, dtype, device),
            "blocks": [block.fuse(dtype, device) for block in self.blocks],
            "readout": dense(self.readout, dtype, device)[:, 0],
        }

    @contextmanager
    def frozen(self) -> Iterator[EnsembleConserv]:
        """Within it, the fused matrices are built once for the current weights, without
        autograd to them (MD, prediction: only the inputs' gradients are asked for)."""
        before, self._frozen = self._frozen, True
        try:
            yield self
        finally:
            self._frozen = before

    @property
    def blend(self) -> torch.Tensor:
        """(M,) base weights w_m, summing to one (1/M at the start)."""
        return self.blend_free - self.blend_free.mean() + 1.0 / self.n_models
