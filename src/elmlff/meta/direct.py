"""Ensemble-direct: a graph attention network that predicts forces from every base's forces.

As in the EL-MLFFs paper (Eq. 3-5): node features are every base's force on the atom, every
base's energy through an embedding (per atom, standardised) and the atom's species; edges are a
cutoff graph; layers are torch-geometric ``GATConv`` with residual connections
``H <- H + SiLU(GATConv(H, E))`` and jumping knowledge (every layer's output concatenated)
before a per-atom force head. Unlike the paper, whose GAT outputs the forces from its head,
the output here is by default a learned blend of the base forces plus the head's correction
(the head starts at zero, so an untrained model is the plain mean):

    F_i = sum_m a_m F_im + sigma_F * head(JK(H_0..H_L))_i

``blend=False`` is the paper's form, F_i = sigma_F * head(...)_i from a default-initialised
head (the default campaign trains it as the ablation ``ensemble_direct_noblend``).

``amortized=True`` makes one model serve every subset of the bases: a mask (``b.extra["mask"]``,
frames x bases, True where present) zeroes the absent bases' inputs and joins the node
features, and the blend is a softmax over the present bases only (uniform at the start, so an
untrained model is the plain mean of the present bases). Trained over random subsets
(:mod:`elmlff.meta.amortized`), it lets a user drop any base without retraining.

The model reads Cartesian components, so it is not equivariant by construction; training
rotates each batch at random (``augment_rotations``) so that it learns to be nearly so.
It predicts forces only: it has no energy, and its forces need not be conservative.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from elmlff.errors import ElmlffError
from elmlff.meta.data import MetaBatch, Stats, species_index, version_key
from elmlff.meta.params import DirectParams


@dataclass
class CSRGraph:
    """The cutoff graph for the fused GAT layers, edges ordered by receiving atom and
    without self-loops: ``crow`` (N + 1) row offsets, ``col`` (E,) sending atoms, ``row``
    (E,) receiving atoms, ``edge_attr`` (E, F) in that order. An atom pair reached through
    several periodic images keeps one edge per image. Each atom's self-loop (the features'
    mean over its incoming edges, as stock ``GATConv`` adds it) enters the attention only
    through its logit, which is linear in the features: the mean of the atom's incoming edge
    logits. ``cache`` holds the layers' edge logits, which depend on the graph and the
    layers' weights alone, so a graph reused for many inputs (the subset study's
    predictions, validation) computes them once."""

    crow: torch.Tensor
    col: torch.Tensor
    row: torch.Tensor
    edge_attr: torch.Tensor
    n: int
    cache: dict = field(default_factory=dict, repr=False)

    def mean_attr(self) -> torch.Tensor:
        """(N, F) each atom's mean incoming edge features (zeros without edges): the features
        stock ``GATConv`` gives its self-loop (``fill_value="mean"``), cached."""
        if "mean_attr" not in self.cache:
            a, e = self.edge_attr, len(self.col)
            count = (self.crow[1:] - self.crow[:-1]).clamp_min(1).to(a.dtype)
            ones = a.new_ones(e)  # a sparse sum over each atom's edges: faster than a segment sum
            total = _csr(self.crow, torch.arange(e, device=a.device), ones, self.n, e) @ a
            self.cache["mean_attr"] = total / count[:, None]
        return self.cache["mean_attr"]

    def attention_logits(
        self, convs: Sequence[nn.Module]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer of ``convs``, the edge-attention logits' edge terms: (H, E) of the edges
        and (H, N) of the self-loops; one product for all layers. The self-loop's term is the
        layer's folded edge weights on :meth:`mean_attr` (linear: the mean of the atom's edge
        terms). Without autograd they are cached while the layers' weights are unchanged."""
        key = tuple(version_key(c.lin_edge.weight, c.att_edge) for c in convs)
        slot = ("logits", *convs)  # keyed by the layers themselves (kept alive: no id reuse)
        hit = self.cache.get(slot)
        if hit is not None and hit[0] == key and not torch.is_grad_enabled():
            return hit[1]
        fold = _edge_folds(convs, key)  # (L * H, F)
        edge = fold @ self.edge_attr.T  # (L * H, E)
        loop = fold @ self.mean_attr().T  # (L * H, N)
        sizes = [c.heads for c in convs]
        out = list(zip(edge.split(sizes), loop.split(sizes), strict=True))
        if not torch.is_grad_enabled():
            self.cache[slot] = (key, out)
        return out

    def blocks(self, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row offsets, columns and rows of the block-diagonal adjacency of ``heads`` copies of
        the graph (one sparse product aggregates every head), cached."""
        if ("blocks", heads) not in self.cache:
            e = len(self.col)
            k = torch.arange(heads, device=self.col.device)
            crow = torch.cat([(self.crow[:-1] + e * k[:, None]).view(-1), self.crow[-1:] * heads])
            col = (self.col + self.n * k[:, None]).view(-1)
            row = (self.row + self.n * k[:, None]).view(-1)
            self.cache["blocks", heads] = (_index(crow), _index(col), row)
        return self.cache["blocks", heads]

    def transposed_blocks(self, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transpose of :meth:`blocks` as CSR (row offsets, columns) and the order that
        takes its values from the block adjacency's, cached (for the product's backward)."""
        if ("transposed", heads) not in self.cache:
            e, dev = len(self.col), self.col.device
            order = torch.argsort(self.col, stable=True)  # by sending atom
            crow = torch.zeros(self.n + 1, dtype=torch.long, device=dev)
            crow[1:] = torch.cumsum(torch.bincount(self.col, minlength=self.n), 0)
            k = torch.arange(heads, device=dev)[:, None]
            self.cache["transposed", heads] = (
                _index(torch.cat([(crow[:-1] + e * k).view(-1), crow[-1:] * heads])),
                _index((self.row[order] + self.n * k).view(-1)),
                (order + e * k).view(-1),
            )
        return self.cache["transposed", heads]


def _edge_folds(convs: Sequence[nn.Module], key: tuple) -> torch.Tensor:
    """(L * H, F) every layer's folded edge weights (``edge_fold``) stacked; cached on the
    first layer without autograd while ``key`` (the layers' weights' versions) is unchanged."""
    hit = getattr(convs[0], "_edge_folds", None)
    if hit is not None and hit[0] == key and not torch.is_grad_enabled():
        return hit[1]
    fold = torch.cat([c.edge_fold() for c in convs])
    if not torch.is_grad_enabled():
        convs[0]._edge_folds = (key, fold)
    return fold


def _index(t: torch.Tensor) -> torch.Tensor:
    """Sparse-matrix indices as int32 on a CPU where they fit: its sparse product converts
    int64 indices on every call (a copy as large as the values). Other devices keep int64."""
    if t.device.type != "cpu" or (len(t) and int(t.max()) >= 2**31 - 1):
        return t
    return t.to(torch.int32)


def _csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n: int, m: int | None = None
) -> torch.Tensor:
    """The (n, m) (default square) CSR matrix of the given structure and values."""
    global _CSR_WARNED
    shape = (n, n if m is None else m)
    if _CSR_WARNED:  # torch warns once per process: later calls skip the (slow) filter
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul is stable
        warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
        out = torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
    _CSR_WARNED = True
    return out


