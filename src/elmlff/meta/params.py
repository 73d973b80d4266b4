"""Hyper-parameters of the meta-models (torch-free: the config check imports this at parse time)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class DirectParams:
    """Ensemble-direct (GAT) architecture."""

    hidden: int = 64  # node feature width
    layers: int = 3  # GATConv layers (each with a residual connection)
    heads: int = 4  # attention heads (hidden is split among them)
    n_rbf: int = 16  # Gaussian distance features per edge (plus the unit vector)
    cutoff: float = 5.0  # Å, graph cutoff
    energy_dim: int = 16  # width of the base-energy embedding
    species_dim: int = 16  # width of the species embedding


@dataclass
class ConservParams:
    """Ensemble-conserv (e3nn) architecture."""

    use_forces: bool = True  # False: the paper's Eq. 7 ablation θ(E_1..E_M, x)
    scalars: int = 32  # 0e channels
    vectors: int = 8  # 1o channels
    layers: int = 2  # interaction blocks
    l_max: int = 2  # edge spherical harmonics
    n_rbf: int = 8  # Bessel radial functions
    cutoff: float = 5.0  # Å
    radial_hidden: int = 32  # width of the radial MLP
    avg_neighbors: float = 10.0  # message normalisation


@dataclass
class TrainSettings:
    """How a meta-model trains (early stopping and checkpoint choice on val only)."""

    max_epochs: int = 100
    batch_size: int = 32  # frames
    lr: float = 1e-3
    patience: int = 15  # epochs without val improvement before stopping
    energy_weight: float = 0.05  # conserv only (direct has no energy)
    force_weight: float = 0.95
    seed: int = 0
    augment_rotations: bool = True  # direct only: rotate each batch at random
    bases: str = "auto"  # conserv: live | store | auto (live when θ reads base forces)


PARAMS = {"direct": DirectParams, "conserv": ConservParams}


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]
