"""The adapter interface (docs/architecture.md, "Adapters") and the key-map engine behind it.

An adapter turns one third-party ViT into three things the harness can compare with the spec:

- a :class:`Description` (``ViTConfig``, input size, variant, numerics :class:`~vitspec.profiles.Profile`),
  or :class:`Unsupported` naming a feature the spec cannot express;
- a strict, *linear* map from library-named tensors to spec keys (``to_spec``), which therefore
  maps parameters and their gradients alike;
- :class:`CapturePoint` hooks at the spec's stage boundaries, with transforms to the spec layout.

Most adapters are a list of :class:`Rule` s (one per library parameter) handed to
:class:`RuleAdapter`, which implements ``to_spec`` and ``links`` once for every library:
unknown, missing and mis-shaped names are all collected and raised as one ``MappingError``.
"""

from __future__ import annotations

import copy as _copy
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn

from vitspec.config import ViTConfig
from vitspec.errors import MappingError, VitSpecError
from vitspec.profiles import Profile
from vitspec.schema import STAGES, Activation, Variant, param_keys, stage_names

from .probe import PROBE_TOL, probe_activation, probe_layer_norm, probe_rms_norm

__all__ = [
    "Adapter",
    "CapturePoint",
    "Description",
    "LayerPaths",
    "LowPrecision",
    "PerLayer",
    "Rule",
    "RuleAdapter",
    "Tap",
    "Unsupported",
    "activation_kind",
    "apply_rules",
    "as_vector",
    "check_layer_norm",
    "check_linear",
    "check_rms_norm",
    "consensus",
    "conv_geometry",
    "copy",
    "expected_stages",
    "find_base",
    "flatten_grid",
    "fused_qkv_rules",
    "hf_attention",
    "identity_head",
    "image_hw",
    "inp",
    "layer_rules",
    "layer_taps",
    "linear_rules",
    "norm_rules",
    "out",
    "overridden",
    "raise_unsupported",
    "read_layer",
    "redefinitions",
    "spec_keys",
    "split_rows",
    "squeeze_to",
    "take0",
    "transpose",
]

T = TypeVar("T")


class Unsupported(VitSpecError):  # noqa: N818 -- name fixed by the contract
    """The model uses a feature the spec cannot express (register tokens, layer scale, ...).

    ``reason`` says which feature and where; ``library`` names the adapter that refused.
    ``head_only``: only the classification head is inexpressible (a pre-logits layer, a custom
    head), so a trunk-only check (``check(..., scope="trunk")``) can still compare the rest.
    The harness reports it instead of comparing, so nothing passes silently.
    """

    def __init__(self, reason: str, *, library: str = "", head_only: bool = False) -> None:
        self.reason = reason
        self.library = library
        self.head_only = head_only
        super().__init__(f"{library}: unsupported: {reason}" if library else f"unsupported: {reason}")


# A layer index inside a module path: "blocks.3.attn", "encoder.layers.encoder_layer_3.ln_1".
_LAYER_INDEX = re.compile(r"(?<=[._])(\d+)(?=[.:\s]|$)")


def raise_unsupported(problems: Sequence[str], library: str, *, head_only: bool = False) -> None:
    """Raise one :class:`Unsupported` listing ``problems`` (no-op when empty; ``head_only``: they are all
    in the classification head).

    The same problem in many layers is said once: ``blocks.0: layer scale`` ... ``blocks.11: layer
    scale`` becomes ``blocks.{0..11}: layer scale``.
    """
    if not problems:
        return
    groups: dict[str, set[int]] = {}
    for p in problems:
        m = _LAYER_INDEX.search(p)
        key = p[: m.start()] + "\0" + p[m.end() :] if m else p
        groups.setdefault(key, set()).update([int(m.group(1))] if m else [])
    parts = []
    for key, idx in groups.items():
        nums = sorted(idx)
        if len(nums) <= 1:
            span = str(nums[0]) if nums else ""
        elif nums == list(range(nums[0], nums[-1] + 1)):
            span = f"{{{nums[0]}..{nums[-1]}}}"
        else:
            span = "{" + ",".join(map(str, nums)) + "}"
        parts.append(key.replace("\0", span))
    raise Unsupported("; ".join(parts), library=library, head_only=head_only)


@dataclass(frozen=True)
class Description:
    """What an adapter found in the model: the spec config and numerics that reproduce it.

    ``synthetic`` lists spec keys with no library counterpart, which ``to_spec`` fills with
    constants (HF ``ViTModel`` has no classifier: its head is the identity, so the spec's
    logits are the pooled vector). Their gradients mean nothing; ``links`` omits them.
    """

    library: str
    model_name: str
    cfg: ViTConfig
    in_c: int
    in_h: int
    in_w: int
    variant: Variant
    profile: Profile
    has_head: bool = True
    notes: tuple[str, ...] = ()
    synthetic: tuple[str, ...] = ()
    precision: tuple[LowPrecision, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_c, self.in_h, self.in_w)


