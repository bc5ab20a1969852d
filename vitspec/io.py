"""Saving and loading spec models as safetensors files (no pickle anywhere).

A file holds the state-dict tensors under the spec keys and, in the safetensors
header's string metadata:

============== ==============================================================
``format``         ``"vitspec"``
``format_version`` ``"1"``
``variant``        ``"mean"`` (``ViTSpec``) or ``"cls"`` (``ViTClsSpec``)
``config``         JSON object of the :class:`~vitspec.ViTConfig` fields
``in_c/in_h/in_w`` decimal integers
``profile``        JSON object of every :class:`~vitspec.Profile` field
``dtype``          e.g. ``"float32"`` (every tensor has it)
``vitspec_version`` the writer's version (informational)
============== ==============================================================

:func:`load` validates everything (header, metadata, every key, shape and dtype)
before it builds the model, and raises :class:`~vitspec.LoadError` naming the
problem; nothing is partially loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from .config import ViTConfig
from .errors import ConfigError, LoadError
from .profiles import Profile

if TYPE_CHECKING:
    from .models.vit import _ViTBase

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "read_metadata", "save"]

FORMAT = "vitspec"
FORMAT_VERSION = 1

# safetensors dtype tags of the floating dtypes a model may have.
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
_PROFILE_BOOLS = frozenset(f.name for f in dataclasses.fields(Profile) if isinstance(f.default, bool))
_DTYPE_NAMES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in _ST_DTYPES.values()}


def _safetensors() -> Any:
    try:
        import safetensors.torch  # noqa: F401
        from safetensors import safe_open

        return safe_open
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("vitspec save/load needs the 'safetensors' package: pip install safetensors") from e


def save(model: _ViTBase, path: str | os.PathLike[str]) -> None:
    """Write ``model`` to ``path`` (safetensors; tensors copied to the CPU, contiguous)."""
    _safetensors()
    from safetensors.torch import save_file

    from . import __version__

    tensors = {k: t.detach().to("cpu").contiguous() for k, t in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "variant": model.variant,
        "config": json.dumps(dataclasses.asdict(model.cfg)),
        "in_c": str(model.in_c),
        "in_h": str(model.in_h),
        "in_w": str(model.in_w),
        "profile": json.dumps(dataclasses.asdict(model.profile)),
        "dtype": str(model.dtype).removeprefix("torch."),
        "vitspec_version": __version__,
    }
    save_file(tensors, os.fspath(path), metadata=metadata)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The raw string metadata of a vitspec file (raises :class:`LoadError` on an unreadable file)."""
    safe_open = _safetensors()
    _exists(path)
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise LoadError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def _exists(path: str | os.PathLike[str]) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")


def _parse_metadata(path: str | os.PathLike[str], md: dict[str, str]) -> dict[str, Any]:
    """Metadata strings -> ``cfg, in_c, in_h, in_w, variant, profile, dtype``; each problem a LoadError."""
    where = f"{path}: metadata"
    if md.get("format") != FORMAT:
        raise LoadError(f"{where} 'format' must be {FORMAT!r}, got {md.get('format')!r} (not a vitspec file?)")
    if md.get("format_version") != str(FORMAT_VERSION):
        raise LoadError(
            f"{where} 'format_version' must be {FORMAT_VERSION!r}, got {md.get('format_version')!r} "
            "(written by another vitspec version)"
        )
    for key in ("variant", "config", "in_c", "in_h", "in_w", "profile", "dtype"):
        if key not in md:
            raise LoadError(f"{where} is missing {key!r}")
    out: dict[str, Any] = {}
    if md["variant"] not in ("mean", "cls"):
        raise LoadError(f"{where} 'variant' must be 'mean' or 'cls', got {md['variant']!r}")
    out["variant"] = md["variant"]
    for key in ("in_c", "in_h", "in_w"):
        try:
            out[key] = int(md[key])
        except ValueError:
            raise LoadError(f"{where} {key!r} must be an integer, got {md[key]!r}") from None
    for key, typ in (("config", ViTConfig), ("profile", Profile)):
        try:
            fields = json.loads(md[key])
        except json.JSONDecodeError as e:
            raise LoadError(f"{where} {key!r} is not valid JSON ({e})") from None
        names = {f.name for f in dataclasses.fields(typ)}
        if not isinstance(fields, dict):
            raise LoadError(f"{where} {key!r} must be a JSON object, got {type(fields).__name__}")
        missing, unknown = sorted(names - fields.keys()), sorted(fields.keys() - names)
        if missing or unknown:
            raise LoadError(f"{where} {key!r} fields do not match {typ.__name__}: missing {missing}, unknown {unknown}")
        if typ is Profile:
            wrong = [
                f"{n}={fields[n]!r}"
                for n in names
                if (n in _PROFILE_BOOLS and not isinstance(fields[n], bool))
                or (n in ("name", "source") and not isinstance(fields[n], str))
            ]
            if wrong:
                raise LoadError(f"{where} 'profile' has fields of the wrong type: {', '.join(sorted(wrong))}")
        try:
            out[key] = typ(**fields)
        except (ConfigError, TypeError) as e:
            raise LoadError(f"{where} {key!r} is invalid: {e}") from None
    if md["dtype"] not in _DTYPE_NAMES:
        raise LoadError(f"{where} 'dtype' must be one of {sorted(_DTYPE_NAMES)}, got {md['dtype']!r}")
    out["dtype"] = _DTYPE_NAMES[md["dtype"]]
    out["cfg"] = out.pop("config")
    return out


