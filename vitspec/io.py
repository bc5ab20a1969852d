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

:func:`read` validates everything (header, metadata, every key, shape and dtype)
and returns a :class:`Checkpoint`, or raises :class:`~vitspec.LoadError` naming the
problem; nothing is partially loaded. This module is the file format only: it sits
below :mod:`vitspec.models` (``m.save(path)``, ``ViTSpec.load(path)`` and the
variant-agnostic :func:`vitspec.models.load` build on it) and imports nothing from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from .config import ViTConfig, config_violations
from .errors import ConfigError, LoadError
from .profiles import VARIATION_FIELDS, Profile
from .schema import Variant, param_shapes

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "SavableModel", "read", "read_metadata", "save"]

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


class SavableModel(Protocol):
    """What :func:`save` reads off a model (a :class:`~vitspec.ViTSpec` / :class:`~vitspec.ViTClsSpec`)."""

    @property
    def variant(self) -> str: ...
    @property
    def cfg(self) -> ViTConfig: ...
    @property
    def in_c(self) -> int: ...
    @property
    def in_h(self) -> int: ...
    @property
    def in_w(self) -> int: ...
    @property
    def profile(self) -> Profile: ...
    @property
    def dtype(self) -> torch.dtype: ...
    def state_dict(self) -> dict[str, Tensor]: ...


@dataclass(frozen=True)
class Checkpoint:
    """A validated vitspec file: what a model is built from (``ViTSpec.from_checkpoint``)."""

    cfg: ViTConfig
    in_c: int
    in_h: int
    in_w: int
    variant: Variant
    profile: Profile
    dtype: torch.dtype
    tensors: dict[str, Tensor]


def save(model: SavableModel, path: str | os.PathLike[str]) -> None:
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
    """Raise the real ``OSError`` (no such file, permission denied, a directory) before safetensors sees it."""
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a file")
    with open(path, "rb"):  # FileNotFoundError / PermissionError with their own message
        pass


#: Problems listed in one error message before "... and N more" (a screenful).
MAX_LISTED = 20
#: ``ln_eps`` must lie in ``(0, MAX_LN_EPS]``: an epsilon near the variance's scale erases the input.
MAX_LN_EPS = 1.0
_LAYER_KEY = re.compile(r"encoder\.(\d{1,9})\.")


def screenful(problems: list[str]) -> str:
    """At most :data:`MAX_LISTED` problems, one per line, then ``... and N more``."""
    shown = problems[:MAX_LISTED]
    more = len(problems) - len(shown)
    return "\n  ".join(shown) + (f"\n  ... and {more} more" if more > 0 else "")


def _check_numbers(where: str, profile_fields: dict[str, Any]) -> None:
    """Every numeric profile field finite and in range (``10**400`` or ``Infinity`` in JSON are refused)."""
    eps = profile_fields.get("ln_eps")
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        return  # Profile() reports the type
    try:
        value = float(eps)
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and 0 < value <= MAX_LN_EPS):
        raise LoadError(f"{where} 'profile' ln_eps={eps!r:.40} must be a finite number in (0, {MAX_LN_EPS:g}]")
    profile_fields["ln_eps"] = value


def _check_layer_count(path: str | os.PathLike[str], cfg: ViTConfig, keys: list[str]) -> None:
    """``num_layers`` must match the ``encoder.{i}.`` keys the file holds, before any per-layer work:
    the cost of checking a file is then bounded by its size, whatever its metadata claims."""
    present = {int(m.group(1)) for k in keys if (m := _LAYER_KEY.match(k))}
    n = cfg.num_layers  # compared by count and extremes: set(range(n)) would cost O(n) memory
    if len(present) != n or (n and (min(present) != 0 or max(present) != n - 1)):
        raise LoadError(
            f"{path}: metadata says num_layers={cfg.num_layers}, but the file holds tensors for "
            f"{len(present)} encoder layer(s)" + (f" (indices {min(present)}..{max(present)})" if present else "")
        )


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
        except ValueError as e:  # an integer longer than Python's 4300-digit limit
            raise LoadError(f"{where} {key!r}: {e}") from None
        names = {f.name for f in dataclasses.fields(typ)}
        if not isinstance(fields, dict):
            raise LoadError(f"{where} {key!r} must be a JSON object, got {type(fields).__name__}")
        # Files written before the Profile gained head_split / lean_backward / revision were all
        # computed with their defaults (the reshape-then-swap split), so those may be absent.
        # Likewise the variation fields (vitspec.profiles.VARIATION_FIELDS): older files are TorchLean-valued.
        optional = {"head_split", "lean_backward", "revision", *VARIATION_FIELDS} if typ is Profile else set()
        missing, unknown = sorted(names - fields.keys() - optional), sorted(fields.keys() - names)
        if missing or unknown:
            raise LoadError(f"{where} {key!r} fields do not match {typ.__name__}: missing {missing}, unknown {unknown}")
        if typ is Profile:
            _check_numbers(where, fields)
            wrong = [
                f"{n}={fields[n]!r}"
                for n in names & fields.keys()
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


def read(
    path: str | os.PathLike[str],
    *,
    variant: Variant | None = None,
    device: str | torch.device = "cpu",
) -> Checkpoint:
    """Read and validate a file written by :func:`save`; the variant comes from the file unless
    ``variant`` demands one. ``ViTSpec.load`` / ``ViTClsSpec.load`` / :func:`vitspec.models.load`
    build the model from it.

    Raises :class:`LoadError` (a ``ValueError``) for a truncated or corrupt file, bad metadata, a
    variant other than the one demanded, and any missing or unexpected key, wrong shape or dtype
    (all listed, at most a screenful); the real ``OSError`` (``FileNotFoundError``, ``PermissionError``)
    for a file that cannot be opened. Nothing is built before all checks pass, and checking costs time
    and memory bounded by the file's size (``num_layers`` must match the layers the file holds).
    """
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
                    f"{names[variant]}; use {names[meta['variant']]}.load or vitspec.models.load"
                )
            cfg, prof = meta["cfg"], meta["profile"]
            keys = list(f.keys())
            _check_layer_count(path, cfg, keys)
            v = config_violations(cfg, meta["in_c"], meta["in_h"], meta["in_w"], variant=meta["variant"], profile=prof)
            if v:
                raise LoadError(f"{path}: metadata describes an ill-formed model:\n  " + screenful(list(map(str, v))))
            shapes = param_shapes(cfg, meta["in_c"], meta["in_h"], meta["in_w"], variant=meta["variant"], profile=prof)
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
                raise LoadError(f"{path}: tensors do not match the metadata's model:\n  " + screenful(problems))
            tensors = {k: f.get_tensor(k) for k in shapes}
    except (LoadError, OSError):  # OSError: the real cause (permission denied, ...), not a LoadError
        raise
    except Exception as e:  # safetensors' own errors for a truncated/corrupt header or buffer
        raise LoadError(f"{path}: cannot read the safetensors file ({type(e).__name__}: {e})") from e
    dev = torch.device(device)
    if dev.type != "cpu":
        tensors = {k: t.to(dev) for k, t in tensors.items()}
    return Checkpoint(cfg, meta["in_c"], meta["in_h"], meta["in_w"], meta["variant"], prof, meta["dtype"], tensors)