def _identity(v: Any) -> Any:
    return v


@dataclass(frozen=True)
class CapturePoint:
    """Where a stage's tensor appears in the library model, and how to bring it to the spec layout.

    ``kind="output"``: the module's output (which may be a tuple, e.g. ``nn.MultiheadAttention``);
    ``kind="input"``: the module's *first input* (first positional argument, else the first
    keyword value), used where the stage's tensor is what a neighbour consumes (the pooled
    vector is the head's input; ``blocks.0``'s input is the ``pos_embed`` output). ``where``
    labels the point in reports. The hooks themselves live in :mod:`conformance.capture`.
    """

    module: nn.Module
    kind: Literal["output", "input"] = "output"
    transform: Callable[[Any], Tensor] = _identity
    where: str = ""


@dataclass(frozen=True)
class Tap:
    """A row of an adapter's stage table: a module *path* on the model, output or input, a transform."""

    path: str
    kind: Literal["output", "input"] = "output"
    transform: Callable[[Any], Tensor] = _identity


def out(path: str, transform: Callable[[Any], Tensor] = _identity) -> Tap:
    """The output of the module at ``path``."""
    return Tap(path, "output", transform)


def inp(path: str, transform: Callable[[Any], Tensor] = _identity) -> Tap:
    """The first input of the module at ``path`` (a neighbour that consumes the stage's tensor)."""
    return Tap(path, "input", transform)


@dataclass(frozen=True)
class LowPrecision:
    """Part of the model's forward that the model itself computes in a lower precision.

    ``stages``: the stages (sub-ops) containing the op; ``op``: what runs in ``dtype`` and why.
    The check judges those stages, and everything downstream of the first, with ``dtype``'s
    budget (docs/tolerance.md, "Declared lower precision") and names the op in the report.
    """

    stages: tuple[str, ...]
    dtype: str
    op: str


def hf_attention(config: Any, n_layers: int) -> tuple[str, tuple[LowPrecision, ...]]:
    """The note naming a transformers model's attention kernel as shipped (``config._attn_implementation``),
    and the float32 softmax of its ``eager`` kernel as a declared lower precision of every layer's attention."""
    impl = getattr(config, "_attn_implementation", None)
    precision: tuple[LowPrecision, ...] = ()
    if impl == "eager":  # eager_attention_forward: softmax(..., dtype=torch.float32).to(query.dtype)
        op = "the attention softmax (HF eager attention: softmax(dtype=torch.float32))"
        precision = (LowPrecision(tuple(f"blocks.{i}.attn" for i in range(n_layers)), "float32", op),)
    return f"attention as shipped: attn_implementation={impl!r}", precision


# -- capture transforms (named, so reports and docs can show them) ---------------------
def take0(output: Any) -> Tensor:
    """First element of a tuple output (``nn.MultiheadAttention``, HF attention); tensors pass through."""
    return output[0] if isinstance(output, tuple | list) else output


def flatten_grid(output: Tensor) -> Tensor:
    """Conv output ``(B, E, h, w)`` -> tokens ``(B, h*w, E)``, row-major like the spec's ``grid_to_tokens``."""
    return output.flatten(2).transpose(1, 2)


# -- tensor transforms for rules: each is LINEAR, so it maps parameters and gradients --
def copy(t: Tensor) -> tuple[Tensor, ...]:
    """Same layout."""
    return (t,)


def transpose(t: Tensor) -> tuple[Tensor, ...]:
    """``nn.Linear`` weight ``(out, in)`` -> the spec's ``(in, out)``."""
    return (t.transpose(0, 1),)


def split_rows(n: int, *, transposed: bool) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """Split a fused ``[q; k; v]`` weight ``(n*A, E)`` (or bias ``(n*A,)``) along rows.

    With ``transposed`` each chunk becomes ``(E, A)`` (spec ``Wq/Wk/Wv`` are (in, out)).
    """

    def fn(t: Tensor) -> tuple[Tensor, ...]:
        parts = t.chunk(n, dim=0)
        return tuple(p.transpose(0, 1) for p in parts) if transposed else parts

    fn.__name__ = f"split_rows_{n}{'_T' if transposed else ''}"
    return fn


def squeeze_to(*shape: int) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """Reshape to ``shape`` (drops the leading batch axes of ``[1, T, D]`` / ``[1, 1, D]``)."""

    def fn(t: Tensor) -> tuple[Tensor, ...]:
        return (t.reshape(shape),)

    fn.__name__ = f"reshape_{'x'.join(map(str, shape))}"
    return fn


