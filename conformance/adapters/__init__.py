"""Adapters: one per library, plus the API to plug in your own (docs/architecture.md, "Adapters").

``detect(model)`` tries the registered adapters in order (user adapters first, then timm,
torchvision, Hugging Face, vit-pytorch) and returns the first whose ``matches`` accepts the
model. Matching is by class only, without importing any third-party library, so detecting
a timm model never imports transformers. ``describe()`` then says what the model is, or raises
:class:`Unsupported` naming the features the spec cannot express.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import (
    Adapter,
    CapturePoint,
    Description,
    Rule,
    RuleAdapter,
    Unsupported,
    copy_model,
    expected_stages,
    spec_keys,
)
from .custom import CustomAdapter
from .hf import HFAdapter
from .hf_families import HFFamilyAdapter
from .timm import TimmAdapter
from .torchvision import TorchvisionAdapter
from .vit_pytorch import VitPytorchAdapter

__all__ = [
    "ADAPTERS",
    "Adapter",
    "CapturePoint",
    "CustomAdapter",
    "Description",
    "HFAdapter",
    "HFFamilyAdapter",
    "NoAdapterError",
    "Rule",
    "RuleAdapter",
    "TimmAdapter",
    "TorchvisionAdapter",
    "Unsupported",
    "VitPytorchAdapter",
    "copy_model",
    "detect",
    "expected_stages",
    "find_adapter",
    "register",
    "spec_keys",
    "unregister",
]

#: Registered adapter classes, tried in this order by :func:`detect`.
ADAPTERS: list[type[Adapter]] = [TimmAdapter, TorchvisionAdapter, HFAdapter, HFFamilyAdapter, VitPytorchAdapter]


class NoAdapterError(Unsupported):
    """No registered adapter matches the model (see docs/custom-adapters.md to write one)."""


def register(adapter_cls: type[Adapter], *, first: bool = True) -> type[Adapter]:
    """Add an adapter class to :data:`ADAPTERS` (usable as a class decorator); returns it.

    ``first=True`` (the default) puts it ahead of the built-in adapters, so an adapter for a
    subclass of, say, timm's ``VisionTransformer`` wins over the generic one. Registering a
    class again moves it instead of duplicating it.
    """
    if not (isinstance(adapter_cls, type) and issubclass(adapter_cls, Adapter)):
        raise TypeError(f"register() needs an Adapter subclass, got {adapter_cls!r}")
    unregister(adapter_cls)
    ADAPTERS.insert(0, adapter_cls) if first else ADAPTERS.append(adapter_cls)
    return adapter_cls


def unregister(adapter_cls: type[Adapter]) -> None:
    """Remove an adapter class from :data:`ADAPTERS` (no error if absent)."""
    while adapter_cls in ADAPTERS:
        ADAPTERS.remove(adapter_cls)


def detect(model: nn.Module, **kwargs: Any) -> Adapter:
    """The first registered adapter that matches ``model``, constructed on it (``kwargs`` go to it).

    Raises :class:`NoAdapterError` (an :class:`Unsupported`) naming the adapters tried.
    """
    return find_adapter(model)(model, **kwargs)


def find_adapter(model: nn.Module) -> type[Adapter]:
    """The first registered adapter class that matches ``model`` (:func:`detect` without constructing it).

    Raises :class:`NoAdapterError` (an :class:`Unsupported`) naming the adapters tried.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"detect() needs an nn.Module, got {type(model).__name__}")
    for cls in ADAPTERS:
        if cls.matches(model):
            return cls
    tried = ", ".join(dict.fromkeys(c.name for c in ADAPTERS))  # two "hf" adapters read as one library
    raise NoAdapterError(
        f"no adapter for {type(model).__module__}.{type(model).__qualname__} (tried: {tried}); "
        "write one with conformance.adapters.CustomAdapter and register() it (docs/custom-adapters.md)"
    )
