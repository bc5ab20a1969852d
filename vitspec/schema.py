"""The spec schema: every naming and layout fact about the spec's ViT, in one place, as data.

Everything that names or orders the spec's pieces derives from the tables here:

- :data:`EMBED_PARAMS`, :data:`LAYER_PARAMS`, :data:`HEAD_PARAMS` — one :class:`Param` row per
  state-dict key (its shape in the dimension names of :mod:`vitspec.dims`, when it exists, the
  stage that owns it, its grads-record field and its Lean name). :func:`param_keys`,
  :func:`param_shapes`, :func:`param_count`, the grads records' key table
  (:mod:`vitspec.models.grads`) and the adapters' spec keys read these rows.
- :data:`STAGES` — the capture stages in forward order, ending with ``output`` (the value the
  model returns); :func:`stage_names` expands them.
- :data:`SUB_OPS` — a block's sub-ops in forward order per norm placement (:func:`sub_op_order`).
- :func:`grad_group` / :func:`group_rank` — which stage a gradient belongs to, and the backward
  order of those groups.
- The shared type literals (:data:`Variant`, :data:`NormPlacement`, :data:`FinalNorm`,
  :data:`Activation`, :data:`Pooling`, :data:`PatchEmbed`, :data:`SubOp`) and their value tuples.

A later extension of the spec (LayerScale gains, register tokens, qk-norm, ...) adds rows: a
per-layer ``Param`` with a :class:`When` on the new profile field, a stage row, a sub-op name.
No other module restates a key, a shape or an order.

This module imports nothing from vitspec (it is the bottom of the import graph): ``cfg`` is a
:class:`~vitspec.config.ViTConfig` (anything with the :class:`ConfigLike` fields), and ``profile``
a :class:`~vitspec.profiles.Profile` (anything with the :class:`ProfileLike` fields; resolve a
profile *name* with :func:`vitspec.profiles.get_profile` first).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

__all__ = [
    "ACTIVATIONS",
    "ALWAYS",
    "EMBED_PARAMS",
    "FFN_KINDS",
    "FINAL_NORMS",
    "GRAD_INPUT_KEY",
    "HEAD_KINDS",
    "HEAD_PARAMS",
    "HEAD_SPLITS",
    "LAYER_PARAMS",
    "MAP_POOLS",
    "NORM_KINDS",
    "NORM_PLACEMENTS",
    "PARAMS",
    "PATCH_EMBEDS",
    "PATCH_OUTS",
    "POOLINGS",
    "POS_EMBEDS",
    "POS_PREFIXES",
    "STAGES",
    "SUB_OPS",
    "SUB_OP_MEANING",
    "VARIANTS",
    "Activation",
    "ConfigLike",
    "FFNKind",
    "FinalNorm",
    "HeadKind",
    "HeadSplit",
    "MapPool",
    "NormKind",
    "NormPlacement",
    "Param",
    "PatchEmbed",
    "PatchOut",
    "Pooling",
    "PosEmbed",
    "PosPrefix",
    "ProfileLike",
    "Stage",
    "SubOp",
    "Variant",
    "When",
    "dim_sizes",
    "grad_group",
    "group_order",
    "group_rank",
    "head_width",
    "param_count",
    "param_keys",
    "param_rows",
    "param_shapes",
    "pos_prefix_count",
    "prefix_count",
    "stage_names",
    "stages_markdown",
    "sub_op_order",
    "vocabulary_markdown",
]

# -- shared type literals (one definition; vitspec.profiles, config and the adapters import these) ----------
Variant = Literal["mean", "cls"]  # ViTSpec (mean pool) / ViTClsSpec (CLS token)
NormPlacement = Literal["post", "pre"]  # LN(x + f(x)) (the spec) / x + f(LN(x))
FinalNorm = Literal["none", "before_pool", "after_pool"]
Activation = Literal["relu", "gelu_erf", "gelu_tanh", "quick_gelu", "silu", "sigmoid"]  # the last three: variations
Pooling = Literal["mean", "token", "mean_all", "cls_mean_concat", "map"]  # the last two: variation points
PatchEmbed = Literal["conv", "linear_ln"]
SubOp = Literal["norm1", "attn", "ls1", "norm2", "mlp", "ls2"]
# -- variation points beyond TorchLean (vitspec.primitives.variations); the first value is TorchLean's --
PosEmbed = Literal["learned", "none", "sincos_1d", "sincos_2d", "sincos_2d_timm"]
PosPrefix = Literal["all", "none", "cls"]  # which prefix rows the learned table covers (timm no_embed_class: none)
NormKind = Literal["layer", "rms"]
FFNKind = Literal["mlp", "glu"]
HeadKind = Literal["linear", "distilled"]
MapPool = Literal["token", "avg"]  # MAP pooling: latent 0, or the mean over the latents
HeadSplit = Literal["reshape_swap", "direct_reshape"]  # Lean splitHeadsSpec: reshape then swap / direct reshape
PatchOut = Literal["nat_formula", "sliding_window"]  # the patch-grid size formula of a TorchLean revision

VARIANTS: tuple[Variant, ...] = get_args(Variant)
NORM_PLACEMENTS: tuple[NormPlacement, ...] = get_args(NormPlacement)
FINAL_NORMS: tuple[FinalNorm, ...] = get_args(FinalNorm)
ACTIVATIONS: tuple[Activation, ...] = get_args(Activation)
POOLINGS: tuple[Pooling, ...] = get_args(Pooling)
PATCH_EMBEDS: tuple[PatchEmbed, ...] = get_args(PatchEmbed)
HEAD_SPLITS: tuple[HeadSplit, ...] = get_args(HeadSplit)
PATCH_OUTS: tuple[PatchOut, ...] = get_args(PatchOut)
POS_EMBEDS: tuple[PosEmbed, ...] = get_args(PosEmbed)
POS_PREFIXES: tuple[PosPrefix, ...] = get_args(PosPrefix)
NORM_KINDS: tuple[NormKind, ...] = get_args(NormKind)
FFN_KINDS: tuple[FFNKind, ...] = get_args(FFNKind)
HEAD_KINDS: tuple[HeadKind, ...] = get_args(HeadKind)
MAP_POOLS: tuple[MapPool, ...] = get_args(MapPool)

#: The key under which the gradient of the input image travels next to the parameter keys.
GRAD_INPUT_KEY = "grad_x"


class ConfigLike(Protocol):
    """The :class:`~vitspec.config.ViTConfig` fields the schema reads."""

    @property
    def patch_h(self) -> int: ...
    @property
    def patch_w(self) -> int: ...
    @property
    def embed_dim(self) -> int: ...
    @property
    def hidden_dim(self) -> int: ...
    @property
    def head_count(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def num_classes(self) -> int: ...
    def tokens(self, in_h: int, in_w: int) -> int: ...


class ProfileLike(Protocol):
    """The profile fields the schema reads (a :class:`vitspec.profiles.Profile` has them all)."""

    @property
    def norm_placement(self) -> str: ...
    @property
    def final_norm(self) -> str: ...
    @property
    def qkv_bias(self) -> bool: ...
    @property
    def out_bias(self) -> bool: ...
    @property
    def patch_embed(self) -> str: ...
    @property
    def head_norm(self) -> bool: ...
    @property
    def head_dim(self) -> int | None: ...
    @property
    def layer_scale(self) -> bool: ...
    @property
    def dist_token(self) -> bool: ...
    @property
    def reg_tokens(self) -> int: ...
    @property
    def pos_embed(self) -> str: ...
    @property
    def pos_prefix(self) -> str: ...
    @property
    def pre_norm(self) -> bool: ...
    @property
    def patch_bias(self) -> bool: ...
    @property
    def norm(self) -> str: ...
    @property
    def qk_norm(self) -> bool: ...
    @property
    def ffn(self) -> str: ...
    @property
    def ffn_bias(self) -> bool: ...
    @property
    def head_bias(self) -> bool: ...
    @property
    def head(self) -> str: ...
    @property
    def pooling(self) -> str | None: ...
    @property
    def map_latents(self) -> int: ...


# -- parameters -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class When:
    """When a parameter exists: for ``variant`` (None = both) and when ``flag(profile)`` holds (None = always).

    ``text`` says it in words for the docs (``"profile.qkv_bias"``).
    """

    text: str = "always"
    variant: Variant | None = None
    flag: Callable[[ProfileLike], bool] | None = None
    spec: bool = False  # the flag holds under TorchLean's values of the variation fields (a spec parameter)

    def holds(self, variant: str, profile: ProfileLike) -> bool:
        return (self.variant is None or self.variant == variant) and (self.flag is None or self.flag(profile))

    def required(self, variant: str) -> bool:
        """Present in every model of ``variant`` unless a variation field removes it (a grads record demands
        it): the spec's own parameters; ``pos``, ``ffn.b1`` are absent only under ``pos_embed``, ``ffn_bias``."""
        return (self.flag is None or self.spec) and (self.variant is None or self.variant == variant)


