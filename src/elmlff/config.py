"""Config validation against ``workflow/schemas/config.schema.yaml`` with defaults filled in,
plus the cross-checks a schema cannot express. Errors are one line naming the key and the fix."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
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
    if study.get("method") == "amortized":
        kinds = {m: config["metas"][m].get("kind") for m in study.get("metas", [])}
        other = sorted(m for m, k in kinds.items() if k != "direct")
        if other:
            raise ElmlffError(
                f"{source}: subsets.method amortized trains Ensemble-direct only, but "
                f"subsets.metas lists {other}",
                "list only direct metas under subsets.metas, or use `subsets.method: dedicated`",
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

    known = set(bases) | set(BASELINES) | set(config.get("metas", {})) | {"best_meta"}
    for where, md in [("md", config.get("md", {}))] + [
        (f"datasets.{d}.md", spec["md"]) for d, spec in config["datasets"].items() if "md" in spec
    ]:
        unknown = [m for m in md.get("models", []) if m not in known]
        if unknown:
            raise ElmlffError(
                f"{source}: {where}.models: unknown model(s) {unknown}",
                "name bases, baselines (best_base, mean, weighted_mean, linear_stacking), metas "
                "or best_meta",
            )
    run = config.get("run") or list(config["datasets"])
    unknown = [d for d in run if d not in config["datasets"]]
    if unknown:
        raise ElmlffError(
            f"{source}: run: unknown data set(s) {unknown}",
            f"define them under `datasets` or use one of {sorted(config['datasets'])}",
        )
    config["run"] = run
    _check_bases(config, source)
    _check_datasets(config, source)
    _check_study_and_uncertainty(config, source)
    _check_downloads_and_table1(config, source)
    _check_materials(config, source)


def _check_bases(config: MutableMapping[str, Any], source: str) -> None:
    """Each base's params and own training against its family's record; the shared training
    block's keys against every family's (typos, wrong types)."""
    from elmlff.bases import COMMON_TRAINING, FAMILIES, check_spec, type_ok

    for name, base in config["bases"].items():
        check_spec(
            name,
            base["family"],
            dict(base.get("params", {})),
            dict(base.get("training", {})),
            f"{source}: bases.{name}",
        )
    for d, spec in config["datasets"].items():
        for name, own in spec.get("bases", {}).items():
            if name not in config["bases"]:
                raise ElmlffError(
                    f"{source}: datasets.{d}.bases: no base {name!r}",
                    f"set bases that `bases` defines: {sorted(config['bases'])}",
                )
            base = config["bases"][name]
            check_spec(
                name,
                base["family"],
                {**base.get("params", {}), **own.get("params", {})},
                {**base.get("training", {}), **own.get("training", {})},
                f"{source}: datasets.{d}.bases.{name}",
            )
    known = {**{k: t() for k, t in COMMON_TRAINING.items()}}
    for rec in FAMILIES.values():
        known = {**rec.training, **known}
    for key, value in config.get("training", {}).items():
        if key not in known:
            raise ElmlffError(
                f"{source}: training: unknown key {key!r}",
                f"use some of {sorted(known)} (a family's own keys go in its bases' `training`)",
            )
        if not type_ok(value, type(known[key])):
            raise ElmlffError(
                f"{source}: training.{key}: {value!r} is not of type {type(known[key]).__name__}",
                f"give a value of type {type(known[key]).__name__}",
            )


def _check_datasets(config: MutableMapping[str, Any], source: str) -> None:
    """What can be known before reading any frame: the data path and every part exist (relative
    to the directory snakemake runs in) and the split sizes can be drawn from a pool."""
    from elmlff.data.source import missing_parts
    from elmlff.data.split import ROLES, check_sizes

    for d in config["run"]:
        spec = config["datasets"][d]
        root = Path(spec["path"])
        if not root.exists() and spec.get("download"):
            pass  # the download rule makes it; its parts are checked when it is read
        elif not root.exists():
            raise ElmlffError(
                f"{source}: datasets.{d}.path: {root} not found (working directory {Path.cwd()})",
                f"fix `datasets.{d}.path`, run from the project root, or give `download:` "
                "(url, sha256) to fetch the data",
            )
        elif missing := missing_parts(root, list(spec["parts"])):
            have = sorted(x.name for x in root.iterdir()) if root.is_dir() else []
            raise ElmlffError(
                f"{source}: datasets.{d}.parts: {missing} not found under {root}",
                f"name sub-folders or files of {root}: {have[:8]}",
            )
        extra = spec.get("md", {}).get("reference_parts", [])
        if root.exists() and (missing := missing_parts(root, extra)):
            raise ElmlffError(
                f"{source}: datasets.{d}.md.reference_parts: {missing} not found under {root}",
                "name files under the data set's `path` (the same format and units)",
            )
        if spec.get("split", {}).get("sizes", {}).get("train") == 0:
            from elmlff.bases import FAMILIES

            trained = [
                b
                for b in ensemble(config, d)
                if not FAMILIES[config["bases"][b]["family"]].pretrained
            ]
            if trained:
                raise ElmlffError(
                    f"{source}: datasets.{d}.split.sizes.train is 0 but bases {trained} train",
                    "give them training frames, or run only pretrained bases on this data set",
                )
        fixed = {r for r in spec["parts"].values() if r in ROLES}
        try:
            check_sizes(
                spec.get("split", {}).get("sizes", {}), [r for r in ROLES if r not in fixed]
            )
        except ElmlffError as err:
            raise ElmlffError(f"{source}: datasets.{d}.{err.what}", err.fix) from None


def _check_downloads_and_table1(config: MutableMapping[str, Any], source: str) -> None:
    """Data sets sharing a path download it with one spec; Table 1's data sets are run and
    have MD, and its models are trained models or baselines of the campaign."""
    seen: dict[str, tuple[str, Any]] = {}
    for d in config["run"]:
        spec = config["datasets"][d]
        if spec.get("download"):
            first = seen.setdefault(spec["path"], (d, spec["download"]))
            if first[1] != spec["download"]:
                raise ElmlffError(
                    f"{source}: datasets {first[0]} and {d} download into {spec['path']} with "
                    "different `download` specs",
                    "give data sets that share a path the same `download`",
                )
    t1 = config.get("table1")
    if not t1:
        return
    for d in t1["datasets"]:
        if d not in config["run"]:
            raise ElmlffError(
                f"{source}: table1.datasets: {d!r} is not in `run` {config['run']}",
                "list only data sets the campaign runs in table1.datasets",
            )
        if not md_spec(config, d).get("models"):
            raise ElmlffError(
                f"{source}: table1.datasets: {d!r} runs no MD (md.models is empty)",
                "give md.models, or leave the data set out of table1",
            )


def _check_materials(config: MutableMapping[str, Any], source: str) -> None:
    """Table 2 and EOS name run data sets, and models the campaign has; EOS elements are in
    the Delta benchmark; the metas' stress comes from a base or the best base."""
    from elmlff.baselines import BASELINES

    known = set(config["bases"]) | set(BASELINES) | set(config["metas"])
    for block in ("table2", "eos"):
        spec = config.get(block)
        if not spec:
            continue
        for d in spec["datasets"]:
            if d not in config["run"]:
                raise ElmlffError(
                    f"{source}: {block}.datasets: {d!r} is not in `run` {config['run']}",
                    f"list only data sets the campaign runs in {block}.datasets",
                )
        if bad := [m for m in spec["models"] if m not in known]:
            raise ElmlffError(
                f"{source}: {block}.models: unknown {bad}",
                f"name bases, baselines or metas of the config: {sorted(known)}",
            )
    if config.get("eos"):
        from ase.collections import dcdft

        if bad := [e for e in config["eos"]["elements"] if e not in dcdft.data]:
            raise ElmlffError(
                f"{source}: eos.elements: {bad} have no WIEN2k-PBE reference",
                "choose elements of ase.collections.dcdft (the Delta benchmark)",
            )
    sf = config["evaluation"]["stress_from"]
    if sf != "best_base" and sf not in config["bases"]:
        raise ElmlffError(
            f"{source}: evaluation.stress_from: {sf!r} is not a base",
            f"name a base ({sorted(config['bases'])}) or best_base",
        )


