"""Prefix tokens beyond CLS (register tokens, a distillation token), where ``pos`` lands, and the
distilled head.

Not in the TorchLean spec (``ViTClsSpec`` has exactly one prefix token, the CLS token, and ``pos``
covers every row). Selected by:

- timm ``VisionTransformer(reg_tokens=R)`` (``reg_token (1, R, E)`` after the class token; the
  ``vit_*_reg*`` models), ``class_token=False`` (no CLS), ``no_embed_class=True`` (``pos`` covers
  the patch tokens only: "add, then concat"; DeiT-III, ``vit_*_reg*``), ``pos_embed='none'``
  (no ``pos``), ``global_pool`` (``'token'``: row 0; ``'avg'``: mean over the patch tokens, every
  prefix token excluded; ``pool_include_prefix=True``: mean over all rows);
- timm ``VisionTransformerDistilled`` / ``deit_*_distilled_*`` and HF
  ``DeiTForImageClassificationWithTeacher``: prefix ``[cls, dist]``, ``pos`` over all rows, and
  at inference the logits ``(head(row 0) + head_dist(row 1)) / 2`` (:func:`distilled_head`);
- HF ``Dinov2WithRegistersModel``: prefix ``[cls, registers]``, ``pos`` over CLS and patches but
  not the registers (they are inserted after the position add).

One rule covers all of them: the sequence is ``[prefix rows; patch rows]`` with the prefix in the
canonical order ``cls, dist, registers`` (:func:`prefix_rows`), and ``pos`` (if any) has
``pos_prefix + patches`` rows that are added to the first ``pos_prefix`` prefix rows and to every
patch row::

    timm default (concat, then add)     pos_prefix = number of prefix tokens
    timm no_embed_class (add, then cat) pos_prefix = 0
    HF DINOv2 with registers            pos_prefix = 1 (the CLS row)

Pooling: ``token`` is :func:`vitspec.primitives.token_select` (row 0) and timm ``avg`` is
:func:`vitspec.primitives.mean_pool` with ``first`` = number of prefix tokens (``first=0`` for
``pool_include_prefix=True``). HF ``Dinov2ForImageClassification`` (and its with-registers twin)
feeds its classifier ``[row 0; mean of the patch rows]`` (width ``2·embed_dim``):
:func:`cls_mean_concat`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...dims import Float, checked
from ...errors import ConfigError
from .._batch import sum_to
from ..linear import head, head_backward
from ..pooling import mean_pool, mean_pool_backward


# -- the prefix block ------------------------------------------------------------------
def prefix_rows(cls_token: Tensor | None, dist_token: Tensor | None, reg_tokens: Tensor | None) -> Tensor:
    """The prefix block ``(prefix, embed_dim)`` in the canonical order ``cls, dist, registers``.

    ``cls_token`` / ``dist_token`` are ``(embed_dim,)``, ``reg_tokens`` is ``(R, embed_dim)``;
    at least one must be given (a model without prefix tokens has no prefix block).
    """
    parts = [t.unsqueeze(0) for t in (cls_token, dist_token) if t is not None]
    if reg_tokens is not None:
        parts.append(reg_tokens)
    if not parts:
        raise ConfigError("prefix_rows: no prefix token given")
    return torch.cat(parts, dim=0)


def prefix_rows_backward(
    d_prefix: Tensor, *, has_cls: bool, has_dist: bool, registers: int
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(d_cls_token, d_dist_token, d_reg_tokens)`` from ``d_prefix (prefix, embed_dim)``; ``None`` where absent."""
    i = 0
    d_cls = d_dist = d_reg = None
    if has_cls:
        d_cls, i = d_prefix[i], i + 1
    if has_dist:
        d_dist, i = d_prefix[i], i + 1
    if registers:
        d_reg = d_prefix[i : i + registers]
    return d_cls, d_dist, d_reg


# -- prefix + positions ------------------------------------------------------------------
def _check_pos_prefix(prefix: Tensor, pos: Tensor | None, pos_prefix: int, patches: int) -> None:
    if not 0 <= pos_prefix <= prefix.shape[0]:
        raise ConfigError(f"pos_prefix must be in 0..{prefix.shape[0]} (the prefix tokens), got {pos_prefix}")
    if pos is not None and pos.shape[0] != pos_prefix + patches:
        raise ConfigError(
            f"pos has {pos.shape[0]} rows, but pos_prefix + patches = {pos_prefix} + {patches} = {pos_prefix + patches}"
        )


