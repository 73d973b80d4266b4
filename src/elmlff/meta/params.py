"""Hyper-parameters of the meta-models (torch-free: the config check imports this at parse time)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from elmlff.errors import ElmlffError


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
    blend: bool = True  # output = learned blend of base forces + head; False: the head alone
    # inputs carry which bases are present (trained over random subsets: any subset at
    # inference, the subset study's amortized method); the blend renormalises over them
    amortized: bool = False


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


#: the distribution each kind's architecture comes from (provenance, tables)
PACKAGES = {"direct": "torch-geometric", "conserv": "e3nn"}


@dataclass(frozen=True)
class MetaSpec:
    """One meta-model as the config defines it (``metas.{name}``, defaults filled in by the
    schema), and what follows from it: the architecture, the training settings and whether the
    bases must run live. The one place that decides these for rules, stages and the study."""

    name: str
    kind: str  # direct | conserv
    fit_on: str  # out_of_sample | in_sample | in_sample_reference (ablations)
    params: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    ablation: bool = False  # shown beside the others, never chosen for a figure

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> MetaSpec:
        """From a validated config entry (``kind`` and ``fit_on`` are always there)."""
        return cls(
            name,
            entry["kind"],
            entry["fit_on"],
            dict(entry.get("params", {})),
            dict(entry.get("training", {})),
            bool(entry.get("ablation", False)) or entry["fit_on"] != "out_of_sample",
        )

    def check(self, source: str = "config") -> MetaSpec:
        """Combinations the schema cannot rule out; raises :class:`ElmlffError`."""
        if self.kind not in PARAMS:
            raise ElmlffError(
                f"{source}: metas.{self.name}: unknown kind {self.kind!r}",
                f"use one of {list(PARAMS)}",
            )
        unknown = sorted(set(self.params) - set(field_names(PARAMS[self.kind])))
        if unknown:
            raise ElmlffError(
                f"{source}: metas.{self.name}.params: unknown key(s) {unknown} "
                f"for kind {self.kind}",
                f"use some of {field_names(PARAMS[self.kind])}",
            )
        from elmlff.bases import type_ok

        defaults = asdict(PARAMS[self.kind]())
        for key, value in self.params.items():
            want = type(defaults[key])
            if not type_ok(value, want):
                raise ElmlffError(
                    f"{source}: metas.{self.name}.params.{key}: {value!r} is not of type "
                    f"{want.__name__}",
                    f"give a value of type {want.__name__} (default {defaults[key]!r})",
                )
        if self.kind == "conserv" and self.settings.bases == "store" and self.arch.use_forces:
            raise ElmlffError(
                f"{source}: metas.{self.name}: Ensemble-conserv with base forces as inputs "
                "cannot train from the store (its forces need Hessian-vector products through "
                "the bases)",
                "set the meta's `training.bases: live` (or `auto`)",
            )
        return self

    @property
    def arch(self) -> DirectParams | ConservParams:
        return PARAMS[self.kind](**self.params)

    @property
    def settings(self) -> TrainSettings:
        return TrainSettings(**self.training)

    @property
    def cutoff(self) -> float:
        return float(self.arch.cutoff)

    @property
    def out_of_sample(self) -> bool:
        return self.fit_on == "out_of_sample"

    @property
    def live_in_training(self) -> bool:
        """Ensemble-conserv trains through the live bases when θ reads their forces (or when
        told to); otherwise it learns from the stored predictions, as Ensemble-direct does."""
        if self.kind != "conserv":
            return False
        bases = self.settings.bases
        return bases == "live" or (bases == "auto" and bool(self.arch.use_forces))

    @property
    def live_at_inference(self) -> bool:
        """Ensemble-conserv's forces are −dE/dx through the bases, so it always runs them;
        Ensemble-direct combines the stored base predictions."""
        return self.kind == "conserv"

    @property
    def package(self) -> str:
        return PACKAGES[self.kind]
