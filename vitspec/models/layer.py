"""The settings and tensors of one encoder layer (shared by :mod:`.encoder` and :mod:`.variant_layer`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..primitives.attention import HeadSplit
from ..schema import Activation, FFNKind, NormKind, NormPlacement, sub_op_order

__all__ = ["LayerOptions", "LayerParams"]


@dataclass(frozen=True)
class LayerOptions:
    """The non-tensor settings of a layer: head count and the profile's numerics."""

    heads: int
    norm_placement: NormPlacement = "post"
    activation: Activation = "relu"
    eps: float = 1e-6
    head_split: HeadSplit = "reshape_swap"  # Lean splitHeadsSpec of the profile's revision
    lean_backward: bool = True  # MHA backward as the Lean writes it (see vitspec.primitives.attention)
    # Variation points (vitspec.models.variant_layer); the defaults are TorchLean's layer.
    layer_scale: bool = False
    qk_norm: bool = False
    norm: NormKind = "layer"
    ffn: FFNKind = "mlp"
    ffn_bias: bool = True

    @property
    def is_core(self) -> bool:
        """The layer is :func:`encoder_layer` (no variation point changes its dataflow)."""
        return not (self.layer_scale or self.qk_norm or self.norm != "layer" or self.ffn != "mlp" or not self.ffn_bias)

    @property
    def sub_ops(self) -> tuple[str, ...]:
        """The captured sub-ops in execution order."""
        return sub_op_order(self.norm_placement, self.layer_scale)


@dataclass
class LayerParams:
    """One layer's tensors under their spec names (``encoder.{i}.<name>`` in the state dict)."""

    Wq: Tensor  # (embed_dim, attn_dim), (in, out) layout
    Wk: Tensor
    Wv: Tensor
    Wo: Tensor  # (attn_dim, embed_dim)
    W1: Tensor  # (embed_dim, hidden_dim)
    b1: Tensor | None  # (hidden_dim,); None under profile.ffn_bias=False (a variation point)
    W2: Tensor  # (hidden_dim, embed_dim)
    b2: Tensor | None  # (embed_dim,)
    norm1_gamma: Tensor
    norm1_beta: Tensor | None  # None under profile.norm="rms" (a variation point)
    norm2_gamma: Tensor
    norm2_beta: Tensor | None
    bq: Tensor | None = None  # (attn_dim,), profile.qkv_bias
    bk: Tensor | None = None
    bv: Tensor | None = None
    bo: Tensor | None = None  # (embed_dim,), profile.out_bias
    # Variation points (vitspec.models.variant_layer)
    Wg: Tensor | None = None  # (embed_dim, hidden_dim), profile.ffn == "glu": the gate projection
    bg: Tensor | None = None  # (hidden_dim,)
    q_norm_gamma: Tensor | None = None  # (head_dim,), profile.qk_norm
    q_norm_beta: Tensor | None = None
    k_norm_gamma: Tensor | None = None
    k_norm_beta: Tensor | None = None
    ls1_gamma: Tensor | None = None  # (embed_dim,), profile.layer_scale
    ls2_gamma: Tensor | None = None