ALWAYS = When()
_CLS = When('variant == "cls"', variant="cls")
_LINEAR_LN = When('profile.patch_embed == "linear_ln"', flag=lambda p: p.patch_embed == "linear_ln")
_QKV_BIAS = When("profile.qkv_bias", flag=lambda p: p.qkv_bias)
_OUT_BIAS = When("profile.out_bias", flag=lambda p: p.out_bias)
_FINAL_NORM = When('profile.final_norm != "none"', flag=lambda p: p.final_norm != "none")
_HEAD_NORM = When("profile.head_norm", flag=lambda p: p.head_norm)
# Variation points (vitspec.primitives.variations); TorchLean's values keep every row above.
_LN = 'profile.norm == "layer"'
_PATCH_BIAS = When("profile.patch_bias", flag=lambda p: p.patch_bias, spec=True)
_DIST = When("profile.dist_token", flag=lambda p: p.dist_token)
_REG = When("profile.reg_tokens > 0", flag=lambda p: p.reg_tokens > 0)
_POS = When('profile.pos_embed == "learned"', flag=lambda p: p.pos_embed == "learned", spec=True)
_PRE_NORM = When("profile.pre_norm", flag=lambda p: p.pre_norm)
_PRE_NORM_LN = When(f"profile.pre_norm and {_LN}", flag=lambda p: p.pre_norm and p.norm == "layer")
_LAYER_SCALE = When("profile.layer_scale", flag=lambda p: p.layer_scale)
_QK_NORM = When("profile.qk_norm", flag=lambda p: p.qk_norm)
_QK_NORM_LN = When(f"profile.qk_norm and {_LN}", flag=lambda p: p.qk_norm and p.norm == "layer")
_GLU = When('profile.ffn == "glu"', flag=lambda p: p.ffn == "glu")
_GLU_BIAS = When('profile.ffn == "glu" and profile.ffn_bias', flag=lambda p: p.ffn == "glu" and p.ffn_bias)
_FFN_BIAS = When("profile.ffn_bias", flag=lambda p: p.ffn_bias, spec=True)
_NORM_BETA = When(_LN, flag=lambda p: p.norm == "layer", spec=True)
_FINAL_NORM_LN = When(
    f'profile.final_norm != "none" and {_LN}', flag=lambda p: p.final_norm != "none" and p.norm == "layer"
)
_HEAD_NORM_LN = When(f"profile.head_norm and {_LN}", flag=lambda p: p.head_norm and p.norm == "layer")
_HEAD_BIAS = When("profile.head_bias", flag=lambda p: p.head_bias, spec=True)
_DISTILLED = When('profile.head == "distilled"', flag=lambda p: p.head == "distilled")
_MAP = When('profile.pooling == "map"', flag=lambda p: p.pooling == "map")


