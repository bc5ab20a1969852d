"""``python -m conformance [TARGET] [options]``: see :mod:`conformance.cli`."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
