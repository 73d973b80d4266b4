"""How long Snakemake takes to build the DAG (a dry run) of the default and paper-scale
campaigns and of a cross-fitted one with many base fits. Prints seconds and jobs per second;
a benchmark, not a test. Run from the project root: `make bench`."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*args: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--quiet", "rules", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - t0
    return seconds, int(re.search(r"^total\s+(\d+)$", r.stdout, re.M).group(1))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        cfg["datasets"]["methane"]["split"]["kfold"] = 10
        cfg["run_metas"] = [m for m in cfg["run_metas"] if "insample" not in m]
        kfold = Path(tmp) / "kfold.yaml"
        kfold.write_text(yaml.safe_dump(cfg))
        cases = {
            "default": (),
            "paper": ("--configfile", "config/campaigns/paper.yaml"),
            "10-fold cross-fitting": ("--configfile", str(kfold)),
        }
        for name, args in cases.items():
            s, jobs = dry_run(*args)
            print(
                f"{name:>24s}: {jobs:4d} jobs, DAG in {s:5.2f} s ({jobs / s:6.1f} jobs/s, "
                "snakemake start-up included)"
            )


if __name__ == "__main__":
    main()
