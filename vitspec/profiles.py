"""Numerics profiles: the variation points of third-party ViTs (SPEC §5) as data.

A :class:`Profile` is a frozen record; the spec's own behaviour is ``torchlean``
(the default everywhere). The others describe what each library computes, so the
spec model run under a library's profile reproduces that library's ViT exactly,
and a conformance report can list where a model departs from ``torchlean``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError

__all__ = ["PROFILES", "Profile", "deviations", "get_profile"]

NormPlacement = Literal["post", "pre"]
FinalNorm = Literal["none", "before_pool", "after_pool"]
Activation = Literal["relu", "gelu_erf", "gelu_tanh"]
Pooling = Literal["mean", "token", "mean_all"]
PatchEmbed = Literal["conv", "linear_ln"]


@dataclass(frozen=True)
class Profile:
    """One library's numerics.

    Fields (SPEC §5):
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

    def replace(self, **changes: object) -> Profile:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        allowed = {
            "norm_placement": ("post", "pre"),
            "final_norm": ("none", "before_pool", "after_pool"),
            "activation": ("relu", "gelu_erf", "gelu_tanh"),
            "pooling": (None, "mean", "token", "mean_all"),
            "patch_embed": ("conv", "linear_ln"),
        }
        bad = [
            f"{k}={getattr(self, k)!r} (valid: {', '.join(map(repr, v))})"
            for k, v in allowed.items()
            if getattr(self, k) not in v
        ]
        if not (isinstance(self.ln_eps, float | int) and not isinstance(self.ln_eps, bool) and self.ln_eps > 0):
            bad.append(f"ln_eps={self.ln_eps!r} (must be a positive number)")
        if bad:
            raise ConfigError(f"profile {self.name!r}: invalid " + "; ".join(bad))


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("torchlean", source="TorchLean NN.Spec.Models.Vit (SPEC §3)"),
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
            "lucidrains",
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


def get_profile(profile: str | Profile) -> Profile:
    """A profile by name (or pass one through); unknown names raise ``ConfigError``."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
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
}


def deviations(profile: str | Profile, *, variant: str = "mean") -> list[str]:
    """Human-readable differences from ``torchlean``, e.g. ``"norm placement: pre (spec: post)"``."""
    p, ref = get_profile(profile), PROFILES["torchlean"]
    spec_pool = "mean" if variant == "mean" else "token"
    out = []
    for f, label in _LABELS.items():
        a, b = getattr(p, f), getattr(ref, f)
        if f == "pooling":
            a, b = a or spec_pool, spec_pool
        if a != b:
            out.append(f"{label}: {a} (spec: {b})")
    return out


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
