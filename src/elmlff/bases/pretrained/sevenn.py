"""SevenNet (sevenn 0.13.0): a pretrained base, weights from its wheel."""

from __future__ import annotations

from elmlff.bases.pretrained import PretrainedFamily, PretrainedPotential, atoms_of
from elmlff.errors import ElmlffError


class SevenNetPotential(PretrainedPotential):
    """SevenNet (sevenn 0.13.0). Its model reads edge vectors; the adapter builds the graph
    with sevenn's own ``unlabeled_atoms_to_graph`` (edges and their periodic shifts) and
    recomputes the vectors ``x_dst − x_src + shift · cell`` from the given tensors; the
    model's own force/stress module is removed (the gradients are taken outside)."""

    family = "sevenn"

    @classmethod
    def models(cls) -> dict[str, str]:
        return {
            "7net-0": "pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
            "7net-0_22may2024": "pretrained_potentials/SevenNet_0__22May2024/"
            "checkpoint_sevennet_0.pth",
            "7net-l3i5": "pretrained_potentials/SevenNet_l3i5/checkpoint_l3i5.pth",
            "7net-mf-0": "pretrained_potentials/SevenNet_MF_0/checkpoint_sevennet_mf_0.pth",
        }

    def load_model(self) -> None:
        import sevenn._keys as KEY
        from sevenn.util import load_checkpoint

        cp = load_checkpoint(str(self.weights))
        model = cp.build_model()
        model.set_is_batch_data(False)
        model.delete_module_by_key("force_output")
        self.modal = str(self.params.get("modal") or "") or None
        modal_map = model.modal_map or {}
        if modal_map and self.modal not in modal_map:
            raise ElmlffError(
                f"base '{self.name}': SevenNet {self.model_name} is multi-fidelity and needs "
                f"params.modal (given {self.modal!r})",
                f"set params.modal to one of {sorted(modal_map)}",
            )
        if self.modal and not modal_map:
            raise ElmlffError(
                f"base '{self.name}': SevenNet {self.model_name} has one fidelity, but "
                f"params.modal is {self.modal!r}",
                "remove params.modal",
            )
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cutoff = float(cp.config[KEY.CUTOFF])
        self.species = sorted(int(z) for z in cp.config[KEY.TYPE_MAP])
        fid = f", fidelity {self.modal}" if self.modal else ""
        self.label = f"SevenNet {self.model_name}{fid} (pretrained, sevenn)"

    def frame_energy(self, pos, numbers, cell):
        import sevenn._keys as KEY
        import torch
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        atoms = atoms_of(pos, numbers, cell)
        d = unlabeled_atoms_to_graph(atoms, self.cutoff, with_shift=True)
        src, dst = torch.as_tensor(d[KEY.EDGE_IDX], device=self.device)
        shift = torch.as_tensor(d[KEY.CELL_SHIFT], dtype=pos.dtype, device=self.device)
        data = AtomGraphData.from_numpy_dict(d)
        if self.modal:
            data[KEY.DATA_MODALITY] = self.modal
        data.to(self.device)
        data[KEY.EDGE_VEC] = (pos[dst] - pos[src] + shift @ cell).float()
        return self.model(data)[KEY.PRED_TOTAL_ENERGY].double().reshape(())


class SevenNetFamily(PretrainedFamily):
    name = "sevenn"
    potential = SevenNetPotential