def as_vector(t: Tensor) -> tuple[Tensor, ...]:
    """Any ``[1, ..., 1, D]`` -> ``(D,)`` (class tokens)."""
    return (t.reshape(-1),)


@dataclass(frozen=True)
class Rule:
    """One library tensor and the spec keys it feeds.

    ``fn`` maps the tensor (of shape ``shape``) to one tensor per target, by a linear map
    (transpose / split / reshape / permute), so gradients map the same way. ``fn=None`` with
    no targets marks a parameter that exists but is deliberately not compared (an unused
    pooler, a mask token): it is accepted if present, never required, and ``note`` says why.
    ``aliases`` are other names of the same tensor (e.g. transformers 4.x names).
    """

    source: str
    targets: tuple[str, ...]
    shape: tuple[int, ...]
    fn: Callable[[Tensor], tuple[Tensor, ...]] | None = copy
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def ignored(self) -> bool:
        return self.fn is None

    @staticmethod
    def ignore(source: str, shape: Sequence[int], note: str, aliases: tuple[str, ...] = ()) -> Rule:
        return Rule(source, (), tuple(shape), None, aliases, note)


# -- rule builders for the common layers (all adapters use them) ------------------------
def linear_rules(
    src: str, weight_key: str, bias_key: str | None, out_f: int, in_f: int, *, aliases: str | None = None
) -> list[Rule]:
    """``nn.Linear`` at module path ``src``: weight ``(out, in)`` -> spec ``(in, out)`` (+ bias).

    ``aliases``: the same module under another path (e.g. a transformers 4.x name).
    """
    rules = [Rule(f"{src}.weight", (weight_key,), (out_f, in_f), transpose, _alias(aliases, "weight"))]
    if bias_key is not None:
        rules.append(Rule(f"{src}.bias", (bias_key,), (out_f,), copy, _alias(aliases, "bias")))
    return rules


def norm_rules(src: str, prefix: str, dim: int, *, aliases: str | None = None, beta: bool = True) -> list[Rule]:
    """LayerNorm at ``src`` -> spec ``{prefix}_gamma`` / ``{prefix}_beta`` (``beta=False``: an RMSNorm, weight only)."""
    rules = [Rule(f"{src}.weight", (f"{prefix}_gamma",), (dim,), copy, _alias(aliases, "weight"))]
    if beta:
        rules.append(Rule(f"{src}.bias", (f"{prefix}_beta",), (dim,), copy, _alias(aliases, "bias")))
    return rules


def fused_qkv_rules(src: str, layer: int, attn_dim: int, embed_dim: int, *, bias: bool) -> list[Rule]:
    """A fused ``[q; k; v]`` ``nn.Linear`` (or ``in_proj_weight``-style pair ``{src}weight``/``{src}bias``).

    ``src`` is the full name prefix up to ``weight``/``bias`` (``"blocks.0.attn.qkv."`` or
    ``"...self_attention.in_proj_"``), so both timm's ``qkv.weight`` and torch's
    ``in_proj_weight`` fit.
    """
    e = f"encoder.{layer}.mha"
    rules = [
        Rule(
            f"{src}weight", (f"{e}.Wq", f"{e}.Wk", f"{e}.Wv"), (3 * attn_dim, embed_dim), split_rows(3, transposed=True)
        )
    ]
    if bias:
        rules.append(
            Rule(f"{src}bias", (f"{e}.bq", f"{e}.bk", f"{e}.bv"), (3 * attn_dim,), split_rows(3, transposed=False))
        )
    return rules


def _alias(path: str | None, leaf: str) -> tuple[str, ...]:
    return (f"{path}.{leaf}",) if path else ()


def _fmt_shape(s: Iterable[int]) -> str:
    return "(" + ", ".join(map(str, s)) + ")"


