"""``python -m fastmc.cli ...``: the same as ``fastmc ...``."""

from fastmc.cli import main

raise SystemExit(main())
