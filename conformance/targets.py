"""Build the model under test from a target string (random weights only; nothing is downloaded).

Target syntax (``build_target``):

===============================  ==============================================================
``timm:<name>``                  ``timm.create_model(name, pretrained=False)``
``torchvision:<builder>``        ``torchvision.models.get_model(builder, weights=None)``; the builder
                                 ``VisionTransformer`` calls the class with the overrides as arguments
``hf:<preset>``                  ``default`` (``ViTForImageClassification(ViTConfig())``),
                                 ``tiny`` (a 2-layer 32x32 classifier), ``model`` (``ViTModel(ViTConfig())``)
``hf:<path/to/config.json>``     ``ViTConfig.from_json_file``; ``ViTModel`` if its ``architectures``
                                 says so, else ``ViTForImageClassification``
``vit_pytorch:<preset>``         ``cls`` / ``mean``: ``vit_pytorch.ViT`` (64x64, patch 8, dim 128,
                                 depth 4, 4 heads of 32, mlp 256, 10 classes)
``<module>:<factory>``           import ``module`` (dotted name or a ``.py`` path), call ``factory()``
===============================  ==============================================================

Every kind but the last takes keyword overrides after ``?``, joined by ``&``:
``timm:vit_tiny_patch16_224?global_pool=avg&class_token=false``. Values are Python literals
(``16``, ``1e-6``, ``(32, 32)``), ``true``/``false``/``none`` in any case, or else plain strings.
For timm and torchvision they are constructor kwargs; for ``hf`` they override config fields;
for ``vit_pytorch`` they override the preset's ``ViT`` arguments (``SimpleViT=true`` builds a
``vit_pytorch.SimpleViT`` from them instead).

``input_hw=HxW`` (``vit_pytorch`` only) is not a constructor argument but the adapter's: vit-pytorch's
``ViT`` does not store its image size, so ``vit_pytorch:cls?image_size=(32,64)&input_hw=32x64`` says
it (an ``image_size`` override alone implies it). :func:`adapter_options` returns it; without it a
non-square grid is refused ("cannot infer the image size"), never checked at a guessed size.

Weights are random: ``torch.manual_seed(seed)`` runs first, so a target and a seed always give
the same model. Nothing is downloaded: ``pretrained=true`` (or torchvision ``weights=...``) is
refused with a pointer to ``--weights PATH`` (:mod:`conformance.weights`), which loads a local file.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitspec.errors import VitSpecError

__all__ = [
    "ADAPTER_OPTIONS",
    "DEFAULT_TARGET",
    "HF_PRESETS",
    "LIBRARIES",
    "VIT_PYTORCH_PRESETS",
    "TargetError",
    "adapter_options",
    "build_target",
    "parse_target",
]

DEFAULT_TARGET = "timm:vit_tiny_patch16_224"
LIBRARIES = ("timm", "torchvision", "hf", "vit_pytorch")

_VIT_PYTORCH_BASE: dict[str, Any] = dict(
    image_size=64, patch_size=8, num_classes=10, dim=128, depth=4, heads=4, mlp_dim=256, dim_head=32
)
#: vit-pytorch presets: ``ViT`` keyword arguments (``dim_head * heads == dim``, as the spec needs).
VIT_PYTORCH_PRESETS: dict[str, dict[str, Any]] = {
    "cls": {**_VIT_PYTORCH_BASE, "pool": "cls"},
    "mean": {**_VIT_PYTORCH_BASE, "pool": "mean"},
}
#: HF presets: (model class name, ViTConfig overrides).
HF_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("ViTForImageClassification", {}),
    "tiny": (
        "ViTForImageClassification",
        dict(
            image_size=32,
            patch_size=8,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            num_labels=10,
        ),
    ),
    "model": ("ViTModel", {}),
}


class TargetError(VitSpecError):
    """A target string cannot be turned into a model (unknown library or name, bad path, bad factory)."""


#: Target options that go to the adapter, not the constructor: name -> the library whose adapter takes it.
ADAPTER_OPTIONS: dict[str, str] = {"input_hw": "vit_pytorch"}


def _hw(target: str, value: Any) -> tuple[int, int]:
    """``32x64`` / ``(32, 64)`` / ``32`` -> ``(32, 64)`` / ``(32, 64)`` / ``(32, 32)``."""
    if isinstance(value, str) and "x" in value.lower():
        parts = value.lower().split("x")
        value = tuple(int(p) for p in parts if p.strip().isdigit()) if len(parts) == 2 else value
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    ok = isinstance(value, tuple) and len(value) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise TargetError(f"{target!r}: input_hw must be HxW with positive integers (e.g. 32x64), got {value!r}")
    return value[0], value[1]


def adapter_options(target: str) -> dict[str, Any]:
    """The adapter keyword arguments a target string carries (``input_hw`` for vit-pytorch, see the module doc).

    A ``vit_pytorch`` preset with an ``image_size`` override implies ``input_hw`` (the builder knows the size
    the adapter cannot read off the model). Raises :class:`TargetError` for an option its library's adapter
    does not take, or a malformed value.
    """
    kind, _, overrides = parse_target(target)
    out: dict[str, Any] = {}
    for key, lib in ADAPTER_OPTIONS.items():
        if key in overrides:
            if kind != lib:
                raise TargetError(
                    f"{target!r}: {key} is a {lib} option (the {kind} adapter reads the size off the model)"
                )
            out[key] = _hw(target, overrides[key])
    if kind == "vit_pytorch" and "input_hw" not in out and "image_size" in overrides:
        out["input_hw"] = _hw(target, overrides["image_size"])
    return out


def _literal(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_target(target: str) -> tuple[str, str, dict[str, Any]]:
    """``(kind, name, overrides)``: kind is a library name or ``"factory"`` (then name is ``module:factory``)."""
    if not isinstance(target, str) or not target.strip():
        raise TargetError(f"a target is a non-empty string like {DEFAULT_TARGET!r}, got {target!r}")
    target = target.strip()
    kind, sep, rest = target.partition(":")
    if sep and kind in LIBRARIES:
        name, _, query = rest.partition("?")
        overrides: dict[str, Any] = {}
        for item in filter(None, query.split("&")):
            key, eq, value = item.partition("=")
            if not eq or not key.strip().isidentifier():
                raise TargetError(f"{target!r}: override {item!r} is not key=value")
            overrides[key.strip()] = _literal(value)
        if not name:
            raise TargetError(f"{target!r}: nothing after {kind + ':'!r}")
        return kind, name, overrides
    module, sep, factory = target.rpartition(":")
    if not sep or not module or not factory:
        raise TargetError(
            f"unknown target {target!r}: use one of {', '.join(k + ':...' for k in LIBRARIES)} "
            "or <module>:<factory> (a dotted module or a .py path, and a function returning an nn.Module)"
        )
    return "factory", target, {}


def build_target(target: str, *, seed: int = 0) -> tuple[nn.Module, str]:
    """Build the model a target string names (random weights, seeded); returns ``(model, display name)``.

    Raises :class:`TargetError` with the valid choices where practical.
    """
    kind, name, overrides = parse_target(target)
    _refuse_downloads(target, overrides)
    for key in ADAPTER_OPTIONS:  # the adapter's, not the constructor's (adapter_options)
        overrides.pop(key, None)
    build: Callable[[str, dict[str, Any]], nn.Module] = _BUILDERS[kind]
    torch.manual_seed(seed)
    try:
        model = build(name, overrides)
    except (TargetError, ImportError, KeyboardInterrupt):
        raise
    except SystemExit as err:  # the target's module or factory called sys.exit(): never a silent exit 0
        raise TargetError(f"building {_shown(target)} called sys.exit({err.code!r})") from None
    except Exception as err:  # a library or factory rejecting the overrides (KeyError, ZeroDivisionError, ...)
        raise TargetError(f"building {_shown(target)} failed: {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise TargetError(f"{target!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model, target.strip()


def _shown(target: str) -> str:
    """The target for a message: at most ~200 characters, undecodable file-name bytes as U+FFFD."""
    text = target.strip().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return repr(text if len(text) <= 200 else text[:120] + "..." + text[-60:])


def _refuse_downloads(target: str, overrides: dict[str, Any]) -> None:
    """Nothing is downloaded: ``pretrained=true`` (timm) or ``weights=...`` (torchvision) points to ``--weights``.

    An explicit ``pretrained=false`` / ``weights=none`` is the default anyway and is dropped, so it
    does not reach the constructor twice.
    """
    for key in ("pretrained", "weights"):
        value = overrides.pop(key, None)
        if value not in (None, False):
            raise TargetError(
                f"{target!r}: {key}={value!r} asks for a hub download, which vitspec never performs; "
                "download the weights yourself and pass the file with --weights PATH "
                "(.safetensors or a torch checkpoint)"
            )


def _import(lib: str) -> Any:
    try:
        return importlib.import_module(lib)
    except ImportError as err:
        raise TargetError(f"{lib} is not installed ({err}); pip install 'vitspec[thirdparty]'") from err


def _suggest(name: str, choices: list[str], n: int = 8) -> str:
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _timm(name: str, overrides: dict[str, Any]) -> nn.Module:
    timm = _import("timm")
    if not timm.is_model(name):
        vits = timm.list_models("vit_*")
        raise TargetError(
            f"unknown timm model {name!r}{_suggest(name, vits)} (timm.list_models('vit_*') lists {len(vits)})"
        )
    try:
        return timm.create_model(name, pretrained=False, **overrides)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise TargetError(f"timm.create_model({name!r}, pretrained=False, **{overrides}) failed: {err}") from err


def _torchvision(name: str, overrides: dict[str, Any]) -> nn.Module:
    tv = _import("torchvision.models")
    if name == "VisionTransformer":  # the class itself: any size, all arguments from the overrides
        try:
            return tv.VisionTransformer(**overrides)
        except (TypeError, ValueError, AssertionError, RuntimeError) as err:
            raise TargetError(f"torchvision.models.VisionTransformer(**{overrides}) failed: {err}") from err
    names = list(tv.list_models())
    if name not in names:
        vits = [n for n in names if n.startswith("vit_")]
        raise TargetError(
            f"unknown torchvision builder {name!r}{_suggest(name, names)}; ViT builders: {', '.join(vits)}"
        )
    try:
        return tv.get_model(name, weights=None, **overrides)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise TargetError(f"torchvision.models.get_model({name!r}, weights=None, **{overrides}) failed: {err}") from err


def _hf(name: str, overrides: dict[str, Any]) -> nn.Module:
    tf = _import("transformers")
    if name in HF_PRESETS:
        cls_name, fields = HF_PRESETS[name]
        config = tf.ViTConfig(**{**fields, **overrides})
    else:
        path = Path(name).expanduser()
        if path.suffix != ".json" and not path.exists():
            raise TargetError(f"unknown hf preset {name!r}: presets {', '.join(HF_PRESETS)}, or a path to config.json")
        if not path.is_file():
            raise TargetError(f"hf config {str(path)!r} does not exist (or is not a file)")
        try:
            config = tf.ViTConfig.from_json_file(str(path))
        except (OSError, ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
            raise TargetError(f"cannot read hf config {str(path)!r}: {err}") from err
        for k, v in overrides.items():
            setattr(config, k, v)
        archs = getattr(config, "architectures", None) or []
        cls_name = "ViTModel" if "ViTModel" in archs else "ViTForImageClassification"
    try:
        return getattr(tf, cls_name)(config)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise TargetError(f"transformers.{cls_name}({name!r} config) failed: {err}") from err


def _vit_pytorch(name: str, overrides: dict[str, Any]) -> nn.Module:
    if name not in VIT_PYTORCH_PRESETS:
        raise TargetError(f"unknown vit_pytorch preset {name!r}: presets {', '.join(VIT_PYTORCH_PRESETS)}")
    vp = _import("vit_pytorch")
    simple = bool(overrides.pop("SimpleViT", False))  # SimpleViT=true: the fixed sin-cos, mean-pool model
    kwargs = {**VIT_PYTORCH_PRESETS[name], **overrides}
    if simple:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("pool", "dropout", "emb_dropout")}
    cls = vp.SimpleViT if simple else vp.ViT
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise TargetError(f"vit_pytorch.{cls.__name__}(**{kwargs}) failed: {err}") from err


def _load_module(module: str) -> Any:
    path = Path(module).expanduser()
    if module.endswith(".py") or path.is_file():
        if not path.is_file():
            raise TargetError(f"no such file {str(path)!r}")
        # A stable module name per file, so re-importing the same file reuses it (and its registrations).
        mod_name = "vitspec_target_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise TargetError(f"cannot import {str(path)!r} as a Python module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as err:
            del sys.modules[mod_name]
            raise TargetError(f"importing {str(path)!r} failed: {type(err).__name__}: {err}") from err
        return mod
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TargetError(f"cannot import module {module!r}: {err}") from err


def _factory(target: str, overrides: dict[str, Any]) -> nn.Module:
    module, _, factory = target.rpartition(":")
    mod = _load_module(module)
    fn = getattr(mod, factory, None)
    if fn is None:
        public = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_"))
        raise TargetError(f"{module!r} has no {factory!r}{_suggest(factory, public)}")
    if not callable(fn):
        raise TargetError(f"{module}:{factory} is a {type(fn).__name__}, not callable")
    model = fn()
    if not isinstance(model, nn.Module):
        raise TargetError(f"{module}:{factory}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


_BUILDERS: dict[str, Callable[[str, dict[str, Any]], nn.Module]] = {
    "timm": _timm,
    "torchvision": _torchvision,
    "hf": _hf,
    "vit_pytorch": _vit_pytorch,
    "factory": _factory,
}
