"""LayerScale: a learned per-channel gain on a residual branch (``x + γ ⊙ f(x)``).

Not in the TorchLean spec. Selected by:

- timm ``VisionTransformer(init_values=...)`` (``Block.ls1`` / ``Block.ls2``, parameter ``gamma``;
  any non-``None``, non-zero value turns it on, e.g. ``vit_medium_patch16_gap_256``, DeiT-III,
  ``vit_*_reg*``, EVA);
- HF ``Dinov2Layer.layer_scale1`` / ``layer_scale2`` (parameter ``lambda1``; always on in DINOv2);
- CaiT, DeiT-III and DINOv2 checkpoints everywhere.

The gain multiplies the branch output before the residual add::

    pre-norm block:  h = x + γ1 ⊙ MHA(LN1(x));   y = h + γ2 ⊙ FFN(LN2(h))

so its backward gives the branch ``dy ⊙ γ`` and the gain ``Σ_{batch, tokens} dy ⊙ branch``.
"""

from __future__ import annotations

from torch import Tensor

from ...dims import Float, checked
from .._batch import flat2


@checked
def layer_scale(
    branch: Float[Tensor, "*batch tokens embed_dim"], gamma: Float[Tensor, " embed_dim"]
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """``γ ⊙ branch`` row by row (timm ``LayerScale.forward`` with ``inplace=False``)."""
    return branch * gamma


@checked
def layer_scale_backward(
    branch: Float[Tensor, "*batch tokens embed_dim"],
    gamma: Float[Tensor, " embed_dim"],
    dy: Float[Tensor, "*batch tokens embed_dim"],
) -> tuple[Float[Tensor, "*batch tokens embed_dim"], Float[Tensor, " embed_dim"]]:
    """``(d_branch, d_gamma) = (dy ⊙ γ, Σ_rows dy ⊙ branch)`` (rows: every batch axis and token)."""
    return dy * gamma, flat2(dy * branch).sum(0)
