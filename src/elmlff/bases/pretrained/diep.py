"""DIEP (diep 2.0.0, MatPES r2SCAN): a pretrained base, weights from its wheel."""

from __future__ import annotations

from elmlff.bases.pretrained import PretrainedFamily, PretrainedPotential, atoms_of


class DIEPPotential(PretrainedPotential):
    """DIEP (diep 2.0.0, trained on MatPES r2SCAN). Its ``Potential`` computes positions as
    ``frac_coords @ lattice``; the adapter gives it fractional coordinates and the lattice as
    tensors of the given positions and cell, with its own force/stress gradients off."""

    family = "diep"

    @classmethod
    def models(cls) -> dict[str, str]:
        return {"diep_fold1": "pretrained_models/diep_fold1/model.pt"}

    def load_model(self) -> None:
        from diep.ext.ase import Atoms2Graph
        from diep.pretrained import load_potential

        pot = load_potential(self.weights.parent, device=str(self.device), stress=False)
        pot.calc_forces = pot.calc_stresses = pot.calc_hessian = False
        for p in pot.parameters():
            p.requires_grad_(False)
        self.model = pot.eval()
        elements = tuple(pot.model.element_types)
        self.converter = Atoms2Graph(elements, cutoff=float(pot.model.cutoff))
        from ase.data import atomic_numbers

        self.species = sorted(atomic_numbers[e] for e in elements)
        self.label = f"DIEP {self.model_name} (pretrained on MatPES r2SCAN, diep)"

    def frame_energy(self, pos, numbers, cell):
        import torch

        atoms = atoms_of(pos, numbers, cell)
        g, _, state = self.converter.get_graph(atoms)
        g = g.to(self.device)
        g.frac_coords = (pos @ torch.linalg.inv(cell)).float()
        out = self.model(g, cell.float()[None], state)
        return out[0].double().reshape(())


class DIEPFamily(PretrainedFamily):
    name = "diep"
    potential = DIEPPotential