def _check_study_and_uncertainty(config: MutableMapping[str, Any], source: str) -> None:
    """Subset sizes against each data set's ensemble; published RMSEs name bases."""
    from elmlff.subsets import choose

    study = config.get("subsets", {})
    for d in config["run"]:
        if study.get("metas"):
            try:
                choose(study.get("select", "all"), requested(config, d))
            except ElmlffError as err:
                raise ElmlffError(f"{source}: subsets.select ({d}): {err.what}", err.fix) from None
    from elmlff.bases import FAMILIES
    from elmlff.meta.params import MetaSpec

    for d in config["run"]:
        kfold = config["datasets"][d].get("split", {}).get("kfold", 0) >= 2
        bases = ensemble(config, d)  # as the workflow runs it (NEP only where GPUMD is)
        flat = [b for b in bases if not FAMILIES[config["bases"][b]["family"]].differentiable]
        for m in config.get("run_metas", []):
            spec = MetaSpec.from_config(m, config["metas"][m])
            if kfold and not spec.out_of_sample:
                raise ElmlffError(
                    f"{source}: run_metas: '{m}' (fit_on {spec.fit_on}) needs one full fit per "
                    f"base, but data set '{d}' cross-fits (split.kfold)",
                    f"drop '{m}' from `run_metas` or set `datasets.{d}.split.kfold: 0`",
                )
            if spec.live_at_inference and flat:
                raise ElmlffError(
                    f"{source}: run_metas: '{m}' (Ensemble-conserv) differentiates through every "
                    f"base, but {flat} in data set '{d}' have no differentiable energy",
                    f"leave {flat} out of that data set's `ensemble`, or run only direct metas",
                )
    names = {m for d in config["run"] for m in requested(config, d)}
    unknown = sorted(set(config.get("uncertainty", {}).get("rmse") or {}) - names)
    if unknown:
        raise ElmlffError(
            f"{source}: uncertainty.rmse: {unknown} are not bases of any ensemble this run trains",
            f"name some of {sorted(names)}",
        )