@dataclass(frozen=True)
class Param:
    """One spec parameter (one state-dict key).

    Per-layer rows (in :data:`LAYER_PARAMS`) write ``key``, ``stage`` and ``lean`` relative to layer
    ``i``: the state-dict key is ``encoder.{i}.`` + ``key``, the stage ``blocks.{i}``. ``grad`` is the
    field of the grads record (:mod:`vitspec.models.grads`): top level ``d_pos``; per layer
    ``mha.dWq`` / ``ffn.dW1`` (a field of the layer's ``MHAGrads`` / ``FFNGrads``) or ``d_norm1_gamma``.
    ``shape`` uses the dimension names of :mod:`vitspec.dims` (:func:`dim_sizes` gives their values).
    """

    key: str
    shape: tuple[str, ...]
    stage: str
    grad: str
    lean: str  # the field of Lean ``ViTSpec`` / ``ViTClsSpec`` (``m.<lean>``); "" for a profile-only parameter
    when: When = ALWAYS
    sub_op: SubOp | None = None  # per-layer rows: the block sub-op that reads this parameter


#: Parameters before the encoder, in state-dict order.
EMBED_PARAMS: tuple[Param, ...] = (
    Param("patch_kernel", ("embed_dim", "channels", "patch_h", "patch_w"), "patch_embed", "d_patch_kernel",
          "patchEmbed.kernel"),
    Param("patch_bias", ("embed_dim",), "patch_embed", "d_patch_bias", "patchEmbed.bias", _PATCH_BIAS),
    Param("patch_norm_in_gamma", ("channels", "patch_h", "patch_w"), "patch_embed", "d_patch_norm_in_gamma", "",
          _LINEAR_LN),
    Param("patch_norm_in_beta", ("channels", "patch_h", "patch_w"), "patch_embed", "d_patch_norm_in_beta", "",
          _LINEAR_LN),
    Param("patch_norm_out_gamma", ("embed_dim",), "patch_embed", "d_patch_norm_out_gamma", "", _LINEAR_LN),
    Param("patch_norm_out_beta", ("embed_dim",), "patch_embed", "d_patch_norm_out_beta", "", _LINEAR_LN),
    Param("cls_token", ("embed_dim",), "pos_embed", "d_cls_token", "clsToken", _CLS),
    Param("dist_token", ("embed_dim",), "pos_embed", "d_dist_token", "", _DIST),
    Param("reg_tokens", ("registers", "embed_dim"), "pos_embed", "d_reg_tokens", "", _REG),
    Param("pos", ("pos_rows", "embed_dim"), "pos_embed", "d_pos", "posEnc.pos", _POS),
    Param("pre_norm_gamma", ("embed_dim",), "pre_norm", "d_pre_norm_gamma", "", _PRE_NORM),
    Param("pre_norm_beta", ("embed_dim",), "pre_norm", "d_pre_norm_beta", "", _PRE_NORM_LN),
)  # fmt: skip

