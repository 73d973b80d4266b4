"""A base's params and training against its family's record: typos and wrong types are caught
before training, with the accepted keys named."""

from __future__ import annotations

import pytest

from elmlff.bases import FAMILIES, check_spec
from elmlff.errors import ElmlffError


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_accepts_its_own_defaults(family):
    rec = FAMILIES[family]
    check_spec("b", family, dict(rec.params), dict(rec.training), "bases.b")


def test_a_typo_in_params_names_the_accepted_keys():
    with pytest.raises(
        ElmlffError,
        match=r"bases.s.params: unknown key\(s\) \['n_rbff'\] for "
        r"family schnetpack; fix: use some of \['architecture', 'cutoff'",
    ):
        check_spec("s", "schnetpack", {"n_rbff": 10}, {}, "bases.s")


def test_a_typo_in_training_and_a_key_of_another_family_are_refused():
    with pytest.raises(ElmlffError, match=r"training: unknown key\(s\) \['max_epoch'\]"):
        check_spec("s", "schnetpack", {}, {"max_epoch": 3}, "bases.s")
    # deepmd's own key is no schnetpack key
    with pytest.raises(ElmlffError, match=r"\['stop_lr_ratio'\] for family schnetpack"):
        check_spec("s", "schnetpack", {}, {"stop_lr_ratio": 0.1}, "bases.s")
    # a key every base may get from the top-level training block is accepted everywhere
    check_spec("d", "deepmd", {}, {"patience": 3, "energy_weight": 0.1}, "bases.d")


@pytest.mark.parametrize(
    "training, message",
    [
        ({"max_epochs": "two"}, r"max_epochs: 'two' is not of type int"),
        ({"lr": True}, r"lr: True is not of type float"),
        ({"batch_size": 4.5}, r"batch_size: 4.5 is not of type int"),
    ],
)
def test_wrong_types_are_refused(training, message):
    with pytest.raises(ElmlffError, match=message):
        check_spec("n", "nequip", {}, training, "bases.n")


def test_ints_are_fine_where_a_float_is_expected():
    check_spec("n", "nequip", {"cutoff": 4}, {"lr": 1}, "bases.n")
    with pytest.raises(ElmlffError, match=r"neuron: 30 is not of type list"):
        check_spec("d", "deepmd", {"neuron": 30}, {}, "bases.d")
