"""Helpers for the optional leading batch axes."""

from __future__ import annotations

import torch
from torch import Tensor


def sum_to(t: Tensor, ndim: int) -> Tensor:
    """Sum leading axes away so ``t`` has ``ndim`` dims (gradient of a broadcast)."""
    extra = t.dim() - ndim
    return t.sum(dim=tuple(range(extra))) if extra > 0 else t


def flat2(t: Tensor) -> Tensor:
    """Merge every axis but the last into one: ``(*b, n) -> (prod(b), n)``."""
    return t.reshape(-1, t.shape[-1])


def batched_image(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``(*b, C, H, W) -> (prod(b) or 1, C, H, W)`` and the original batch shape."""
    batch = tuple(x.shape[:-3])
    return x.reshape((-1, *x.shape[-3:])), batch


def unbatch(t: Tensor, batch: tuple[int, ...], tail: int) -> Tensor:
    """Inverse of :func:`batched_image` for a result whose last ``tail`` axes are kept."""
    return t.reshape((*batch, *t.shape[t.dim() - tail :]))


__all__ = ["batched_image", "flat2", "sum_to", "torch", "unbatch"]
