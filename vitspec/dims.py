"""The named-dimension shape DSL.

Functions are annotated with ordinary jaxtyping hints using the spec's dimension
names, e.g. ``Float[Tensor, "*batch tokens embed_dim"]``, and decorated with
:func:`checked`. A checked call verifies, in this order:

1. **Derived dimensions.** When a :class:`Dims` is bound (``with bind_dims(d):``,
   which the models do), every named dimension of every annotated argument must
   equal the value the spec's formulas give for the config at hand; the error
   shows the formula with the numbers plugged in
   (``tokens = out_h*out_w = 14*14 = 196``).
2. **Device and dtype agreement** of all floating-point tensor arguments (which
   jaxtyping does not check).
3. **Internal consistency** (rank, dtype kind, each name the same size in every
   argument and the return value), by jaxtyping's ``jaxtyped`` with beartype.

Every failure is a :class:`vitspec.ShapeError`. Checks are on by default;
``shape_checks(False)`` turns them off (as a call or a context manager) and
``VITSPEC_SHAPE_CHECKS=0`` turns them off at import. When off, a checked call is
one flag test plus the plain call.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import torch
from beartype import beartype
from jaxtyping import Float, Int, Shaped, TypeCheckError, jaxtyped

from . import schema
from .errors import ShapeError

__all__ = [
    "DIM_NAMES",
    "Dims",
    "Float",
    "Int",
    "Shaped",
    "bind_dims",
    "checked",
    "current_dims",
    "shape_checks",
    "shape_checks_enabled",
]

#: The spec's named dimensions (see docs/dsl.md).
DIM_NAMES: dict[str, str] = {
    "channels": "input channels in_c",
    "in_h": "input height",
    "in_w": "input width",
    "patch_h": "patch (kernel) height",
    "patch_w": "patch (kernel) width",
    "out_h": "patch-grid height (Lean ViTPatchOutH)",
    "out_w": "patch-grid width (Lean ViTPatchOutW)",
    "patches": "patch tokens out_h*out_w (Lean ViTPatchCount)",
    "tokens": "sequence length: patches, +1 with a CLS token",
    "embed_dim": "model width (Lean embedDim)",
    "hidden_dim": "FFN width (Lean hiddenDim)",
    "heads": "attention heads (Lean headCount)",
    "head_dim": "per-head width embed_dim/heads (floor)",
    "attn_dim": "heads*head_dim (width of Q, K, V)",
    "patch_dim": "channels*patch_h*patch_w (flattened patch)",
    "classes": "output classes (Lean numClasses)",
    "registers": "register tokens (profile reg_tokens)",
    "pos_rows": "rows of the learned position table (patches + the prefix rows it covers)",
    "pooled": "head input width (embed_dim; 2*embed_dim for cls_mean_concat)",
    "latents": "MAP pooling's latent queries (profile map_latents)",
    "batch": "optional leading batch axes",
}


# -- the switch ----------------------------------------------------------------
_ENV = os.environ.get("VITSPEC_SHAPE_CHECKS", "1").strip().lower()


class _State:
    enabled: bool = _ENV not in ("0", "false", "off", "no")
    # By default only the outermost checked call in a stack is checked: it validates every
    # tensor that crosses its boundary (arguments and return value) against the bound dims,
    # so re-checking the primitives it calls would only repeat work (about 90 us a call).
    # ``VITSPEC_SHAPE_CHECKS=all`` / ``shape_checks("all")`` checks nested calls as well.
    nested: bool = _ENV == "all"


#: True while a checked call is being checked (so the calls it makes are nested).
_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("vitspec_inside_checked", default=False)


def shape_checks_enabled() -> bool:
    return _State.enabled


class shape_checks:  # noqa: N801 - used like a function
    """Turn shape checks on or off; usable as a plain call or a context manager.

    >>> shape_checks(False)          # off from here on
    >>> with shape_checks(False):    # off inside the block, restored after
    ...     ...
    >>> shape_checks("all")          # on, and nested checked calls are checked too

    ``True`` (the default) checks the outermost checked call of each stack: a model's
    stage functions check every tensor crossing their boundary, and the primitives they
    call run unchecked. ``"all"`` also checks those nested calls (for debugging a new
    primitive); it costs about 90 us per call.
    """

    def __init__(self, enabled: bool | str = True) -> None:
        if isinstance(enabled, str) and enabled != "all":
            raise ValueError(f"shape_checks takes True, False or 'all', got {enabled!r}")
        self._previous = (_State.enabled, _State.nested)
        _State.enabled = bool(enabled)
        _State.nested = enabled == "all"

    def __enter__(self) -> shape_checks:
        return self

    def __exit__(self, *exc: object) -> None:
        _State.enabled, _State.nested = self._previous


# -- dims bound by the spec's formulas -----------------------------------------
@dataclass(frozen=True)
class Dims:
    """Expected sizes of the named dimensions, each with the formula that gives it."""

    values: Mapping[str, int]
    formulas: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.values[name]

    def explain(self, name: str) -> str:
        """``'tokens = out_h*out_w = 14*14 = 196'`` (or ``'embed_dim = 768'``)."""
        return self.formulas.get(name) or f"{name} = {self.values[name]}"

    @classmethod
    def from_config(
        cls, cfg: Any, in_c: int, in_h: int, in_w: int, *, cls_token: bool = False, profile: Any = None
    ) -> Dims:
        """The spec's sizes; ``profile`` (a :class:`vitspec.profiles.Profile`) adds its variation points:
        prefix tokens beyond CLS, the position-table rows, a per-head width other than ``embed_dim // heads``
        and the head input width (the formulas are :mod:`vitspec.schema`'s)."""
        p, s, ph, pw = cfg.padding, cfg.stride, cfg.patch_h, cfg.patch_w
        oh, ow = cfg.out_h(in_h), cfg.out_w(in_w)
        t = oh * ow
        hd = cfg.head_dim
        variant = "cls" if cls_token else "mean"
        extra = schema.dim_sizes(cfg, in_c, in_h, in_w, variant=variant, profile=profile)
        hd = extra["head_dim"]
        values = {
            "channels": in_c,
            "in_h": in_h,
            "in_w": in_w,
            "patch_h": ph,
            "patch_w": pw,
            "out_h": oh,
            "out_w": ow,
            "patches": t,
            "tokens": t + 1 if cls_token else t,
            "embed_dim": cfg.embed_dim,
            "hidden_dim": cfg.hidden_dim,
            "heads": cfg.head_count,
            "head_dim": hd,
            "attn_dim": cfg.head_count * hd,
            "patch_dim": in_c * ph * pw,
            "classes": cfg.num_classes,
        }
        plus = " + 1" if cls_token else ""
        tok = f"tokens = out_h*out_w{plus} = {oh}*{ow}{plus} = {values['tokens']}"
        hd_formula = f"head_dim = embed_dim/head_count = {cfg.embed_dim}/{cfg.head_count} = {hd} (floor)"
        n_pre = extra["tokens"] - t
        if n_pre != (1 if cls_token else 0):  # prefix tokens beyond CLS (a profile's variation points)
            values["tokens"] = extra["tokens"]
            tok = f"tokens = out_h*out_w + prefix = {oh}*{ow} + {n_pre} = {values['tokens']}"
            tok += f" (profile {profile.name})"
        if profile is not None and profile.head_dim is not None:
            hd_formula = f"head_dim = {hd} (profile {profile.name})"
        more: dict[str, str] = {}
        for name in ("registers", "pos_rows", "pooled", "latents"):
            values[name] = extra[name]
            more[name] = f"{name} = {extra[name]}" + (f" (profile {profile.name})" if profile is not None else "")
        formulas = {
            "channels": f"channels = in_c = {in_c}",
            "in_h": f"in_h = {in_h} (the model's input height)",
            "in_w": f"in_w = {in_w} (the model's input width)",
            "out_h": f"out_h = (in_h + 2*padding - patch_h)/stride + 1 = ({in_h} + 2*{p} - {ph})/{s} + 1 = {oh}",
            "out_w": f"out_w = (in_w + 2*padding - patch_w)/stride + 1 = ({in_w} + 2*{p} - {pw})/{s} + 1 = {ow}",
            "patches": f"patches = out_h*out_w = {oh}*{ow} = {t}",
            "tokens": tok,
            "embed_dim": f"embed_dim = {cfg.embed_dim}",
            "hidden_dim": f"hidden_dim = {cfg.hidden_dim}",
            "heads": f"heads = head_count = {cfg.head_count}",
            "head_dim": hd_formula,
            "attn_dim": f"attn_dim = heads*head_dim = {cfg.head_count}*{hd} = {cfg.head_count * hd}",
            "patch_dim": f"patch_dim = channels*patch_h*patch_w = {in_c}*{ph}*{pw} = {in_c * ph * pw}",
            "classes": f"classes = num_classes = {cfg.num_classes}",
            **more,
        }
        return cls(values, formulas)


_CURRENT: contextvars.ContextVar[Dims | None] = contextvars.ContextVar("vitspec_dims", default=None)


def current_dims() -> Dims | None:
    return _CURRENT.get()


@contextmanager
def bind_dims(dims: Dims | None) -> Iterator[Dims | None]:
    """Bind the expected named dimensions for checked calls made inside the block."""
    token = _CURRENT.set(dims)
    try:
        yield dims
    finally:
        _CURRENT.reset(token)


# -- the decorator -------------------------------------------------------------
P = ParamSpec("P")
R = TypeVar("R")


def _is_array_hint(hint: object) -> bool:
    return isinstance(hint, type) and hasattr(hint, "dims") and hasattr(hint, "dim_str")


def _array_hint(hint: object) -> Any | None:
    """The jaxtyping array type of ``hint``, looking through ``X | None`` (optional biases); else None."""
    if _is_array_hint(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1 and _is_array_hint(members[0]):
            return members[0]
    return None


@dataclass(frozen=True)
class _Spec:
    name: str
    signature: inspect.Signature
    params: tuple[tuple[str, Any], ...]  # (param name, jaxtyping hint) for annotated tensors
    ret: Any | None


def _bindings(hint: Any, shape: tuple[int, ...]) -> tuple[list[tuple[str, int, int]], str | None]:
    """(name, axis, size) for each named single dim of ``hint`` matched against ``shape``.

    Uses jaxtyping's own parse (``hint.dims``); returns a rank problem, if any.
    """
    dims = hint.dims
    variadic = [i for i, d in enumerate(dims) if type(d).__name__.endswith("VariadicDim") or d is ...]
    n_fixed = len(dims) - len(variadic)
    if variadic:
        if len(shape) < n_fixed:
            return [], f"rank {len(shape)}, but '{hint.dim_str}' needs at least {n_fixed}"
        v = variadic[0]
        extra = len(shape) - n_fixed
        axes = [*range(v), None, *range(v + extra, len(shape))]
        pairs = [(d, ax) for d, ax in zip(dims, axes, strict=True) if ax is not None]
    else:
        if len(shape) != len(dims):
            return [], f"rank {len(shape)}, but '{hint.dim_str}' needs exactly {len(dims)}"
        pairs = list(zip(dims, range(len(shape)), strict=True))
    out = []
    for d, ax in pairs:
        name = getattr(d, "name", None)
        if isinstance(name, str) and type(d).__name__ == "_NamedDim":
            out.append((name, ax, shape[ax]))
    return out, None


def _fmt_shape(t: torch.Tensor) -> str:
    return f"({', '.join(map(str, t.shape))})"


def _pre_check(spec: _Spec, arguments: Mapping[str, Any], dims: Dims | None) -> None:
    fname = spec.name
    first: tuple[str, torch.Tensor] | None = None
    seen: dict[str, tuple[int, str, int]] = {}
    for pname, hint in spec.params:
        t = arguments.get(pname)
        if not isinstance(t, torch.Tensor):
            continue
        if t.is_floating_point():
            if first is None:
                first = (pname, t)
            elif t.device != first[1].device or t.dtype != first[1].dtype:
                what = "device" if t.device != first[1].device else "dtype"
                exp = getattr(first[1], what)
                act = getattr(t, what)
                raise ShapeError(
                    f"{fname}: argument '{pname}' is on {what} {act}, but argument '{first[0]}' is {exp}; "
                    f"all floating-point tensors of one call must share device and dtype",
                    function=fname,
                    argument=pname,
                    expected=exp,
                    actual=act,
                    shape=tuple(t.shape),
                )
        binds, rank_problem = _bindings(hint, tuple(t.shape))
        if rank_problem:
            raise ShapeError(
                f"{fname}: argument '{pname}' has shape {_fmt_shape(t)}: {rank_problem}",
                function=fname,
                argument=pname,
                expected=hint.dim_str,
                actual=tuple(t.shape),
                shape=tuple(t.shape),
            )
        for name, axis, size in binds:
            if dims is not None and name in dims.values and size != dims.values[name]:
                _raise_dim(fname, pname, t, hint, name, axis, size, dims)
            if name in seen and seen[name][0] != size:
                other = seen[name]
                raise ShapeError(
                    f"{fname}: argument '{pname}' dimension '{name}' (axis {axis}) is {size}, but argument "
                    f"'{other[1]}' has {name} = {other[0]} (axis {other[2]}); shape {_fmt_shape(t)} "
                    f"annotated '{hint.dim_str}'",
                    function=fname,
                    argument=pname,
                    dim=name,
                    expected=other[0],
                    actual=size,
                    shape=tuple(t.shape),
                )
            seen.setdefault(name, (size, pname, axis))


def _raise_dim(fname: str, pname: str, t: torch.Tensor, hint: Any, name: str, axis: int, size: int, dims: Dims) -> None:
    expected = dims.values[name]
    formula = dims.explain(name)
    msg = (
        f"{fname}: argument '{pname}' dimension '{name}' (axis {axis}) must be {expected}, got {size}; "
        f"{formula}; actual shape {_fmt_shape(t)} annotated '{hint.dim_str}'"
    )
    raise ShapeError(
        msg,
        function=fname,
        argument=pname,
        dim=name,
        expected=expected,
        actual=size,
        formula=formula,
        shape=tuple(t.shape),
    )


def checked(fn: Callable[P, R]) -> Callable[P, R]:
    """Check a jaxtyping-annotated function's tensors against the named-dimension DSL.

    See the module docstring for what is checked. The undecorated function stays
    reachable as ``fn.__wrapped__``.
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    sig = inspect.signature(fn)
    # Optional tensors (``X | None``) are checked too when given: an unchecked float64 bias
    # would silently promote a float32 result.
    arrays = ((n, _array_hint(h)) for n, h in hints.items() if n != "return")
    params = tuple((n, h) for n, h in arrays if h is not None)
    ret = hints.get("return")
    spec = _Spec(fn.__qualname__, sig, params, ret if _is_array_hint(ret) else None)
    typed = jaxtyped(typechecker=beartype)(fn)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if not _State.enabled or (_INSIDE.get() and not _State.nested):
            return fn(*args, **kwargs)
        arguments = sig.bind(*args, **kwargs).arguments
        dims = _CURRENT.get()
        _pre_check(spec, arguments, dims)
        token = _INSIDE.set(True)
        try:
            out = typed(*args, **kwargs)
        except TypeCheckError as e:
            # _pre_check covers the argument side, so what is left is the return
            # value or a dtype kind (e.g. an integer tensor where Float is annotated).
            raise ShapeError(f"{spec.name}: jaxtyping rejected the call:\n{e}", function=spec.name) from None
        finally:
            _INSIDE.reset(token)
        if dims is not None and spec.ret is not None and isinstance(out, torch.Tensor):
            binds, _ = _bindings(spec.ret, tuple(out.shape))
            for name, axis, size in binds:
                if name in dims.values and size != dims.values[name]:
                    _raise_dim(spec.name, "return", out, spec.ret, name, axis, size, dims)
        return out

    wrapper.__vitspec_checked__ = True  # type: ignore[attr-defined]
    return wrapper
