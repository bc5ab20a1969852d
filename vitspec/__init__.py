"""vitspec: TorchLean's Vision Transformer specification, executable in PyTorch.

- :mod:`vitspec.formulas` / :mod:`vitspec.config`: the output-size formulas, ``ViTConfig``
  and its well-formedness.
- :mod:`vitspec.dims`: the named-dimension shape DSL (``checked``, ``shape_checks``).
- :mod:`vitspec.primitives`: each op's forward with its explicit backward.
- :mod:`vitspec.models`: ``ViTSpec`` (mean pool) and ``ViTClsSpec`` (CLS token).
- :mod:`vitspec.profiles`: third-party numerics as data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import PRESETS, ViTConfig, param_count, preset
from .errors import ConfigError, LoadError, MappingError, ShapeError, VitSpecError
from .formulas import patch_count, patch_out_h, patch_out_w
from .profiles import PROFILES, Profile, get_profile

if TYPE_CHECKING:
    from .dims import Dims, bind_dims, checked, shape_checks, shape_checks_enabled

__version__ = "0.1.0"

# Everything that imports torch is lazy, so `import vitspec` (and `vitspec --help`) stays instant.
_LAZY = {
    "Dims": "vitspec.dims",
    "bind_dims": "vitspec.dims",
    "checked": "vitspec.dims",
    "shape_checks": "vitspec.dims",
    "shape_checks_enabled": "vitspec.dims",
    "ViTSpec": "vitspec.models",
    "ViTClsSpec": "vitspec.models",
    "ViTGrads": "vitspec.models",
    "ViTClsGrads": "vitspec.models",
    "SpecViT": "vitspec.autograd",
}


def __getattr__(name: str) -> Any:
    # Models import lazily so `import vitspec` stays cheap for config/formula users.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitspec' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "PROFILES",
    "ConfigError",
    "Dims",
    "LoadError",
    "MappingError",
    "Profile",
    "ShapeError",
    "SpecViT",
    "ViTClsGrads",
    "ViTClsSpec",
    "ViTConfig",
    "ViTGrads",
    "ViTSpec",
    "VitSpecError",
    "bind_dims",
    "checked",
    "get_profile",
    "param_count",
    "patch_count",
    "patch_out_h",
    "patch_out_w",
    "preset",
    "shape_checks",
    "shape_checks_enabled",
]
