"""Where a data set's frames come from: its parts on disk (a part may pick frames of a file by
an index file, as the rMD17 archive's splits do) and, for a user who has only the project, a
download of the published archive that is verified by its checksum before anything is
extracted.

Part syntax (keys of ``datasets.<name>.parts``, relative to ``path``)::

    rmd17_ethanol_train_01.npz: pool                                    # a whole file
    npz_data/rmd17_ethanol.npz@splits/index_train_01.csv: pool          # the frames it lists

An index file holds 0-based frame numbers, one per line (the rMD17 archive's ``splits/``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from elmlff.data.frames import Frames
from elmlff.data.readers import read
from elmlff.errors import ElmlffError
from elmlff.log import log

SELECT = "@"


def part_files(part: str) -> tuple[str, str | None]:
    """(data file, index file or None) of a part key (``file@index.csv``)."""
    file, _, index = part.partition(SELECT)
    return file, (index or None)


def missing_parts(root: Path, parts: Sequence[str]) -> list[str]:
    """The files the parts name (data and index files) that are not under ``root``."""
    out = []
    for part in parts:
        for f in part_files(part):
            if f is not None and f != "." and not (root / f).exists():
                out.append(f)
    return out


def read_index(path: Path, n_frames: int) -> np.ndarray:
    """0-based frame numbers (one per line) of an index file, checked against ``n_frames``."""
    try:
        idx = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise ElmlffError(
            f"{path}: not an index file ({str(exc).splitlines()[0]})",
            "give one 0-based frame number per line, as the rMD17 archive's splits/",
        ) from None
    if idx.ndim != 1:
        raise ElmlffError(
            f"{path}: {idx.shape[1]} columns, not one frame number per line",
            "give one 0-based frame number per line, as the rMD17 archive's splits/",
        )
    if idx.size == 0:
        raise ElmlffError(f"{path}: no frame numbers", "give one 0-based frame number per line")
    bad = idx[(idx < 0) | (idx >= n_frames)]
    if bad.size:
        raise ElmlffError(
            f"{path}: frame numbers {bad[:5].tolist()} outside the file's {n_frames} frames",
            "pair each index file with the data file it was made for",
        )
    if len(np.unique(idx)) != len(idx):
        raise ElmlffError(f"{path}: repeated frame numbers", "list each frame once")
    return idx


def load_dataset(name: str, spec: Mapping[str, Any]) -> tuple[Frames, np.ndarray]:
    """All frames of a data set's parts, and each frame's part role (pool or a fixed role)."""
    root = Path(spec["path"])
    if not root.exists():
        raise ElmlffError(
            f"data set '{name}': path {root} not found",
            f"fix `datasets.{name}.path` in the config (relative to the "
            "directory snakemake runs in)",
        )
    parts, roles = [], []
    for part, role in spec["parts"].items():
        missing = missing_parts(root, [part])
        if missing:
            raise ElmlffError(
                f"data set '{name}': part {part}: {missing} not found under {root}",
                f"fix `datasets.{name}.parts` (sub-folders or files under {root})",
            )
        file, index = part_files(part)
        path = root if file == "." else root / file
        f = read(
            spec["format"],
            path,
            energy_unit=spec["units"]["energy"],
            length_unit=spec["units"]["length"],
            stress_unit=spec["units"].get("stress"),
            pbc=spec.get("pbc", "auto"),
            part=part,
        )
        if index is not None:  # the frames an index file lists (the rMD17 archive's splits)
            f = f.subset(read_index(root / index, len(f)))
        log(f"read {len(f)} frames from {path} ({spec['format']}, role {role})")
        parts.append(f)
        roles += [role] * len(f)
    return Frames.concatenate(parts, name=name), np.array(roles)


# -- download -----------------------------------------------------------------------------
def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(spec: Mapping[str, Any], out: Path, timeout: float = 60.0) -> list[str]:
    """Fetch ``spec['url']`` once, verify its ``sha256``, and extract the members matching
    ``spec['members']`` (globs; default all) into ``out``, the first ``strip_components``
    path components removed. Returns the files extracted.

    Nothing that looks complete is left on failure: the archive goes to a temporary file and
    the members to a temporary directory beside ``out``, renamed to ``out`` only after the
    checksum matched and every member was extracted."""
    out = Path(out)
    if out.exists():
        raise ElmlffError(f"{out} exists already", f"remove {out} to download it again")
    url, want = str(spec["url"]), str(spec["sha256"]).lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.download.", dir=out.parent))
    try:
        archive = tmp / "archive"
        log(f"downloading {url}")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(archive, "wb") as fh:
                shutil.copyfileobj(r, fh, 1 << 20)
        except (OSError, ValueError, http.client.HTTPException) as exc:  # incl. a bad URL
            raise ElmlffError(
                f"download of {url} failed ({exc})",
                "check the URL and the network, or download it yourself and set the data "
                "set's `path` to the extracted folder",
            ) from None
        got = sha256(archive)
        if got != want:
            raise ElmlffError(
                f"{url}: checksum mismatch (sha256 {got}, expected {want})",
                "check `download.sha256` in the config against the publisher's, or fetch the "
                "archive again",
            )
        files = _extract(archive, tmp / "x", spec.get("members", ["*"]), spec)
        os.replace(tmp / "x", out)
        log(f"extracted {len(files)} files of {url} into {out}")
        return files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(archive: Path, dest: Path, members: Sequence[str], spec: Mapping[str, Any]) -> list:
    strip = int(spec.get("strip_components", 0))
    dest.mkdir()
    picked: list[str] = []

    def target(name: str) -> Path | None:
        parts = Path(name).parts[strip:]
        if not parts or ".." in parts or Path(name).is_absolute():
            return None
        rel = "/".join(parts)
        return dest / rel if any(fnmatch(rel, m) for m in members) else None

    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                t = target(m.name)
                if t is None or not m.isfile():
                    continue
                t.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(t, "wb") as fh:
                    shutil.copyfileobj(src, fh)
                picked.append(str(t.relative_to(dest)))
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                t = target(m.filename)
                if t is None or m.is_dir():
                    continue
                t.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(t, "wb") as fh:
                    shutil.copyfileobj(src, fh)
                picked.append(str(t.relative_to(dest)))
    else:
        raise ElmlffError(f"{archive}: neither a tar nor a zip archive", "check `download.url`")
    if not picked:
        raise ElmlffError(
            f"no member of the archive matches {list(members)} (strip_components {strip})",
            "fix `download.members` / `download.strip_components`",
        )
    return sorted(picked)
