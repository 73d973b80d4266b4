"""The subset study's amortized method: one Ensemble-direct model over random subsets of the
bases, its masks, its calibration against dedicated models, and dropping a base at deployment."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pandas as pd
import pytest
import torch

from elmlff import subsets as S
from elmlff.errors import ElmlffError
from elmlff.meta import build
from elmlff.meta.amortized import fit_amortized, predict_subsets, random_masks
from elmlff.meta.data import Stats, batch_from_frames
from elmlff.meta.ensemble import DirectEnsemble
from elmlff.meta.params import TrainSettings
from elmlff.study import calibration, calibration_summary, shown_method

from conftest import biased_bases


def test_random_masks_draw_k_uniformly_then_a_uniform_subset_of_that_size():
    m, n = 4, 60_000
    masks = random_masks(n, m, np.random.default_rng(0))
    k = masks.sum(1)
    assert k.min() == 1 and k.max() == m
    # k ~ U{1..4}: each size a quarter of the frames (binomial sd ~0.0018)
    np.testing.assert_allclose(np.bincount(k, minlength=m + 1)[1:] / n, 0.25, atol=0.01)
    # within k = 2, each of the 6 pairs a sixth
    pairs = masks[k == 2]
    counts = [np.all(pairs[:, list(c)], axis=1).sum() for c in combinations(range(m), 2)]
    np.testing.assert_allclose(np.array(counts) / len(pairs), 1 / 6, atol=0.015)


def _model(species, m=3, seed=0, head=0.0):
    torch.manual_seed(seed)
    stats = Stats(1.0, -10.0, 1.0)
    model = build("direct", m, species, stats, {"hidden": 16, "layers": 2, "amortized": True})
    if head:
        with torch.no_grad():  # a random head, so the correction is not zero
            model.head[-1].weight.normal_(0, head)
    return model.eval()


@pytest.fixture(scope="module")
def frames_and_bases(methane):
    fr = methane.subset(range(6))
    rng = np.random.default_rng(1)
    return fr, rng.normal(size=(3, len(fr))) - 40, rng.normal(size=(3, len(fr.numbers), 3))


def test_untrained_amortized_model_is_the_plain_mean_of_the_present_bases(frames_and_bases):
    fr, e, f = frames_and_bases
    model = _model(fr.species)
    b = batch_from_frames(fr, e, f, 4.0).to("cpu", torch.float32)
    for present in ([0], [1, 2], [0, 1, 2]):
        b.extra["mask"] = torch.as_tensor(np.isin(np.arange(3), present))
        with torch.no_grad():
            out = model(b).numpy()
        np.testing.assert_allclose(out, f[present].mean(0), atol=1e-5)


def test_absent_bases_do_not_change_the_forces(frames_and_bases):
    """With a random (non-zero) head, whatever an absent base predicts changes nothing; a
    present one does."""
    fr, e, f = frames_and_bases
    model = _model(fr.species, head=0.3)
    mask = torch.as_tensor([True, False, True])
    other_f, other_e = f.copy(), e.copy()
    other_f[1] += 5.0
    other_e[1] -= 3.0
    with torch.no_grad():
        outs = []
        for ee, ff in ((e, f), (other_e, other_f)):
            b = batch_from_frames(fr, ee, ff, 4.0).to("cpu", torch.float32)
            b.extra["mask"] = mask
            outs.append(model(b).numpy())
        np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
        b = batch_from_frames(fr, e, other_f, 4.0).to("cpu", torch.float32)
        b.extra["mask"] = torch.ones(3, dtype=torch.bool)
        assert np.abs(model(b).numpy() - outs[0]).max() > 1e-2


def test_a_frame_without_any_base_is_refused(frames_and_bases):
    fr, e, f = frames_and_bases
    b = batch_from_frames(fr, e, f, 4.0).to("cpu", torch.float32)
    mask = np.ones((len(fr), 3), dtype=bool)
    mask[2] = False
    b.extra["mask"] = torch.as_tensor(mask)
    with pytest.raises(ElmlffError, match="at least one base present"):
        _model(fr.species)(b)


@pytest.fixture(scope="module")
def trained(methane):
    """Bases: one exact up to small noise, one noisy, one biased (x1.6 + 0.3); an amortized
    model trained over random subsets of them."""
    fr = methane.subset(range(240))
    data = biased_bases(fr, ["good", "noisy", "biased"], (0.02, 0.3))
    stats = Stats.fit(fr.subset(np.arange(160)))
    torch.manual_seed(0)
    model = build("direct", 3, fr.species, stats, {"hidden": 16, "layers": 2, "amortized": True})
    s = TrainSettings(max_epochs=30, batch_size=32, lr=3e-3, patience=30)
    info = fit_amortized(model, data, np.arange(160), np.arange(160, 200), s, log=lambda m: None)
    return data, model, info


def _rmse(pred, ref):
    return float(np.sqrt(np.mean((pred - ref) ** 2)))


def test_one_amortized_model_serves_every_subset(trained):
    data, model, info = trained
    assert info["best_val_force_rmse"] < info["untrained_val_force_rmse"]
    test = np.arange(200, 240)
    ref = data.frames.forces[data.frames.atom_index(test)]
    subsets = [list(c) for k in (1, 2, 3) for c in combinations(data.models, k)]
    pred = predict_subsets(model, data, test, subsets)
    assert pred.shape == (7, len(ref), 3)
    err = {"+".join(c): _rmse(p, ref) for c, p in zip(subsets, pred, strict=True)}
    a = data.frames.atom_index(test)
    mean = {
        "+".join(c): _rmse(data.base_forces[data.model_index(c)][:, a].mean(0), ref)
        for c in subsets
    }
    # better than the plain mean of the same bases wherever the mean is off (the biased base)
    for name in ("biased", "noisy+biased", "good+biased", "good+noisy+biased"):
        assert err[name] < 0.7 * mean[name], (name, err[name], mean[name])
    # a subset with the good base beats one without it
    assert err["good+biased"] < err["noisy+biased"]
    assert err["good"] < err["noisy"]


def test_subsets_predicted_side_by_side_on_worker_threads_match_one_by_one(trained):
    """With several torch threads, predict_subsets spreads the subsets over worker threads
    that share the graphs' caches: each subset's forces are still that subset's forward."""
    data, model, _ = trained
    test = np.arange(200, 240)
    subsets = [list(c) for k in (1, 2, 3) for c in combinations(data.models, k)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pred = predict_subsets(model, data, test, subsets, batch_size=16)  # 3 batches
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    b = data.batch(test).to("cpu", torch.float32)
    with torch.no_grad():
        for c, p in zip(subsets, pred, strict=True):
            b.extra["mask"] = torch.as_tensor(S.mask(c, data.models))
            np.testing.assert_allclose(p, model(b).numpy(), atol=1e-5, err_msg=str(c))


def test_dropping_a_base_at_deployment_uses_only_the_present_ones(trained):
    """DirectEnsemble over the amortized model with two of its three bases gives what
    predict_subsets gives for that subset; a base it was not trained over is refused."""
    data, model, _ = trained
    test = np.arange(200, 220)
    frames = data.frames.subset(test)
    a = data.frames.atom_index(test)

    class Named:
        def __init__(self, name):
            self.name = name

    ens = DirectEnsemble(model, [Named("good"), Named("biased")], inputs=data.models)
    m = data.model_index(["good", "biased"])
    out = ens.forces_from(frames, data.base_energy[m][:, test], data.base_forces[m][:, a])
    expect = predict_subsets(model, data, test, [["good", "biased"]])[0]
    np.testing.assert_allclose(out, expect, atol=1e-5)
    with pytest.raises(ElmlffError, match="not inputs"):
        DirectEnsemble(model, [Named("other")], inputs=data.models)
    assert S.mask(["biased", "good"], data.models).tolist() == [True, False, True]


def test_calibration_against_dedicated_models_computed_by_hand(tmp_path):
    rows = []
    # four subsets, both methods; plus one the dedicated method lacks
    amort = {"a": 1.0, "b": 2.0, "a+b": 1.5, "a+c": 4.0, "b+c": 9.0}
    dedic = {"a": 1.0, "b": 2.5, "a+b": 1.0, "a+c": 3.0}
    for method, vals in (("amortized", amort), ("dedicated", dedic)):
        for s, v in vals.items():
            for split in ("val", "test"):
                rows.append(
                    dict(
                        dataset="x",
                        subset=s,
                        k=s.count("+") + 1,
                        models=s,
                        meta="ed",
                        kind="meta",
                        method=method,
                        split=split,
                        metric="force_rmse_framemean",
                        value=v,
                    )
                )
    rows.append(
        dict(
            dataset="x",
            subset="a",
            k=1,
            models="a",
            meta="mean",
            kind="baseline",
            method=np.nan,
            split="test",
            metric="force_rmse_framemean",
            value=7.0,
        )
    )
    pd.DataFrame(rows).to_csv(tmp_path / "subsets.csv", index=False)
    table = calibration(tmp_path / "subsets.csv", tmp_path / "cal.csv", "x")
    gaps = table[table.quantity == "relative_gap"].set_index("subset").value
    np.testing.assert_allclose(gaps[["a", "b", "a+b", "a+c"]], [0.0, -0.2, 0.5, 1 / 3])
    s = calibration_summary(tmp_path / "cal.csv")["ed"]
    # ranks: amortized a<b... (1, 2, 1.5, 4) -> 1,3,2,4; dedicated (1, 2.5, 1, 3) -> 1.5,3,1.5,4
    from scipy.stats import spearmanr

    assert s["spearman_rho"] == pytest.approx(spearmanr([1, 3, 2, 4], [1.5, 3, 1.5, 4]).statistic)
    assert s["mean_relative_gap"] == pytest.approx((0 - 0.2 + 0.5 + 1 / 3) / 4)
    assert s["worst_relative_gap"] == pytest.approx(0.5)
    assert s["n_subsets"] == 4
    # a figure shows the amortized rows (every subset) and the baselines, never both methods
    shown = shown_method(pd.read_csv(tmp_path / "subsets.csv"))
    assert set(shown[shown.kind == "meta"].method) == {"amortized"}
    assert (shown.kind == "baseline").sum() == 1


def test_calibration_sample_is_stratified_and_seeded():
    groups = {1: ["a", "b", "c", "d"], 2: ["a+b", "a+c"], 3: ["a+b+c"]}
    one = S.sample(groups, 3, seed=0)
    assert [len(v) for v in one.values()] == [3, 2, 1]
    assert set(one[1]) <= set(groups[1]) and one == S.sample(groups, 3, seed=0)
    assert S.sample(groups, 0, seed=0) == {}
    assert {json.dumps(S.sample(groups, 1, seed=s)[1]) for s in range(20)} == {
        json.dumps([x]) for x in groups[1]
    }  # every size-1 subset gets drawn by some seed
