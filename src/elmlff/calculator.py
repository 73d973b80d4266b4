"""An ASE calculator over any ensemble of :mod:`elmlff.meta.ensemble` (a meta-model, a
baseline or a single base), with the bases' disagreement and the ensemble uncertainty U of
:mod:`elmlff.uq.metrics` reported every step."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from elmlff import bases as B
from elmlff.data.frames import Frames
from elmlff.meta.ensemble import DirectEnsemble, LinearEnsemble
from elmlff.uq.metrics import force_std, weighted_uncertainty


class EnsembleCalculator(Calculator):
    """ASE calculator for any ensemble (meta-model, baseline or single base).

    ``results`` holds ``forces``, ``energy`` where defined, and per step the base disagreement
    ``force_std_mean`` / ``force_std_max`` (eV/Å), ``base_energies`` (M,) and ``base_forces``
    (M, N, 3), for MD monitors and uncertainty; with two or more bases also ``uncertainty``, the
    ensemble force deviation U of :mod:`elmlff.uq.metrics` with ``uq_weights`` (U1 when they
    are ∝ 1/RMSE, U0 when uniform, the default); for a single direct-force base (orb_direct)
    ``uncertainty`` is its own force delta U_Δ, the RMS over atoms of its direct forces minus
    −dE/dx of its energy head. Like MACE's variance outputs, every extra
    result is listed in ``implemented_properties``, so ``calc.get_property(name, atoms)`` works.
    """

    #: the extra per-step results (beside energy and forces)
    EXTRAS: ClassVar[list[str]] = [
        "base_energies",
        "base_forces",
        "force_std_mean",
        "force_std_max",
        "uncertainty",
    ]
    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", *EXTRAS]

    #: strain step of the finite-difference stress (float32 models: not smaller)
    stress_eps: float = 1e-3

    def __init__(self, ensemble, uq_weights: np.ndarray | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ensemble = ensemble
        self.uq_weights = uq_weights
        self.has_energy = not isinstance(ensemble, DirectEnsemble)
        one = ensemble.bases[0] if len(ensemble.bases) == 1 else None
        #: a single direct-force base monitors its own force delta U_Δ (no ensemble spread)
        self.delta_base = one if one is not None and B.has_direct_forces(one) else None
        monitored = len(ensemble.bases) >= 2 or self.delta_base is not None
        extras = [p for p in self.EXTRAS if p != "uncertainty" or monitored]
        self.implemented_properties = [
            *(["energy", "free_energy", "stress"] if self.has_energy else []),
            "forces",
            *extras,
        ]

    def calculate(self, atoms=None, properties=("forces",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        fr = Frames(
            numbers=self.atoms.numbers,
            positions=self.atoms.positions,
            n_atoms=[len(self.atoms)],
            cell=np.asarray(self.atoms.cell[:])[None],
            pbc=np.asarray(self.atoms.pbc)[None],
            energy=np.zeros(1),
            forces=np.zeros((len(self.atoms), 3)),
        )
        p = self.ensemble.predict_all(fr)
        std_mean, std_max = force_std(p.base_forces, fr.n_atoms)
        self.results = {
            "forces": p.forces,
            "base_energies": p.base_energy[:, 0],
            "base_forces": p.base_forces,
            "force_std_mean": float(std_mean[0]),
            "force_std_max": float(std_max[0]),
        }
        m = len(p.base_forces)
        if m >= 2:
            w = np.full(m, 1.0 / m) if self.uq_weights is None else self.uq_weights
            u = weighted_uncertainty(p.base_forces, fr.n_atoms, w)
            self.results["uncertainty"] = float(u[0])
        elif self.delta_base is not None:  # U_Δ: direct forces vs −dE/dx of its energy head
            u, _ = self.delta_base.force_delta(fr, direct=p.base_forces[0])  # reuse the step's
            self.results["uncertainty"] = float(u[0])
        if p.energy is not None:
            self.results["energy"] = self.results["free_energy"] = float(p.energy[0])
        elif "energy" in properties or "stress" in properties:
            raise PropertyNotImplementedError(
                f"{self.ensemble.name} predicts forces only (no energy)"
            )
        if "stress" in properties:
            self.results["stress"] = self._stress(fr)

    def _stress(self, fr: Frames) -> np.ndarray:
        """Voigt stress (eV/Å³, ASE's sign): the weighted sum of the bases' own stress for a
        linear ensemble of bases that have one (pretrained potentials), else central finite
        differences of the ensemble energy under strain (``stress_eps``)."""
        from ase.stress import full_3x3_to_voigt_6_stress

        bases = self.ensemble.bases
        if isinstance(self.ensemble, LinearEnsemble) and all(
            hasattr(b, "predict_stress") for b in bases
        ):
            w = np.asarray(self.ensemble.combiner.weights)
            s = sum(wi * b.predict_stress(fr)[2][0] for wi, b in zip(w, bases, strict=True))
            return full_3x3_to_voigt_6_stress(s)
        from ase.calculators.fd import calculate_numerical_stress

        probe = self.atoms.copy()
        probe.calc = EnsembleCalculator(self.ensemble)  # energies only, no extras
        return calculate_numerical_stress(probe, eps=self.stress_eps)
