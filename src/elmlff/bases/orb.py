"""The direct-force base (orb-v3-direct architecture, trained from scratch) in ForceNet's role.

ForceNet, the direct-force (non-conservative) model of the MD17 benchmark, ships in no
installable package (fairchem-core 1.x wheels have no forcenet and pin torch~=2.4; 2.x has
only uma/escaip). This family fills its role with the architecture of orb-models' orb-v3-direct
(``orb_models.forcefield``: a ``MoleculeGNS`` attention message-passing network on Bessel x
spherical-harmonic edge features, an ``EnergyHead`` and a ``ForceHead`` that outputs forces
directly, ZBL pair repulsion), built untrained and trained from scratch here in plain torch on
the project's frames. No pretrained weight is ever downloaded (orb's pretrained loaders are not
used; ``orb_models.forcefield.pretrained`` is not even imported, since it needs
``cached_path``, which is not installed).

It is not ForceNet and is never labelled so: ``base.json`` carries :data:`LABEL`.

What it predicts
    :meth:`OrbDirectPotential.predict` returns the *direct* forces of the force head (not a
    gradient: ∮F·dx ≠ 0 around a closed loop) and the energy head's energies.
    :meth:`OrbDirectPotential.energy` is the energy head as a differentiable torch function of
    the positions, so ``-dE/dx`` (:meth:`~OrbDirectPotential.conservative_forces`) is the
    model's *conservative* force; :meth:`~OrbDirectPotential.force_delta` is the data-free
    uncertainty U_Δ = RMS over atoms of |F_direct − F_conservative| (the "force delta" of
    orb-v3-direct models), and :meth:`~OrbDirectPotential.direct_forces` gives the direct
    forces as a differentiable torch function of the positions (for a meta-model).

Config ``params``: ``latent_dim``, ``base_mlp_hidden_dim``, ``base_mlp_depth``,
``head_mlp_hidden_dim``, ``head_mlp_depth``, ``num_message_passing_steps`` (orb-v3's
``orb_v3_direct_architecture`` arguments, at a small size), ``cutoff`` (Å; orb's attention
envelope ``nn_util.get_cutoff`` is hard-coded at 6 Å, so 6.0 is the only smooth choice and the
only one accepted), ``max_num_neighbors`` (orb's k-nearest cap inside the cutoff; 120 is
orb-v3-omol's "effectively unlimited", a small cap makes the energy jump when the k-th
neighbour changes), ``pair_repulsion`` (orb-v3's ZBL term).

``training``: ``max_epochs``, ``batch_size``, ``lr`` (AdamW), ``energy_weight`` and
``force_weight``, ``patience`` (early stopping on validation loss; ReduceLROnPlateau halves the
learning rate after max(2, patience // 3) epochs without improvement), ``seed``, ``dtype``
(``float32``, orb's default, or ``float64``), ``rotation_augmentation`` (a random rotation of
every training frame at every step, as orb-v3 and ForceNet train: neither architecture is
rotation-equivariant by construction, and without it the network memorises orientations).

The loss is in the heads' normalised units, as orb's own: energy_weight · MSE(ΔE per atom /
σ_E) + force_weight · MSE(ΔF / F_rms), σ_E the spread of the training energies per atom about
the least-squares element energies and F_rms the training forces' RMS (on methane about
7 meV/atom and 0.7 eV/Å). In physical units a weight ratio would depend on the data set (the
energy term scales with σ_E²), and a first version in eV² and (eV/Å)² with 1 : 1000 left the
energy head untrained on methane (validation energy RMSE stayed at σ_E): its gradients were
near Adam's ε.

Default 0.1 : 1, a nearly forces-only loss in the spirit of the MD17 benchmark's ForceNet
(trained on forces alone) that still trains the energy head, whose gradient is the
conservative force. Measured on methane (default network, 1,000 training frames, 40 epochs,
100 validation frames), energy_weight 0.001 / 0.01 / 0.1: direct-force MAE 0.026 / 0.025 /
0.021 eV/Å, energy RMSE 3.9 / 5.1 / 0.5 meV/atom, conservative-force MAE 0.14 / 0.067 /
0.044 eV/Å, mean U_Δ 0.32 / 0.16 / 0.12 eV/Å: a small energy term helps all four. A
campaign's top-level ``training`` block (0.05 / 0.95 in config/config.yaml) applies here too,
a ratio of 1 : 19 in these units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from orb_models.dataset.augmentations import rand_matrix
from orb_models.forcefield.angular import SphericalHarmonics
from orb_models.forcefield.atomic_system import SystemConfig, ase_atoms_to_atom_graphs
from orb_models.forcefield.base import AtomGraphs, batch_graphs
from orb_models.forcefield.direct_regressor import DirectForcefieldRegressor
from orb_models.forcefield.forcefield_heads import EnergyHead, ForceHead
from orb_models.forcefield.gns import MoleculeGNS
from orb_models.forcefield.rbf import BesselBasis

from elmlff.bases import FAMILIES, BaseSpec, check_species, checkpoint, frames_from_tensors
from elmlff.bases.epochs import epoch_info, fit_epochs
from elmlff.data.frames import Frames
from elmlff.errors import ElmlffError

MODEL_FILE = "orb_direct.pt"
#: what this base is, in every docstring, log line and base.json
LABEL = "direct-force base (orb-v3-direct architecture, trained from scratch) in ForceNet's role"
#: orb's attention/edge envelope (``orb_models.forcefield.nn_util.get_cutoff``) ends at 6 Å
ORB_CUTOFF = 6.0
DEFAULT_PARAMS: dict[str, Any] = FAMILIES["orb_direct"].params
DEFAULT_TRAINING: dict[str, Any] = FAMILIES["orb_direct"].training


def _dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ElmlffError(f"orb_direct: dtype {name!r} not supported", "use float32 or float64")
    return {"float32": torch.float32, "float64": torch.float64}[name]


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def build_model(params: dict[str, Any], dtype: str = "float32") -> DirectForcefieldRegressor:
    """The untrained orb-v3-direct architecture (``orb_v3_direct_architecture`` of orb-models
    0.5.5 with ``has_stress=False``, built from the same orb modules and arguments) with an
    energy and a force head; no confidence head (orb's own classifier of its force error, not
    part of the potential); the GNS's unused node decoder is frozen. Normalisers are fixed
    (not online): :func:`set_normalisers` sets them from the training data."""
    p = {**DEFAULT_PARAMS, **params}
    if float(p["cutoff"]) != ORB_CUTOFF:
        raise ElmlffError(
            f"orb_direct: cutoff {p['cutoff']} Å is not supported",
            "use cutoff 6.0: orb's attention envelope (nn_util.get_cutoff) is fixed at 6 Å, "
            "another graph radius would cut bonds where the envelope is not zero",
        )
    latent, head_hidden, head_depth = (
        int(p["latent_dim"]),
        int(p["head_mlp_hidden_dim"]),
        int(p["head_mlp_depth"]),
    )
    heads = {
        "energy": EnergyHead(
            latent_dim=latent,
            num_mlp_layers=head_depth,
            mlp_hidden_dim=head_hidden,
            predict_atom_avg=True,
            activation="silu",
            online_normalisation=False,
        ),
        "forces": ForceHead(
            latent_dim=latent,
            num_mlp_layers=head_depth,
            mlp_hidden_dim=head_hidden,
            remove_mean=True,
            remove_torque_for_nonpbc_systems=True,
            activation="silu",
            online_normalisation=False,
        ),
    }
    gns = MoleculeGNS(
        latent_dim=latent,
        num_message_passing_steps=int(p["num_message_passing_steps"]),
        num_mlp_layers=int(p["base_mlp_depth"]),
        mlp_hidden_dim=int(p["base_mlp_hidden_dim"]),
        rbf_transform=BesselBasis(r_max=ORB_CUTOFF, num_bases=8),
        angular_transform=SphericalHarmonics(lmax=3, normalize=True, normalization="component"),
        outer_product_with_cutoff=True,
        use_embedding=True,
        interaction_params={"distance_cutoff": True, "attention_gate": "sigmoid"},
        node_feature_names=["feat"],
        edge_feature_names=["feat"],
        activation="silu",
        mlp_norm="rms_norm",
    )
    model = DirectForcefieldRegressor(
        heads=heads,
        model=gns,
        pair_repulsion=bool(p["pair_repulsion"]),
        system_config=SystemConfig(
            radius=ORB_CUTOFF, max_num_neighbors=int(p["max_num_neighbors"])
        ),
    )
    # MoleculeGNS always builds a node decoder (its denoising output); no head reads it
    for param in model.model._decoder.parameters():
        param.requires_grad_(False)
    return model.to(_dtype(dtype))


def set_normalisers(model: DirectForcefieldRegressor, train: Frames) -> dict[str, Any]:
    """Per-element reference energies (least squares on composition), the per-atom energy
    residual's mean and spread, and the force components' RMS, from the training frames: the
    heads then output O(1) numbers. Returns them for ``base.json``."""
    species = train.species
    counts = np.zeros((len(train), len(species)))
    for j, z in enumerate(species):
        counts[:, j] = np.bincount(train.frame_of_atom, train.numbers == z, minlength=len(train))
    ref, *_ = np.linalg.lstsq(counts, train.energy, rcond=None)
    resid = (train.energy - counts @ ref) / train.n_atoms
    e_mean, e_std = float(resid.mean()), max(float(resid.std()), 1e-3)
    f_rms = max(float(np.sqrt(np.mean(train.forces**2))), 1e-3)
    energy, forces = model.heads["energy"], model.heads["forces"]
    with torch.no_grad():
        w = energy.reference.linear.weight
        w.zero_()
        w.view(-1)[species] = torch.as_tensor(ref, dtype=w.dtype)
        for norm, mean, std in (
            (energy.normalizer, e_mean, e_std),
            (forces.normalizer, 0.0, f_rms),
        ):
            norm.bn.running_mean.fill_(mean)
            norm.bn.running_var.fill_(std**2)
    return {
        "element_energy": dict(zip(species, ref.tolist(), strict=True)),
        "energy_per_atom_mean": e_mean,
        "energy_per_atom_std": e_std,
        "force_rms": f_rms,
    }


def frame_graphs(frames: Frames, model: DirectForcefieldRegressor, dtype: torch.dtype) -> list:
    """One orb ``AtomGraphs`` per frame (``ase_atoms_to_atom_graphs``, built on the CPU). A
    frame periodic along no axis is a molecule: its cell is dropped (orb then removes the net
    torque of its forces); one periodic along some axes only is refused (orb supports all or
    none)."""
    partial = frames.pbc.any(axis=1) & ~frames.pbc.all(axis=1)
    if partial.any():
        f = int(np.flatnonzero(partial)[0])
        raise ElmlffError(
            f"{frames.name}: frame {f} is periodic along some axes only (pbc {frames.pbc[f]}); "
            "orb_direct supports fully periodic or non-periodic frames",
            "pad the structure with vacuum and make it fully periodic, or use another family",
        )
    out = []
    for atoms in frames.to_atoms():
        atoms.calc = None
        if not atoms.pbc.any():
            atoms.cell[:] = 0.0
        out.append(
            ase_atoms_to_atom_graphs(
                atoms,
                model.system_config,
                device=torch.device("cpu"),
                output_dtype=dtype,
                graph_construction_dtype=dtype,
            )
        )
    return out


def _rotate(batch: AtomGraphs, forces: torch.Tensor) -> tuple[AtomGraphs, torch.Tensor]:
    """Every graph of ``batch`` and its target forces under its own random rotation (orb's
    ``rand_matrix``; row vectors times R, as orb's ``rotate_randomly``)."""
    n = len(batch.n_node)
    rot = rand_matrix(n, dtype=batch.positions.dtype).to(batch.positions.device)
    node = torch.repeat_interleave(torch.arange(n, device=rot.device), batch.n_node)
    edge = torch.repeat_interleave(torch.arange(n, device=rot.device), batch.n_edge)
    batch.node_features["positions"] = torch.bmm(batch.positions[:, None], rot[node])[:, 0]
    vec = batch.edge_features["vectors"]
    batch.edge_features["vectors"] = torch.bmm(vec[:, None], rot[edge])[:, 0]
    batch.system_features["cell"] = torch.bmm(batch.cell, rot)
    return batch, torch.bmm(forces[:, None], rot[node])[:, 0]


class _Data:
    """Graphs and labels of some frames, batched on demand."""

    def __init__(self, frames: Frames, model, dtype: torch.dtype, device: torch.device) -> None:
        self.graphs = frame_graphs(frames, model, dtype)
        self.frames, self.dtype, self.device = frames, dtype, device

    def batches(self, batch_size: int, order: np.ndarray | None = None):
        order = np.arange(len(self.frames)) if order is None else order
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            sub = self.frames.subset(idx)
            batch = batch_graphs([self.graphs[i] for i in idx]).to(self.device)
            t = dict(dtype=self.dtype, device=self.device)
            yield (
                batch,
                torch.as_tensor(sub.energy, **t),
                torch.as_tensor(sub.forces, **t),
                torch.as_tensor(sub.n_atoms, **t),
            )


def _scales(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(spread of the per-atom energy, RMS force) of the training data (the heads' normalisers)."""
    return tuple(  # type: ignore[return-value]
        torch.sqrt(model.heads[h].normalizer.bn.running_var)[0] for h in ("energy", "forces")
    )


def _loss(model, batch, energy, forces, n_atoms, we: float, wf: float, rotate: bool = False):
    """(weighted loss, per-atom energy MSE, force MSE, force MAE) of one batch; the loss is in
    the heads' normalised units (errors over the training data's spread of the per-atom energy
    and its RMS force), the MSEs and the MAE in eV and eV/Å."""
    if rotate:
        batch, forces = _rotate(batch, forces)
    out = model.predict(batch)
    de = (out["energy"] - energy) / n_atoms
    df = out["forces"] - forces
    e_mse, f_mse = (de**2).mean(), (df**2).mean()
    e_scale, f_scale = _scales(model)
    loss = we * e_mse / e_scale**2 + wf * f_mse / f_scale**2
    return loss, e_mse, f_mse, df.abs().mean()


def _evaluate(model, data: _Data, batch_size: int, we: float, wf: float) -> dict[str, float]:
    """Validation loss and force MAE (eV/Å), averaged over atoms (frames for the energy)."""
    n_f = n_a = 0
    sums = np.zeros(3)
    with torch.no_grad():
        for batch, e, f, n in data.batches(batch_size):
            _, e_mse, f_mse, f_mae = _loss(model, batch, e, f, n, we, wf)
            sums += [float(e_mse) * len(e), float(f_mse) * len(f), float(f_mae) * len(f)]
            n_f, n_a = n_f + len(e), n_a + len(f)
    e_mse, f_mse, f_mae = (float(x) for x in (sums[0] / n_f, sums[1] / n_a, sums[2] / n_a))
    e_scale, f_scale = (float(x) for x in _scales(model))
    loss = we * e_mse / e_scale**2 + wf * f_mse / f_scale**2
    return {"loss": loss, "force_mae": f_mae, "energy_rmse_per_atom": e_mse**0.5}


class OrbDirectFamily:
    """The direct-force base (orb-v3-direct architecture, trained from scratch) in ForceNet's
    role."""

    name = "orb_direct"

    def train(self, spec: BaseSpec, train: Frames, val: Frames, outdir: Path) -> dict[str, Any]:
        params = {**DEFAULT_PARAMS, **spec.params}
        tr = {**DEFAULT_TRAINING, **spec.training}
        outdir = Path(outdir)
        dtype, device = _dtype(tr["dtype"]), _device(None)
        we, wf = float(tr["energy_weight"]), float(tr["force_weight"])
        bs, patience, max_epochs = int(tr["batch_size"]), int(tr["patience"]), int(tr["max_epochs"])
        torch.manual_seed(int(tr["seed"]))
        rng = np.random.default_rng(int(tr["seed"]))
        model = build_model(params, tr["dtype"])
        stats = set_normalisers(model, train)
        model = model.to(device)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        tag = f"[{spec.name}]"
        print(f"{tag} {LABEL}: {n_params} parameters, {len(train)} train / {len(val)} val frames")
        data_tr = _Data(train, model, dtype, device)
        data_va = _Data(val, model, dtype, device)
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=float(tr["lr"])
        )

        def train_epoch(epoch: int) -> float:
            total, nb = 0.0, 0
            for batch, e, f, n in data_tr.batches(bs, rng.permutation(len(train))):
                loss, *_ = _loss(model, batch, e, f, n, we, wf, bool(tr["rotation_augmentation"]))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, nb = total + loss.item(), nb + 1
            return total / max(nb, 1)

        fit = fit_epochs(
            model,
            opt,
            train_epoch,
            lambda: _evaluate(model, data_va, bs, we, wf),
            max_epochs,
            patience,
            tag,
            " (direct forces)",
        )
        if fit.best_state is None:
            raise ElmlffError(
                f"base '{spec.name}': training kept no state (no finite validation loss)",
                "check the training log; raise max_epochs above 0",
            )
        outdir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "label": LABEL,
                "params": params,
                "dtype": tr["dtype"],
                "species": train.species,
                "state_dict": fit.best_state,
            },
            outdir / MODEL_FILE,
        )
        return {
            "label": LABEL,
            "params": params,
            "training": tr,
            **epoch_info(fit),
            "species": train.species,
            "n_parameters": n_params,
            "normalisation": stats,
            "forces": "direct (force head); energy() is the energy head, -dE/dx its conservative "
            "force",
        }

    def load(self, outdir: Path, device: str = "cpu") -> OrbDirectPotential:
        info, path = checkpoint(outdir, MODEL_FILE)
        ck = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(ck["params"], ck["dtype"])
        model.load_state_dict(ck["state_dict"])
        return OrbDirectPotential(info["name"], model, {**info, "dtype": ck["dtype"]}, device)


