"""``python -m vitlab``: see :mod:`vitlab.cli`."""

from .cli import main

raise SystemExit(main())
