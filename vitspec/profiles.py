"""Numerics profiles: the variation points of third-party ViTs (``docs/profiles.md``) as data.

A :class:`Profile` is a frozen record; the spec's own behaviour is ``torchlean``
(the default everywhere), an alias of ``torchlean@b2a2184``; ``torchlean@411682f`` is the
literal 411682f revision (see :mod:`vitspec.revisions` and ``docs/name-map.md``). The others
describe what each library computes, so the spec model run under a library's profile
reproduces that library's ViT exactly, and a conformance report can list where a model
departs from a chosen spec revision (:func:`deviations`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError
from .revisions import DEFAULT_REVISION, REVISIONS, SpecRevision, get_revision
from .schema import (
    ACTIVATIONS,
    FFN_KINDS,
    FINAL_NORMS,
    HEAD_KINDS,
    HEAD_SPLITS,
    MAP_POOLS,
    NORM_KINDS,
    NORM_PLACEMENTS,
    PATCH_EMBEDS,
    POOLINGS,
    POS_EMBEDS,
    POS_PREFIXES,
    Activation,
    FFNKind,
    FinalNorm,
    HeadKind,
    HeadSplit,
    MapPool,
    NormKind,
    NormPlacement,
    PatchEmbed,
    Pooling,
    PosEmbed,
    PosPrefix,
)

__all__ = [
    "ALIASES",
    "PROFILES",
    "VARIATION_FIELDS",
    "Profile",
    "deviations",
    "get_profile",
    "revision_profile",
    "variations_markdown",
]


@dataclass(frozen=True)
class Profile:
    """One library's numerics.

    Fields (the variation points of ``docs/profiles.md``):
      - ``norm_placement``: ``post`` (``LN(x + f(x))``, the spec) or ``pre`` (``x + f(LN(x))``).
      - ``final_norm``: ``none``; ``before_pool`` (a LayerNorm over all tokens after the
        last block: timm ``norm``, torchvision ``encoder.ln``, HF ``layernorm``,
        vit-pytorch ``transformer.norm``); ``after_pool`` (timm ``fc_norm``).
      - ``ln_eps``: epsilon inside ``sqrt(var + eps)`` of every LayerNorm.
      - ``activation``: FFN nonlinearity.
      - ``qkv_bias`` / ``out_bias``: biases of the Q/K/V and output projections.
      - ``pooling``: ``None`` = the variant's spec pooling (mean for ``ViTSpec``, token 0
        for ``ViTClsSpec``); ``mean`` = mean over patch tokens (timm ``avg`` excludes the
        CLS token); ``token`` = token 0; ``mean_all`` = mean over all tokens, CLS
        included (vit-pytorch ``pool='mean'``).
      - ``patch_embed``: ``conv`` or ``linear_ln`` (vit-pytorch: rearrange, LayerNorm,
        Linear, LayerNorm; needs stride = patch and padding 0).
      - ``head_norm``: a LayerNorm right before the head Linear (d2l).
      - ``require_heads_divide``: demand ``head_count | embed_dim`` (PyTorch-style attention).
      - ``head_split``: Lean ``splitHeadsSpec`` of the revision: ``reshape_swap`` (reshape to
        ``(T, H, hd)``, then swap; every library) or ``direct_reshape`` (TorchLean 411682f).
      - ``lean_backward``: the explicit MHA backward as the Lean writes it (split/combine used
        as each other's adjoints); differs from the exact VJP only for ``direct_reshape``.
      - ``revision``: the :class:`~vitspec.revisions.SpecRevision` name a spec profile
        implements (``None`` for library profiles).

    Variation points beyond TorchLean (:data:`VARIATION_FIELDS`, computed by
    :mod:`vitspec.primitives.variations`; every default is TorchLean's, and every other value is a
    :func:`deviations` line): ``head_dim`` (per-head width, ``None`` = ``embed_dim // heads``),
    ``layer_scale``, ``dist_token``, ``reg_tokens``, ``pos_embed``, ``pos_prefix``, ``pre_norm``,
    ``patch_bias``, ``norm``, ``qk_norm``, ``ffn``, ``ffn_bias``, ``head_bias``, ``head``; the table
    in ``docs/profiles.md`` (:func:`variations_markdown`) names the library options behind each.
    """

    name: str
    norm_placement: NormPlacement = "post"
    final_norm: FinalNorm = "none"
    ln_eps: float = 1e-6
    activation: Activation = "relu"
    qkv_bias: bool = False
    out_bias: bool = False
    pooling: Pooling | None = None
    patch_embed: PatchEmbed = "conv"
    head_norm: bool = False
    require_heads_divide: bool = False
    source: str = ""
    head_split: HeadSplit = "reshape_swap"
    lean_backward: bool = True
    revision: str | None = None
    # -- variation points (not TorchLean; defaults are TorchLean's) --
    head_dim: int | None = None
    layer_scale: bool = False
    dist_token: bool = False
    reg_tokens: int = 0
    pos_embed: PosEmbed = "learned"
    pos_prefix: PosPrefix = "all"
    pre_norm: bool = False
    patch_bias: bool = True
    norm: NormKind = "layer"
    qk_norm: bool = False
    ffn: FFNKind = "mlp"
    ffn_bias: bool = True
    head_bias: bool = True
    head: HeadKind = "linear"
    map_latents: int = 1  # pooling == "map": the latent queries (timm AttentionPoolLatent latent_len)
    map_pool: MapPool = "token"  # pooling == "map": latent 0, or the mean over the latents

    def replace(self, **changes: object) -> Profile:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        allowed = {
            "norm_placement": NORM_PLACEMENTS,
            "final_norm": FINAL_NORMS,
            "activation": ACTIVATIONS,
            "pooling": (None, *POOLINGS),
            "patch_embed": PATCH_EMBEDS,
            "head_split": HEAD_SPLITS,
            "lean_backward": (True, False),
            "revision": (None, *REVISIONS),
            "pos_embed": POS_EMBEDS,
            "pos_prefix": POS_PREFIXES,
            "norm": NORM_KINDS,
            "ffn": FFN_KINDS,
            "head": HEAD_KINDS,
            "map_pool": MAP_POOLS,
        }
        bad = [
            f"{k}={getattr(self, k)!r} (valid: {', '.join(map(repr, v))})"
            for k, v in allowed.items()
            if getattr(self, k) not in v
        ]
        if not (isinstance(self.ln_eps, float | int) and not isinstance(self.ln_eps, bool) and self.ln_eps > 0):
            bad.append(f"ln_eps={self.ln_eps!r} (must be a positive number)")
        bad += [
            f"{f}={getattr(self, f)!r} (must be True or False)"
            for f in _FLAGS
            if not isinstance(getattr(self, f), bool)
        ]
        for f, lo in (("head_dim", 1), ("reg_tokens", 0), ("map_latents", 1)):
            v = getattr(self, f)
            if not (v is None and f == "head_dim") and not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
                bad.append(f"{f}={v!r} (must be an integer >= {lo}{' or None' if f == 'head_dim' else ''})")
        if bad:
            raise ConfigError(f"profile {self.name!r}: invalid " + "; ".join(bad))


#: The boolean variation fields (validated as booleans; a checkpoint stores them as JSON booleans).
_FLAGS = ("layer_scale", "dist_token", "pre_norm", "patch_bias", "qk_norm", "ffn_bias", "head_bias")

#: The variation points beyond TorchLean, as ``field -> (deviation label, library options that select a
#: non-default value)``; ``docs/profiles.md`` renders this table (:func:`variations_markdown`).
VARIATION_FIELDS: dict[str, tuple[str, str]] = {
    "head_dim": ("attention width heads*head_dim", "vit-pytorch `ViT/SimpleViT(dim_head=...)` (default 64), "
                 "timm `Attention(attn_head_dim=...)`"),
    "layer_scale": ("layer scale", "timm `init_values` (not None/0), HF DINOv2 (`layer_scale1/2`), DeiT-III, CaiT"),
    "dist_token": ("distillation token", "timm `VisionTransformerDistilled` (`deit_*_distilled_*`), HF DeiT"),
    "reg_tokens": ("register tokens", "timm `reg_tokens=R` (`vit_*_reg*`), HF `Dinov2WithRegisters`"),
    "pos_embed": ("position embedding", "timm `pos_embed='none'` -> `none`; vit-pytorch `SimpleViT` -> `sincos_2d`; "
                  "timm `build_sincos2d_pos_embed` -> `sincos_2d_timm`; TorchLean's sinusoid -> `sincos_1d`"),
    "pos_prefix": ("pos on prefix rows", "timm `no_embed_class=True` -> `none`; HF DINOv2-with-registers -> `cls`"),
    "pre_norm": ("norm before the blocks", "timm `pre_norm=True` (`norm_pre`, CLIP models), HF CLIP `pre_layrnorm`"),
    "patch_bias": ("patch embedding bias", "timm `pre_norm=True` (drops it), HF CLIP `patch_embedding(bias=False)`"),
    "norm": ("norm kind", "timm `norm_layer='rmsnorm'` / `RmsNorm` -> `rms` (every model norm)"),
    "qk_norm": ("q/k norm", "timm `qk_norm=True` (per-head norm of the model's kind and eps)"),
    "ffn": ("FFN kind", "timm `mlp_layer=SwiGLU / GluMlp / SwiGLUPacked`, HF `Dinov2Config(use_swiglu_ffn=True)` "
            "-> `glu` (the activation is the gate's)"),
    "ffn_bias": ("FFN biases", "timm `proj_bias=False` (with `out_bias=False`)"),
    "head_bias": ("head bias", "HF `CLIPVisionModelWithProjection.visual_projection` (bias-free)"),
    "head": ("head", "timm `VisionTransformerDistilled` (eval), HF `DeiTForImageClassificationWithTeacher` "
             "-> `distilled` (mean of the class and distillation heads)"),
    "map_latents": ("MAP latents", "timm `AttentionPoolLatent(latent_len=...)` (with `pooling='map'`)"),
    "map_pool": ("MAP pool", "timm `AttentionPoolLatent(pool_type='avg')` (with `pooling='map'`)"),
}  # fmt: skip


def revision_profile(revision: str | SpecRevision, name: str | None = None) -> Profile:
    """The spec profile of a TorchLean revision (named ``torchlean@<commit>`` unless ``name``)."""
    r = get_revision(revision)
    return Profile(
        name or f"torchlean@{r.name}",
        ln_eps=r.ln_eps,
        head_split=r.head_split,
        lean_backward=r.lean_backward,
        revision=r.name,
        source=f"TorchLean NN.Spec.Models.Vit at {r.repo}@{r.short}",
    )


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        revision_profile(DEFAULT_REVISION, "torchlean"),
        *(revision_profile(r) for r in REVISIONS),
        Profile(
            "timm",
            "pre",
            "before_pool",
            1e-6,
            "gelu_erf",
            True,
            True,
            "token",
            "conv",
            False,
            True,
            "timm.models.vision_transformer.VisionTransformer (global_pool='token')",
        ),
        Profile(
            "torchvision",
            "pre",
            "before_pool",
            1e-6,
            "gelu_erf",
            True,
            True,
            "token",
            "conv",
            False,
            True,
            "torchvision.models.vision_transformer.VisionTransformer",
        ),
        Profile(
            "hf",
            "pre",
            "before_pool",
            1e-12,
            "gelu_erf",
            True,
            True,
            "token",
            "conv",
            False,
            True,
            "transformers ViTForImageClassification (layer_norm_eps=1e-12)",
        ),
        Profile(
            "vit_pytorch",
            "pre",
            "before_pool",
            1e-5,
            "gelu_erf",
            False,
            True,
            "token",
            "linear_ln",
            False,
            True,
            "vit_pytorch.ViT (pool='cls')",
        ),
        Profile(
            "d2l",
            "pre",
            "none",
            1e-5,
            "gelu_erf",
            False,
            False,
            "token",
            "conv",
            True,
            True,
            "d2l.ai 11.8 ViT (LN + Linear head, MHA without biases)",
        ),
    )
}


#: Old profile names that still resolve (old name -> name): ``lucidrains`` was renamed to match its adapter.
ALIASES: dict[str, str] = {"lucidrains": "vit_pytorch"}


def get_profile(profile: str | Profile) -> Profile:
    """A profile by name or alias (or pass one through); unknown names raise ``ConfigError``."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[ALIASES.get(profile, profile)]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}") from None


_LABELS = {
    "norm_placement": "norm placement",
    "final_norm": "final norm",
    "ln_eps": "LayerNorm eps",
    "activation": "FFN activation",
    "qkv_bias": "q/k/v bias",
    "out_bias": "attention output bias",
    "pooling": "pooling",
    "patch_embed": "patch embedding",
    "head_norm": "head norm",
    "head_split": "head split",
}


def deviations(
    profile: str | Profile, *, variant: str = "mean", against: str | Profile | SpecRevision = "torchlean"
) -> list[str]:
    """Human-readable differences from a spec revision, e.g. ``"norm placement: pre (spec: post)"``.

    ``against``: a profile name (default the alias ``torchlean``), a :class:`Profile`, or a
    revision (``411682f``, ``torchlean@411682f``, a :class:`~vitspec.revisions.SpecRevision`).
    """
    p = get_profile(profile)
    if isinstance(against, SpecRevision):
        ref = revision_profile(against)
    elif isinstance(against, Profile) or against in PROFILES:
        ref = get_profile(against)
    else:
        ref = revision_profile(get_revision(against))
    spec_pool = "mean" if variant == "mean" else "token"
    out = []
    for f, label in _LABELS.items():
        a, b = getattr(p, f), getattr(ref, f)
        if f == "pooling":
            a, b = a or spec_pool, spec_pool
        if a != b:
            out.append(f"{label}: {a} (spec: {b})")
    for f, (label, _) in VARIATION_FIELDS.items():
        a, b = getattr(p, f), getattr(ref, f)
        if a == b:
            continue
        if f == "head_dim":
            out.append(f"{label}: head_dim={a} (spec: {'embed_dim // heads' if b is None else b})")
        elif isinstance(a, bool):
            out.append(f"{label}: {'on' if a else 'off'} (spec: {'on' if b else 'off'})")
        else:
            out.append(f"{label}: {a} (spec: {b})")
    return out


def variations_markdown() -> str:
    """The variation points as a Markdown table (docs/profiles.md embeds it; a test keeps them in sync)."""
    rows = ["| field | TorchLean value | deviation line | library options that select another value |",
            "|---|---|---|---|"]  # fmt: skip
    spec = PROFILES["torchlean"]
    for f, (label, options) in VARIATION_FIELDS.items():
        rows.append(f"| `{f}` | `{getattr(spec, f)!r}` | {label} | {options} |")
    extended = (
        ("activation", "FFN activation", "`quick_gelu`: timm `act_layer='quick_gelu'` (`*_clip_quickgelu_*`), HF CLIP "
         "`hidden_act='quick_gelu'`; `silu` / `sigmoid`: GLU gates"),
        ("pooling", "pooling", "`cls_mean_concat`: HF `Dinov2ForImageClassification` (`[CLS; mean of patches]`); "
         "`map`: timm `global_pool='map'` (`AttentionPoolLatent`), HF SigLIP's `head` (MAP attention pooling)"),
    )  # fmt: skip
    for f, label, options in extended:
        rows.append(f"| `{f}` (extended) | `{getattr(spec, f)!r}` | {label} | {options} |")
    return "\n".join(rows)


def profiles_markdown() -> str:
    """The profiles as a Markdown table (docs/profiles.md embeds this; a test keeps them in sync)."""
    cols = [*list(_LABELS), "require_heads_divide"]
    head = "| profile | " + " | ".join(_LABELS.get(c, "heads ∣ embed_dim required") for c in cols) + " | source |"
    sep = "|" + "---|" * (len(cols) + 2)
    rows = []
    for p in PROFILES.values():
        vals = ["variant default" if getattr(p, c) is None else str(getattr(p, c)) for c in cols]
        rows.append(f"| `{p.name}` | " + " | ".join(vals) + f" | {p.source} |")
    return "\n".join([head, sep, *rows])
