"""``python -m elmlff``: the command line of :mod:`elmlff.cli`."""

from elmlff.cli import main

raise SystemExit(main())
