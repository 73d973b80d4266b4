"""Metrics against hand-computed values; baselines on synthetic predictions with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from elmlff import baselines as bl
from elmlff.errors import ElmlffError
from elmlff.metrics import metrics, per_frame


def test_metrics_match_hand_computed_values():
    # frame 0: 1 atom, errors (1, 2, 2); frame 1: 2 atoms, errors (0, 0, 3, 0, 0, 0)
    ref_f = np.zeros((3, 3))
    pred_f = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    p = per_frame(np.array([1.0, -4.0]), pred_f, np.array([0.0, 0.0]), ref_f, np.array([1, 2]))
    m = {k: v[0] for k, v in metrics(p).items()}
    mae0, mae1 = 5 / 3, 3 / 6
    rmse0, rmse1 = np.sqrt(9 / 3), np.sqrt(9 / 6)
    assert m["force_mae_framemean"] == pytest.approx((mae0 + mae1) / 2)
    assert m["force_rmse_framemean"] == pytest.approx((rmse0 + rmse1) / 2)
    assert m["force_mae"] == pytest.approx(8 / 9)
    assert m["force_rmse"] == pytest.approx(np.sqrt(18 / 9))
    assert m["energy_mae_per_atom"] == pytest.approx((1 / 1 + 4 / 2) / 2)
    assert m["energy_rmse_per_atom"] == pytest.approx(np.sqrt((1 + 4) / 2))


def test_bootstrap_interval_brackets_the_value_and_shrinks_with_data():
    rng = np.random.default_rng(0)

    def width(n):
        n_atoms = np.full(n, 4)
        p = per_frame(
            rng.normal(size=n),
            rng.normal(size=(4 * n, 3)),
            np.zeros(n),
            np.zeros((4 * n, 3)),
            n_atoms,
        )
        v, lo, hi = metrics(p, bootstrap=500, seed=1)["force_rmse_framemean"]
        assert lo < v < hi
        return hi - lo

    assert width(2000) < 0.5 * width(100)


def synthetic(n_atoms=400, seed=0):
    """Three bases: truth + noise, one with a bias (x1.3), one noisier."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n_atoms, 3))
    f = np.stack(
        [
            ref + 0.05 * rng.normal(size=ref.shape),
            1.3 * ref + 0.05 * rng.normal(size=ref.shape),
            ref + 0.2 * rng.normal(size=ref.shape),
        ]
    )
    return ref, f


def test_best_base_is_chosen_on_validation():
    ref, f = synthetic()
    c = bl.best_base(["good", "biased", "noisy"], f, ref)
    assert c.info["chosen"] == "good"
    assert c.weights.tolist() == [1.0, 0.0, 0.0]