def apply_rules(
    rules: Sequence[Rule], tensors: Mapping[str, Any], *, library: str, copy: bool = True
) -> dict[str, Tensor]:
    """Map ``tensors`` (library names) to spec keys with ``rules``; strict and all-at-once.

    Every name must be claimed by a rule (else *unexpected*), every non-ignored rule must find
    exactly one of its names with a tensor of its shape (else *missing* / *mis-shaped*); all
    problems go into one :class:`~vitspec.errors.MappingError`. A ``None`` value (the ``.grad``
    of a parameter that got none) counts as missing for a mapped rule. Outputs are detached
    contiguous copies, so the spec model never aliases the library's live parameters; ``copy=False``
    returns the rules' outputs as they are, views where a rule is a transpose or a split (for tensors
    that are only read, e.g. gradients to compare).
    """
    owner: dict[str, int] = {}
    for i, r in enumerate(rules):
        for name in (r.source, *r.aliases):
            owner[name] = i
    unexpected = [n for n in tensors if n not in owner]
    found: dict[int, list[str]] = {}
    for n in tensors:
        if n in owner:
            found.setdefault(owner[n], []).append(n)
    missing: list[str] = []
    mismatched: list[str] = []
    out: dict[str, Tensor] = {}
    for i, r in enumerate(rules):
        names = found.get(i, [])
        if len(names) > 1:  # the same tensor under two names (e.g. a 4.x and a 5.x name)
            unexpected += [f"{n} (duplicate of {names[0]})" for n in names[1:]]
        value = tensors[names[0]] if names else None
        if value is None:
            if not r.ignored:
                missing.append(r.source if not names else f"{names[0]} (None)")
            continue
        if not isinstance(value, Tensor):
            mismatched.append(f"{names[0]}: expected a tensor, got {type(value).__name__}")
            continue
        if tuple(value.shape) != r.shape:
            mismatched.append(f"{names[0]}: expected {_fmt_shape(r.shape)}, got {_fmt_shape(value.shape)}")
            continue
        if r.fn is None:
            continue
        parts = r.fn(value.detach())
        if len(parts) != len(r.targets):  # a bug in the adapter, not in the user's dict
            raise AssertionError(f"rule for {r.source} produced {len(parts)} tensors for {len(r.targets)} targets")
        for key, t in zip(r.targets, parts, strict=True):
            out[key] = t.clone(memory_format=torch.contiguous_format) if copy else t
    if missing or unexpected or mismatched:
        raise MappingError(
            f"{library}: cannot map {len(tensors)} tensors onto the spec bundle",
            missing=missing,
            unexpected=unexpected,
            mismatched=mismatched,
        )
    return out


def identity_head(embed_dim: int, like: Tensor) -> dict[str, Tensor]:
    """The spec head of a model without classifier: ``head_W = I``, ``head_b = 0``, so logits = pooled vector."""
    return {
        "head_W": torch.eye(embed_dim, dtype=like.dtype, device=like.device),
        "head_b": torch.zeros(embed_dim, dtype=like.dtype, device=like.device),
    }


# -- the spec side: keys and stages a description implies -----------------------------
def spec_keys(desc: Description) -> list[str]:
    """Spec state-dict keys a description implies (:func:`vitspec.schema.param_keys`), in state-dict order."""
    return param_keys(desc.cfg.num_layers, variant=desc.variant, profile=desc.profile)


def expected_stages(desc: Description) -> list[str]:
    """The stages an adapter captures, in forward order (:func:`vitspec.schema.stage_names` with sub-ops,
    without ``output``: the value the model returns needs no hook)."""
    p = desc.profile
    names = stage_names(
        desc.cfg.num_layers,
        final_norm=p.final_norm,
        has_head=desc.has_head,
        sub_ops=True,
        norm_placement=p.norm_placement,
        pre_norm=p.pre_norm,
        layer_scale=p.layer_scale,
        pooled=p.head != "distilled",
    )
    return [n for n in names if n != STAGES[-1].name]


# -- the per-layer table: one row of module paths per encoder layer -------------------------
@dataclass(frozen=True)
class LayerPaths:
    """Where one encoder layer's pieces live in the library model (module paths from the model root).

    ``qkv`` is either a fused ``[q; k; v]`` prefix up to ``weight``/``bias`` (timm ``"blocks.0.attn.qkv."``,
    torch ``"...self_attention.in_proj_"``) or three ``nn.Linear`` paths. ``attn`` and ``mlp`` are the
    modules whose outputs are the sub-ops (before the residual adds); ``attn_in`` / ``mlp_in`` the
    modules that consume ``norm1`` / ``norm2`` (their inputs are those sub-ops' outputs, observed
    even when a library skips the norm module). ``block`` is the layer module (``None`` when the
    residual sums run in the parent, as in vit-pytorch). ``tuple_out``: attention and layer return
    ``(output, ...)``. ``aliases``: the same tensors under another layout (transformers 4.x names).
    The key map (:func:`layer_rules`), the stage table (:func:`layer_taps`) and the per-layer
    reading (:func:`read_layer`) are all built from this one row.
    """

    norm1: str
    attn: str
    qkv: str | tuple[str, str, str]
    proj: str
    norm2: str
    mlp: str
    fc1: str
    act: str
    fc2: str
    attn_in: str
    mlp_in: str
    block: str | None = None
    tuple_out: bool = False
    aliases: LayerPaths | None = None


