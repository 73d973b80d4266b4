"""The layout of ``results/``: every path the workflow writes is made here and nowhere else.

:class:`DatasetLayout` names the files of one data set (``results/{dataset}/``) and of its
logs (``logs/{dataset}/``); :data:`CAMPAIGN` the campaign-wide ones. The Snakemake rules build
their patterns from the same methods (``DatasetLayout("{dataset}").base_model("{model}",
"{fit}")`` is the rule's wildcard pattern), and the Python stages, loaders and figures find
what the rules wrote with them, so a path is defined once. ``results/README.md`` describes each
file. Nothing here imports more than the standard library: the Snakefile parses this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from elmlff.errors import ElmlffError

RESULTS = "results"
LOGS = "logs"

#: files inside a subset-study group directory (``subsets/{meta}/k{k}/``)
GROUP_MODELS, GROUP_INFO, GROUP_PREDICTIONS = "models.pt", "info.json", "predictions.npz"
#: the facts every trained base records in its model directory (its checkpoint files are
#: its family's own)
BASE_INFO = "base.json"
#: a trained meta-model's directory: weights with what rebuilds them, and its facts
META_MODEL, META_INFO = "meta.pt", "meta.json"


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of one data set's results. ``dataset`` may be a wildcard (``"{dataset}"``), and so
    may every argument of a method: the result is then the rule's pattern. ``results`` and
    ``logs`` are the folders that hold every data set's results and logs."""

    dataset: str
    results: str = RESULTS
    logs: str = LOGS

    @classmethod
    def of(cls, dataset_dir: Path | str) -> DatasetLayout:
        """The layout of an existing ``results/{dataset}`` directory (wherever it was moved)."""
        d = Path(dataset_dir)
        return cls(d.name, str(d.parent), str(d.parent.parent / LOGS))

    def _p(self, *parts: str) -> str:
        return str(Path(self.results, self.dataset, *parts))

    @property
    def dir(self) -> str:
        return self._p()

    # -- data and bases ------------------------------------------------------------------
    @property
    def reference(self) -> str:
        return self._p("reference.zarr")

    @property
    def split(self) -> str:
        return self._p("split.json")

    def base_model(self, model: str, fit: str) -> str:
        return self._p("bases", model, fit, "model")

    def base_predictions(self, model: str, fit: str) -> str:
        return self._p("bases", model, fit, "predictions.npz")

    @property
    def store(self) -> str:
        return self._p("predictions.zarr")

    # -- meta-models and the subset study ------------------------------------------------
    def meta_model(self, meta: str, subset: str = "all") -> str:
        return self._p("metas", meta, subset, "model")

    def meta_predictions(self, meta: str, subset: str = "all") -> str:
        return self._p("metas", meta, subset, "predictions.npz")

    def subset_group(self, meta: str, k: int | str) -> str:
        return self._p("subsets", meta, f"k{k}")

    def subset_amortized(self, meta: str) -> str:
        """The amortized method's directory: one model over random subsets, every subset's
        predictions (a group directory's files, the model as a meta's ``meta.pt``)."""
        return self._p("subsets", meta, "amortized")

    @property
    def subsets(self) -> str:
        return self._p("subsets.csv")

    @property
    def subsets_calibration(self) -> str:
        return self._p("subsets_calibration.csv")

    # -- evaluation, tables, figures ----------------------------------------------------------
    @property
    def metrics(self) -> str:
        return self._p("metrics.csv")

    @property
    def baselines(self) -> str:
        return self._p("baselines.json")

    @property
    def comparisons(self) -> str:
        return self._p("comparisons.csv")

    @property
    def metrics_by_group(self) -> str:
        """Test metrics and paired comparisons per group of frames (element set)."""
        return self._p("metrics_by_group.csv")

    @property
    def eos(self) -> str:
        """Equations of state per element and model (materials data sets)."""
        return self._p("eos.csv")

    def table(self, name: str) -> str:
        """A Markdown table: ``metrics_table``, ``summary`` or ``md_table``."""
        return self._p(f"{name}.md")

    def table_html(self, name: str) -> str:
        return self._p("report", f"{name}.html")

    def figure(self, name: str) -> str:
        return self._p("figures", f"{name}.png")

    def benchmark(self, job: str) -> str:
        """Snakemake's ``benchmark:`` file of one job (wall time, memory)."""
        return self._p("benchmarks", f"{job}.tsv")

    def benchmarks_present(self) -> list[str]:
        """Every job's ``benchmark:`` file on disk now (for a data set's summed job time)."""
        return sorted(str(p) for p in Path(self._p("benchmarks")).glob("*.tsv"))

    # -- uncertainty ---------------------------------------------------------------------
    @property
    def uncertainty(self) -> str:
        return self._p("uncertainty.csv")

    @property
    def uncertainty_summary(self) -> str:
        return self._p("uncertainty_summary.json")

    @property
    def uncertainty_coverage(self) -> str:
        return self._p("uncertainty_coverage.csv")

    def adversarial(self, ext: str) -> str:
        """The adversarial samples (``extxyz``), their table (``csv``) and summary (``json``)."""
        return self._p("uq", f"adversarial.{ext}")

    @property
    def to_label(self) -> str:
        return self._p("uq", "to_label.extxyz")

    # -- MD --------------------------------------------------------------------------------
    def md_trajectory(self, model: str, replica: int | str) -> str:
        return self._p("md", model, f"replica{replica}.extxyz")

    def md_result(self, model: str, replica: int | str) -> str:
        return self._p("md", model, f"replica{replica}.json")

    def md_trajectories(self, model: str) -> list[Path]:
        """The trajectories of one MD model that exist, by replica."""
        return sorted(Path(self._p("md", model)).glob("replica*.extxyz"))

    @property
    def md_summary(self) -> str:
        return self._p("md_summary.csv")

    # -- logs ----------------------------------------------------------------------------
    def log(self, job: str) -> str:
        return str(Path(self.logs, self.dataset, f"{job}.log"))

    # -- what the rules left: trained models by name -------------------------------------------
    def trained_bases(self, models: Sequence[str]) -> dict[str, dict[str, Path]]:
        """{model: {fit: model directory}} of the trained bases ``models``."""
        out = {}
        for m in models:
            fits = {d.parent.name: d for d in sorted(Path(self._p("bases", m)).glob("*/model"))}
            if not fits:
                raise ElmlffError(
                    f"no trained base '{m}' under {self._p('bases')}", "run the campaign first"
                )
            out[m] = fits
        return out

    def has_base(self, model: str) -> bool:
        return Path(self._p("bases", model)).is_dir()


@dataclass(frozen=True)
class CampaignLayout:
    """Campaign-wide results (over every data set)."""

    results: str = RESULTS
    logs: str = LOGS

    def figure(self, name: str) -> str:
        return str(Path(self.results, "figures", f"{name}.png"))

    def table(self, name: str) -> str:
        """A campaign-wide Markdown table: ``table1`` (the paper's Table 1 over data sets)."""
        return str(Path(self.results, f"{name}.md"))

    def table_html(self, name: str) -> str:
        return str(Path(self.results, "report", f"{name}.html"))

    def log(self, job: str) -> str:
        return str(Path(self.logs, f"{job}.log"))


CAMPAIGN = CampaignLayout()
