"""Data sources: parts that pick frames by an index file (the rMD17 archive's layout), and the
download of a published archive, verified by its checksum, against a server on 127.0.0.1 only."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import units as _u

from elmlff.data.source import download, load_dataset
from elmlff.errors import ElmlffError

from conftest import ROOT

KCAL_MOL_TO_EV = _u.kcal / _u.mol

RMD17 = ROOT.parent / "shared" / "data" / "rmd17"


def _toy_rmd17(n: int = 30) -> dict[str, np.ndarray]:
    """rMD17-like arrays of a 3-atom molecule: uint8 charges, kcal/mol labels, old_* decoys."""
    rng = np.random.default_rng(1)
    coords = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [-0.3, 1.0, 0.0]]) + rng.normal(
        scale=0.05, size=(n, 3, 3)
    )
    return {
        "nuclear_charges": np.array([6, 1, 1], dtype=np.uint8),
        "coords": coords,
        "energies": -1000.0 + rng.normal(size=n),
        "forces": rng.normal(size=(n, 3, 3)),
        "old_indices": np.arange(n) * 7,
        "old_energies": np.full(n, 123.0),
        "old_forces": np.full((n, 3, 3), 9.0),
    }


def _archive(path: Path, arrays: dict, train: np.ndarray, test: np.ndarray) -> Path:
    """A tar.bz2 laid out as the published rMD17 archive (one top folder, npz_data/, splits/)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    members = {
        "rmd17/npz_data/rmd17_toy.npz": buf.getvalue(),
        "rmd17/splits/index_train_01.csv": "\n".join(map(str, train)).encode() + b"\n",
        "rmd17/splits/index_test_01.csv": "\n".join(map(str, test)).encode() + b"\n",
        "rmd17/readme.txt": b"not needed by the campaign\n",
    }
    with tarfile.open(path, "w:bz2") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def served(tmp_path):
    """(URL of a toy rMD17 archive on 127.0.0.1, its sha256, the arrays, train and test idx)."""
    arrays = _toy_rmd17()
    rng = np.random.default_rng(2)
    perm = rng.permutation(30)
    train, test = np.sort(perm[:20]), np.sort(perm[20:])
    www = tmp_path / "www"
    www.mkdir()
    arc = _archive(www / "rmd17.tar.bz2", arrays, train, test)
    handler = functools.partial(
        type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
        directory=str(www),
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/rmd17.tar.bz2"
        yield url, hashlib.sha256(arc.read_bytes()).hexdigest(), arrays, train, test
    finally:
        server.shutdown()


SPEC = {
    "format": "rmd17",
    "units": {"energy": "kcal/mol", "length": "angstrom"},
    "parts": {
        "npz_data/rmd17_toy.npz@splits/index_train_01.csv": "pool",
        "npz_data/rmd17_toy.npz@splits/index_test_01.csv": "test",
    },
}


def test_download_verifies_extracts_what_is_asked_and_reads_the_archive_layout(served, tmp_path):
    url, sha, arrays, train, test = served
    out = tmp_path / "data" / "rmd17"
    spec = {"url": url, "sha256": sha, "strip_components": 1}
    spec["members"] = ["npz_data/*", "splits/*"]
    files = download(spec, out)
    assert files == [
        "npz_data/rmd17_toy.npz",
        "splits/index_test_01.csv",
        "splits/index_train_01.csv",
    ]
    assert not (out / "readme.txt").exists()
    frames, roles = load_dataset("toy", {**SPEC, "path": str(out)})
    assert list(roles) == ["pool"] * 20 + ["test"] * 10
    # the frames the index files list, in their order, kcal/mol -> eV once, never old_*
    want = np.concatenate([train, test])
    np.testing.assert_allclose(frames.energy, arrays["energies"][want] * KCAL_MOL_TO_EV)
    np.testing.assert_allclose(
        frames.forces.reshape(30, 3, 3), arrays["forces"][want] * KCAL_MOL_TO_EV
    )
    assert frames.numbers.dtype.kind == "i" and set(frames.numbers) == {1, 6}
    with pytest.raises(ElmlffError, match="exists already"):
        download(spec, out)


def test_a_checksum_mismatch_is_one_line_and_leaves_nothing_that_looks_complete(served, tmp_path):
    url, sha, *_ = served
    out = tmp_path / "data" / "rmd17"
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with pytest.raises(ElmlffError, match="checksum mismatch") as err:
        download({"url": url, "sha256": wrong}, out)
    assert "\n" not in str(err.value)
    assert not out.exists() and list(out.parent.iterdir()) == []  # no temporary left either
    with pytest.raises(ElmlffError, match=r"download of .* failed"):
        download({"url": url.replace("rmd17.tar", "nothere.tar"), "sha256": sha}, out)
    assert list(out.parent.iterdir()) == []


def test_the_download_rule_fetches_once_and_prepares_the_data_set(served, tmp_path):
    url, sha, *_ = served
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    toy = {**SPEC, "path": "data/rmd17"}
    toy["download"] = {"url": url, "sha256": sha, "strip_components": 1}
    toy["split"] = {"sizes": {"train": 12, "meta": 4, "val": 4}}
    cfg["datasets"] = {"toy": toy}
    cfg["run"] = ["toy"]
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    smk = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    smk += ["--configfile", str(path), "--directory", str(tmp_path), "--cores", "1"]
    r = subprocess.run([*smk, "results/toy/split.json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "download_toy" in r.stderr
    split = __import__("json").loads((tmp_path / "results" / "toy" / "split.json").read_text())
    assert len(split["roles"]["test"]) == 10 and len(split["roles"]["train"]) == 12
    r = subprocess.run([*smk, "-n", "results/toy/split.json"], capture_output=True, text=True)
    assert "Nothing to be done" in r.stdout + r.stderr  # the data are not fetched again


def test_index_files_that_do_not_fit_their_data_file_are_one_line_errors(tmp_path):
    root = tmp_path / "arc"
    (root / "splits").mkdir(parents=True)
    np.savez(root / "toy.npz", **_toy_rmd17(10))
    (root / "splits" / "big.csv").write_text("3\n12\n")
    (root / "splits" / "twice.csv").write_text("3\n3\n")
    spec = {**SPEC, "path": str(root)}
    (root / "splits" / "cols.csv").write_text("3 4\n5 6\n")
    cases = (("big", r"frame numbers \[12\] outside"), ("twice", "repeated"), ("cols", "columns"))
    for index, match in cases:
        spec["parts"] = {f"toy.npz@splits/{index}.csv": "pool"}
        with pytest.raises(ElmlffError, match=match):
            load_dataset("toy", spec)
    spec["parts"] = {"toy.npz@splits/none.csv": "pool"}
    with pytest.raises(ElmlffError, match=r"\['splits/none.csv'\] not found"):
        load_dataset("toy", spec)


@pytest.mark.skipif(not RMD17.exists(), reason="needs ../shared/data/rmd17")
def test_per_split_files_on_disk_read_as_a_pool_and_a_test_part():
    spec = {
        "format": "rmd17",
        "path": str(RMD17),
        "units": {"energy": "kcal/mol", "length": "angstrom"},
        "parts": {"rmd17_ethanol_train_01.npz": "pool", "rmd17_ethanol_test_01.npz": "test"},
    }
    frames, roles = load_dataset("ethanol", spec)
    assert len(frames) == 2000 and (roles == "pool").sum() == 1000
    assert set(frames.n_atoms) == {9} and sorted(set(frames.numbers)) == [1, 6, 8]
    raw = np.load(RMD17 / "rmd17_ethanol_train_01.npz")
    np.testing.assert_allclose(frames.energy[:1000], raw["energies"] * KCAL_MOL_TO_EV)


@pytest.mark.skipif(not RMD17.exists(), reason="needs ../shared/data/rmd17")
def test_md17_manifests_train_on_at_most_one_split_and_never_on_its_test_frames(
    tmp_path, monkeypatch
):
    """The MD17 campaign's data stage as the workflow runs it: every frame a base or a meta
    learns from, or is chosen on, is one of the split's 1,000 training frames (at most 1,000 of
    them), the test frames are the split's own 1,000, and no test frame is a training frame of
    the original trajectory (rMD17's old_indices are disjoint)."""
    import json

    from elmlff.config import load_config
    from elmlff.pipeline import prepare

    monkeypatch.chdir(ROOT)  # the configs' data paths are relative to the project root
    cfg = load_config(
        ROOT / "config" / "config.yaml", ROOT / "config" / "campaigns" / "md17_laptop.yaml"
    )
    for mol in cfg["run"]:
        spec = {**cfg["datasets"][mol], "path": str(RMD17)}
        prepare(mol, spec, tmp_path / f"{mol}.zarr", tmp_path / f"{mol}.json")
        split = json.loads((tmp_path / f"{mol}.json").read_text())
        source = split["source"]
        learn = [i for r in ("train", "meta", "val") for i in split["roles"][r]]
        assert len(learn) <= 1000 and len(split["roles"]["train"]) <= 1000
        assert {source[i][0] for i in learn} == {f"rmd17_{mol}_train_01.npz"}
        assert {source[i][0] for i in split["roles"]["test"]} == {f"rmd17_{mol}_test_01.npz"}
        assert len(split["roles"]["test"]) == 1000
        old = {
            part: np.load(RMD17 / f"rmd17_{mol}_{part}_01.npz")["old_indices"]
            for part in ("train", "test")
        }
        seen = {int(old["train"][source[i][1]]) for i in learn}
        assert not seen & {int(x) for x in old["test"]}