_LEAN_LAYER = "encoder.layers[i]."  # Lean: m.encoder.layers is the list of TransformerEncoderLayer

#: Parameters of encoder layer ``i`` (keys relative to ``encoder.{i}.``), in state-dict order.
LAYER_PARAMS: tuple[Param, ...] = (
    Param("mha.Wq", ("embed_dim", "attn_dim"), "blocks.{i}", "mha.dWq", _LEAN_LAYER + "mha.Wq", sub_op="attn"),
    Param("mha.Wk", ("embed_dim", "attn_dim"), "blocks.{i}", "mha.dWk", _LEAN_LAYER + "mha.Wk", sub_op="attn"),
    Param("mha.Wv", ("embed_dim", "attn_dim"), "blocks.{i}", "mha.dWv", _LEAN_LAYER + "mha.Wv", sub_op="attn"),
    Param("mha.Wo", ("attn_dim", "embed_dim"), "blocks.{i}", "mha.dWo", _LEAN_LAYER + "mha.Wo", sub_op="attn"),
    Param("mha.bq", ("attn_dim",), "blocks.{i}", "mha.dbq", "", _QKV_BIAS, "attn"),
    Param("mha.bk", ("attn_dim",), "blocks.{i}", "mha.dbk", "", _QKV_BIAS, "attn"),
    Param("mha.bv", ("attn_dim",), "blocks.{i}", "mha.dbv", "", _QKV_BIAS, "attn"),
    Param("mha.bo", ("embed_dim",), "blocks.{i}", "mha.dbo", "", _OUT_BIAS, "attn"),
    Param("ffn.W1", ("embed_dim", "hidden_dim"), "blocks.{i}", "ffn.dW1", _LEAN_LAYER + "ffn.W1", sub_op="mlp"),
    Param("ffn.b1", ("hidden_dim",), "blocks.{i}", "ffn.db1", _LEAN_LAYER + "ffn.b1", _FFN_BIAS, "mlp"),
    Param("ffn.W2", ("hidden_dim", "embed_dim"), "blocks.{i}", "ffn.dW2", _LEAN_LAYER + "ffn.W2", sub_op="mlp"),
    Param("ffn.b2", ("embed_dim",), "blocks.{i}", "ffn.db2", _LEAN_LAYER + "ffn.b2", _FFN_BIAS, "mlp"),
    Param("norm1_gamma", ("embed_dim",), "blocks.{i}", "d_norm1_gamma", _LEAN_LAYER + "norm1_gamma", sub_op="norm1"),
    Param("norm1_beta", ("embed_dim",), "blocks.{i}", "d_norm1_beta", _LEAN_LAYER + "norm1_beta", _NORM_BETA,
          "norm1"),
    Param("norm2_gamma", ("embed_dim",), "blocks.{i}", "d_norm2_gamma", _LEAN_LAYER + "norm2_gamma", sub_op="norm2"),
    Param("norm2_beta", ("embed_dim",), "blocks.{i}", "d_norm2_beta", _LEAN_LAYER + "norm2_beta", _NORM_BETA,
          "norm2"),
    # Variation points (after the spec's rows, so a TorchLean state dict keeps its order).
    Param("ffn.Wg", ("embed_dim", "hidden_dim"), "blocks.{i}", "ffn.dWg", "", _GLU, "mlp"),
    Param("ffn.bg", ("hidden_dim",), "blocks.{i}", "ffn.dbg", "", _GLU_BIAS, "mlp"),
    Param("mha.q_norm_gamma", ("head_dim",), "blocks.{i}", "mha.dq_norm_gamma", "", _QK_NORM, "attn"),
    Param("mha.q_norm_beta", ("head_dim",), "blocks.{i}", "mha.dq_norm_beta", "", _QK_NORM_LN, "attn"),
    Param("mha.k_norm_gamma", ("head_dim",), "blocks.{i}", "mha.dk_norm_gamma", "", _QK_NORM, "attn"),
    Param("mha.k_norm_beta", ("head_dim",), "blocks.{i}", "mha.dk_norm_beta", "", _QK_NORM_LN, "attn"),
    Param("ls1_gamma", ("embed_dim",), "blocks.{i}", "d_ls1_gamma", "", _LAYER_SCALE, "ls1"),
    Param("ls2_gamma", ("embed_dim",), "blocks.{i}", "d_ls2_gamma", "", _LAYER_SCALE, "ls2"),
)  # fmt: skip

