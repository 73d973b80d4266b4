"""Names, shapes and units of every array the project passes between stages.

In the style of nequip's ``AtomicDataDict`` keys: one place that documents what each name holds.
Atoms of all frames lie on one flat ``atom`` axis; frame ``f`` owns atoms
``offsets[f]:offsets[f] + n_atoms[f]`` (``offsets`` is the exclusive cumsum of ``n_atoms``), so
frames with different atom counts share one array.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class Var(NamedTuple):
    dims: tuple[str, ...]
    unit: str
    doc: str


# Reference data (written by the data stage, copied into the prediction store).
NUMBERS: Final = "numbers"
POSITIONS: Final = "positions"
CELL: Final = "cell"
PBC: Final = "pbc"
N_ATOMS: Final = "n_atoms"
OFFSETS: Final = "atom_offset"
FRAME_OF_ATOM: Final = "frame_of_atom"
ENERGY: Final = "energy"
FORCES: Final = "forces"
STRESS: Final = "stress"
SOURCE_INDEX: Final = "source_index"
SOURCE_PART: Final = "source_part"
SPLIT: Final = "split"
FOLD: Final = "fold"
# Per base (written by the store stage).
BASE_ENERGY: Final = "base_energy"
BASE_FORCES: Final = "base_forces"
BASE_IN_SAMPLE: Final = "base_in_sample"
BASE_VALIDATED_ON: Final = "base_validated_on"
HVP_DIRECTION: Final = "hvp_direction"
BASE_HVP: Final = "base_hvp"
BASE_ENERGY_RAW: Final = "base_energy_raw"
BASE_ENERGY_OFFSET: Final = "base_energy_offset"
BASE_STRESS: Final = "base_stress"

VARIABLES: Final[dict[str, Var]] = {
    NUMBERS: Var(("atom",), "1", "atomic number Z of each atom"),
    POSITIONS: Var(("atom", "xyz"), "Å", "Cartesian positions"),
    CELL: Var(("frame", "cell_vector", "xyz"), "Å", "cell vectors as rows (zeros when none)"),
    PBC: Var(("frame", "xyz"), "1", "periodic along each cell vector"),
    N_ATOMS: Var(("frame",), "1", "atoms in the frame"),
    OFFSETS: Var(("frame",), "1", "index of the frame's first atom on the atom axis"),
    FRAME_OF_ATOM: Var(("atom",), "1", "frame index of each atom"),
    ENERGY: Var(("frame",), "eV", "reference total energy"),
    FORCES: Var(("atom", "xyz"), "eV/Å", "reference forces"),
    STRESS: Var(
        ("frame", "xyz", "xyz_"),
        "eV/Å³",
        "reference stress (1/V) dE/dε, ASE's sign (negative under compression); only where "
        "the data have one",
    ),
    SOURCE_INDEX: Var(("frame",), "1", "frame index within its source part, as read"),
    SOURCE_PART: Var(("frame",), "1", "source part (file or folder) the frame came from"),
    SPLIT: Var(("frame",), "1", "role: train | meta | val | test (or cv<k> under K-fold)"),
    FOLD: Var(("frame",), "1", "K-fold cross-fitting fold (-1 outside folds or no K-fold)"),
    BASE_ENERGY: Var(("model", "frame"), "eV", "each base's predicted total energy"),
    BASE_FORCES: Var(("model", "atom", "xyz"), "eV/Å", "each base's predicted forces"),
    BASE_IN_SAMPLE: Var(
        ("model", "frame"), "1", "True where the predicting base was trained on the frame"
    ),
    BASE_VALIDATED_ON: Var(
        ("model", "frame"),
        "1",
        "True where a fit of the base early-stopped or chose its checkpoint on the frame",
    ),
    HVP_DIRECTION: Var(("atom", "xyz"), "1", "direction v (unit norm per frame) of the HVPs"),
    BASE_HVP: Var(("model", "atom", "xyz"), "eV/Å²", "each base's Hessian-vector product H·v"),
    BASE_ENERGY_RAW: Var(
        ("model", "frame"),
        "eV",
        "each base's total energy as predicted, before per-element alignment (only where the "
        "data set aligns; base_energy is then the aligned one)",
    ),
    BASE_ENERGY_OFFSET: Var(
        ("model", "element"),
        "eV/atom",
        "per-element offsets added to each base's energies (elmlff.alignment), fitted on the "
        "meta split",
    ),
    BASE_STRESS: Var(
        ("model", "frame", "xyz", "xyz_"),
        "eV/Å³",
        "each base's stress, ASE's sign (only where every base predicts one)",
    ),
}