_CSR_WARNED = False


class _BlockProduct(torch.autograd.Function):
    """``A(weight) @ feats`` for the block adjacency of :meth:`CSRGraph.blocks`, differentiable
    in both: d weight_e = <grad_row(e), feats_col(e)> (a sampled dense-dense product on the
    graph's pattern), d feats = A^T @ grad (a sparse product with the cached transpose), so no
    (edges x channels) tensor is formed."""

    @staticmethod
    def forward(ctx, weight, feats, g: CSRGraph, heads: int):
        ctx.save_for_backward(weight, feats)
        ctx.g, ctx.heads = g, heads
        return _BlockProduct.product(weight, feats, g, heads)

    @staticmethod
    def product(weight, feats, g: CSRGraph, heads: int) -> torch.Tensor:
        """The product itself (inference calls it without an autograd node)."""
        crow, col, _ = g.blocks(heads)
        return _csr(crow, col, weight, len(feats)) @ feats

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weight, feats = ctx.saved_tensors
        g, heads = ctx.g, ctx.heads
        grad = grad.contiguous()
        d_weight = d_feats = None
        if ctx.needs_input_grad[0]:  # <grad_row, feats_col> on the graph's pattern (SDDMM)
            crow, col, row = g.blocks(heads)
            if len(col) <= len(feats) ** 2:
                pattern = _csr(crow, col, weight, len(feats))
                d_weight = torch.sparse.sampled_addmm(pattern, grad, feats.T, beta=0.0).values()
            else:  # more edges than atom pairs (a tiny cell's images): torch's SDDMM fails
                d_weight = (grad.index_select(0, row) * feats.index_select(0, col)).sum(1)
        if ctx.needs_input_grad[1]:
            crow_t, col_t, order = g.transposed_blocks(heads)
            d_feats = _csr(crow_t, col_t, weight[order], len(feats)) @ grad
        return d_weight, d_feats, None, None


