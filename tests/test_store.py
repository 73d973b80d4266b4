"""The prediction store: round trip with varying atom counts, atomic writes, merge."""

from __future__ import annotations

import numpy as np
import pytest

from elmlff import keys, store
from elmlff.data import Split
from elmlff.errors import ElmlffError
from elmlff.io import atomic_path

from conftest import random_frames


def small_split():
    return Split({"train": [0, 1], "meta": [2], "val": [3], "test": [4]})


def test_store_round_trips_with_varying_atom_counts(tmp_path):
    f = random_frames(n_frames=5, sizes=(3, 5, 2, 4, 1), pbc=True)
    split = small_split()
    ref = store.reference_dataset(f, split, {"dataset": "toy"})
    rng = np.random.default_rng(1)
    e, fo = rng.normal(size=(2, 5)), rng.normal(size=(2, len(f.forces), 3))
    ins = np.zeros((2, 5), bool)
    ins[:, :2] = True
    ds = store.with_bases(ref, ["a", "b"], e, fo, ins)
    ds.attrs.update(store.provenance({"x": 1}))
    store.write(ds, tmp_path / "predictions.zarr")
    back = store.open_store(tmp_path / "predictions.zarr")
    g = store.frames_from_dataset(back)
    for k in ("numbers", "positions", "forces", "energy", "n_atoms", "cell", "pbc"):
        np.testing.assert_array_equal(getattr(g, k), getattr(f, k))
    assert back[keys.SPLIT].values.tolist() == ["train", "train", "meta", "val", "test"]
    np.testing.assert_array_equal(back[keys.BASE_FORCES].sel(model="b").values, fo[1])
    np.testing.assert_array_equal(back[keys.BASE_IN_SAMPLE].values, ins)
    assert back[keys.BASE_FORCES].attrs["units"] == "eV/Å"
    assert back.attrs["config_hash"] == store.config_hash({"x": 1})
    assert "torch" in back.attrs["package_versions"]
    blk = store.block(back, g, np.array([3]), ["b", "a"])
    assert blk["energy"].tolist() == [[e[1, 3]], [e[0, 3]]] and blk["forces"].shape == (2, 4, 3)
    np.testing.assert_array_equal(blk["forces"][0], fo[1][g.atom_index([3])])
    np.testing.assert_array_equal(blk["ref_forces"], f.forces[g.atom_index([3])])


def test_every_variable_is_documented():
    """Every variable of a full store (HVPs included) is in keys.VARIABLES with its dims, unit
    and description, and nothing in keys.VARIABLES is missing from the store."""
    f = random_frames(n_frames=5, sizes=(2,))
    f.stress = np.zeros((5, 3, 3))  # the optional reference stress too
    ds = store.with_bases(
        store.reference_dataset(f, small_split()),
        ["a"],
        np.zeros((1, 5)),
        np.zeros((1, 10, 3)),
        np.zeros((1, 5), bool),
    )
    ds = store.with_hvp(ds, np.zeros((1, 10, 3)), np.ones((10, 3)), seed=0)
    ds = store.with_stress(ds, np.zeros((1, 5, 3, 3)))  # and the optional aligned energies
    counts = np.ones((5, len(f.species)))
    ds = store.with_alignment(ds, "per_element", f.species, np.ones((1, len(f.species))), counts)
    assert set(ds.data_vars) == set(keys.VARIABLES)
    for name, var in ds.data_vars.items():
        assert var.dims == keys.VARIABLES[name].dims, name
        assert var.attrs["units"] == keys.VARIABLES[name].unit, name
        assert var.attrs["description"] == keys.VARIABLES[name].doc, name


def test_bad_base_predictions_are_rejected():
    f = random_frames(n_frames=5, sizes=(2,))
    ref = store.reference_dataset(f, small_split())
    with pytest.raises(ElmlffError, match=r"base forces have shape \(1, 9, 3\)"):
        store.with_bases(ref, ["a"], np.zeros((1, 5)), np.zeros((1, 9, 3)), np.zeros((1, 5)))
    bad = np.zeros((1, 10, 3))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ElmlffError, match=r"non-finite base predictions from \['a'\]"):
        store.with_bases(ref, ["a"], np.zeros((1, 5)), bad, np.zeros((1, 5), bool))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    # and an existing output survives a failed rewrite
    dest.mkdir()
    (dest / "old").write_text("kept")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        raise RuntimeError("killed")
    assert (dest / "old").read_text() == "kept"


