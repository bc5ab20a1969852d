"""Fixed sin-cos position tables (no parameters) and their add.

Not in the TorchLean ViT (whose ``pos`` is learned), although the 1-D table is TorchLean's own
``Spec.sinusoidalPositionalEncodingSpec`` (``NN/Spec/Layers/PositionalEncoding.lean``), a pure
function the ViT file does not use. Selected by:

- vit-pytorch ``SimpleViT`` (and ``SimpleViT`` variants): ``posemb_sincos_2d(h, w, dim)`` over the
  patch grid, added to the patch tokens (there is no CLS token), mean pool;
- the tutorial ViTs' "sinusoidal" option and any model built on the Vaswani table: the 1-D table;
- timm ``build_sincos2d_pos_embed`` (used by timm's sincos/EVA-style models, not by
  ``VisionTransformer``, whose ``pos_embed`` is ``'learn'`` or ``'none'``).

Three tables, each exactly as its source computes it:

- :func:`sinusoidal_positional_encoding` (TorchLean / Vaswani): ``PE[p, j] = sin θ`` for even ``j``,
  ``cos θ`` for odd ``j``, ``θ = p / 10000^(2⌊j/2⌋/d)``; total for odd ``d``.
- :func:`posemb_sincos_2d` (vit-pytorch): ``ω_i = 1/T^(i/(d/4 - 1))`` for ``i < d/4``; grid
  ``(y, x)`` row-major; columns ``[sin(xω), cos(xω), sin(yω), cos(yω)]``; computed in the
  library's default dtype (float32) and cast, so a float64 model gets float32-rounded values
  as vit-pytorch's does.
- :func:`sincos_2d_timm` (timm ``build_sincos2d_pos_embed``, defaults): ``ω_i = 1/T^(i/(d/4))``;
  columns ``[sin(yω), sin(xω), cos(yω), cos(xω)]``.

A fixed table has no gradient: :func:`fixed_pos_add_backward` passes ``d_out`` through.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...dims import Float, checked
from ...errors import ConfigError


def sinusoidal_positional_encoding(
    seq_len: int, embed_dim: int, start_pos: int = 0, *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """TorchLean ``sinusoidalPositionalEncodingSpec seqLen embedDim startPos``: ``(seq_len, embed_dim)``.

    ``θ(p, i; d) = p / exp(log 10000 · 2i/d)`` with ``i = ⌊j/2⌋``, as the Lean spells it.
    """
    if seq_len < 0 or embed_dim < 0 or start_pos < 0:
        raise ConfigError(f"sin-cos table needs non-negative sizes, got {seq_len=}, {embed_dim=}, {start_pos=}")
    p = torch.arange(start_pos, start_pos + seq_len, dtype=torch.float64).unsqueeze(-1)
    i = torch.div(torch.arange(embed_dim), 2, rounding_mode="floor").to(torch.float64)
    theta = p / torch.exp(math.log(10000.0) * (2.0 * i / max(embed_dim, 1)))  # i is empty when embed_dim = 0
    even = (torch.arange(embed_dim) % 2 == 0).unsqueeze(0)
    return torch.where(even, torch.sin(theta), torch.cos(theta)).to(dtype)


def _check_quarter(dim: int, who: str) -> int:
    if dim <= 0 or dim % 4:
        raise ConfigError(f"{who}: embed_dim must be a positive multiple of 4 for a 2-D sin-cos table, got {dim}")
    return dim // 4


def posemb_sincos_2d(
    h: int,
    w: int,
    dim: int,
    temperature: float = 10000.0,
    *,
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """vit-pytorch ``simple_vit.posemb_sincos_2d``: ``(h*w, dim)``, token ``t = i*w + j``.

    ``dim = 4`` is refused: the library divides by ``dim/4 - 1 = 0`` there and yields NaN.
    """
    quarter = _check_quarter(dim, "posemb_sincos_2d")
    if quarter == 1:
        raise ConfigError("posemb_sincos_2d: embed_dim 4 gives omega = 0/0 (NaN) in vit-pytorch; use embed_dim >= 8")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = torch.arange(quarter, dtype=compute_dtype) / (quarter - 1)
    omega = 1.0 / (temperature**omega)
    yw = y.flatten()[:, None].to(compute_dtype) * omega[None, :]
    xw = x.flatten()[:, None].to(compute_dtype) * omega[None, :]
    return torch.cat((xw.sin(), xw.cos(), yw.sin(), yw.cos()), dim=1).to(dtype)


def sincos_2d_timm(
    h: int, w: int, dim: int, temperature: float = 10000.0, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """timm ``build_sincos2d_pos_embed([h, w], dim, temperature)`` with its defaults: ``(h*w, dim)``."""
    quarter = _check_quarter(dim, "sincos_2d_timm")
    bands = 1.0 / (temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    grid = torch.stack((gy.flatten(), gx.flatten()), dim=1)  # (h*w, 2): (y, x)
    ang = grid.unsqueeze(-1) * bands  # (h*w, 2, quarter)
    return torch.stack((ang.sin(), ang.cos()), dim=1).flatten(1).to(dtype)


@checked
def fixed_pos_add(
    tokens: Float[Tensor, "*batch tokens embed_dim"], table: Float[Tensor, "tokens embed_dim"]
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """``tokens + table`` for a fixed (non-learned) table of the tokens' dtype and device."""
    return tokens + table


@checked
def fixed_pos_add_backward(
    d_out: Float[Tensor, "*batch tokens embed_dim"],
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """``d_tokens = d_out``: the table is a constant, so nothing else receives a gradient."""
    return d_out
