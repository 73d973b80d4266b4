"""One exception type whose message is a single line naming the thing and the fix."""

from __future__ import annotations


class ElmlffError(ValueError):
    """Bad input or state. ``str(err)`` is one line: what is wrong, where, and how to fix it."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what, self.fix = what, fix
        msg = what if fix is None else f"{what}; fix: {fix}"
        super().__init__(" ".join(msg.split()))