#: Parameters after the encoder, in state-dict order (a head norm belongs to the head).
HEAD_PARAMS: tuple[Param, ...] = (
    Param("final_norm_gamma", ("embed_dim",), "final_norm", "d_final_norm_gamma", "", _FINAL_NORM),
    Param("final_norm_beta", ("embed_dim",), "final_norm", "d_final_norm_beta", "", _FINAL_NORM_LN),
    *(Param(f"map.{k}", shape, "pool", f"d_map_{k}", "", _MAP) for k, shape in (
        ("latent", ("latents", "embed_dim")), ("Wq", ("embed_dim", "embed_dim")), ("bq", ("embed_dim",)),
        ("Wk", ("embed_dim", "embed_dim")), ("bk", ("embed_dim",)), ("Wv", ("embed_dim", "embed_dim")),
        ("bv", ("embed_dim",)), ("Wo", ("embed_dim", "embed_dim")), ("bo", ("embed_dim",)),
        ("norm_gamma", ("embed_dim",)), ("norm_beta", ("embed_dim",)), ("W1", ("embed_dim", "hidden_dim")),
        ("b1", ("hidden_dim",)), ("W2", ("hidden_dim", "embed_dim")), ("b2", ("embed_dim",)),
    )),  # MAP pooling (profile.pooling == "map"): the key names of vitspec.primitives.variations.MAP_KEYS
    Param("head_norm_gamma", ("embed_dim",), "head", "d_head_norm_gamma", "", _HEAD_NORM),
    Param("head_norm_beta", ("embed_dim",), "head", "d_head_norm_beta", "", _HEAD_NORM_LN),
    Param("head_W", ("classes", "pooled"), "head", "d_head_W", "head.weights"),
    Param("head_b", ("classes",), "head", "d_head_b", "head.bias", _HEAD_BIAS),
    Param("head_dist_W", ("classes", "embed_dim"), "head", "d_head_dist_W", "", _DISTILLED),
    Param("head_dist_b", ("classes",), "head", "d_head_dist_b", "", _DISTILLED),
)  # fmt: skip

