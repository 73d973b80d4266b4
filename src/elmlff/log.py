"""Progress lines of every stage: one format, flushed at once (rules send them to ``logs/``)."""

from __future__ import annotations

import sys
import time


def log(msg: str) -> None:
    """Print ``msg`` with a time stamp (``[elmlff HH:MM:SS] msg``)."""
    print(f"[elmlff {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def warn(msg: str) -> None:
    """One line ``elmlff: warning: msg`` on stderr (the rule's log holds both streams)."""
    print(f"elmlff: warning: {msg}", file=sys.stderr, flush=True)