def layer_rules(t: LayerPaths, i: int, *, embed: int, hidden: int, attn: int, profile: Profile) -> list[Rule]:
    """The key-map rules of layer ``i`` from its table row (norm1, q/k/v, out projection, norm2, FFN)."""
    s, al = f"encoder.{i}", t.aliases

    def alias(part: str) -> str | None:
        return getattr(al, part) if al is not None else None

    ln = profile.norm == "layer"  # RMSNorm (a variation point) has no beta
    rules = norm_rules(t.norm1, f"{s}.norm1", embed, aliases=alias("norm1"), beta=ln)
    if isinstance(t.qkv, str):
        rules += fused_qkv_rules(t.qkv, i, attn, embed, bias=profile.qkv_bias)
    else:
        other: tuple[str | None, ...] = tuple(al.qkv) if al is not None else (None, None, None)
        for part, path, other_path in zip("qkv", t.qkv, other, strict=True):
            bias = f"{s}.mha.b{part}" if profile.qkv_bias else None
            rules += linear_rules(path, f"{s}.mha.W{part}", bias, attn, embed, aliases=other_path)
    bo = f"{s}.mha.bo" if profile.out_bias else None
    rules += linear_rules(t.proj, f"{s}.mha.Wo", bo, embed, attn, aliases=alias("proj"))
    rules += norm_rules(t.norm2, f"{s}.norm2", embed, aliases=alias("norm2"), beta=ln)
    b1, b2 = (f"{s}.ffn.b1", f"{s}.ffn.b2") if profile.ffn_bias else (None, None)  # ffn_bias=False: a variation
    rules += linear_rules(t.fc1, f"{s}.ffn.W1", b1, hidden, embed, aliases=alias("fc1"))
    rules += linear_rules(t.fc2, f"{s}.ffn.W2", b2, embed, hidden, aliases=alias("fc2"))
    return rules


def layer_taps(t: LayerPaths, i: int, after: str) -> dict[str, list[Tap]]:
    """The stage-table rows of layer ``i`` (sub-ops in pre-norm order, then the block); ``after`` is the
    module that consumes the layer's output (the next layer, or the final norm)."""
    take = take0 if t.tuple_out else _identity
    b = f"blocks.{i}"
    return {
        f"{b}.norm1": [inp(t.attn_in), out(t.norm1)],
        f"{b}.attn": [out(t.attn, take)],
        f"{b}.norm2": [inp(t.mlp_in), out(t.norm2)],
        f"{b}.mlp": [out(t.mlp)],
        b: [inp(after), *([out(t.block, take)] if t.block else [])],
    }


def read_layer(
    model: nn.Module, t: LayerPaths, dim: int, library: str, r: PerLayer, bad: list[str], *, norm: str = "layer"
) -> None:
    """This layer's own numerics into ``r``: each LayerNorm's eps (``norm="rms"``: each RMSNorm's, a variation
    point) and the activation (probed), by path; every problem into ``bad``."""
    check = check_rms_norm if norm == "rms" else check_layer_norm
    for path in (t.norm1, t.norm2):
        try:
            r.eps[path] = check(model.get_submodule(path), path, dim, library)
        except Unsupported as err:
            bad.append(err.reason)
    try:
        r.act[t.act], note = activation_kind(model.get_submodule(t.act), t.act, library)
        r.notes += [note] if note else []
    except Unsupported as err:
        bad.append(err.reason)


# -- model inspection helpers shared by the library adapters ----------------------------
def conv_geometry(
    conv: nn.Module, what: str, library: str, *, bias: bool = True
) -> tuple[int, int, int, int, int, int]:
    """``(out_channels, in_channels, patch_h, patch_w, stride, padding)`` of a patch conv, or Unsupported.

    The spec's patch embedding is one ``conv2d`` with a single stride and padding for both
    axes, zero padding, no dilation or groups, and a bias.
    """
    if type(conv) is not nn.Conv2d:
        raise Unsupported(
            f"{what} is {type(conv).__name__}, not a single nn.Conv2d (e.g. a conv stem)", library=library
        )
    assert isinstance(conv, nn.Conv2d)
    problems = []
    sh, sw = conv.stride
    if sh != sw:
        problems.append(f"stride {conv.stride} differs per axis (the spec has one stride)")
    pad = conv.padding
    if isinstance(pad, str):
        if pad != "valid":
            problems.append(f"padding={pad!r}")
        pad = (0, 0)
    if pad[0] != pad[1]:
        problems.append(f"padding {pad} differs per axis (the spec has one padding)")
    if conv.padding_mode != "zeros":
        problems.append(f"padding_mode={conv.padding_mode!r} (spec pads with zeros)")
    if tuple(conv.dilation) != (1, 1):
        problems.append(f"dilation={tuple(conv.dilation)}")
    if conv.groups != 1:
        problems.append(f"groups={conv.groups}")
    if conv.bias is None and bias:  # bias=False: the caller maps a bias-free conv (profile patch_bias=False)
        problems.append("no bias (the spec's patch embedding always has one)")
    if problems:
        raise Unsupported(f"{what}: " + "; ".join(problems), library=library)
    kh, kw = conv.kernel_size
    return conv.out_channels, conv.in_channels, kh, kw, sh, pad[0]


