"""conformance: checking third-party ViTs against the executable spec (see docs/architecture.md).

    from conformance import check, build_target
    model, name = build_target("timm:vit_tiny_patch16_224", seed=0)
    report = check(model)                  # float64, CPU, batch 2, forward + gradients
    print(report.to_markdown())

Exports (imported lazily: the pytest plugin lives in this package and is loaded by every
pytest run, so importing ``conformance`` must not pull in torch or third-party libraries):

- :func:`check` (:mod:`conformance.compare`) and :class:`Report` (:mod:`conformance.report`);
- :func:`detect` (:mod:`conformance.adapters`): the adapter for a model;
- :func:`build_target` (:mod:`conformance.targets`): a model from ``LIBRARY:NAME``;
- :func:`assert_conforms` and :class:`ConformanceError` (:mod:`conformance.assertions`): ``check``
  as an assertion for a user's own tests (docs/pytest.md);
- :func:`compare_models` and :class:`Comparison` (:mod:`conformance.diff`): do two ViTs compute the
  same function; :func:`convert` and :class:`CannotExpress` (:mod:`conformance.conversion`): a ViT
  rebuilt in another library through the spec (docs/diff-convert.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapters import detect
    from .assertions import ConformanceError, assert_conforms
    from .compare import check
    from .conversion import CannotExpress, convert
    from .diff import Comparison, compare_models
    from .report import Report, Status
    from .targets import build_target

__all__ = [
    "CannotExpress",
    "Comparison",
    "ConformanceError",
    "Report",
    "Status",
    "assert_conforms",
    "build_target",
    "check",
    "compare_models",
    "convert",
    "detect",
]

_LAZY = {
    "check": "conformance.compare",
    "Report": "conformance.report",
    "Status": "conformance.report",
    "detect": "conformance.adapters",
    "build_target": "conformance.targets",
    "assert_conforms": "conformance.assertions",
    "ConformanceError": "conformance.assertions",
    "compare_models": "conformance.diff",
    "Comparison": "conformance.diff",
    "convert": "conformance.conversion",
    "CannotExpress": "conformance.conversion",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'conformance' has no attribute {name!r}")
