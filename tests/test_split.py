"""Split manifests: roles disjoint, the data set's own split honoured, K folds, no leaks."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from elmlff.data import Split, make_split
from elmlff.errors import ElmlffError


def roles_of(n_pool: int, n_test: int) -> np.ndarray:
    return np.array(["pool"] * n_pool + ["test"] * n_test)


def test_roles_are_disjoint_and_test_comes_from_the_given_part():
    s = make_split(roles_of(100, 30), {"seed": 1, "sizes": {"train": 50, "meta": 20, "val": 10}})
    sets = {r: set(v.tolist()) for r, v in s.roles.items()}
    assert [len(sets[r]) for r in ("train", "meta", "val", "test")] == [50, 20, 10, 30]
    for a in sets:
        for b in sets:
            assert a == b or not sets[a] & sets[b]
    assert sets["test"] == set(range(100, 130))  # the data set's own test part, untouched
    assert max(sets["train"] | sets["meta"] | sets["val"]) < 100


def test_split_is_seeded_and_rest_takes_what_is_left():
    spec = {"seed": 3, "sizes": {"meta": 0.2, "val": 10, "train": "rest"}}
    a, b = make_split(roles_of(100, 5), spec), make_split(roles_of(100, 5), spec)
    assert all(np.array_equal(a.roles[r], b.roles[r]) for r in a.roles)
    assert len(a.roles["train"]) == 100 - 20 - 10
    c = make_split(roles_of(100, 5), {**spec, "seed": 4})
    assert not np.array_equal(a.roles["train"], c.roles["train"])


def test_blocks_are_contiguous_in_time_order():
    s = make_split(
        np.array(["pool"] * 100),
        {"method": "blocks", "sizes": {"train": 60, "meta": 20, "val": 10, "test": 10}},
    )
    assert s.roles["train"].tolist() == list(range(60))
    assert s.roles["meta"].tolist() == list(range(60, 80))
    assert s.roles["test"].tolist() == list(range(90, 100))


def test_given_test_part_is_subsampled_to_its_size():
    s = make_split(roles_of(50, 40), {"sizes": {"train": 20, "meta": 10, "val": 5, "test": 15}})
    assert len(s.roles["test"]) == 15 and s.roles["test"].min() >= 50


def test_kfold_partitions_train_and_meta_and_fits_never_see_their_fold():
    s = make_split(roles_of(60, 10), {"kfold": 3, "sizes": {"train": 40, "meta": 10, "val": 10}})
    assert s.fits() == ["cv0", "cv1", "cv2"]
    pool = np.sort(np.concatenate([s.roles["train"], s.roles["meta"]]))
    np.testing.assert_array_equal(np.sort(np.concatenate(s.folds)), pool)
    for k, fit in enumerate(s.fits()):
        trained = set(s.fit_train(fit).tolist())
        assert not trained & set(s.folds[k].tolist())
        assert not trained & set(s.roles["test"].tolist())
        assert not trained & set(s.roles["val"].tolist())
        assert set(s.folds[k].tolist()) <= set(s.fit_predict(fit).tolist())
    np.testing.assert_array_equal(s.meta_fit(), pool)


def test_without_kfold_meta_frames_are_never_training_frames():
    s = make_split(roles_of(60, 10), {"sizes": {"train": 40, "meta": 10, "val": 10}})
    assert s.fits() == ["full"]
    assert not set(s.fit_train("full").tolist()) & set(s.meta_fit().tolist())
    assert not set(s.fit_train("full").tolist()) & set(s.roles["test"].tolist())


def test_overlapping_and_empty_roles_are_clear_errors():
    with pytest.raises(ElmlffError, match="roles 'train' and 'test' overlap"):
        Split({"train": [0, 1], "meta": [2], "val": [3], "test": [1, 4]})
    with pytest.raises(ElmlffError, match="split role 'meta' is empty"):
        Split({"train": [0, 1], "meta": [], "val": [3], "test": [4]})
    with pytest.raises(ElmlffError, match=r"ask for 502 frames of the pool \(meta 500 \+ val 2\)"):
        make_split(roles_of(20, 5), {"sizes": {"meta": 500, "val": 2}})
    with pytest.raises(ElmlffError, match="asks for 9 frames but only 5 are in its source part"):
        make_split(roles_of(20, 5), {"sizes": {"meta": 5, "val": 2, "test": 9}})
    with pytest.raises(ElmlffError, match="role 'val' has no source part and no size"):
        make_split(roles_of(20, 5), {"sizes": {"meta": 5}})


def test_manifest_round_trips(tmp_path):
    s = make_split(
        roles_of(60, 10), {"kfold": 2, "seed": 5, "sizes": {"train": 30, "meta": 10, "val": 10}}
    )
    s.save(tmp_path / "split.json")
    t = Split.load(tmp_path / "split.json")
    assert t.seed == 5 and t.kfold == 2
    assert all(np.array_equal(s.roles[r], t.roles[r]) for r in s.roles)
    assert all(np.array_equal(a, b) for a, b in zip(s.folds, t.folds, strict=True))


def _digest(s: Split) -> str:
    h = hashlib.sha256()
    for r in ("train", "meta", "val", "test"):
        h.update(s.roles[r].tobytes())
    for f in s.folds:
        h.update(f.tobytes())
    return h.hexdigest()[:16]


def test_integer_sizes_split_exactly_as_before():
    """The default campaign (methane: 5009 pool + 500 given test frames), paper.yaml's sizes
    and a blocks + K-fold split give the very frames the code gave before fractions were
    taken of the whole pool (digests computed with that code)."""
    roles = roles_of(5009, 500)
    default = {"seed": 0, "sizes": {"train": 1000, "meta": 500, "val": 200, "test": 500}}
    assert _digest(make_split(roles, default)) == "bf534b11b3484bb0"
    paper = {"seed": 0, "sizes": {"train": 4000, "meta": 500, "val": "rest", "test": 500}}
    assert _digest(make_split(roles, paper)) == "e03155d86fa14864"
    blocks = {
        "seed": 2,
        "method": "blocks",
        "kfold": 3,
        "sizes": {"train": 100, "meta": 50, "val": 20, "test": 30},
    }
    assert _digest(make_split(np.array(["pool"] * 500), blocks)) == "ca50d5839a4e1cea"


def test_fractions_are_of_the_whole_pool_as_the_schema_says():
    s = make_split(roles_of(100, 5), {"sizes": {"train": 0.5, "meta": 0.25, "val": 0.25}})
    assert [len(s.roles[r]) for r in ("train", "meta", "val", "test")] == [50, 25, 25, 5]
    # mixed with a count and 'rest': the fraction is still of the pool (100), not of 90
    s = make_split(roles_of(100, 5), {"sizes": {"train": "rest", "meta": 10, "val": 0.3}})
    assert [len(s.roles[r]) for r in ("train", "meta", "val")] == [60, 10, 30]


def test_sizes_that_ask_for_more_than_the_pool_are_errors():
    from elmlff.data.split import check_sizes

    with pytest.raises(ElmlffError, match=r"fractions of the pool sum to 1.3 > 1"):
        make_split(roles_of(100, 5), {"sizes": {"train": 0.6, "meta": 0.6, "val": 0.1}})
    with pytest.raises(ElmlffError, match=r"fractions of the pool sum to 1.1 > 1"):
        check_sizes({"train": "rest", "meta": 0.6, "val": 0.5}, ["train", "meta", "val"])
    check_sizes({"meta": 0.6, "val": 0.4, "test": 0.9}, ["train", "meta", "val"])  # test: a part
    with pytest.raises(ElmlffError, match=r"ask for 110 frames of the pool .*, which holds 100"):
        make_split(roles_of(100, 5), {"sizes": {"train": 50, "meta": 40, "val": 20}})
    with pytest.raises(ElmlffError, match=r"split.sizes.val: 2.5 is neither a count"):
        make_split(roles_of(100, 5), {"sizes": {"meta": 10, "val": 2.5}})