def check_layer_norm(m: nn.Module, what: str, dim: int, library: str) -> float:
    """The eps of an affine LayerNorm over the last axis of width ``dim``, or Unsupported.

    An ``nn.LayerNorm`` (or subclass) is read; a module of any other class is *probed*
    (:func:`~conformance.adapters.probe.probe_layer_norm`): what it computes decides, not its class.
    """
    if not isinstance(m, nn.LayerNorm):
        pr, eps = probe_layer_norm(m, dim)
        if pr.match is None:
            raise Unsupported(pr.describe(what, m) + " (the spec's norm: an affine LayerNorm)", library=library)
        return eps
    if tuple(m.normalized_shape) != (dim,):
        raise Unsupported(f"{what} normalizes over {tuple(m.normalized_shape)}, not ({dim},)", library=library)
    if not m.elementwise_affine or m.weight is None or m.bias is None:
        raise Unsupported(
            f"{what} has no affine weight and bias (the spec's LayerNorm has gamma and beta)", library=library
        )
    return float(m.eps)


def check_rms_norm(m: nn.Module, what: str, dim: int, library: str) -> float:
    """The eps of an RMSNorm over the last axis of width ``dim`` with a weight (a variation point: timm
    ``RmsNorm``, ``nn.RMSNorm``), found by probing it, or Unsupported."""
    t = type(m)
    known = (t.__module__, t.__qualname__) in (("timm.layers.norm", "RmsNorm"), ("torch.nn.modules.normalization",
             "RMSNorm"))  # fmt: skip
    eps, w, shape = getattr(m, "eps", None), getattr(m, "weight", None), getattr(m, "normalized_shape", ())
    if known and isinstance(eps, float) and isinstance(w, Tensor):
        # Read, like an nn.LayerNorm (a hook on the module must not turn it into "not an RMSNorm").
        if tuple(shape) != (dim,) or tuple(w.shape) != (dim,):
            raise Unsupported(f"{what} normalizes over {tuple(shape)}, not ({dim},)", library=library)
        return eps
    pr, eps = probe_rms_norm(m, dim)
    if pr.match is None:
        raise Unsupported(pr.describe(what, m) + " (an RMSNorm with a weight)", library=library)
    return eps


def activation_kind(m: nn.Module, what: str, library: str) -> tuple[Activation, str]:
    """``(profile activation, note)``: what ``m`` computes, found by probing it (never by its class).

    The note is empty unless the probe saw something worth reporting (a backward that is not the
    candidate's, which the gradient comparison will then show at this block). Unsupported when
    the forward matches no spec activation (QuickGELU, SiLU, ...), naming the closest and its error.
    """
    pr = probe_activation(m)
    if pr.match is None:
        raise Unsupported(pr.describe(what, m) + " (spec activations: ReLU, GELU erf, GELU tanh)", library=library)
    note = pr.describe(what, m) if pr.vjp_err is None or pr.vjp_err > PROBE_TOL else ""
    return pr.match, note  # type: ignore[return-value]


@dataclass
class PerLayer:
    """What an adapter reads off *every* block: the eps of each norm and the activation by module path,
    the shared head count, hidden width and bias flags, and notes (a probed module, an odd scale)."""

    heads: int = 1
    hidden: int = 1
    eps: dict[str, float] = field(default_factory=dict)
    act: dict[str, Activation] = field(default_factory=dict)
    qkv_bias: bool = True
    out_bias: bool = True
    notes: list[str] = field(default_factory=list)

    def read_norm(self, m: nn.Module, what: str, dim: int, library: str, bad: list[str]) -> None:
        """LayerNorm ``what``'s eps into ``eps`` (a problem in ``bad`` when it is not a LayerNorm over ``dim``)."""
        try:
            self.eps[what] = check_layer_norm(m, what, dim, library)
        except Unsupported as err:
            bad.append(err.reason)

    def read_hidden(self, i: int, width: int, what: str, bad: list[str]) -> None:
        """Layer ``i``'s FFN width: layer 0's is the model's, any other layer's must equal it (a problem named
        ``what`` otherwise: the spec has one hidden width)."""
        if i == 0:
            self.hidden = width
        elif width != self.hidden:
            bad.append(f"{what} {width} (layer 0 has {self.hidden})")


def consensus(values: Mapping[str, T], default: T, what: str) -> tuple[T, list[str]]:
    """``(value, notes)``: the value most layers share (a tie: ``default``), and one note per layer that differs.

    Every layer is read (nothing is inferred from block 0); the profile holds one value, so a layer
    that differs is expected to fail the comparison at that layer, and the note says so up front.
    """
    if not values:
        return default, []
    counts: dict[T, int] = {}
    for v in values.values():
        counts[v] = counts.get(v, 0) + 1
    top = max(counts.values())
    winners = [v for v, c in counts.items() if c == top]
    value = default if default in winners else winners[0]
    notes = [
        f"{where}: {what} {v!r} differs from the other layers' {value!r}; the profile holds one {what}, "
        f"so the comparison is expected to diverge at {where}"
        for where, v in values.items()
        if v != value
    ]
    return value, notes


