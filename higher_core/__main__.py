"""``python -m higher_core plugins``: see :mod:`higher_core._cli`."""

from higher_core._cli import main

raise SystemExit(main())