def load(
    path: str | os.PathLike[str],
    *,
    variant: Literal["mean", "cls"] | None = None,
    device: str | torch.device = "cpu",
) -> _ViTBase:
    """Load a file written by :func:`save`; the variant comes from the file unless ``variant`` demands one.

    Raises :class:`LoadError` (a ``ValueError``) for a truncated or corrupt file, bad metadata, a
    variant other than the one demanded, and any missing or unexpected key, wrong shape or dtype
    (all listed); ``FileNotFoundError`` if there is no file. Nothing is built before all checks pass.
    """
    from .models.vit import ViTClsSpec, ViTSpec, config_violations, spec_param_shapes

    safe_open = _safetensors()
    _exists(path)
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            md = dict(f.metadata() or {})
            meta = _parse_metadata(path, md)
            if variant is not None and meta["variant"] != variant:
                names = {"mean": "ViTSpec", "cls": "ViTClsSpec"}
                raise LoadError(
                    f"{path}: the file holds a {names[meta['variant']]} (variant {meta['variant']!r}), not a "
                    f"{names[variant]}; use {names[meta['variant']]}.load or vitspec.io.load"
                )
            cfg, prof = meta["cfg"], meta["profile"]
            v = config_violations(cfg, meta["in_c"], meta["in_h"], meta["in_w"], variant=meta["variant"], profile=prof)
            if v:
                raise LoadError(f"{path}: metadata describes an ill-formed model:\n  " + "\n  ".join(map(str, v)))
            shapes = spec_param_shapes(
                cfg, meta["in_c"], meta["in_h"], meta["in_w"], variant=meta["variant"], profile=prof
            )
            keys = list(f.keys())
            problems = [
                f"missing key {k!r} (expected shape {s}, dtype {meta['dtype']})"
                for k, s in shapes.items()
                if k not in keys
            ]
            problems += [f"unexpected key {k!r}" for k in keys if k not in shapes]
            want = str(meta["dtype"]).removeprefix("torch.")
            for k, s in shapes.items():
                if k not in keys:
                    continue
                sl = f.get_slice(k)
                shape, tag = tuple(sl.get_shape()), sl.get_dtype()
                got = str(_ST_DTYPES[tag]).removeprefix("torch.") if tag in _ST_DTYPES else tag
                if shape != s:
                    problems.append(f"key {k!r}: expected shape {s}, got {shape}")
                if got != want:
                    problems.append(f"key {k!r}: expected dtype {want}, got {got}")
            if problems:
                raise LoadError(f"{path}: tensors do not match the metadata's model:\n  " + "\n  ".join(problems))
            tensors = {k: f.get_tensor(k) for k in shapes}
    except (LoadError, FileNotFoundError):
        raise
    except Exception as e:  # safetensors' own errors for a truncated/corrupt header or buffer
        raise LoadError(f"{path}: cannot read the safetensors file ({type(e).__name__}: {e})") from e
    cls = ViTClsSpec if meta["variant"] == "cls" else ViTSpec
    dev = torch.device(device)
    if dev.type != "cpu":
        tensors = {k: t.to(dev) for k, t in tensors.items()}
    return cls(cfg, meta["in_c"], meta["in_h"], meta["in_w"], tensors, profile=prof)
