"""Helpers the Snakefile calls at parse time."""

from __future__ import annotations

import os
import sys
from pathlib import Path


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
