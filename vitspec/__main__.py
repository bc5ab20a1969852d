"""``python -m vitspec ...`` is the ``vitspec`` command (see :mod:`vitspec.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
