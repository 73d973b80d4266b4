"""Unit conversion to the project's internal units (Å, eV, eV/Å), done once at the boundary."""

from __future__ import annotations

from ase import units as _u

from elmlff.errors import ElmlffError

#: energy units -> factor to eV
ENERGY_TO_EV: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": _u.kcal / _u.mol,
    "kJ/mol": _u.kJ / _u.mol,
    "Hartree": _u.Hartree,
    "Ry": _u.Rydberg,
}
#: length units -> factor to Å
LENGTH_TO_ANGSTROM: dict[str, float] = {"angstrom": 1.0, "bohr": _u.Bohr, "nm": 10.0}
#: stress units -> factor to eV/Å³ (VASP's OUTCAR and mlearn's ``virial_stress`` are in kbar)
STRESS_TO_EV_PER_A3: dict[str, float] = {
    "eV/angstrom^3": 1.0,
    "GPa": _u.GPa,
    "kbar": 0.1 * _u.GPa,
}


def factors(energy: str | None, length: str | None, where: str) -> tuple[float, float, float]:
    """(energy, length, force) factors to eV, Å, eV/Å for the declared source units."""
    if energy is None or length is None:
        raise ElmlffError(
            f"{where}: source units not declared (energy={energy!r}, length={length!r})",
            "add `units: {energy: eV, length: angstrom}` (the data's real units) to the data set",
        )
    if energy not in ENERGY_TO_EV:
        raise ElmlffError(
            f"{where}: unknown energy unit {energy!r}", f"use one of {sorted(ENERGY_TO_EV)}"
        )
    if length not in LENGTH_TO_ANGSTROM:
        raise ElmlffError(
            f"{where}: unknown length unit {length!r}", f"use one of {sorted(LENGTH_TO_ANGSTROM)}"
        )
    e, ln = ENERGY_TO_EV[energy], LENGTH_TO_ANGSTROM[length]
    return e, ln, e / ln


def stress_factor(stress: str | None, where: str) -> float:
    """The factor from the declared stress unit to eV/Å³."""
    if stress is None:
        raise ElmlffError(
            f"{where}: the stress unit is not declared",
            "add `stress: kbar` (the data's real unit) to the data set's `units`",
        )
    if stress not in STRESS_TO_EV_PER_A3:
        raise ElmlffError(
            f"{where}: unknown stress unit {stress!r}", f"use one of {sorted(STRESS_TO_EV_PER_A3)}"
        )
    return STRESS_TO_EV_PER_A3[stress]
