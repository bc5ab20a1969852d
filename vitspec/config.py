"""``ViTConfig``: the spec's hyperparameters, their well-formedness, and presets.

Mirrors Lean ``Models.ViTConfig`` and ``ViTConfig.WF`` (``NN/Spec/Models/Vit.lean``).
``check`` adds the conditions a *runnable* model needs that the Lean ``WF`` leaves
out (``stride > 0``, ``in_c > 0``, the kernel fitting the padded input) and says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import schema
from .errors import ConfigError, Violation
from .formulas import patch_count, patch_out_h, patch_out_w
from .profiles import Profile, get_profile
from .schema import Variant

__all__ = [
    "PRESETS",
    "ViTConfig",
    "config_violations",
    "param_count",
    "preset",
    "vit_base_patch16",
    "vit_d2l",
    "vit_huge_patch14",
    "vit_large_patch16",
    "vit_small_patch16",
    "vit_tiny_patch16",
]

# Lean name of each field, for messages and the docs' name map.
LEAN_FIELD = {
    "patch_h": "patchH",
    "patch_w": "patchW",
    "stride": "stride",
    "padding": "padding",
    "embed_dim": "embedDim",
    "hidden_dim": "hiddenDim",
    "head_count": "headCount",
    "num_layers": "numLayers",
    "num_classes": "numClasses",
}

_LEAN_WF_NOTE = "not part of Lean ViTConfig.WF"


def _is_nat(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True)
class ViTConfig:
    """ViT hyperparameters (Lean ``ViTConfig``); defaults are Lean's (ViT-B/16, 1000 classes).

    Constructing a config validates only the *types* (natural numbers); the
    spec's well-formedness is checked by :meth:`check`, which reports every
    violated condition at once.
    """

    patch_h: int = 16
    patch_w: int = 16
    stride: int = 16
    padding: int = 0
    embed_dim: int = 768
    hidden_dim: int = 3072
    head_count: int = 12
    num_layers: int = 12
    num_classes: int = 1000

    def __post_init__(self) -> None:
        bad = [
            Violation(f.name, "Nat", "a natural number (int >= 0, not bool)", repr(getattr(self, f.name)))
            for f in dataclasses.fields(self)
            if not _is_nat(getattr(self, f.name))
        ]
        if bad:
            raise ConfigError(bad, context="ViTConfig")

    # -- derived quantities (pure formulas; see vitspec.formulas) ----------------
    @property
    def head_dim(self) -> int:
        """Per-head width ``embedDim / headCount`` (``Nat`` floor; 0 when head_count is 0)."""
        return self.embed_dim // self.head_count if self.head_count else 0

    @property
    def heads_divide_embed(self) -> bool:
        """``headCount ∣ embedDim`` (Lean ``TransformerLayerConfig.WF.headCount_dvd_embedDim``).

        Legal to violate for ``ViTConfig.WF`` (the spec floors the per-head
        width), but PyTorch-style attention needs it; profiles demand it.
        """
        return self.head_count > 0 and self.embed_dim % self.head_count == 0

    def out_h(self, in_h: int) -> int:
        return patch_out_h(in_h, self.patch_h, self.stride, self.padding)

    def out_w(self, in_w: int) -> int:
        return patch_out_w(in_w, self.patch_w, self.stride, self.padding)

    def tokens(self, in_h: int, in_w: int) -> int:
        return patch_count(in_h, in_w, self.patch_h, self.patch_w, self.stride, self.padding)

    def replace(self, **changes: int) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    # -- well-formedness -------------------------------------------------------
    def violations(
        self,
        in_c: int | None = None,
        in_h: int | None = None,
        in_w: int | None = None,
        *,
        variant: Variant = "mean",
        require_heads_divide: bool = False,
    ) -> list[Violation]:
        """Every violated condition (empty when well-formed). See :meth:`check`."""
        v: list[Violation] = []
        # The six facts of Lean ViTConfig.WF.
        if self.patch_h == 0:
            v.append(Violation("patch_h", "patchH_ne0", "patch_h != 0", "0"))
        if self.patch_w == 0:
            v.append(Violation("patch_w", "patchW_ne0", "patch_w != 0", "0"))
        if self.embed_dim <= 0:
            v.append(Violation("embed_dim", "embedDim_pos", "embed_dim > 0", str(self.embed_dim)))
        if self.hidden_dim <= 0:
            v.append(Violation("hidden_dim", "hiddenDim_pos", "hidden_dim > 0", str(self.hidden_dim)))
        if self.head_count <= 0:
            v.append(Violation("head_count", "headCount_pos", "head_count > 0", str(self.head_count)))
        if self.num_classes == 0:
            v.append(Violation("num_classes", "numClasses_ne0", "num_classes != 0", "0"))
        # Conditions a runnable model needs that ViTConfig.WF does not state.
        if self.stride == 0:
            v.append(
                Violation(
                    "stride",
                    "extra:stride_pos",
                    "stride > 0",
                    "0",
                    f"{_LEAN_WF_NOTE}; the Nat formula would silently give out = 1",
                )
            )
        if self.head_count > 0 and self.embed_dim > 0 and self.embed_dim < self.head_count:
            v.append(
                Violation(
                    "head_count",
                    "extra:headDim_pos",
                    "head_count <= embed_dim (per-head width embed_dim/head_count > 0)",
                    f"{self.head_count} heads for embed_dim={self.embed_dim}",
                    f"{_LEAN_WF_NOTE}; each head would have width 0",
                )
            )
        if require_heads_divide and self.head_count > 0 and not self.heads_divide_embed:
            v.append(
                Violation(
                    "head_count",
                    "headCount_dvd_embedDim",
                    "head_count divides embed_dim",
                    f"embed_dim % head_count = {self.embed_dim} % {self.head_count} = "
                    f"{self.embed_dim % self.head_count}",
                    "Lean TransformerLayerConfig.WF demands it; ViTConfig.WF does not",
                )
            )
        if in_c is not None and (not _is_nat(in_c) or in_c == 0):
            v.append(Violation("in_c", "h_inC", "in_c != 0 (a natural number)", repr(in_c)))
        for name, size, patch, out in (("in_h", in_h, self.patch_h, "out_h"), ("in_w", in_w, self.patch_w, "out_w")):
            if size is None:
                continue
            if not _is_nat(size) or size == 0:
                v.append(Violation(name, f"extra:{name}_pos", f"{name} > 0 (a natural number)", repr(size)))
            elif patch > 0 and size + 2 * self.padding < patch:
                pw = "patch_h" if name == "in_h" else "patch_w"
                v.append(
                    Violation(
                        name,
                        f"extra:{name}_fits_kernel",
                        f"{name} + 2*padding >= {pw}",
                        f"{size} + 2*{self.padding} = {size + 2 * self.padding} < {patch}",
                        f"{_LEAN_WF_NOTE}; the Nat formula would silently give {out} = 1",
                    )
                )
        if (
            variant == "mean"
            and in_h is not None
            and in_w is not None
            and _is_nat(in_h)
            and _is_nat(in_w)
            and self.tokens(in_h, in_w) == 0
        ):
            v.append(Violation("tokens", "h_tok", "ViTPatchCount > 0 (mean pool)", "0"))
        return v

    def check(
        self,
        in_c: int | None = None,
        in_h: int | None = None,
        in_w: int | None = None,
        *,
        variant: Variant = "mean",
        require_heads_divide: bool = False,
    ) -> ViTConfig:
        """Raise one :class:`ConfigError` listing every violated condition; return ``self`` if none.

        Checks the six facts of Lean ``ViTConfig.WF`` (``patchH_ne0``,
        ``patchW_ne0``, ``embedDim_pos``, ``hiddenDim_pos``, ``headCount_pos``,
        ``numClasses_ne0``), the model premises ``h_inC`` (``in_c != 0``) and, for
        the mean-pool variant, ``h_tok`` (``ViTPatchCount > 0``), and conditions
        the Lean leaves out and a runnable conv needs: ``stride > 0``, a non-zero
        per-head width, and the kernel fitting the padded input. With
        ``require_heads_divide`` it also demands ``headCount ∣ embedDim``.
        """
        v = self.violations(in_c, in_h, in_w, variant=variant, require_heads_divide=require_heads_divide)
        if v:
            raise ConfigError(v, context=f"ViTConfig check failed for {self}")
        return self


# -- presets -------------------------------------------------------------------
#: Lean ``vitBasePatch16Config`` (mean pool).
vit_base_patch16 = ViTConfig(16, 16, 16, 0, 768, 3072, 12, 12, 1000)
#: Lean ``vitLargePatch16Config`` (mean pool).
vit_large_patch16 = ViTConfig(16, 16, 16, 0, 1024, 4096, 16, 24, 1000)
#: ViT-Ti/16 (DeiT-Tiny; timm ``vit_tiny_patch16_224``).
vit_tiny_patch16 = ViTConfig(16, 16, 16, 0, 192, 768, 3, 12, 1000)
#: ViT-S/16 (timm ``vit_small_patch16_224``).
vit_small_patch16 = ViTConfig(16, 16, 16, 0, 384, 1536, 6, 12, 1000)
#: ViT-H/14 (Dosovitskiy et al. 2021, Table 1; torchvision ``vit_h_14``).
vit_huge_patch14 = ViTConfig(14, 14, 14, 0, 1280, 5120, 16, 32, 1000)
#: d2l.ai chapter 11.8 model: 96x96 inputs, patch 16, 512/2048/8 heads/2 layers, 10 classes.
vit_d2l = ViTConfig(16, 16, 16, 0, 512, 2048, 8, 2, 10)

#: name -> (config, default input size (C, H, W), source)
PRESETS: dict[str, tuple[ViTConfig, tuple[int, int, int], str]] = {
    "vit_base_patch16": (vit_base_patch16, (3, 224, 224), "Lean vitBasePatch16Config"),
    "vit_large_patch16": (vit_large_patch16, (3, 224, 224), "Lean vitLargePatch16Config"),
    "vit_tiny_patch16": (vit_tiny_patch16, (3, 224, 224), "DeiT-Ti / timm vit_tiny_patch16_224"),
    "vit_small_patch16": (vit_small_patch16, (3, 224, 224), "timm vit_small_patch16_224"),
    "vit_huge_patch14": (vit_huge_patch14, (3, 224, 224), "ViT paper Table 1 / torchvision vit_h_14"),
    "vit_d2l": (vit_d2l, (3, 96, 96), "d2l.ai 11.8 (img 96, patch 16, 512/2048/8/2)"),
}


def preset(name: str) -> ViTConfig:
    """A preset config by name; unknown names raise ``ConfigError`` listing the valid ones."""
    try:
        return PRESETS[name][0]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(sorted(PRESETS))}") from None


def param_count(
    cfg: ViTConfig,
    in_c: int,
    in_h: int,
    in_w: int,
    variant: Variant = "mean",
    *,
    profile: str | Profile | None = None,
) -> int:
    """Number of scalars in the spec's parameter bundle (``ViTSpec`` / ``ViTClsSpec``).

    With ``profile`` (a :class:`vitspec.profiles.Profile` or name), counts the
    extra parameters that profile adds (biases, final norm, head norm, patch norms);
    ``None`` is the spec's own bundle (profile ``torchlean``). The keys and shapes are
    the rows of :mod:`vitspec.schema`.
    """
    if variant not in schema.VARIANTS:
        raise ConfigError(f"variant must be 'mean' or 'cls', got {variant!r}")
    p = get_profile("torchlean" if profile is None else profile)
    return schema.param_count(cfg, in_c, in_h, in_w, variant=variant, profile=p)


def config_violations(
    cfg: ViTConfig, in_c: int, in_h: int, in_w: int, *, variant: Variant, profile: Profile
) -> list[Violation]:
    """``cfg.violations(...)`` plus what the profile demands of the config and variant (for a model and a file)."""
    if not isinstance(cfg, ViTConfig):
        raise ConfigError(f"cfg must be a ViTConfig, got {type(cfg).__name__}")
    # A profile head_dim sets the attention width itself, so heads need not divide embed_dim.
    divide = profile.require_heads_divide and profile.head_dim is None
    v = cfg.violations(in_c, in_h, in_w, variant=variant, require_heads_divide=divide)
    if profile.head_dim is not None:
        v = [x for x in v if x.lean != "extra:headDim_pos"]
    if profile.patch_embed == "linear_ln" and not (
        cfg.stride == cfg.patch_h and cfg.stride == cfg.patch_w and cfg.padding == 0
    ):
        v.append(
            Violation(
                "stride",
                "extra:linear_ln_patches",
                "stride == patch_h and stride == patch_w and padding == 0 (non-overlapping patches)",
                f"stride={cfg.stride}, patch_h={cfg.patch_h}, patch_w={cfg.patch_w}, padding={cfg.padding}",
                f"profile {profile.name!r} has patch_embed='linear_ln'",
            )
        )
    if variant == "mean" and profile.pooling in ("token", "mean_all"):
        v.append(
            Violation(
                "pooling",
                "extra:pooling_needs_cls",
                "pooling None or 'mean' for the mean-pool ViTSpec (it has no CLS token)",
                repr(profile.pooling),
                f"profile {profile.name!r}; use ViTClsSpec, or profile.replace(pooling=None)",
            )
        )
    return v + _variation_violations(cfg, variant, profile)


def _variation_violations(cfg: ViTConfig, variant: Variant, profile: Profile) -> list[Violation]:
    """What the variation fields (:data:`vitspec.profiles.VARIATION_FIELDS`) demand of each other, the
    variant and the config: combinations no library builds are refused, never silently reinterpreted."""
    p = profile
    out: list[Violation] = []

    def rule(bad: bool, field: str, condition: str, actual: str, note: str = "") -> None:
        if bad:
            why = f"profile {p.name!r}" + (f"; {note}" if note else "")
            out.append(Violation(field, f"extra:variation_{field}", condition, actual, why))

    for f, on in (("layer_scale", p.layer_scale), ("qk_norm", p.qk_norm), ("ffn", p.ffn == "glu"),
                  ("norm", p.norm == "rms")):  # fmt: skip
        rule(on and p.norm_placement != "pre", f, f"norm_placement == 'pre' with {f}={getattr(p, f)!r}",
             f"norm_placement={p.norm_placement!r}", "no library combines it with post-norm")  # fmt: skip
    rule(p.qk_norm and p.head_split != "reshape_swap", "qk_norm", "head_split == 'reshape_swap' with qk_norm",
         f"head_split={p.head_split!r}", "qk-norm follows the libraries' head split")  # fmt: skip
    prefix = schema.prefix_count(variant, p)
    rule(p.pos_embed.startswith("sincos") and prefix > 0, "pos_embed", "no prefix token with a fixed sin-cos table",
         f"pos_embed={p.pos_embed!r} with {prefix} prefix token(s)",
         "no library adds a fixed table to prefix rows")  # fmt: skip
    rule(p.pos_embed.startswith("sincos_2d") and cfg.embed_dim % 4 != 0, "embed_dim",
         "embed_dim % 4 == 0 for a 2-D sin-cos table", f"embed_dim={cfg.embed_dim}")  # fmt: skip
    rule(p.pos_embed == "sincos_2d" and cfg.embed_dim < 8, "embed_dim", "embed_dim >= 8 for sincos_2d",
         f"embed_dim={cfg.embed_dim}", "vit-pytorch divides by embed_dim/4 - 1")  # fmt: skip
    rule(p.pos_prefix != "all" and p.pos_embed != "learned", "pos_prefix",
         "pos_prefix == 'all' unless pos_embed == 'learned'",
         f"pos_prefix={p.pos_prefix!r}, pos_embed={p.pos_embed!r}")  # fmt: skip
    rule(p.pos_prefix == "cls" and variant != "cls", "pos_prefix", "variant 'cls' for pos_prefix='cls'",
         f"variant={variant!r}")  # fmt: skip
    rule(p.head == "distilled" and not p.dist_token, "head", "dist_token=True for head='distilled'",
         f"dist_token={p.dist_token}")  # fmt: skip
    rule(p.dist_token and variant != "cls", "dist_token", "variant 'cls' with a distillation token",
         f"variant={variant!r}", "DeiT has a class token")  # fmt: skip
    rule(p.head == "distilled" and (p.head_norm or not p.head_bias or p.final_norm == "after_pool"), "head",
         "head='distilled' with head biases, no head norm and final_norm != 'after_pool'",
         f"head_norm={p.head_norm}, head_bias={p.head_bias}, final_norm={p.final_norm!r}",
         "DeiT's two heads read rows 0 and 1 of the final-normed sequence")  # fmt: skip
    rule(p.pooling == "cls_mean_concat" and (variant != "cls" or p.final_norm == "after_pool" or p.head_norm),
         "pooling", "variant 'cls', final_norm != 'after_pool' and no head norm for pooling='cls_mean_concat'",
         f"variant={variant!r}, final_norm={p.final_norm!r}, head_norm={p.head_norm}",
         "the pooled vector is 2*embed_dim wide; HF DINOv2 normalises before the pool")  # fmt: skip
    rule(p.ffn == "glu" and p.activation not in ("silu", "sigmoid", "gelu_erf", "gelu_tanh"), "activation",
         "a gate activation (silu, sigmoid, gelu_erf, gelu_tanh) with ffn='glu'", f"activation={p.activation!r}",
         "with ffn='glu' the activation is the gate's")  # fmt: skip
    rule(p.pooling == "map" and (p.norm != "layer" or p.head == "distilled"), "pooling",
         "pooling='map' with norm='layer' and a linear head", f"norm={p.norm!r}, head={p.head!r}",
         "MAP pooling's norm is a LayerNorm (timm AttentionPoolLatent, HF SigLIP)")  # fmt: skip
    rule(p.pooling != "map" and (p.map_latents != 1 or p.map_pool != "token"), "map_latents",
         "map_latents == 1 and map_pool == 'token' unless pooling == 'map'",
         f"pooling={p.pooling!r}, map_latents={p.map_latents}, map_pool={p.map_pool!r}")  # fmt: skip
    rule(p.patch_embed == "linear_ln" and (p.norm != "layer" or not p.patch_bias), "patch_embed",
         "norm='layer' and patch_bias with patch_embed='linear_ln'", f"norm={p.norm!r}, patch_bias={p.patch_bias}",
         "vit-pytorch's patch norms are LayerNorms around a biased Linear")  # fmt: skip
    return out
