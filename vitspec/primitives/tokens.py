"""Shape moves between the patch grid and the token sequence, position add, CLS prepend."""

from __future__ import annotations

import torch
from torch import Tensor

from ..dims import Float, checked
from ._batch import sum_to


@checked
def grid_to_tokens(grid: Float[Tensor, "*batch embed_dim out_h out_w"]) -> Float[Tensor, "*batch patches embed_dim"]:
    """Lean: reshape ``(embedDim, outH, outW) -> (embedDim, outH*outW)`` then swap axes.

    Row-major: token ``t = i*out_w + j`` is grid cell ``(i, j)``.
    """
    return grid.flatten(-2).transpose(-1, -2)


@checked
def grid_to_tokens_backward(
    d_tokens: Float[Tensor, "*batch patches embed_dim"], out_h: int, out_w: int
) -> Float[Tensor, "*batch embed_dim out_h out_w"]:
    """Undo the swap, then the reshape (Lean ``swapFirstTwoSpec`` + ``reshapeSpec … h_size.symm``)."""
    return d_tokens.transpose(-1, -2).unflatten(-1, (out_h, out_w))


@checked
def pos_add(
    tokens: Float[Tensor, "*batch tokens embed_dim"], pos: Float[Tensor, "tokens embed_dim"]
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """Lean ``addPositionalEncodingSpec``: learned ``pos`` added row by row."""
    return tokens + pos


@checked
def pos_add_backward(
    d_out: Float[Tensor, "*batch tokens embed_dim"],
) -> tuple[Float[Tensor, "tokens embed_dim"], Float[Tensor, "*batch tokens embed_dim"]]:
    """``(d_pos, d_tokens) = (Σ_batch d_out, d_out)`` (Lean ``addPositionalEncodingBackwardSpec``)."""
    return sum_to(d_out, 2), d_out


@checked
def cls_prepend(
    patch_tokens: Float[Tensor, "*batch patches embed_dim"], cls_token: Float[Tensor, " embed_dim"]
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """Prepend the learned CLS token as token 0 (``ViTClsSpec``)."""
    cls = cls_token.expand((*patch_tokens.shape[:-2], 1, cls_token.shape[0]))
    return torch.cat([cls, patch_tokens], dim=-2)


@checked
def cls_prepend_backward(
    d_tokens: Float[Tensor, "*batch tokens embed_dim"],
) -> tuple[Float[Tensor, "*batch patches embed_dim"], Float[Tensor, " embed_dim"]]:
    """``(d_patch_tokens, d_cls_token) = (d[1:], Σ_batch d[0])``."""
    return d_tokens[..., 1:, :], sum_to(d_tokens[..., 0, :], 1)