def merge_configs(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mappings merged key by key (snakemake's ``--configfile``
    over the Snakefile's ``configfile:``)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            merge_configs(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last
    silently). Keys merged in with ``<<: *anchor`` may still be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader refuses it itself
                    continue
                if first is not None:
                    raise _DuplicateKey(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_yaml_map
)


def read_yaml(path: Path | str) -> Any:
    """A YAML (or JSON) file's contents, refusing duplicate keys; errors are one line with the
    file and line."""
    path = Path(path)
    if not path.exists():
        raise ElmlffError(f"config file not found: {path}", "pass an existing config file")
    try:
        with path.open(encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_StrictLoader)  # a SafeLoader subclass
    except _DuplicateKey as err:
        mark = err.problem_mark
        raise ElmlffError(
            f"{path}:{mark.line + 1}: {err.problem}",
            "keep one of them (YAML would silently keep only the last)",
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise ElmlffError(
            f"{where}: YAML syntax error: {what}" + (f" ({context})" if context else ""),
            "correct the YAML at that line (indent with spaces, not tabs; quote values "
            "holding ': ' or '#')",
        ) from None
    except UnicodeDecodeError as err:
        raise ElmlffError(f"{path}: not UTF-8 text ({err.reason})", "save it as UTF-8") from None


def check_config_files(paths: Sequence[Path | str]) -> None:
    """Read each config file strictly (duplicate keys, syntax): the workflow calls this on
    the files snakemake merged (``workflow.configfiles``), which snakemake reads leniently."""
    for path in paths:
        if Path(path).exists():
            read_yaml(path)


#: the campaign every run starts from (the Snakefile's ``configfile:``)
DEFAULT_CONFIG = SCHEMA.parents[2] / "config" / "config.yaml"


def load_config(*paths: Path | str, schema: Path | str = SCHEMA) -> dict[str, Any]:
    """Read config files, each over the ones before (as snakemake merges ``configfile:`` and
    ``--configfile``), and validate the merged config with every cross-check."""
    merged: dict[str, Any] = {}
    for path in paths:
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ElmlffError(
                f"{path}: a config must be a mapping of keys, not a {type(data).__name__}",
                "start the file with top-level keys such as `datasets:` and `bases:`",
            )
        merged = merge_configs(merged, data)
    return dict(validate_config(merged, schema, " + ".join(str(p) for p in paths)))


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


def base_spec(config: MutableMapping[str, Any], name: str, dataset: str | None = None):
    """The :class:`~elmlff.bases.BaseSpec` of a base, training defaults merged in, and the
    data set's own settings of it (``datasets.<dataset>.bases.<name>``) over its own."""
    from elmlff.bases import BaseSpec

    b = config["bases"][name]
    own = config["datasets"][dataset].get("bases", {}).get(name, {}) if dataset else {}
    return BaseSpec(
        name,
        b["family"],
        {**b.get("params", {}), **own.get("params", {})},
        {**config.get("training", {}), **b.get("training", {}), **own.get("training", {})},
    )


def longest_trainings(config: MutableMapping[str, Any], dataset: str) -> set[str]:
    """The data set's bases that train the most optimizer steps (``max_epochs`` over
    ``batch_size``, every base seeing the same training frames): their ``train`` jobs get a
    higher priority, so that on a few cores the longest trainings start first rather than
    last (the default campaign's DeePMD bases: 6,250 steps against 800; started after two
    SchNets, the last of them left a core idle before the store could be merged)."""
    steps = {}
    for m in ensemble(config, dataset):
        t = base_spec(config, m, dataset).training
        if "max_epochs" in t and "batch_size" in t:
            steps[m] = t["max_epochs"] / t["batch_size"]
    top = max(steps.values(), default=None)
    return {m for m, n in steps.items() if n == top} if len(set(steps.values())) > 1 else set()


def meta_spec(config: MutableMapping[str, Any], name: str):
    """The :class:`~elmlff.meta.params.MetaSpec` of a meta-model."""
    from elmlff.meta.params import MetaSpec

    return MetaSpec.from_config(name, config["metas"][name])


def subset_study(config: MutableMapping[str, Any], dataset: str) -> dict[int, list[str]]:
    """Every subset the study reports for a data set, by size k (empty without a study)."""
    from elmlff.subsets import choose

    study = config.get("subsets", {})
    if not study.get("metas"):
        return {}
    return choose(study.get("select", "all"), ensemble(config, dataset))


def amortized_study(config: MutableMapping[str, Any]) -> bool:
    """Whether the subset study uses the amortized method (one model over random subsets)."""
    study = config.get("subsets", {})
    return bool(study.get("metas")) and study.get("method", "dedicated") == "amortized"


def subset_groups(config: MutableMapping[str, Any], dataset: str) -> dict[int, list[str]]:
    """The subsets that get dedicated models, by size k: every subset of the study, or under
    the amortized method its calibration sample (``calibrate`` per k, seeded)."""
    from elmlff.subsets import sample

    groups = subset_study(config, dataset)
    if not amortized_study(config):
        return groups
    per_k = int(config["subsets"].get("calibrate", 3))
    return sample(groups, per_k, int(config["datasets"][dataset].get("split", {}).get("seed", 0)))


def reuses_full_set(config: MutableMapping[str, Any], dataset: str, meta: str) -> bool:
    """Whether the subset study takes the dedicated model of the full set of bases (``all``)
    from ``train_meta``: the campaign trains that meta on every base anyway, with the same
    spec, seed and frames (the same model)."""
    from elmlff.subsets import ALL

    study = subset_groups(config, dataset)
    return meta in config.get("run_metas", []) and any(ALL in names for names in study.values())


def dedicated_subsets(
    config: MutableMapping[str, Any], dataset: str, meta: str
) -> dict[int, list[str]]:
    """The subsets the study's ``train_subsets`` jobs train for ``meta``, by size k:
    :func:`subset_groups` without the full set where :func:`reuses_full_set`."""
    from elmlff.subsets import ALL

    groups = subset_groups(config, dataset)
    if not reuses_full_set(config, dataset, meta):
        return groups
    out = {k: [n for n in names if n != ALL] for k, names in groups.items()}
    return {k: names for k, names in out.items() if names}


def md_spec(config: MutableMapping[str, Any], dataset: str) -> dict[str, Any]:
    """A data set's MD protocol: the top-level ``md`` with the data set's ``md`` over it."""
    top = dict(config.get("md", {}))
    own = dict(config["datasets"][dataset].get("md", {}))
    settings = {**top.get("settings", {}), **own.pop("settings", {})}
    return {**top, **own, "settings": settings}
