"""Every bad input the project answers, run through the entry point the workflow (or a user)
calls: each must stop with exactly one line ``elmlff: error: <what>; fix: <how>`` and exit
status 2. ``docs/bad_inputs.md`` is generated from these cases and their messages, and the test
fails when the two disagree. Regenerate it after changing a case or a message:

    PYTHONPATH=src python tests/test_bad_inputs.py
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conftest import ROOT, random_frames, write_npz

DOC = ROOT / "docs" / "bad_inputs.md"
UNITS = {"energy": "eV", "length": "angstrom"}
SIZES = {"train": 10, "meta": 4, "val": 3, "test": 3}


@dataclass(frozen=True)
class Case:
    input: str  # the bad input, as a user would describe it
    run: Callable[[Path], list[str]]  # builds files under a folder; returns the CLI arguments


# -- builders -------------------------------------------------------------------------------
def _npz(path: Path, n_frames: int = 20, **extra) -> None:
    write_npz(path, n_frames, **extra)


def _prepare(tmp: Path, fmt: str = "npz", part: str = "a.npz", **spec) -> list[str]:
    """``elmlff prepare`` (the data stage's rule) of one data set under ``tmp/data``."""
    full = {
        "format": fmt,
        "path": str(tmp / "data"),
        "units": UNITS,
        "parts": {part: "pool"},
        "pbc": "auto",
        "split": {"seed": 0, "method": "random", "sizes": SIZES, "kfold": 0},
        **spec,
    }
    out = ["--store", str(tmp / "reference.zarr"), "--split", str(tmp / "split.json")]
    return ["prepare", "--name", "toy", "--spec", json.dumps(full), *out]


def _mlearn(path: Path) -> None:
    """A one-record mlearn file (elemental solid with stress)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    site = {"species": [{"element": "Si", "occu": 1}], "xyz": [0.0, 0.0, 0.0]}
    rec = {
        "structure": {"lattice": {"matrix": np.diag([3.0, 3.0, 3.0]).tolist()}, "sites": [site]},
        "outputs": {"energy": -5.0, "forces": [[0.0, 0.0, 0.0]], "virial_stress": [1] * 6},
    }
    path.write_text(json.dumps([rec]))


def _config(tmp: Path, text: str, alone: bool = True) -> list[str]:
    """``elmlff check-config`` of a config file holding ``text`` (``alone``: a whole config;
    otherwise an overlay over config/config.yaml, as the workflow merges it)."""
    (tmp / "config.yaml").write_text(text)
    return ["check-config", str(tmp / "config.yaml"), *(["--alone"] if alone else [])]


def _small_config(
    tmp: Path,
    family: str = "schnetpack",
    ensemble: str = "[a]",
    base: str = "",
    extra: str = "",
    part: str = "a.npz",
    sizes: dict | None = None,
) -> list[str]:
    """A small valid config (one data set, one base) but for what the arguments change."""
    _npz(tmp / "data" / "a.npz")
    return _config(
        tmp,
        f"""datasets:
  toy:
    format: npz
    path: {tmp / "data"}
    units: {{energy: eV, length: angstrom}}
    parts: {{{part}: pool}}
    split: {{sizes: {sizes or SIZES}}}
bases:
  a: {{family: {family}{base}}}
ensemble: {ensemble}
{extra}""",
    )


def _store(tmp: Path, damage: Callable[[Path], None]) -> list[str]:
    """``elmlff baselines`` (the rule after merge_store) of a store damaged by ``damage``."""
    from elmlff import store
    from elmlff.data import Split

    f = random_frames(n_frames=5, sizes=(3, 5, 2, 4, 1))
    split = Split({"train": [0, 1], "meta": [2], "val": [3], "test": [4]})
    rng = np.random.default_rng(2)
    ds = store.with_bases(
        store.reference_dataset(f, split),
        ["a", "b"],
        rng.normal(size=(2, 5)),
        rng.normal(size=(2, 15, 3)),
        np.zeros((2, 5), bool),
    )
    path = tmp / "predictions.zarr"
    store.write(ds, path)
    split.save(tmp / "split.json")
    damage(path)
    return [
        "baselines",
        *("--store", str(path), "--split", str(tmp / "split.json"), "--dataset", "toy"),
        *("--out", str(tmp / "baselines.json")),
    ]


def _truncate(chunk: Path) -> None:
    chunk.write_bytes(chunk.read_bytes()[:20])


def _extxyz(tmp: Path, nan: bool = False) -> Path:
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = random_frames(n_frames=3, sizes=(3,))
    images = []
    for i, atoms in enumerate(frames.to_atoms()):
        a = frames.atom_index([i])
        for k, m in enumerate(("painn", "nequip")):
            atoms.arrays[f"forces_{m}"] = frames.forces[a] + 0.01 * (k + 1)
        if nan and i == 1:
            atoms.arrays["forces_nequip"][2, 0] = np.nan
        atoms.calc = SinglePointCalculator(atoms, forces=frames.forces[a])
        images.append(atoms)
    write(tmp / "frames.extxyz", images, format="extxyz")
    return tmp / "frames.extxyz"


def _uq_score(tmp: Path, *args: str, nan: bool = False) -> list[str]:
    path = _extxyz(tmp, nan)
    return ["uq", "score", str(path), "--out", str(tmp / "u.csv"), *args]


def _deepmd_empty_type_raw(tmp: Path) -> list[str]:
    root = tmp / "data" / "sys"
    (root / "set.000").mkdir(parents=True)
    (root / "type.raw").write_text("")
    (root / "type_map.raw").write_text("H\n")
    return _prepare(tmp, fmt="deepmd", part="sys")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


CASES: list[Case] = [
    # data (elmlff prepare, the prepare_dataset rule)
    Case(
        "periodic data set (`pbc: true`) whose frames have no cell",
        lambda t: (_npz(t / "data" / "a.npz"), _prepare(t, pbc=True))[1],
    ),
    Case(
        "a degenerate (flat) cell",
        lambda t: (
            _npz(t / "data" / "a.npz", cell=np.array([[9.0, 0, 0], [0, 9, 0], [9, 9, 0]])),
            _prepare(t),
        )[1],
    ),
    Case(
        "a part `file@index.csv` whose index file lists frames the file does not have",
        lambda t: (
            _npz(t / "data" / "a.npz"),
            (t / "data" / "i.csv").write_text("3\n25\n"),
            _prepare(t, part="a.npz@i.csv"),
        )[2],
    ),
    Case(
        "a downloaded archive whose sha256 is not the configured one",
        lambda t: (
            (t / "a.tar").write_bytes(b"not the archive"),
            [
                "download",
                "--spec",
                json.dumps({"url": (t / "a.tar").as_uri(), "sha256": "0" * 64}),
                "--out",
                str(t / "data"),
            ],
        )[1],
    ),
    Case(
        "`split.sizes` fractions summing to more than 1",
        lambda t: (
            _npz(t / "data" / "a.npz"),
            _prepare(t, split={"sizes": {"train": 0.7, "meta": 0.3, "val": 0.2, "test": 0.1}}),
        )[1],
    ),
    Case(
        "`split.sizes` counts above the pool",
        lambda t: (
            _npz(t / "data" / "a.npz"),
            _prepare(t, split={"sizes": {"train": 15, "meta": 4, "val": 3, "test": 3}}),
        )[1],
    ),
    Case(
        "an empty (0-byte) npz file",
        lambda t: (_write(t / "data" / "a.npz", b""), _prepare(t))[1],
    ),
    Case(
        "an npz file holding no frames",
        lambda t: (_npz(t / "data" / "a.npz", n_frames=0), _prepare(t))[1],
    ),
    Case(
        "an npz array of text where numbers belong",
        lambda t: (_npz(t / "data" / "a.npz", z=np.array(["H", "H"])), _prepare(t))[1],
    ),
    Case(
        "an unparsable structure file (`format: ase`)",
        lambda t: (
            _write(t / "data" / "a.extxyz", b"not a structure\n"),
            _prepare(t, fmt="ase", part="a.extxyz"),
        )[1],
    ),
    Case("an empty DeePMD `type.raw`", _deepmd_empty_type_raw),
    Case(
        "a data set `path` that does not exist",
        lambda t: _prepare(t, path=str(t / "nowhere")),
    ),
    Case(
        "an unknown data `format`",
        lambda t: (_npz(t / "data" / "a.npz"), _prepare(t, fmt="xyzzy"))[1],
    ),
    Case(
        "an mlearn file without its declared stress unit",
        lambda t: (_mlearn(t / "data" / "a.json"), _prepare(t, fmt="mlearn", part="a.json"))[1],
    ),
    Case(
        "a stress unit declared for a format without stress",
        lambda t: (
            _npz(t / "data" / "a.npz"),
            _prepare(t, units={**UNITS, "stress": "kbar"}),
        )[1],
    ),
    # config (elmlff check-config; the workflow runs the same checks)
    Case(
        "a key given twice in a YAML config",
        lambda t: _config(t, "run: [methane]\nensemble: [a]\nrun: [methane]\n"),
    ),
    Case(
        "a YAML syntax error",
        lambda t: _config(t, "datasets:\n  methane: {path: data\nrun: [methane]\n"),
    ),
    Case(
        "an unknown base name in `ensemble`",
        lambda t: _small_config(t, ensemble="[a, no_such_base]"),
    ),
    Case("an unknown model `family`", lambda t: _small_config(t, family="nope")),
    Case(
        "a pretrained model its wheel does not ship (it would download)",
        lambda t: _small_config(t, family="sevenn", base=", params: {model: 7net-omat}"),
    ),
    Case(
        "a typo in a base's `params` (`n_rbff`)",
        lambda t: _small_config(t, base=", params: {n_rbff: 10}"),
    ),
    Case(
        'a wrong type in a base\'s `training` (`max_epochs: "two"`)',
        lambda t: _small_config(t, base=", training: {max_epochs: two}"),
    ),
    Case(
        "a wrong type in the shared `training` block",
        lambda t: _small_config(t, extra="training: {lr: fast}\n"),
    ),
    Case(
        "a `parts` name that is not under the data path",
        lambda t: _small_config(t, part="b.npz"),
    ),
    Case(
        "split fractions of the pool summing to more than 1",
        lambda t: _small_config(t, sizes={"meta": 0.5, "val": 0.4, "test": 0.3}),
    ),
    Case(
        "`uncertainty.rmse` naming a model that is not a base",
        lambda t: _small_config(t, extra="uncertainty: {rmse: {mace: 0.02}}\n"),
    ),
    Case(
        "a subset size larger than the ensemble",
        lambda t: _small_config(
            t,
            extra="metas: {m: {kind: direct}}\nrun_metas: [m]\n"
            "subsets: {metas: [m], select: [2]}\n",
        ),
    ),
    Case(
        "the in-sample ablations with K-fold cross-fitting",
        lambda t: _config(t, "datasets: {methane: {split: {kfold: 3}}}\n", alone=False),
    ),
    Case(
        'a meta-model parameter of the wrong type (`blend: "no"`)',
        lambda t: _config(
            t, "metas: {ensemble_direct: {kind: direct, params: {blend: 'no'}}}\n", alone=False
        ),
    ),
    Case(
        "`split.sizes.train: 0` (pretrained bases only) with a base that trains",
        lambda t: _small_config(t, sizes={"train": 0, "meta": 0.5, "val": 0.2}),
    ),
    Case(
        "`evaluation.stress_from` naming a model that is not a base",
        lambda t: _config(t, "evaluation: {stress_from: ensemble_direct}\n", alone=False),
    ),
    Case(
        "an equation-of-state element with no WIEN2k-PBE reference",
        lambda t: _config(
            t, "eos: {datasets: [methane], models: [mean], elements: [Xx]}\n", alone=False
        ),
    ),
    Case(
        "an overlay config (over config/config.yaml) with an unknown base in `ensemble`",
        lambda t: _config(t, "ensemble: [painn, no_such_base]\n", alone=False),
    ),
    # the prediction store (read by every stage after merge_store)
    Case(
        "`predictions.zarr` with a chunk file deleted",
        lambda t: _store(t, lambda p: (p / "base_forces" / "0.0.0").unlink()),
    ),
    Case(
        "`predictions.zarr` with a truncated chunk file",
        lambda t: _store(t, lambda p: _truncate(p / "energy" / "0")),
    ),
    Case(
        "`predictions.zarr` without its consolidated metadata",
        lambda t: _store(t, lambda p: (p / ".zmetadata").unlink()),
    ),
    # elmlff uq score
    Case("`uq score`: NaN in a model's forces", lambda t: _uq_score(t, nan=True)),
    Case(
        "`uq score`: `--rmse` naming a model not in the file",
        lambda t: _uq_score(t, "--rmse", "painn=0.01", "nequip=0.02", "mace=0.03"),
    ),
    Case(
        "`uq score`: an RMSE missing for a scored model",
        lambda t: _uq_score(t, "--rmse", "painn=0.01"),
    ),
    Case(
        "`uq score`: `--rmse` not written as MODEL=RMSE",
        lambda t: _uq_score(t, "--rmse", "painn", "0.01"),
    ),
    Case(
        "`uq score`: `--rmse-json` not valid JSON",
        lambda t: (
            _write(t / "rmse.json", b"{painn: 0.01}"),
            _uq_score(t, "--rmse-json", str(t / "rmse.json")),
        )[1],
    ),
    # the torch device of a job (config `device`; checked before anything is read)
    Case("`--device cuda:64`: a GPU that is not there", lambda t: _device_arg(t, "cuda:64")),
    Case("`--device tpu`: not a torch device the project runs on", lambda t: _device_arg(t, "tpu")),
]


def _device_arg(tmp: Path, device: str) -> list[str]:
    """predict-meta on paths that do not exist: the device is checked first."""
    args = ["predict-meta", "--model", str(tmp / "m"), "--store", str(tmp / "s.zarr")]
    args += ["--split", str(tmp / "split.json"), "--out", str(tmp / "p.npz")]
    return [*args, "--device", device]


# -- running ----------------------------------------------------------------------------------
def run_case(case: Case, tmp: Path) -> tuple[str, str]:
    """(command, message) of a case: the one error line, with ``tmp`` written as $TMP."""
    from elmlff.cli import main

    tmp.mkdir(parents=True, exist_ok=True)
    argv = case.run(tmp)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    lines = [x for x in err.getvalue().splitlines() if x.startswith("elmlff: error:")]
    assert rc == 2, f"{case.input}: exit status {rc}, stderr {err.getvalue()!r}"
    assert "Traceback" not in err.getvalue(), f"{case.input}: {err.getvalue()}"
    assert len(lines) == 1, f"{case.input}: {len(lines)} error lines in {err.getvalue()!r}"
    assert "; fix: " in lines[0], f"{case.input}: no fix in {lines[0]!r}"
    msg = lines[0]
    for p in sorted({str(tmp.resolve()), str(tmp)}, key=len, reverse=True):
        msg = msg.replace(p, "$TMP")
    msg = msg.replace(str(ROOT.resolve()) + "/", "").replace(str(ROOT) + "/", "")
    command = "elmlff " + " ".join(argv[:2] if argv[0] == "uq" else argv[:1])
    return command, msg


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(tmp: Path) -> str:
    """docs/bad_inputs.md: every case with the command it goes through and its message."""
    rows = []
    for i, case in enumerate(CASES):
        command, msg = run_case(case, tmp / f"case{i:02d}")
        rows.append(f"| {_cell(case.input)} | `{command}` | `` {_cell(msg)} `` |")
    head = [
        "# Bad inputs and what elmlff answers",
        "",
        "Every bad input below stops with one line, `elmlff: error: <what>; fix: <how>`, and",
        "exit status 2, before any training where it can be known then. The table is generated",
        "by `tests/test_bad_inputs.py` from the real entry points (the test fails when the table",
        "and the messages disagree); `$TMP` stands for the folder the test ran in. Regenerate:",
        "",
        "    PYTHONPATH=src python tests/test_bad_inputs.py",
        "",
        "| Bad input | Entry point | Message |",
        "|---|---|---|",
    ]
    return "\n".join([*head, *rows]) + "\n"


def test_every_bad_input_is_one_line_and_docs_list_it(tmp_path):
    want = table(tmp_path)
    have = DOC.read_text() if DOC.exists() else ""
    assert have == want, (
        "docs/bad_inputs.md is out of date: run `PYTHONPATH=src python tests/test_bad_inputs.py`"
        "\n" + "\n".join(x for x in want.splitlines() if x not in have.splitlines())
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        text = table(Path(d))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"{len(CASES)} bad inputs -> {DOC}", file=sys.stderr)