#: Every row, in state-dict order (per-layer rows stand for every layer).
PARAMS: tuple[Param, ...] = EMBED_PARAMS + LAYER_PARAMS + HEAD_PARAMS

_LAYER_KEY = re.compile(r"^encoder\.(0|[1-9][0-9]*)\.(.+)$")
_TOP_BY_KEY = {p.key: p for p in EMBED_PARAMS + HEAD_PARAMS}


def head_width(cfg: ConfigLike, profile: ProfileLike | None = None) -> int:
    """Per-head width: the profile's ``head_dim`` (timm ``attn_head_dim``, vit-pytorch ``dim_head``), else
    the spec's ``embed_dim // head_count`` (Lean ``Nat`` floor)."""
    hd = None if profile is None else profile.head_dim
    return cfg.head_dim if hd is None else hd


def prefix_count(variant: str, profile: ProfileLike | None = None) -> int:
    """Prefix tokens before the patches: CLS (``variant == "cls"``), a distillation token, registers."""
    n = 1 if variant == "cls" else 0
    if profile is not None:
        n += int(profile.dist_token) + profile.reg_tokens
    return n


def pos_prefix_count(variant: str, profile: ProfileLike | None = None) -> int:
    """How many prefix rows the learned position table covers: all (the spec), none (timm
    ``no_embed_class``) or the CLS row only (HF DINOv2 with registers)."""
    where = "all" if profile is None else profile.pos_prefix
    return {"all": prefix_count(variant, profile), "none": 0, "cls": 1 if variant == "cls" else 0}[where]


def dim_sizes(
    cfg: ConfigLike, in_c: int, in_h: int, in_w: int, *, variant: str, profile: ProfileLike | None = None
) -> dict[str, int]:
    """The sizes of the dimension names a :class:`Param` shape uses (same names as :mod:`vitspec.dims`)."""
    patches = cfg.tokens(in_h, in_w)
    concat = profile is not None and profile.pooling == "cls_mean_concat"
    return {
        "channels": in_c,
        "patch_h": cfg.patch_h,
        "patch_w": cfg.patch_w,
        "embed_dim": cfg.embed_dim,
        "hidden_dim": cfg.hidden_dim,
        "head_dim": head_width(cfg, profile),
        "attn_dim": cfg.head_count * head_width(cfg, profile),
        "patches": patches,
        "tokens": patches + prefix_count(variant, profile),
        "registers": 0 if profile is None else profile.reg_tokens,
        "pos_rows": patches + pos_prefix_count(variant, profile),
        "pooled": 2 * cfg.embed_dim if concat else cfg.embed_dim,
        "latents": 1 if profile is None else profile.map_latents,
        "classes": cfg.num_classes,
    }


def param_rows(num_layers: int, *, variant: str, profile: ProfileLike) -> Iterator[tuple[str, Param]]:
    """``(state-dict key, row)`` for every parameter of the model, in state-dict order."""
    for p in EMBED_PARAMS:
        if p.when.holds(variant, profile):
            yield p.key, p
    for i in range(num_layers):
        for p in LAYER_PARAMS:
            if p.when.holds(variant, profile):
                yield f"encoder.{i}.{p.key}", p
    for p in HEAD_PARAMS:
        if p.when.holds(variant, profile):
            yield p.key, p


def param_keys(num_layers: int, *, variant: str, profile: ProfileLike) -> list[str]:
    """The spec state-dict keys, in state-dict order."""
    return [k for k, _ in param_rows(num_layers, variant=variant, profile=profile)]


def param_shapes(
    cfg: ConfigLike, in_c: int, in_h: int, in_w: int, *, variant: str, profile: ProfileLike
) -> dict[str, tuple[int, ...]]:
    """Spec state-dict key -> shape, in state-dict order."""
    size = dim_sizes(cfg, in_c, in_h, in_w, variant=variant, profile=profile)
    rows = param_rows(cfg.num_layers, variant=variant, profile=profile)
    return {k: tuple(size[d] for d in p.shape) for k, p in rows}


