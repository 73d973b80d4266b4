"""Config schema: the shipped configs validate; bad ones fail with one clear line."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from elmlff.config import load_config, validate_config
from elmlff.errors import ElmlffError

from conftest import ROOT

DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_shipped_configs_are_valid_and_get_defaults():
    cfg = load_config(ROOT / "config" / "config.yaml")
    assert cfg["run"] == ["methane"]
    assert cfg["datasets"]["methane"]["pbc"] == "auto"  # default filled in
    assert cfg["datasets"]["methane"]["split"]["kfold"] == 0
    assert cfg["evaluation"]["predict_batch_size"] == 128
    assert len(cfg["ensemble"]) == 8 and "nep" in cfg["bases"]
    assert cfg["metas"]["ensemble_direct"]["fit_on"] == "out_of_sample"  # default filled in
    assert set(cfg["run_metas"]) == set(cfg["metas"])


def overlay(base: dict, over: dict) -> dict:
    """Snakemake's merge of a --configfile into the configfile: dicts key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("campaign", ["paper", "methanol_cu"])
def test_campaign_overlays_are_valid(campaign):
    over = yaml.safe_load((ROOT / "config" / "campaigns" / f"{campaign}.yaml").read_text())
    cfg = validate_config(overlay(DEFAULT, over))
    if campaign == "paper":
        assert cfg["training"]["max_epochs"] >= 1000 and len(cfg["ensemble"]) == 8
        assert cfg["bases"]["nequip"]["params"]["l_max"] == 2
    else:
        assert cfg["run"] == ["methanol_cu"]
        assert cfg["datasets"]["methanol_cu"]["parts"] == {"train": "pool", "test": "test"}


def bad(mutate):
    cfg = copy.deepcopy(DEFAULT)
    mutate(cfg)
    with pytest.raises(ElmlffError) as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "fix:" in msg
    return msg


def test_unknown_key():
    msg = bad(lambda c: c["datasets"]["methane"].update(unit="eV"))
    assert "datasets.methane" in msg and "'unit' was unexpected" in msg


def test_wrong_type():
    msg = bad(lambda c: c["datasets"]["methane"]["split"].update(seed="zero"))
    assert "datasets.methane.split.seed" in msg and "'zero' is not of type 'integer'" in msg


def test_units_not_declared():
    msg = bad(lambda c: c["datasets"]["methane"]["units"].pop("energy"))
    assert "datasets.methane.units" in msg and "'energy' is a required property" in msg


def test_unknown_unit():
    msg = bad(lambda c: c["datasets"]["methane"]["units"].update(energy="kcal"))
    assert "datasets.methane.units.energy" in msg


def test_unknown_base_name_in_ensemble():
    msg = bad(lambda c: c.update(ensemble=["schnet_rbf10", "mace_mp"]))
    assert "unknown base name(s) ['mace_mp']" in msg and "schnet_rbf20" in msg


def test_unknown_family():
    msg = bad(lambda c: c["bases"]["painn"].update(family="mace"))
    assert "bases.painn.family: unknown family 'mace'" in msg


def test_unknown_meta_model_in_run_metas():
    msg = bad(lambda c: c.update(run_metas=["ensemble_direct", "mace_meta"]))
    assert "run_metas: unknown meta-model(s) ['mace_meta']" in msg and "ensemble_conserv" in msg


def test_unknown_meta_parameter_for_its_kind():
    msg = bad(lambda c: c["metas"]["ensemble_direct"].update(params={"l_max": 2}))
    assert "metas.ensemble_direct.params: unknown key(s) ['l_max'] for kind direct" in msg
    msg = bad(lambda c: c["metas"]["ensemble_conserv"]["training"].update(bases="cache"))
    assert "metas.ensemble_conserv.training.bases" in msg


def test_unknown_md_model_and_bad_md_settings():
    msg = bad(lambda c: c["md"].update(models=["painn", "mace"]))
    assert "md.models: unknown model(s) ['mace']" in msg
    msg = bad(lambda c: c["md"]["settings"].update(thermostat="berendsen"))
    assert "md.settings.thermostat" in msg


def test_a_data_set_md_protocol_overrides_the_top_level_one_key_by_key():
    from elmlff.config import md_spec

    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["methane"]["md"] = {"replicas": 3, "settings": {"temperature_K": 300}}
    spec = md_spec(validate_config(cfg), "methane")
    assert spec["replicas"] == 3 and spec["models"] == DEFAULT["md"]["models"]
    assert spec["settings"]["temperature_K"] == 300
    assert spec["settings"]["timestep_fs"] == DEFAULT["md"]["settings"]["timestep_fs"]
    msg = bad(lambda c: c["datasets"]["methane"].update(md={"models": ["nope"]}))
    assert "datasets.methane.md.models: unknown model(s) ['nope']" in msg


def test_cli_prints_one_line_error_and_exit_code_2(tmp_path):
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["methane"]["split"]["method"] = "shuffle"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "elmlff", "check-config", str(path)], capture_output=True, text=True
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("elmlff: error:")
    assert "datasets.methane.split.method" in lines[0]
