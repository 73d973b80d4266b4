"""Metrics against hand-computed values; baselines on synthetic predictions with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from elmlff import baselines as bl
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


def test_stacking_beats_mean_when_one_base_is_biased():
    ref, f = synthetic(seed=1)
    test_ref, test_f = synthetic(seed=2)
    n = np.full(len(ref) // 4, 4)
    e = np.zeros((3, len(n)))
    stack = bl.linear_stacking(["a", "b", "c"], e, f, np.zeros(len(n)), ref, n)
    mean = bl.mean(["a", "b", "c"])
    rmse = lambda c: np.sqrt(((c.apply(e, test_f, n)[1] - test_ref) ** 2).mean())  # noqa: E731
    assert rmse(stack) < 0.8 * rmse(mean)