@torch.no_grad()
def _largest(g: CSRGraph, z: torch.Tensor, z_loop: torch.Tensor) -> torch.Tensor:
    """(H, N) each atom's largest attention logit over its edges and its self-loop: the
    softmax's shift (a constant for autograd, as the softmax does not depend on it). A shared
    upper bound instead would skip this segment max, but on a large batch some atom's weights
    then underflow (and, in float32, its denominator's square in the backward pass: NaN
    gradients), which costs a second pass; bench/meta_inference.py times the layer."""
    offsets = g.crow.expand(len(z), -1)
    top = torch.segment_reduce(z, "max", offsets=offsets, axis=1, initial=-math.inf)
    return torch.maximum(top, z_loop)


def _weighted_sums(
    g: CSRGraph, z: torch.Tensor, z_loop: torch.Tensor, top: torch.Tensor, feats: torch.Tensor
) -> torch.Tensor:
    """(H, N, C + 1): per head, the sum over each atom's edges and its self-loop of
    exp(logit - top) times the sender's features (their last, a one: the softmax's
    denominator); one sparse-dense product for all heads (block-diagonal adjacency)."""
    h, n = z_loop.shape
    weight = (z - top.index_select(1, g.row)).exp_()  # (H, E)
    w, x = weight.view(-1), feats.view(h * n, -1)
    if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad):
        sums = _BlockProduct.apply(w, x, g, h)
    else:  # inference: the product alone, without an autograd node
        sums = _BlockProduct.product(w, x, g, h)
    sums = sums.view(h, n, -1)
    return torch.addcmul(sums, (z_loop - top).exp()[..., None], feats)