def param_count(cfg: ConfigLike, in_c: int, in_h: int, in_w: int, *, variant: str, profile: ProfileLike) -> int:
    """Number of scalars in the parameter bundle (the sum over :func:`param_shapes`)."""
    shapes = param_shapes(cfg, in_c, in_h, in_w, variant=variant, profile=profile)
    return sum(math.prod(s) for s in shapes.values())


# -- stages ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One capture stage. ``name`` holds ``{i}`` for a per-layer stage; ``when(final_norm, has_head)``
    says whether a model has it (None = always)."""

    name: str
    tensor: str
    meaning: str
    lean: str
    when: Callable[[str, bool], bool] | None = None
    option: str = ""  # a variation stage: the :func:`stage_names` flag that turns it on ("pre_norm")

    def holds(self, final_norm: str, has_head: bool) -> bool:
        return self.when is None or self.when(final_norm, has_head)


#: The stages in forward order.
STAGES: tuple[Stage, ...] = (
    Stage("patch_embed", "(*b, patches, E)", "after conv + flatten (or linear_ln), before CLS/pos",
          "`tokens` (conv2dSpec, reshapeSpec, swapFirstTwoSpec)"),
    Stage("pos_embed", "(*b, tokens, E)", "after CLS prepend and pos add", "`tokensPos`"),
    Stage("pre_norm", "(*b, tokens, E)", "norm before the first block (profile pre_norm: timm norm_pre, CLIP "
          "ln_pre)", "(none)", option="pre_norm"),
    Stage("blocks.{i}", "(*b, tokens, E)", "output of encoder layer i", "`TransformerEncoderLayer.forward` of layer i"),
    Stage("final_norm", "(*b, tokens, E)", "final LayerNorm over all tokens (profile final_norm before_pool)",
          "(none)", lambda fn, _: fn == "before_pool"),
    Stage("pool", "(*b, E)", "pooled vector (before an after_pool norm)", "`pooled`"),
    Stage("final_norm", "(*b, E)", "LayerNorm of the pooled vector (profile final_norm after_pool)", "(none)",
          lambda fn, _: fn == "after_pool"),
    Stage("head", "(*b, classes)", "logits (a head norm is part of the head)", "`linearSpec m.head pooled`",
          lambda _, head: head),
    Stage("output", "(*b, classes) or (*b, E)", "the value the model returns (logits; the pooled vector "
          "without a head)", "the result of `ViTSpec.forward`"),
)  # fmt: skip

#: A block's sub-ops in forward order, per norm placement.
SUB_OPS: dict[str, tuple[SubOp, ...]] = {
    "post": ("attn", "norm1", "mlp", "norm2"),  # h = LN1(x + MHA(x)); y = LN2(h + FFN(h))
    "pre": ("norm1", "attn", "norm2", "mlp"),  # h = x + MHA(LN1(x)); y = h + FFN(LN2(h))
    # profile.layer_scale (pre-norm only): h = x + ls1(MHA(LN1(x))); y = h + ls2(FFN(LN2(h)))
    "pre+layer_scale": ("norm1", "attn", "ls1", "norm2", "mlp", "ls2"),
}

#: What each sub-op stage holds, and its Lean name (post-norm, ``TransformerEncoderLayer.forward``).
SUB_OP_MEANING: dict[SubOp, tuple[str, str]] = {
    "attn": ("MHA output", "`attnOut` (post-norm)"),
    "norm1": ("LN1 output", "`normAttn` (post-norm)"),
    "mlp": ("FFN output", "`ffnOut` (post-norm)"),
    "norm2": ("LN2 output", "the layer output (post-norm)"),
    "ls1": ("LayerScale of the MHA output (profile layer_scale)", "(none)"),
    "ls2": ("LayerScale of the FFN output (profile layer_scale)", "(none)"),
}


def sub_op_order(norm_placement: str, layer_scale: bool = False) -> tuple[SubOp, ...]:
    """Forward order of a block's sub-ops: pre-norm ``norm1 attn norm2 mlp``, post-norm ``attn norm1 mlp norm2``;
    with ``layer_scale`` (pre-norm) ``norm1 attn ls1 norm2 mlp ls2``."""
    try:
        return SUB_OPS[norm_placement + ("+layer_scale" if layer_scale and norm_placement == "pre" else "")]
    except KeyError:
        raise ValueError(
            f"norm_placement must be one of {', '.join(map(repr, SUB_OPS))}, got {norm_placement!r}"
        ) from None


def stage_names(
    num_layers: int,
    *,
    final_norm: str,
    has_head: bool = True,
    sub_ops: bool = False,
    norm_placement: str = "post",
    pre_norm: bool = False,
    layer_scale: bool = False,
    pooled: bool = True,
) -> list[str]:
    """The stage names in forward order, ``output`` last; with ``sub_ops`` each block's sub-ops
    (``blocks.{i}.attn``, ...) come right before the block. ``pre_norm`` / ``layer_scale``: the
    profile fields that add a stage / sub-ops; ``pooled=False`` drops ``pool`` (a distilled head
    reads two rows, there is no single pooled vector)."""
    names: list[str] = []
    options = {"pre_norm": pre_norm}
    for st in STAGES:
        if not st.holds(final_norm, has_head) or (st.option and not options[st.option]):
            continue
        if st.name == "pool" and not pooled:
            continue
        if "{i}" not in st.name:
            names.append(st.name)
            continue
        for i in range(num_layers):
            block = st.name.format(i=i)
            if sub_ops:
                names += [f"{block}.{s}" for s in sub_op_order(norm_placement, layer_scale)]
            names.append(block)
    return names


# -- gradient groups -------------------------------------------------------------------------------------------
def grad_group(key: str) -> str:
    """The stage a spec key's gradient belongs to: ``encoder.3.mha.Wq`` -> ``blocks.3``, ``pos`` /
    ``cls_token`` -> ``pos_embed``, ``head_norm_gamma`` -> ``head``, ``grad_x`` -> ``input``;
    ``other`` for a key the schema does not know."""
    if key == GRAD_INPUT_KEY:
        return "input"
    m = _LAYER_KEY.match(key)
    if m:
        return f"blocks.{m.group(1)}"  # every per-layer parameter belongs to its block
    row = _TOP_BY_KEY.get(key)
    return row.stage if row is not None else "other"


def group_order(num_layers: int) -> list[str]:
    """Gradient groups in backward order: the stages reversed (head first), then ``input``."""
    fwd = stage_names(num_layers, final_norm="before_pool", has_head=True, pre_norm=True)
    return [*reversed(fwd), "input"]


def group_rank(group: str, layers: int) -> int:
    """Position of ``group`` in :func:`group_order` (unknown groups last)."""
    order = group_order(layers)
    return order.index(group) if group in order else len(order)


# -- the vocabulary table (docs/architecture.md embeds it; a test keeps them in sync) ---------------------------
def vocabulary_markdown() -> str:
    """One table: stage ↔ state-dict keys ↔ grads fields ↔ Lean names, from the rows above."""
    rows = ["| stage | state-dict key | shape | present | grads field | Lean |", "|---|---|---|---|---|---|"]
    for p in PARAMS:
        per_layer = p in LAYER_PARAMS
        key = f"encoder.{{i}}.{p.key}" if per_layer else p.key
        grad = f"d_encoder[i].{p.grad}" if per_layer else p.grad
        stage = p.stage + (f" ({p.sub_op})" if p.sub_op else "")
        shape = "(" + ", ".join(p.shape) + ("," if len(p.shape) == 1 else "") + ")"
        lean = f"`{p.lean}`" if p.lean else "— (profile only)"
        rows.append(f"| `{stage}` | `{key}` | {shape} | {p.when.text} | `{grad}` | {lean} |")
    rows.append(f"| `input` | `{GRAD_INPUT_KEY}` | (channels, in_h, in_w) | always | `grad_x` (backward result) | "
                "`d_input` (second result of `ViTSpec.backward`) |")  # fmt: skip
    return "\n".join(rows)


def stages_markdown() -> str:
    """The stages in forward order with their tensors and Lean values, sub-ops after their block."""
    rows = ["| stage | tensor | what | Lean |", "|---|---|---|---|"]
    for st in STAGES:
        rows.append(f"| `{st.name}` | {st.tensor} | {st.meaning} | {st.lean} |")
        if "{i}" in st.name:
            for sub, (meaning, lean) in SUB_OP_MEANING.items():
                rows.append(f"| `{st.name}.{sub}` | (*b, tokens, E) | sub-op: {meaning} | {lean} |")
    return "\n".join(rows)
