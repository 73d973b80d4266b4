"""Config validation against ``workflow/schemas/config.schema.yaml`` with defaults filled in,
plus the cross-checks a schema cannot express. Errors are one line naming the key and the fix."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from elmlff.errors import ElmlffError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(cls: type, root: dict) -> type:
    """A validator class that also fills in ``default`` values (jsonschema's FAQ recipe);
    local ``#/definitions/...`` references are followed to find their defaults."""
    validate_props = cls.VALIDATORS["properties"]

    def deref(sub: dict) -> dict:
        while "$ref" in sub:
            node: Any = root
            for part in sub["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            sub = node
        return sub

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                sub = deref(sub)
                if "default" in sub and prop not in instance:
                    instance[prop] = _copy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


def _copy(x: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(x))


def _where(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def validate_config(
    config: MutableMapping[str, Any], schema: Path | str = SCHEMA, source: str = "config"
) -> MutableMapping[str, Any]:
    """Validate ``config`` in place (defaults filled in); raise :class:`ElmlffError` on the
    first problem."""
    schema_d = yaml.safe_load(Path(schema).read_text())
    validator = _with_defaults(jsonschema.Draft7Validator, schema_d)(schema_d)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        err = errors[0]
        best = jsonschema.exceptions.best_match([err]) or err
        raise ElmlffError(
            f"{source}: {_where(best)}: {best.message}",
            "correct that key (workflow/schemas/config.schema.yaml documents every key)",
        )
    _cross_check(config, source)
    return config


def _cross_check(config: MutableMapping[str, Any], source: str) -> None:
    from elmlff.bases import FAMILIES

    bases = config["bases"]
    for name, base in bases.items():
        if base["family"] not in FAMILIES:
            raise ElmlffError(
                f"{source}: bases.{name}.family: unknown family {base['family']!r}",
                f"use one of {sorted(FAMILIES)}",
            )
    for where, names in [("ensemble", config["ensemble"])] + [
        (f"datasets.{d}.ensemble", spec["ensemble"])
        for d, spec in config["datasets"].items()
        if "ensemble" in spec
    ]:
        unknown = [n for n in names if n not in bases]
        if unknown:
            raise ElmlffError(
                f"{source}: {where}: unknown base name(s) {unknown}",
                f"define them under `bases` or use one of {sorted(bases)}",
            )
    from elmlff.meta.params import MetaSpec

    for name, meta in config.get("metas", {}).items():
        MetaSpec.from_config(name, meta).check(source)
    unknown = [m for m in config.get("run_metas", []) if m not in config.get("metas", {})]
    if unknown:
        raise ElmlffError(
            f"{source}: run_metas: unknown meta-model(s) {unknown}",
            f"define them under `metas` or use one of {sorted(config.get('metas', {}))}",
        )
    study = config.get("subsets", {})
    unknown = [m for m in study.get("metas", []) if m not in config.get("metas", {})]
    if unknown:
        raise ElmlffError(
            f"{source}: subsets.metas: unknown meta-model(s) {unknown}",
            f"define them under `metas` or use one of {sorted(config.get('metas', {}))}",
        )
    select = study.get("select", "all")
    if isinstance(select, list) and select and isinstance(select[0], list):
        unknown = sorted({b for c in select for b in c if b not in bases})
        if unknown:
            raise ElmlffError(
                f"{source}: subsets.select: unknown base name(s) {unknown}",
                "name bases of the ensemble",
            )
    from elmlff.baselines import BASELINES

    known = set(bases) | set(BASELINES) | set(config.get("metas", {}))
    for where, md in [("md", config.get("md", {}))] + [
        (f"datasets.{d}.md", spec["md"]) for d, spec in config["datasets"].items() if "md" in spec
    ]:
        unknown = [m for m in md.get("models", []) if m not in known]
        if unknown:
            raise ElmlffError(
                f"{source}: {where}.models: unknown model(s) {unknown}",
                "name bases, baselines (best_base, mean, weighted_mean, linear_stacking) or metas",
            )
    run = config.get("run") or list(config["datasets"])
    unknown = [d for d in run if d not in config["datasets"]]
    if unknown:
        raise ElmlffError(
            f"{source}: run: unknown data set(s) {unknown}",
            f"define them under `datasets` or use one of {sorted(config['datasets'])}",
        )
    config["run"] = run


def load_config(path: Path | str, schema: Path | str = SCHEMA) -> dict[str, Any]:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.exists():
        raise ElmlffError(f"config file not found: {path}", "pass an existing config file")
    return dict(validate_config(yaml.safe_load(path.read_text()) or {}, schema, str(path)))


def requested(config: MutableMapping[str, Any], dataset: str) -> list[str]:
    """The bases the config asks a data set to train."""
    return list(config["datasets"][dataset].get("ensemble") or config["ensemble"])


def ensemble(config: MutableMapping[str, Any], dataset: str) -> list[str]:
    """The bases a data set trains: those requested whose family can run here."""
    from elmlff.bases import family_available

    return [
        m for m in requested(config, dataset) if family_available(config["bases"][m]["family"])[0]
    ]


def left_out(config: MutableMapping[str, Any]) -> dict[str, str]:
    """{base: why} for requested bases whose family cannot run here (e.g. NEP without GPUMD)."""
    from elmlff.bases import family_available

    out = {}
    for d in config["run"]:
        for m in requested(config, d):
            ok, why = family_available(config["bases"][m]["family"])
            if not ok:
                out[m] = why
    return out


def base_spec(config: MutableMapping[str, Any], name: str):
    """The :class:`~elmlff.bases.BaseSpec` of a base, training defaults merged in."""
    from elmlff.bases import BaseSpec

    b = config["bases"][name]
    return BaseSpec(
        name,
        b["family"],
        dict(b.get("params", {})),
        {**config.get("training", {}), **b.get("training", {})},
    )


def meta_spec(config: MutableMapping[str, Any], name: str):
    """The :class:`~elmlff.meta.params.MetaSpec` of a meta-model."""
    from elmlff.meta.params import MetaSpec

    return MetaSpec.from_config(name, config["metas"][name])


def subset_groups(config: MutableMapping[str, Any], dataset: str) -> dict[int, list[str]]:
    """The subset study's subset names of a data set, by size k (empty without a study)."""
    from elmlff.subsets import choose

    study = config.get("subsets", {})
    if not study.get("metas"):
        return {}
    return choose(study.get("select", "all"), ensemble(config, dataset))


def md_spec(config: MutableMapping[str, Any], dataset: str) -> dict[str, Any]:
    """A data set's MD protocol: the top-level ``md`` with the data set's ``md`` over it."""
    top = dict(config.get("md", {}))
    own = dict(config["datasets"][dataset].get("md", {}))
    settings = {**top.get("settings", {}), **own.pop("settings", {})}
    return {**top, **own, "settings": settings}
