"""Patch embedding: the spec's conv2d, and vit-pytorch's rearrange + LN + Linear + LN.

Lean ``conv2dSpec`` / ``conv2dBackwardSpec`` (``NN/Spec/Layers/Conv.lean``):
cross-correlation with zero padding, ``out[e, i, j] = b[e] + Σ_{c,u,v} K[e,c,u,v] ·
x_pad[c, i*stride + u, j*stride + v]``. The backward is written with im2col:
``unfold`` gathers the receptive fields as columns, so the kernel gradient is one
matrix product and the input gradient is the adjoint gather ``fold`` (which sums
where patches overlap, i.e. when stride < patch). Non-overlapping patches (the usual
ViT case) skip im2col: a reshape/permute gathers the same columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dims import Float, checked
from ._batch import batched_image, unbatch
from .layernorm import layer_norm, layer_norm_backward


@checked
def conv2d(
    x: Float[Tensor, "*batch channels in_h in_w"],
    kernel: Float[Tensor, "embed_dim channels patch_h patch_w"],
    bias: Float[Tensor, " embed_dim"],
    stride: int,
    padding: int,
) -> Float[Tensor, "*batch embed_dim out_h out_w"]:
    xb, batch = batched_image(x)
    return unbatch(F.conv2d(xb, kernel, bias, stride=stride, padding=padding), batch, 3)


def _cols(x: Tensor, kh: int, kw: int, stride: int, padding: int) -> Tensor:
    return F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (B, C*kh*kw, L)


def _is_patchify(kh: int, kw: int, stride: int, padding: int) -> bool:
    """Non-overlapping, gapless patches: each input pixel is in at most one receptive field."""
    return stride == kh and stride == kw and padding == 0


def _patch_rows(x: Tensor, kh: int, kw: int, oh: int, ow: int) -> Tensor:
    """``(B, C, H, W) -> (B*L, C*kh*kw)``: the receptive fields of a patchify conv as rows.

    The same values as ``unfold(...).transpose(1, 2)`` (row ``b*L + i*ow + j``, column
    ``c*kh*kw + u*kw + v``), gathered by one reshape/permute copy instead of im2col.
    Rows and columns past ``oh*kh`` / ``ow*kw`` belong to no patch and are dropped.
    """
    b, c = x.shape[:2]
    xc = x[:, :, : oh * kh, : ow * kw].reshape(b, c, oh, kh, ow, kw)
    return xc.permute(0, 2, 4, 1, 3, 5).reshape(b * oh * ow, c * kh * kw)


def _patch_rows_adjoint(rows: Tensor, shape: torch.Size, kh: int, kw: int, oh: int, ow: int) -> Tensor:
    """Adjoint of :func:`_patch_rows`: scatter ``(B*L, C*kh*kw)`` back to ``shape = (B, C, H, W)`` (zeros elsewhere)."""
    b, c, h, w = shape
    img = rows.reshape(b, oh, ow, c, kh, kw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, oh * kh, ow * kw)
    if (oh * kh, ow * kw) != (h, w):
        img = F.pad(img, (0, w - ow * kw, 0, h - oh * kh))
    return img


@checked
def conv2d_backward(
    x: Float[Tensor, "*batch channels in_h in_w"],
    kernel: Float[Tensor, "embed_dim channels patch_h patch_w"],
    d_out: Float[Tensor, "*batch embed_dim out_h out_w"],
    stride: int,
    padding: int,
    need_dx: bool = True,
) -> tuple[
    Float[Tensor, "embed_dim channels patch_h patch_w"],
    Float[Tensor, " embed_dim"],
    Float[Tensor, "*batch channels in_h in_w"] | None,
]:
    """``(d_patch_kernel, d_patch_bias, d_x)``; kernel and bias gradients summed over the batch.

    ``d_x`` is ``None`` when ``need_dx`` is false (its cost, a GEMM and a fold, is then saved).
    Non-overlapping patches (``stride = patch_h = patch_w``, ``padding = 0``: every ViT preset)
    gather the receptive fields with a reshape instead of ``unfold``; same values.
    """
    xb, batch = batched_image(x)
    e, _, kh, kw = kernel.shape
    n = xb.shape[0]
    oh, ow = d_out.shape[-2:]
    w2 = kernel.reshape(e, -1)
    if _is_patchify(kh, kw, stride, padding):
        dy = d_out.reshape(n, e, oh * ow).transpose(1, 2).reshape(-1, e)  # (B*L, E)
        d_kernel = (dy.T @ _patch_rows(xb, kh, kw, oh, ow)).reshape(kernel.shape)
        d_bias = dy.sum(0)
        if not need_dx:
            return d_kernel, d_bias, None
        dx = _patch_rows_adjoint(dy @ w2, xb.shape, kh, kw, oh, ow)
        return d_kernel, d_bias, unbatch(dx, batch, 3)
    dy3 = d_out.reshape(n, e, -1)  # (B, E, L)
    cols = _cols(xb, kh, kw, stride, padding)  # (B, C*kh*kw, L)
    d_kernel = (dy3 @ cols.transpose(1, 2)).sum(0).reshape(kernel.shape)
    d_bias = dy3.sum((0, 2))
    if not need_dx:
        return d_kernel, d_bias, None
    d_cols = w2.T @ dy3  # (B, C*kh*kw, L)
    dx = F.fold(d_cols, xb.shape[-2:], (kh, kw), padding=padding, stride=stride)
    return d_kernel, d_bias, unbatch(dx, batch, 3)


@checked
def patch_linear_ln(
    x: Float[Tensor, "*batch channels in_h in_w"],
    norm_in_gamma: Float[Tensor, "channels patch_h patch_w"],
    norm_in_beta: Float[Tensor, "channels patch_h patch_w"],
    kernel: Float[Tensor, "embed_dim channels patch_h patch_w"],
    bias: Float[Tensor, " embed_dim"],
    norm_out_gamma: Float[Tensor, " embed_dim"],
    norm_out_beta: Float[Tensor, " embed_dim"],
    eps: float,
) -> Float[Tensor, "*batch patches embed_dim"]:
    """vit-pytorch's patch embedding: flatten each non-overlapping patch, LN, Linear, LN.

    Patch vectors are flattened in the conv kernel's ``(channels, patch_h, patch_w)``
    order, so ``kernel`` is the Linear weight in conv layout and the LayerNorm
    parameters are permuted alike (an adapter maps vit-pytorch's ``(p1 p2 c)``).
    """
    xb, batch = batched_image(x)
    kh, kw = kernel.shape[-2:]
    patches = _cols(xb, kh, kw, kh, 0).transpose(1, 2)  # (B, T, C*kh*kw)
    h = layer_norm(patches, norm_in_gamma.reshape(-1), norm_in_beta.reshape(-1), eps)
    y = h @ kernel.reshape(kernel.shape[0], -1).T + bias
    out = layer_norm(y, norm_out_gamma, norm_out_beta, eps)
    return unbatch(out, batch, 2)


@checked
def patch_linear_ln_backward(
    x: Float[Tensor, "*batch channels in_h in_w"],
    norm_in_gamma: Float[Tensor, "channels patch_h patch_w"],
    norm_in_beta: Float[Tensor, "channels patch_h patch_w"],
    kernel: Float[Tensor, "embed_dim channels patch_h patch_w"],
    bias: Float[Tensor, " embed_dim"],
    norm_out_gamma: Float[Tensor, " embed_dim"],
    d_out: Float[Tensor, "*batch patches embed_dim"],
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Float[Tensor, "*batch channels in_h in_w"]]:
    """``(d_norm_in_gamma, d_norm_in_beta, d_kernel, d_bias, d_norm_out_gamma, d_norm_out_beta, d_x)``."""
    xb, batch = batched_image(x)
    e, _, kh, kw = kernel.shape
    patches = _cols(xb, kh, kw, kh, 0).transpose(1, 2)
    g_in, b_in = norm_in_gamma.reshape(-1), norm_in_beta.reshape(-1)
    h = layer_norm(patches, g_in, b_in, eps)
    w = kernel.reshape(e, -1)
    y = h @ w.T + bias
    dy = d_out.reshape(xb.shape[0], -1, e)
    dy, d_g_out, d_b_out = layer_norm_backward(y, norm_out_gamma, dy, eps)
    d_kernel = (dy.reshape(-1, e).T @ h.reshape(-1, h.shape[-1])).reshape(kernel.shape)
    d_bias = dy.reshape(-1, e).sum(0)
    dh = dy @ w
    dp, d_g_in, d_b_in = layer_norm_backward(patches, g_in, dh, eps)
    dx = F.fold(dp.transpose(1, 2), xb.shape[-2:], (kh, kw), stride=(kh, kw))
    return (
        d_g_in.reshape(norm_in_gamma.shape),
        d_b_in.reshape(norm_in_beta.shape),
        d_kernel,
        d_bias,
        d_g_out,
        d_b_out,
        unbatch(dx, batch, 3),
    )