def check_linear(m: nn.Module, what: str, library: str, *, bias: bool | None = True) -> nn.Linear:
    """``m`` as an ``nn.Linear`` (with a bias if ``bias``; without if ``bias is False``), or Unsupported."""
    if not isinstance(m, nn.Linear):
        raise Unsupported(f"{what} is {type(m).__name__}, not nn.Linear", library=library)
    if bias is True and m.bias is None:
        raise Unsupported(f"{what} has no bias (the spec's layer has one)", library=library)
    return m


def find_base(model: nn.Module, module: str, qualname: str) -> type | None:
    """The class ``module.qualname`` if it is in ``type(model).__mro__`` (no import of the library)."""
    for c in type(model).__mro__:
        if c.__module__ == module and c.__qualname__ == qualname:
            return c
    return None


def overridden(model: nn.Module, base: type, methods: Iterable[str]) -> list[str]:
    """Which of ``methods`` a subclass of ``base`` redefines (then the adapter cannot vouch for it)."""
    t = type(model)
    return [m for m in methods if getattr(t, m, None) is not getattr(base, m, None)]


def image_hw(size: Any) -> tuple[int, int]:
    """``(H, W)`` of an image size given as one int (a square) or as a pair (transformers configs take both)."""
    return (int(size[0]), int(size[1])) if isinstance(size, tuple | list) else (int(size), int(size))


def redefinitions(model: nn.Module, base: type, methods: Iterable[str]) -> list[str]:
    """The problem (none or one) of a subclass of ``base`` that redefines any of ``methods``: the adapter reads
    ``base``'s forward, so it cannot vouch for another one."""
    names = overridden(model, base, methods)
    return [f"{type(model).__name__} redefines {', '.join(names)}"] if names else []


