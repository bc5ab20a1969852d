"""Pooling the encoded sequence to one vector: mean over rows ``first:`` or token 0."""

from __future__ import annotations

import torch
from torch import Tensor

from ..dims import Float, checked


@checked
def mean_pool(encoded: Float[Tensor, "*batch tokens embed_dim"], first: int = 0) -> Float[Tensor, "*batch embed_dim"]:
    """Mean over tokens ``first..`` (Lean ``reduceMeanAuto 0``; ``first=1`` skips a CLS token)."""
    return encoded[..., first:, :].mean(-2)


@checked
def mean_pool_backward(
    d_pooled: Float[Tensor, "*batch embed_dim"], tokens: int, first: int = 0
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """Broadcast, scale by ``1/n`` (Lean ``scaleSpec (broadcastTo hB d_pooled) (1/tokN)``); rows < ``first`` get 0."""
    n = tokens - first
    shape = (*d_pooled.shape[:-1], tokens, d_pooled.shape[-1])
    d = d_pooled.new_zeros(shape)
    d[..., first:, :] = (d_pooled / n).unsqueeze(-2)
    return d


@checked
def token_select(
    encoded: Float[Tensor, "*batch tokens embed_dim"], index: int = 0
) -> Float[Tensor, "*batch embed_dim"]:
    """``encoded[index]`` (``ViTClsSpec`` pools token 0)."""
    return encoded[..., index, :]


@checked
def token_select_backward(
    d_pooled: Float[Tensor, "*batch embed_dim"], tokens: int, index: int = 0
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """Gradient only at row ``index``."""
    d = torch.zeros((*d_pooled.shape[:-1], tokens, d_pooled.shape[-1]), dtype=d_pooled.dtype, device=d_pooled.device)
    d[..., index, :] = d_pooled
    return d
