from elmlff.cli import main

raise SystemExit(main())
