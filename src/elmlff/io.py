"""Atomic writes (a killed job never leaves a file or store that looks complete), and
subprocesses whose output streams into the rule's log."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``dest`` (file or directory).

    On error the temporary is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the writer's PID in the name: a later run removes it only once that process is gone
    prefix = f".{dest.name}.pid{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=dest.parent))
    target = tmp / dest.name
    try:
        yield target
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(target, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(dest: Path | str, text: str) -> None:
    """Write text to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def run_streaming(cmd: list[str], cwd: Path, env: dict[str, str], prefix: str = "") -> str | None:
    """Run a command, echoing its output line by line (progress in the rule's log); return
    None on success, else its last three lines joined on one line."""
    last: deque[str] = deque(maxlen=3)
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                print(prefix + line, flush=True)
                last.append(line)
    return None if proc.returncode == 0 else " | ".join(last)


def read_result_csv(path: Path | str, rule: str):
    """A CSV under results/ as a DataFrame, or a one-line error naming the rule that makes it."""
    import pandas as pd

    from elmlff.errors import ElmlffError

    if not Path(path).exists():
        raise ElmlffError(f"{path} not found", f"run the {rule} rule first")
    return pd.read_csv(path)