# -- the adapter interface ---------------------------------------------------------------
def copy_model(
    model: nn.Module, library: str = "", *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """A deep copy of ``model``; a model that refuses to be copied is :class:`Unsupported`, not a crash.

    With ``device`` / ``dtype``, its floating-point parameters are copied straight into them (what
    ``copy.to(device, dtype)`` would give, without first copying them as they are: one copy of the
    weights instead of two). Buffers are copied as they are; ``.to`` the copy moves them.
    """
    memo: dict[int, Any] = {}
    if device is not None or dtype is not None:
        try:  # a parameter already in the right place and dtype is deep-copied as usual
            memo = {id(p): _cast_parameter(p, device, dtype) for p in model.parameters() if _moves(p, device, dtype)}
        except Exception:  # a parameter that cannot be cast: the caller's .to() reports it
            memo = {}
    try:
        return _copy.deepcopy(model, memo)
    except Exception as e:
        raise Unsupported(
            f"the model cannot be deep-copied ({type(e).__name__}: {e}); check it in place with "
            "check(..., consume=True), as `vitspec conform` does",
            library=library,
        ) from e


def _moves(p: nn.Parameter, device: torch.device | None, dtype: torch.dtype | None) -> bool:
    """Whether ``Module.to(device, dtype)`` would replace plain parameter ``p``."""
    if type(p) is not nn.Parameter:
        return False
    return (device is not None and p.device != device) or (
        dtype is not None and p.is_floating_point() and p.dtype != dtype
    )


def _cast_parameter(p: nn.Parameter, device: torch.device | None, dtype: torch.dtype | None) -> nn.Parameter:
    """``p`` copied onto ``device`` (floating point: in ``dtype``), as ``Module.to`` casts it."""
    t = p.detach().to(device=device, dtype=dtype if p.is_floating_point() else None, copy=True)
    return nn.Parameter(t, requires_grad=p.requires_grad)


class Adapter(ABC):
    """One library's view of a ViT (docs/architecture.md, "Adapters").

    ``__init__`` keeps a deep copy of the model in eval mode (``copy=False`` uses the model
    itself, and still switches it to eval): dropout off, hooks on our copy only. A subclass
    writes ``matches``, ``describe``, the tensor map and a *stage table* (:meth:`stage_paths`);
    ``description`` (cached), ``capture_points``, ``run`` and ``ignored`` have defaults.
    """

    name: ClassVar[str]
    _desc: Description | None = None
    #: Describing the model for a trunk-only check (:meth:`for_trunk`): an adapter that can tell its head
    #: apart then describes a model whose only inexpressible part is the head as headless (``has_head=False``,
    #: the head's parameters ignored) instead of raising a ``head_only`` :class:`Unsupported`.
    trunk: bool = False

    def __init__(self, model: nn.Module, *, copy: bool = True) -> None:
        self.model: nn.Module = (copy_model(model, type(self).name) if copy else model).eval()

    def for_trunk(self) -> Adapter:
        """This adapter, describing the model for a trunk-only check (what was cached is recomputed)."""
        self.trunk = True
        self._desc = None
        return self

    @classmethod
    @abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter is meant for ``model`` (by type; never raises)."""

    @abstractmethod
    def describe(self) -> Description:
        """Config, input size, variant and profile; raises :class:`Unsupported` listing every problem."""

    @abstractmethod
    def to_spec(self, tensors: Mapping[str, Tensor], *, copy: bool = True) -> dict[str, Tensor]:
        """Library-named tensors (parameters or their gradients) -> spec keys (strict); detached
        contiguous copies, or with ``copy=False`` views where a rule allows (:func:`apply_rules`)."""

    @abstractmethod
    def links(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(library parameter name, spec keys it feeds)`` for every library parameter."""

    def description(self) -> Description:
        """:meth:`describe`, cached (it probes modules, so it is not free)."""
        if self._desc is None:
            self._desc = self.describe()
        return self._desc

    def stage_paths(self) -> Mapping[str, Tap | Sequence[Tap]]:
        """The stage table: stage (and sub-op) name -> module path(s) on ``self.model``.

        Several :class:`Tap` s are candidates in preference order: put the stage's *consumer*
        first (``inp("blocks.1")`` for ``blocks.0``) and its own module next, so a library code
        path that skips a module is still observed, through a neighbour.
        """
        raise NotImplementedError(f"{type(self).__name__} has no stage table (stage_paths)")

    def capture_points(self) -> dict[str, tuple[CapturePoint, ...]]:
        """:meth:`stage_paths` resolved to modules of ``self.model``."""
        out: dict[str, tuple[CapturePoint, ...]] = {}
        for stage, taps in self.stage_paths().items():
            rows = [taps] if isinstance(taps, Tap) else list(taps)
            out[stage] = tuple(
                CapturePoint(self.model.get_submodule(t.path), t.kind, t.transform, f"{t.path or '<model>'} ({t.kind})")
                for t in rows
            )
        return out

    def run(self, x: Tensor) -> Tensor:
        """What the model returns for a batch ``(B, C, H, W)``: ``self.model(x)`` itself (every hook,
        instance attribute and wrapper included), reduced to the logits (pooled vector when
        ``has_head=False``) by the adapter's output extractor."""
        return self.model(x)

    def ignored(self) -> list[tuple[str, str]]:
        """``(library parameter, why it is not compared)`` for the parameters deliberately left out."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


class RuleAdapter(Adapter):
    """An adapter whose tensor map is a list of :class:`Rule` s (every built-in one, and custom ones).

    Subclasses implement :meth:`key_map` (and may add constants in :meth:`synthetic`);
    ``to_spec`` and ``links`` follow. The description and the rules are computed once.
    """

    _rules: list[Rule] | None = None

    @abstractmethod
    def key_map(self) -> list[Rule]:
        """One :class:`Rule` per library parameter (``named_parameters`` names)."""

    def synthetic(self, like: Tensor) -> dict[str, Tensor]:
        """Spec keys with no library counterpart (``Description.synthetic``), as ``like``'s dtype/device."""
        return {}

    def for_trunk(self) -> Adapter:
        self._rules = None  # the rules follow the description
        return super().for_trunk()

    def rules(self) -> list[Rule]:
        """:meth:`key_map`, cached, and checked against the spec keys the description implies."""
        if self._rules is None:
            rules = self.key_map()
            desc = self.description()
            made = [k for r in rules for k in r.targets] + list(desc.synthetic)
            want = spec_keys(desc)
            if sorted(made) != sorted(want):  # an adapter bug: say exactly what is off
                raise AssertionError(
                    f"{type(self).__name__}.key_map does not cover the spec keys: "
                    f"missing {sorted(set(want) - set(made))}, extra {sorted(set(made) - set(want))}, "
                    f"duplicated {sorted({k for k in made if made.count(k) > 1})}"
                )
            self._rules = rules
        return self._rules

    def to_spec(self, tensors: Mapping[str, Tensor], *, copy: bool = True) -> dict[str, Tensor]:
        desc = self.description()
        out = apply_rules(self.rules(), tensors, library=self.name, copy=copy)
        if desc.synthetic:
            like = next(iter(out.values()))
            out.update(self.synthetic(like))
        return {k: out[k] for k in spec_keys(desc)}  # canonical order

    def links(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(r.source, r.targets) for r in self.rules()]

    def ignored(self) -> list[tuple[str, str]]:
        """``(library parameter, why it is not compared)`` for the parameters deliberately left out."""
        return [(r.source, r.note) for r in self.rules() if r.ignored]