@checked
def prefix_embed(
    patch_tokens: Float[Tensor, "*batch patches embed_dim"],
    prefix: Float[Tensor, "prefix embed_dim"],
    pos: Float[Tensor, "pos_rows embed_dim"] | None,
    pos_prefix: int,
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """``[prefix[:k] + pos[:k]; prefix[k:]; patch_tokens + pos[k:]]`` with ``k = pos_prefix``.

    ``pos=None`` is timm ``pos_embed='none'``: the rows are concatenated and nothing is added.
    Each sum is the same single add the libraries make, so the result is bit-identical to
    "concat then add" and to "add then concat".
    """
    _check_pos_prefix(prefix, pos, pos_prefix, patch_tokens.shape[-2])
    batch = patch_tokens.shape[:-2]
    e = prefix.shape[-1]
    if pos is None:
        return torch.cat([prefix.expand((*batch, prefix.shape[0], e)), patch_tokens], dim=-2)
    k = pos_prefix
    covered = prefix[:k] + pos[:k]
    rows = [covered.expand((*batch, k, e)), prefix[k:].expand((*batch, prefix.shape[0] - k, e))]
    return torch.cat([*rows, patch_tokens + pos[k:]], dim=-2)


@checked
def prefix_embed_backward(
    d_tokens: Float[Tensor, "*batch tokens embed_dim"], prefix_len: int, pos_prefix: int, has_pos: bool
) -> tuple[Float[Tensor, "*batch patches embed_dim"], Float[Tensor, "prefix embed_dim"], Tensor | None]:
    """``(d_patch_tokens, d_prefix, d_pos)``: split the rows; ``d_pos`` (``None`` without ``pos``) gathers
    the rows ``pos`` was added to; ``d_prefix`` and ``d_pos`` are summed over the batch."""
    d_patch = d_tokens[..., prefix_len:, :]
    d_prefix = sum_to(d_tokens[..., :prefix_len, :], 2)
    if not has_pos:
        return d_patch, d_prefix, None
    d_pos = sum_to(torch.cat([d_tokens[..., :pos_prefix, :], d_patch], dim=-2), 2)
    return d_patch, d_prefix, d_pos


# -- the distilled head --------------------------------------------------------------------
@checked
def distilled_head(
    encoded: Float[Tensor, "*batch tokens embed_dim"],
    w: Float[Tensor, "classes embed_dim"],
    b: Float[Tensor, " classes"],
    w_dist: Float[Tensor, "classes embed_dim"],
    b_dist: Float[Tensor, " classes"],
) -> Float[Tensor, "*batch classes"]:
    """DeiT at inference: ``(head(encoded[0]) + head_dist(encoded[1])) / 2`` (timm ``forward_head``,
    HF ``DeiTForImageClassificationWithTeacher``)."""
    return (head(encoded[..., 0, :], w, b) + head(encoded[..., 1, :], w_dist, b_dist)) / 2


@checked
def distilled_head_backward(
    encoded: Float[Tensor, "*batch tokens embed_dim"],
    w: Float[Tensor, "classes embed_dim"],
    w_dist: Float[Tensor, "classes embed_dim"],
    dy: Float[Tensor, "*batch classes"],
) -> tuple[
    Float[Tensor, "*batch tokens embed_dim"],
    Float[Tensor, "classes embed_dim"],
    Float[Tensor, " classes"],
    Float[Tensor, "classes embed_dim"],
    Float[Tensor, " classes"],
]:
    """``(d_encoded, dW, db, dW_dist, db_dist)``: each head sees ``dy / 2``; only rows 0 and 1 get a gradient."""
    half = dy / 2
    d_cls, dw, db = head_backward(encoded[..., 0, :], w, half)
    d_dist, dw_dist, db_dist = head_backward(encoded[..., 1, :], w_dist, half)
    d_encoded = torch.zeros_like(encoded)
    d_encoded[..., 0, :] = d_cls
    d_encoded[..., 1, :] = d_dist
    return d_encoded, dw, db, dw_dist, db_dist


# -- DINOv2's classifier input ---------------------------------------------------------------
@checked
def cls_mean_concat(encoded: Float[Tensor, "*batch tokens embed_dim"], first: int) -> Float[Tensor, "*batch pooled"]:
    """``[encoded[0]; mean(encoded[first:])]`` (HF ``Dinov2ForImageClassification``: ``first`` = 1 + registers)."""
    return torch.cat([encoded[..., 0, :], mean_pool(encoded, first)], dim=-1)


@checked
def cls_mean_concat_backward(
    d_pooled: Float[Tensor, "*batch pooled"], tokens: int, first: int
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """Row 0 gets the first half of ``d_pooled``; rows ``first..`` share the second half equally."""
    e = d_pooled.shape[-1] // 2
    d = mean_pool_backward(d_pooled[..., e:], tokens, first)
    d[..., 0, :] += d_pooled[..., :e]
    return d