def test_merge_takes_out_of_fold_predictions_under_kfold(tmp_path):
    """Each pool frame comes from the fit that held it out; val/test are the mean of the fits."""
    import json

    from elmlff import pipeline

    f = random_frames(n_frames=8, sizes=(2, 3))
    split = Split(
        {"train": [0, 1, 2, 3], "meta": [4, 5], "val": [6], "test": [7]},
        folds=[[0, 2, 4], [1, 3, 5]],
    )
    store.write(store.reference_dataset(f, split), tmp_path / "ref.zarr")
    split.save(tmp_path / "split.json")
    preds, dirs = {"m": {}}, {"m": {}}
    for k, fit in enumerate(split.fits()):
        idx = split.fit_predict(fit)
        d = tmp_path / fit
        d.mkdir()
        (d / "base.json").write_text(
            json.dumps(
                {"name": "m", "family": "schnetpack", "trained_on": split.fit_train(fit).tolist()}
            )
        )
        e = np.full(len(idx), 10.0 * (k + 1))
        fo = np.full((len(f.atom_index(idx)), 3), float(k + 1))
        np.savez(d / "p.npz", frames=idx, energy=e, forces=fo, seconds=1.0)
        preds["m"][fit], dirs["m"][fit] = d / "p.npz", d
    pipeline.merge(
        tmp_path / "ref.zarr", tmp_path / "split.json", preds, dirs, tmp_path / "out.zarr"
    )
    ds = store.open_store(tmp_path / "out.zarr")
    e = ds[keys.BASE_ENERGY].values[0]
    assert e[[0, 2, 4]].tolist() == [10.0] * 3  # held out by cv0
    assert e[[1, 3, 5]].tolist() == [20.0] * 3  # held out by cv1
    assert e[[6, 7]].tolist() == [15.0, 15.0]  # mean of both fits
    assert not ds[keys.BASE_IN_SAMPLE].values.any()


def _written_store(tmp_path, name="predictions.zarr"):
    f = random_frames(n_frames=5, sizes=(3, 5, 2, 4, 1))
    rng = np.random.default_rng(2)
    ds = store.with_bases(
        store.reference_dataset(f, small_split()),
        ["a", "b"],
        rng.normal(size=(2, 5)),
        rng.normal(size=(2, 15, 3)),
        np.zeros((2, 5), bool),  # all False: zarr skips writing its chunk, which is fine
    )
    path = tmp_path / name
    store.write(ds, path)
    return ds, path


def test_a_damaged_store_is_refused_with_the_rule_that_rewrites_it(tmp_path):
    """A deleted chunk (zarr reads it as NaN, silently) or a truncated one (blosc reads past
    its end, silently) stops the opening with one line naming the store and the fix."""
    _, path = _written_store(tmp_path)
    assert not (path / keys.BASE_IN_SAMPLE / "0.0").exists()  # skipped, not damage
    store.open_store(path)  # whole: opens
    (path / keys.BASE_FORCES / "0.0.0").unlink()
    chunk = path / keys.ENERGY / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    with pytest.raises(ElmlffError) as err:
        store.open_store(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        f"store {path} is damaged: chunk file base_forces/0.0.0 is missing; "
        "fix: rerun the rule that writes it: snakemake --forcerun merge_store"
    )
    _, path = _written_store(tmp_path / "t")
    chunk = path / keys.ENERGY / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    with pytest.raises(ElmlffError, match=r"chunk file energy/0 is truncated or corrupt \(20 b"):
        store.open_store(path)
    chunk.write_bytes(b"")
    with pytest.raises(ElmlffError, match=r"chunk file energy/0 is truncated \(0 bytes\)"):
        store.open_store(path)


def test_a_store_without_metadata_or_with_nan_labels_is_refused(tmp_path):
    _, path = _written_store(tmp_path, "reference.zarr")
    (path / ".zmetadata").write_text("{")
    with pytest.raises(ElmlffError) as err:
        store.open_store(path)
    assert "consolidated metadata .zmetadata missing or unreadable" in str(err.value)
    assert str(err.value).endswith("snakemake --forcerun prepare_dataset")
    ds, path = _written_store(tmp_path / "nan")
    bad = ds.copy(deep=True)
    bad[keys.FORCES].values[9, 1] = np.nan  # atom 9 is in frame 2 (3 + 5 atoms before)
    store.write(bad, path)
    with pytest.raises(ElmlffError, match=r"1 NaN/inf values in 'forces' \(first: atom 9, fr"):
        store.open_store(path)
    bad = ds.copy(deep=True)
    bad[keys.BASE_ENERGY].values[1, 4] = np.inf
    store.write(bad, path)
    with pytest.raises(ElmlffError, match=r"'base_energy' \(first: model b, frame 4\)"):
        store.open_store(path)


def test_reference_stress_round_trips_and_is_absent_where_the_data_have_none(tmp_path):
    f = random_frames(n_frames=5, sizes=(3, 2), pbc=True)
    assert store.frames_from_dataset(store.reference_dataset(f, small_split())).stress is None
    f.stress = np.random.default_rng(2).normal(size=(5, 3, 3)) * 1e-2
    store.write(store.reference_dataset(f, small_split()), tmp_path / "r.zarr")
    back = store.open_store(tmp_path / "r.zarr")
    assert back[keys.STRESS].attrs["units"] == "eV/Å³"
    np.testing.assert_array_equal(store.frames_from_dataset(back, [4, 1]).stress, f.stress[[4, 1]])
