"""Helpers the Snakefile calls at parse time."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from elmlff.layout import RESULTS


def rule_environment(basedir: str | Path) -> None:
    """Make ``python -m elmlff`` in rule shells run this package.

    Locally the python running snakemake (the venv) comes first on PATH; under ``--sdm conda``
    snakemake activates the rule's env, whose python then comes first. The package source goes
    on PYTHONPATH so the conda envs need not install the package itself.
    """
    env = os.environ
    env["PATH"] = os.pathsep.join(
        p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p
    )
    src = str(Path(basedir) / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)


def _alive(pid: int | str) -> bool:
    """Whether process ``pid`` runs: a zombie (killed, not yet reaped by an init that is slow
    to reap orphans) still has its /proc entry but writes nothing more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _live_snakemakes(workdir: Path) -> list[int]:
    """PIDs of other snakemake processes running in ``workdir`` on this machine (this process
    and its parents excluded)."""
    mine = set()
    pid = os.getpid()
    while pid > 1:  # this process and its ancestors
        mine.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) in mine or not _alive(proc.name):
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "snakemake" in cmd and Path(os.readlink(proc / "cwd")) == workdir:
                out.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return out


def resume_after_kill(workdir: Path | str = ".", results: str = RESULTS) -> list[str]:
    """Make "run the same command again" work after snakemake itself was killed (SIGKILL, a
    lost login): with no other snakemake alive in ``workdir``, remove its stale locks
    (``.snakemake/locks``; otherwise every rerun stops until ``--unlock``) and the hidden
    temporary siblings that killed jobs left under ``results/`` (:func:`elmlff.io.atomic_path`
    puts its PID in the name: only those of processes that are gone are removed). Call it
    from the main snakemake process only (a cluster job parses the Snakefile too).
    Incomplete outputs are redone by snakemake itself (``rerun-incomplete``). Returns what
    was removed. Where ``/proc`` is missing (not Linux) nothing is touched."""
    import shutil

    workdir = Path(workdir).resolve()
    if not Path("/proc/self").exists() or _live_snakemakes(workdir):
        return []
    removed = []
    locks = workdir / ".snakemake" / "locks"
    for lock in sorted(locks.glob("*.lock")) if locks.is_dir() else []:
        lock.unlink(missing_ok=True)
        removed.append(str(lock.relative_to(workdir)))
    root = workdir / results
    for tmp in sorted(root.rglob(".*.pid*.tmp")) if root.is_dir() else []:
        m = re.search(r"\.pid(\d+)\.", tmp.name)
        if tmp.is_dir() and m and not _alive(m.group(1)):  # writer gone
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(str(tmp.relative_to(workdir)))
    return removed