def test_weighted_mean_weights_are_inverse_rmse():
    ref, f = synthetic()
    c = bl.weighted_mean(["a", "b", "c"], f, ref)
    rmse = np.sqrt(((f - ref) ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(c.weights, (1 / rmse) / (1 / rmse).sum())
    assert c.weights.sum() == pytest.approx(1.0)


def test_linear_stacking_recovers_known_weights_and_energy_offset():
    rng = np.random.default_rng(2)
    n_frames, n_atoms = 50, np.full(50, 4)
    f = rng.normal(size=(2, 200, 3))
    ref_f = 0.7 * f[0] + 0.2 * f[1]
    e = rng.normal(size=(2, n_frames))
    ref_e = 0.7 * e[0] + 0.2 * e[1] - 1.5 * n_atoms
    c = bl.linear_stacking(["a", "b"], e, f, ref_e, ref_f, n_atoms)
    np.testing.assert_allclose(c.weights, [0.7, 0.2], atol=1e-10)
    assert c.energy_offset_per_atom == pytest.approx(-1.5)
    pe, pf = c.apply(e, f, n_atoms)
    np.testing.assert_allclose(pe, ref_e, atol=1e-9)
    np.testing.assert_allclose(pf, ref_f, atol=1e-10)


def test_linear_stacking_on_several_elements_fits_an_energy_offset_per_element():
    """Weights that do not sum to one leave Σ_Z n_Z (μ_Z − Σ_m w_m ε_mZ) in the energy: one
    offset per element recovers the reference on frames of other compositions, one per atom
    cannot; the offsets survive baselines.json."""
    rng = np.random.default_rng(4)

    def frames(n):  # Li/Si cells of random composition, 2-9 atoms
        n_atoms = rng.integers(2, 10, size=n)
        numbers = rng.choice([3, 14], size=int(n_atoms.sum()))
        frame = np.repeat(np.arange(n), n_atoms)
        counts = np.stack([np.bincount(frame, numbers == z, minlength=n) for z in (3, 14)], 1)
        return n_atoms, numbers, counts

    mu, eps = np.array([-1.9, -5.4]), np.array([[-1.0, -3.0], [-2.5, -4.0]])  # eV/atom
    w = np.array([0.3, 0.3])  # sum 0.6: the element energies do not cancel

    def labels(n):
        n_atoms, numbers, counts = frames(n)
        f = rng.normal(size=(2, int(n_atoms.sum()), 3))
        return n_atoms, numbers, eps @ counts.T, f, counts  # base energies (2, F)

    n_atoms, numbers, e, f, counts = labels(60)
    ref_e, ref_f = counts @ mu, np.tensordot(w, f, axes=1)
    c = bl.linear_stacking(["a", "b"], e, f, ref_e, ref_f, n_atoms, numbers)
    np.testing.assert_allclose(c.weights, w, atol=1e-10)
    np.testing.assert_allclose([c.energy_offsets[3], c.energy_offsets[14]], mu - w @ eps)
    t_atoms, t_numbers, t_e, t_f, t_counts = labels(20)
    again = bl.LinearCombiner.from_json(json.loads(json.dumps(c.to_json())))
    pe, _ = again.apply(t_e, t_f, t_atoms, t_numbers)
    np.testing.assert_allclose(pe, t_counts @ mu, atol=1e-9)
    one = bl.linear_stacking(["a", "b"], e, f, ref_e, ref_f, n_atoms)  # one offset per atom
    assert np.abs(one.apply(t_e, t_f, t_atoms)[0] - t_counts @ mu).mean() > 0.1
    with pytest.raises(ElmlffError, match=r"per-element energy offsets but no elements"):
        c.apply(t_e, t_f, t_atoms)
    with pytest.raises(ElmlffError, match=r"no energy offset for element\(s\) \[32\]"):
        c.apply(t_e, t_f, t_atoms, np.where(t_numbers == 3, 32, t_numbers))


def test_stacking_beats_mean_when_one_base_is_biased():
    ref, f = synthetic(seed=1)
    test_ref, test_f = synthetic(seed=2)
    n = np.full(len(ref) // 4, 4)
    e = np.zeros((3, len(n)))
    stack = bl.linear_stacking(["a", "b", "c"], e, f, np.zeros(len(n)), ref, n)
    mean = bl.mean(["a", "b", "c"])
    rmse = lambda c: np.sqrt(((c.apply(e, test_f, n)[1] - test_ref) ** 2).mean())  # noqa: E731
    assert rmse(stack) < 0.8 * rmse(mean)


def _frames_with_errors(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-atom frames whose force error is (s, 0, 0) for each s in ``scales``."""
    f = np.zeros((len(scales), 3))
    f[:, 0] = scales
    return f, np.zeros_like(f), np.ones(len(scales), dtype=int)


def test_paired_difference_equals_the_difference_of_metrics_by_hand():
    from elmlff.metrics import paired_differences

    fa, ref, n = _frames_with_errors(np.array([1.0, 2.0, 4.0]))
    fb, _, _ = _frames_with_errors(np.array([2.0, 2.0, 5.0]))
    z = np.zeros(3)
    d = paired_differences(per_frame(z, fa, z, ref, n), per_frame(z, fb, z, ref, n), 200)
    # frame-mean RMSE of a 1-atom frame with error (s, 0, 0) is |s| / sqrt(3)
    assert d["force_rmse_framemean"][0] == pytest.approx((7 / 3 - 3) / np.sqrt(3))
    assert d["force_mae"][0] == pytest.approx((7 - 9) / 9)
    lo, hi = d["force_rmse_framemean"][1:]
    assert lo <= d["force_rmse_framemean"][0] <= hi <= 0  # a is never worse on any frame


def test_paired_interval_sees_what_unpaired_intervals_cannot():
    """Frames differ wildly in difficulty (errors 0.1-10), and model a is better than b by 2 %
    on every frame: the two models' own intervals overlap, the paired one excludes zero."""
    from elmlff.metrics import paired_differences

    hard = np.random.default_rng(1).uniform(0.1, 10.0, size=300)
    fa, ref, n = _frames_with_errors(0.98 * hard)
    fb, _, _ = _frames_with_errors(hard)
    z = np.zeros(300)
    pa, pb = per_frame(z, fa, z, ref, n), per_frame(z, fb, z, ref, n)
    ma, mb = metrics(pa, 500)["force_rmse"], metrics(pb, 500)["force_rmse"]
    assert ma[2] > mb[1]  # unpaired intervals overlap
    d, _, hi = paired_differences(pa, pb, 500)["force_rmse"]
    assert d < 0 and hi < 0
    # the same model against itself: zero, with a zero-width interval
    assert paired_differences(pa, pa, 50)["force_rmse"] == (0.0, 0.0, 0.0)


def test_comparison_rows_say_what_the_interval_supports():
    from elmlff.pipeline import paired_comparisons, verdict

    assert verdict(-2.0, -0.5) == "better" and verdict(0.1, 1.0) == "worse"
    assert verdict(-1.0, 1.0) == "indistinguishable"
    fa, ref, n = _frames_with_errors(np.full(50, 1.0))
    fb, _, _ = _frames_with_errors(np.full(50, 2.0))
    z = np.zeros(50)
    nan = np.full(50, np.nan)
    errors = {
        "meta": ("meta", per_frame(nan, fa, z, ref, n), False),  # forces only
        "best_base": ("baseline", per_frame(z, fb, z, ref, n), True),
        "painn": ("base", per_frame(z, fb, z, ref, n), True),
    }
    df = paired_comparisons(errors, "toy", bootstrap=100)
    assert set(df.reference) == {"best_base"} and set(df.model) == {"meta"}
    assert not df.metric.str.startswith("energy").any()  # the meta has no energy
    row = df[df.metric == "force_mae"].iloc[0]
    assert row.difference == pytest.approx(-1 / 3) and row.verdict == "better"


def test_a_base_that_learned_nothing_is_flagged():
    """A base at the zero-force predictor's error is flagged on all its rows; a good base, a
    baseline and a meta are not; the trivial errors are computed from the frames by hand."""
    import pandas as pd

    from elmlff.data.split import Split
    from elmlff.pipeline import flag_unlearned, trivial_rmse

    from conftest import random_frames

    f = random_frames(n_frames=6, sizes=(2,))
    f.forces = np.array([[1.0, 0, 0], [1, 0, 0], [3, 0, 0], [3, 0, 0]] * 3)
    split = Split({"train": [0, 1], "meta": [4], "val": [5], "test": [2, 3]}, [], 0, "random")
    t = trivial_rmse(f, split)
    # test forces: (1,0,0),(1,0,0),(3,0,0),(3,0,0); train mean (2,0,0)
    assert t["zero forces"] == pytest.approx(np.sqrt((1 + 1 + 9 + 9) / 12))
    assert t["the training mean force"] == pytest.approx(np.sqrt(4 / 12))
    best = t["the training mean force"]
    rows = [
        ("good", "base", 0.1 * best),
        ("lazy", "base", 0.9 * best),
        ("mean", "baseline", 0.9 * best),
        ("meta", "meta", 0.9 * best),
    ]
    df = pd.DataFrame(
        [
            {"model": m, "kind": k, "split": s, "metric": "force_rmse", "value": v}
            for m, k, v in rows
            for s in ("val", "test")
        ]
    )
    out = flag_unlearned(df, t, 0.5)
    flagged = set(out[out.flag != ""].model)
    assert flagged == {"lazy"} and (out[out.model == "lazy"].flag != "").all()
    assert "training mean force" in out[out.model == "lazy"].flag.iloc[0]
    assert out[out.model == "good"].learned_ratio.iloc[0] == pytest.approx(0.1)
    assert out[out.kind != "base"].learned_ratio.isna().all()


def test_busy_time_leaves_out_pauses_in_which_no_job_ran(tmp_path):
    """Two jobs side by side (0-100 s, 50-150 s), a job right after (150.5-200 s), then a
    rerun 10 minutes later (800-900 s): the window is 900 s, the busy time 200 + 100 s with
    one pause; a run without pauses is busy for its whole window."""
    import os

    from elmlff.summary import benchmark_seconds, benchmark_window, busy_time, pauses_note

    t0 = 1.7e9
    files = []
    for job, start, end in (("a", 0, 100), ("b", 50, 150), ("c", 150.5, 200), ("d", 800, 900)):
        p = tmp_path / f"{job}.tsv"
        p.write_text(f"s\th:m:s\n{end - start}\t0:00:00\n")
        os.utime(p, (t0 + end, t0 + end))
        files.append(p)
    sec = benchmark_seconds(files)
    start, end = benchmark_window(files, sec)
    assert end - start == pytest.approx(900.0)
    busy, n = busy_time(files, sec)
    assert busy == pytest.approx(300.0) and n == 1
    assert "5.0 min without a pause" in pauses_note(busy, n)
    assert busy_time(files[:3], sec) == (pytest.approx(200.0), 0)
    assert pauses_note(200.0, 0) == ""