def folded_gat_conv(*args, **kwargs) -> nn.Module:
    """torch-geometric's ``GATConv`` whose edge attention is computed in folded form.

    Stock ``GATConv`` projects every edge's features to ``heads x channels`` (``lin_edge``)
    and only then contracts them with ``att_edge`` to one logit per head. The two maps are
    linear, so the logits equal ``edge_attr @ W_fold.T`` with ``W_fold[h] = sum_c
    att_edge[h, c] lin_edge.weight[h, c]``: the same numbers (to float rounding), the same
    parameters and state dict, without the (edges x hidden) intermediate that dominated the
    layer's arithmetic on a dense graph (54-atom slabs: ~85 edges per atom).

    Given a :class:`CSRGraph`, :meth:`fused` computes the same layer in a few passes over
    (heads x edges) arrays, without torch-geometric's message passing: the edge terms of the
    logits come from the graph (every layer's in one product, cached there without
    autograd), the self-loops are added per atom; one product of the node features gives
    the projected features, a column of ones and both attention terms (``att_src`` and
    ``att_dst`` folded into ``lin``; cached without autograd); the softmax subtracts each
    atom's largest logit (:func:`_largest`); the attention-weighted sum and the softmax's
    denominator are one sparse-dense product (a block-diagonal adjacency of all heads, the
    ones column beside the features), with its own backward (:class:`_BlockProduct`), so no
    weight is normalised edge by edge and no (edges x channels) tensor is formed in the
    forward pass. torch-geometric's edge-list path stays for groups of models trained under
    ``vmap``, which cannot batch sparse tensors.
    """
    from torch_geometric.nn import GATConv
    from torch_geometric.utils import softmax

    class _FoldedGATConv(GATConv):
        def edge_fold(self) -> torch.Tensor:
            """(H, F): ``lin_edge`` contracted with ``att_edge`` (one edge logit per head)."""
            w = self.lin_edge.weight.view(self.heads, self.out_channels, -1)
            return (w * self.att_edge.view(self.heads, self.out_channels, 1)).sum(1)

        def node_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
            """(W, b) of one product ``x @ W.T + b`` giving, per head, the projected features
            and a one (the softmax's denominator: a zero row, bias one), then the source and
            the target attention logits (``att_src``, ``att_dst`` folded into ``lin``);
            cached without autograd while the weights are unchanged."""
            key = version_key(self.lin.weight, self.att_src, self.att_dst)
            hit = getattr(self, "_node_weights", None)
            if hit is not None and hit[0] == key and not torch.is_grad_enabled():
                return hit[1]
            h, c = self.heads, self.out_channels
            w = self.lin.weight.view(h, c, -1)
            ones = w.new_zeros(h, 1, w.shape[-1])
            rows = torch.cat(
                [torch.cat([w, ones], 1).view(h * (c + 1), -1)]
                + [(w * att.view(h, c, 1)).sum(1) for att in (self.att_src, self.att_dst)]
            )
            bias = torch.zeros(len(rows), dtype=w.dtype, device=w.device)
            bias[c : h * (c + 1) : c + 1] = 1.0
            if not torch.is_grad_enabled():
                self._node_weights = (key, (rows, bias))
            return rows, bias

        def edge_update(self, alpha_j, alpha_i, edge_attr, index, ptr, dim_size):
            alpha = alpha_j if alpha_i is None else alpha_j + alpha_i
            if index.numel() == 0:
                return alpha
            if edge_attr is not None and self.lin_edge is not None:
                if edge_attr.dim() == 1:
                    edge_attr = edge_attr.view(-1, 1)
                alpha = alpha + edge_attr @ self.edge_fold().T
            alpha = F.leaky_relu(alpha, self.negative_slope)
            alpha = softmax(alpha, index, ptr, dim_size)
            return F.dropout(alpha, p=self.dropout, training=self.training)

        def fused(
            self,
            x: torch.Tensor,
            g: CSRGraph,
            logits: tuple[torch.Tensor, torch.Tensor] | None = None,
        ) -> torch.Tensor:
            """The layer's output (N, heads * channels) on graph ``g``; ``logits``: its edge
            terms from :meth:`CSRGraph.attention_logits` (computed here if not given)."""
            if not self.concat or self.res is not None or (self.training and self.dropout):
                raise RuntimeError(
                    "the fused GAT layer has no mean over heads, no residual "
                    "and no attention dropout"
                )
            h, c, slope = self.heads, self.out_channels, self.negative_slope
            e_edge, e_loop = logits or g.attention_logits([self])[0]
            w, b = self.node_weights()
            y = torch.addmm(b, x, w.T)  # (N, H (C + 1) + 2 H)
            feats = y[:, : h * (c + 1)].view(-1, h, c + 1).transpose(0, 1).contiguous()
            a = y[:, h * (c + 1) :].T.contiguous()  # (2 H, N)
            a_src, a_dst = a[:h], a[h:]
            z = a_src.index_select(1, g.col).add_(e_edge).add_(a_dst.index_select(1, g.row))
            z = F.leaky_relu(z, slope, inplace=True)  # (H, E): the edges' attention logits
            z_loop = F.leaky_relu(a_src + e_loop + a_dst, slope)  # (H, N): the self-loops'
            sums = _weighted_sums(g, z, z_loop, _largest(g, z, z_loop), feats)  # (H, N, C + 1)
            num, den = sums[..., :c].transpose(0, 1), sums[..., c:].transpose(0, 1)
            if self.bias is None:
                return (num / den).reshape(-1, h * c)
            return torch.addcdiv(self.bias.view(h, c), num, den).reshape(-1, h * c)

    return _FoldedGATConv(*args, **kwargs)


