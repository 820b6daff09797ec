"""``python -m sfu``: the same as the ``sfu`` console script."""

from sfu.app.cli import main

raise SystemExit(main())