class OrbDirectPotential:
    """A trained direct-force base (orb-v3-direct architecture, trained from scratch) in
    ForceNet's role, behind the :class:`~elmlff.bases.Potential` Protocol. ``predict`` gives
    its direct forces; ``energy`` its energy head (whose gradient is the conservative force)."""

    family = "orb_direct"
    label = LABEL

    def __init__(self, name: str, model, info: dict[str, Any], device: str = "cpu") -> None:
        self.name, self.info = name, info
        self.species = [int(z) for z in info["species"]]
        self.dtype = _dtype(info.get("dtype", info.get("training", {}).get("dtype", "float32")))
        self.device = _device(device)
        self.model = model.to(self.device, self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _batch(self, frames: Frames) -> AtomGraphs:
        check_species(self.name, self.species, frames.numbers)
        return batch_graphs(frame_graphs(frames, self.model, self.dtype)).to(self.device)

    def predict(self, frames: Frames, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(energy (F,) of the energy head, *direct* forces (A, 3) of the force head)."""
        check_species(self.name, self.species, frames.numbers)
        energies, forces = [], []
        with torch.no_grad():
            for s in range(0, len(frames), batch_size):
                sub = frames.subset(np.arange(s, min(s + batch_size, len(frames))))
                out = self.model.predict(self._batch(sub))
                energies.append(out["energy"].cpu().double().numpy())
                forces.append(out["forces"].cpu().double().numpy())
        return np.concatenate(energies), np.concatenate(forces)

    def outputs(self, positions, numbers, n_atoms, cell, pbc) -> tuple[torch.Tensor, torch.Tensor]:
        """(energy (F,), direct forces (A, 3)), float64 torch functions of ``positions``: the
        graph comes from the current geometry, its edge vectors are recomputed from
        ``positions`` so gradients flow back to them (orb's
        ``compute_differentiable_edge_vectors``)."""
        frames = frames_from_tensors(positions, numbers, n_atoms, cell, pbc, self.name)
        batch = self._batch(frames)
        pos = positions.to(self.device, torch.float64)
        # orb wraps periodic positions into the cell: keep that lattice shift as a constant
        shift = batch.positions.detach().double() - pos.detach()
        if frames.pbc.any():
            cells = torch.as_tensor(frames.cell, dtype=torch.float64, device=self.device)
            cells = cells[torch.as_tensor(frames.frame_of_atom, device=self.device)]
            periodic = torch.as_tensor(
                frames.pbc.all(axis=1)[frames.frame_of_atom], device=self.device
            )
            k = torch.zeros_like(shift)
            if periodic.any():
                k[periodic] = torch.round(
                    torch.linalg.solve(cells[periodic].transpose(1, 2), shift[periodic])
                )
            shift = torch.bmm(k[:, None], cells)[:, 0]
        else:
            shift = torch.zeros_like(shift)
        batch.node_features["positions"] = (pos + shift).to(self.dtype)
        vectors, _, _ = batch.compute_differentiable_edge_vectors(
            use_stress_displacement=False, use_rotation=False
        )
        batch.edge_features["vectors"] = vectors
        out = self.model.predict(batch)
        return out["energy"].to(torch.float64), out["forces"].to(torch.float64)

    def energy(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        """The energy head (F,) in eV, differentiable: ``-dE/dx`` is the conservative force."""
        return self.outputs(positions, numbers, n_atoms, cell, pbc)[0]

    def direct_forces(self, positions, numbers, n_atoms, cell, pbc) -> torch.Tensor:
        """The direct forces (A, 3) in eV/Å as a differentiable torch function of
        ``positions`` (not a gradient of any energy)."""
        return self.outputs(positions, numbers, n_atoms, cell, pbc)[1]

    def conservative_forces(self, frames: Frames, batch_size: int = 64) -> np.ndarray:
        """``-dE/dx`` of the energy head (A, 3) in eV/Å, float64."""
        from elmlff.bases import frame_tensors

        out = []
        for s in range(0, len(frames), batch_size):
            sub = frames.subset(np.arange(s, min(s + batch_size, len(frames))))
            pos = torch.as_tensor(sub.positions, dtype=torch.float64).requires_grad_(True)
            e = self.energy(pos, *frame_tensors(sub))
            (g,) = torch.autograd.grad(e.sum(), pos)
            out.append(-g.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 3))

    def force_delta(
        self, frames: Frames, batch_size: int = 64, direct: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The data-free uncertainty of a direct model: (U_Δ (F,), per-atom |ΔF| (A,)) in eV/Å,
        ΔF = F_direct − F_conservative and U_Δ the RMS of |ΔF| over each frame's atoms.
        ``direct``: the direct forces when the caller has them already (an MD step)."""
        if direct is None:
            _, direct = self.predict(frames, batch_size)
        per_atom = np.linalg.norm(direct - self.conservative_forces(frames, batch_size), axis=1)
        per_frame = np.sqrt(np.bincount(frames.frame_of_atom, per_atom**2) / frames.n_atoms)
        return per_frame, per_atom