def _linear_of_parts(linear: nn.Linear, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``linear(torch.cat(parts, dim=1))`` as one product per part with its block of the
    weights: the same numbers without writing and reading the concatenation (on a CPU the
    (atoms x 256) one before the head cost as much as the head itself)."""
    w, out, start = linear.weight, linear.bias, 0
    for p in parts:  # out of place: vmap (a group of models) has no batching rule for addmm_
        out = torch.addmm(out, p, w[:, start : start + p.shape[1]].T)
        start += p.shape[1]
    if start != w.shape[1]:
        raise ValueError(f"parts of {start} features for a layer of {w.shape[1]} inputs")
    return out


def gaussian_rbf(d: torch.Tensor, cutoff: float, n: int) -> torch.Tensor:
    """(E, n) Gaussian smearing of distances on [0, cutoff] (not differentiable: Ensemble-direct
    reads positions, it does not differentiate them). Values below 1e-30 are exactly zero, and
    the exponential never sees an argument below -80: as float32 they would be denormal
    numbers, slow to compute and slow in every product with the edge features on a CPU
    (bench/meta_inference.py times the GAT's forward). In place after the first difference."""
    mu = torch.linspace(0.0, cutoff, n, dtype=d.dtype, device=d.device)
    x = (d.detach()[:, None] - mu).mul_(n / cutoff).square_().clamp_max_(80.0).neg_().exp_()
    return F.threshold_(x, 1e-30, 0.0)


class EnsembleDirect(nn.Module):
    """GAT stacker over M bases (any atom count, mixed batches, periodic or not)."""

    kind = "direct"

    def __init__(self, n_models: int, species: list[int], stats: Stats, **params) -> None:
        super().__init__()
        p = DirectParams(**params)
        self.params, self.n_models, self.species = asdict(p), n_models, list(species)
        self.stats = stats
        self.register_buffer("z_to_index", species_index(species))
        h = p.hidden
        self.species_embed = nn.Embedding(len(species), p.species_dim)
        self.energy_embed = nn.Sequential(nn.Linear(n_models, p.energy_dim), nn.SiLU())
        self.amortized = p.amortized
        mask_dim = n_models if p.amortized else 0
        self.inp = nn.Linear(3 * n_models + p.energy_dim + p.species_dim + mask_dim, h)
        loops = {"add_self_loops": False}  # added once for all layers: self.edges
        self.convs = nn.ModuleList(
            folded_gat_conv(h, h // p.heads, heads=p.heads, edge_dim=p.n_rbf + 3, **loops)
            for _ in range(p.layers)
        )
        self.head = nn.Sequential(nn.Linear(h * (p.layers + 1), h), nn.SiLU(), nn.Linear(h, 3))
        if p.blend:  # start at the plain mean of the bases: the head's correction is zero
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
            # amortized: logits of a softmax over the present bases; otherwise the weights
            start = 0.0 if p.amortized else 1.0 / n_models
            self.blend = nn.Parameter(torch.full((n_models,), start))
        else:  # the paper's GAT: forces from the head alone (a fixed zero blend)
            self.register_buffer("blend", torch.zeros(n_models))

    def forward(self, b: MetaBatch) -> torch.Tensor:
        """Forces (A, 3) in eV/Å, through the layers' fused CSR path unless ``b.extra["edges"]``
        holds an edge list (torch-geometric's message passing, which ``vmap`` can batch)."""
        s = self.stats
        f = b.base_forces / s.force_rms  # (A, M, 3)
        e = (b.base_energy / b.n_atoms[:, None] - s.energy_mu) / s.energy_sigma  # (F, M)
        z = self.z_to_index[b.numbers]
        extra: list[torch.Tensor] = []
        if self.amortized:
            present = self.mask_of(b)  # (F, M) bool
            m_atom = present[b.batch].to(f.dtype)  # (A, M)
            f, e = f * m_atom[..., None], e * present.to(e.dtype)
            extra = [m_atom]
        parts = [f.reshape(len(f), -1), self.energy_embed(e)[b.batch], self.species_embed(z)]
        graph = b.extra.get("edges") or self.edges(b, sparse=True)
        h = _linear_of_parts(self.inp, [*parts, *extra])
        outs = [h]
        if isinstance(graph, CSRGraph):  # every layer's edge terms in one product
            for conv, logits in zip(self.convs, graph.attention_logits(self.convs), strict=True):
                h = h + nn.functional.silu(conv.fused(h, graph, logits))
                outs.append(h)
        else:
            for conv in self.convs:
                h = h + nn.functional.silu(conv(h, *graph))
                outs.append(h)
        corr = self.head[2](self.head[1](_linear_of_parts(self.head[0], outs)))
        if self.amortized and self.params["blend"]:  # softmax over the present bases
            w = torch.softmax(self.blend.masked_fill(~present, float("-inf")), dim=1)  # (F, M)
            mixed = torch.einsum("am,amk->ak", w[b.batch], b.base_forces)
        else:
            mixed = torch.matmul(self.blend, b.base_forces)  # (A, 3)
        return torch.add(mixed, corr, alpha=s.force_rms)

    def edges(
        self, b: MetaBatch, sparse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | CSRGraph:
        """The graph every layer reads: edge index and features (distance RBFs, unit vector)
        with one self-loop per atom carrying the mean of its incoming edges' features, as
        stock ``GATConv`` adds them in each layer. It depends on the positions alone, so
        :func:`elmlff.meta.amortized.predict_subsets` builds it once for every subset.
        ``sparse``: a :class:`CSRGraph` (edges ordered by receiving atom, self-loops implied),
        for the layers' fused path; otherwise an edge list with the self-loops, for
        torch-geometric's message passing (a vmapped group of models)."""
        src, dst, shift = b.src, b.dst, b.shift
        keep = src != dst  # an atom's own periodic images: stock GATConv removes them too
        if not bool(keep.all()):
            src, dst, shift = src[keep], dst[keep], shift[keep]
        vec = b.positions.index_select(0, src) - b.positions.index_select(0, dst) + shift
        d = vec.norm(dim=1).clamp_min(1e-9)
        dtype = self.inp.weight.dtype
        edge_attr = torch.cat(
            [gaussian_rbf(d, self.params["cutoff"], self.params["n_rbf"]), vec / d[:, None]], dim=1
        ).to(dtype)
        n = len(b.numbers)
        if not sparse:
            from torch_geometric.utils import add_self_loops

            return add_self_loops(
                torch.stack([src, dst]), edge_attr, fill_value="mean", num_nodes=n
            )
        if len(dst) > 1 and not bool((dst[1:] >= dst[:-1]).all()):  # by receiving atom
            order = torch.argsort(dst, stable=True)
            src, dst, edge_attr = src[order], dst[order], edge_attr.index_select(0, order)
        crow = torch.zeros(n + 1, dtype=torch.long, device=dst.device)
        crow[1:] = torch.cumsum(torch.bincount(dst, minlength=n), 0)
        return CSRGraph(crow, src, dst, edge_attr, n)

    def mask_of(self, b: MetaBatch) -> torch.Tensor:
        """(F, M) bool: the bases present in each frame of ``b`` (all when none is given)."""
        mask = b.extra.get("mask")
        n_frames = len(b.n_atoms)
        if mask is None:
            return torch.ones(n_frames, self.n_models, dtype=torch.bool, device=b.n_atoms.device)
        mask = torch.as_tensor(mask, dtype=torch.bool, device=b.n_atoms.device)
        if mask.dim() == 1:
            mask = mask.expand(n_frames, -1)
        if mask.shape != (n_frames, self.n_models) or not mask.any(dim=1).all():
            raise ElmlffError(
                f"base mask of shape {tuple(mask.shape)} for {n_frames} frames and "
                f"{self.n_models} bases (each frame needs a base present)",
                "give one row per frame (or one for all) with at least one base present",
            )
        return mask
