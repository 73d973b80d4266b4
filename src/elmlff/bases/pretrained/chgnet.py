"""CHGNet (chgnet 0.4.2): a pretrained base, weights from its wheel."""

from __future__ import annotations

from elmlff.bases.pretrained import PretrainedFamily, PretrainedPotential, frames_of


class CHGNetPotential(PretrainedPotential):
    """CHGNet (chgnet 0.4.2). Its graph converter builds the atom and bond graphs from a
    pymatgen ``Structure``; the adapter replaces the graph's fractional coordinates and
    lattice by tensors of the given positions and cell (CHGNet's ``BatchedGraph`` computes
    Cartesian positions as ``frac @ lattice``), and runs all frames of a call in one batch."""

    family = "chgnet"

    @classmethod
    def models(cls) -> dict[str, str]:
        return {
            "0.3.0": "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
            "0.2.0": "pretrained/0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
            "r2scan": "pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
        }

    def load_model(self) -> None:
        from chgnet.model import CHGNet

        self.model = CHGNet.from_file(str(self.weights), verbose=False).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.species = list(range(1, 95))  # CHGNet's atom embedding: Z = 1..94
        self.label = f"CHGNet {self.model_name} (pretrained, chgnet)"

    def batch_energy(self, pos, numbers, n_atoms, cells):  # CHGNet batches its own graphs
        import torch
        from pymatgen.core import Lattice, Structure

        graphs = []
        for f, s in frames_of(n_atoms):
            structure = Structure(
                Lattice(cells[f].detach().cpu().numpy()),
                numbers[s],
                pos[s].detach().cpu().numpy(),
                coords_are_cartesian=True,
            )
            g = self.model.graph_converter(structure).to(self.device)
            g.lattice = cells[f].float()
            g.atom_frac_coord = (pos[s] @ torch.linalg.inv(cells[f])).float()
            graphs.append(g)
        per_atom = self.model(graphs, task="e")["e"]  # CHGNet is intensive: eV/atom
        return per_atom.double() * n_atoms.to(self.device, torch.float64)


class CHGNetFamily(PretrainedFamily):
    name = "chgnet"
    potential = CHGNetPotential
