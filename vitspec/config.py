"""``ViTConfig``: the spec's hyperparameters, their well-formedness, and presets.

Mirrors Lean ``Models.ViTConfig`` and ``ViTConfig.WF`` (``NN/Spec/Models/Vit.lean``).
``check`` adds the conditions a *runnable* model needs that the Lean ``WF`` leaves
out (``stride > 0``, ``in_c > 0``, the kernel fitting the padded input) and says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import ConfigError, Violation
from .formulas import patch_count, patch_out_h, patch_out_w

if TYPE_CHECKING:
    from .profiles import Profile

__all__ = [
    "PRESETS",
    "ViTConfig",
    "param_count",
    "preset",
    "vit_base_patch16",
    "vit_d2l",
    "vit_huge_patch14",
    "vit_large_patch16",
    "vit_small_patch16",
    "vit_tiny_patch16",
]

Variant = Literal["mean", "cls"]

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
    extra parameters that profile adds (biases, final norm, head norm, patch norms).
    """
    if variant not in ("mean", "cls"):
        raise ConfigError(f"variant must be 'mean' or 'cls', got {variant!r}")
    e, f, c = cfg.embed_dim, cfg.hidden_dim, cfg.num_classes
    attn = cfg.head_count * cfg.head_dim
    t = cfg.tokens(in_h, in_w) + (1 if variant == "cls" else 0)
    n = e * in_c * cfg.patch_h * cfg.patch_w + e  # patch kernel + bias
    n += t * e  # pos
    n += e if variant == "cls" else 0  # cls token
    per_layer = 3 * e * attn + attn * e  # Wq Wk Wv Wo
    per_layer += e * f + f + f * e + e  # W1 b1 W2 b2
    per_layer += 4 * e  # two LayerNorms
    if profile is not None:
        from .profiles import get_profile

        p = get_profile(profile)
        per_layer += (3 * attn if p.qkv_bias else 0) + (e if p.out_bias else 0)
        n += 2 * e if p.final_norm != "none" else 0
        n += 2 * e if p.head_norm else 0
        if p.patch_embed == "linear_ln":
            n += 2 * in_c * cfg.patch_h * cfg.patch_w + 2 * e
    n += cfg.num_layers * per_layer
    n += c * e + c  # head
    return n
