"""Gradient records mirroring the Lean ones (``NN/Spec/Models/Vit.lean``, ``Transformer.lean``).

Lean names, snake-cased as in ``docs/architecture.md``:

- ``MultiHeadAttentionGrads``  -> :class:`MHAGrads` (``dWq dWk dWv dWo``; profile ``dbq dbk dbv dbo``)
- ``FeedForwardGrads``         -> :class:`FFNGrads` (``dW1 dW2 db1 db2``)
- ``TransformerEncoderLayerGrads`` -> :class:`EncoderLayerGrads`
  (``mha ffn d_norm1_gamma d_norm1_beta d_norm2_gamma d_norm2_beta``)
- ``ViTGrads`` / ``ViTClsGrads`` -> :class:`ViTGrads` / :class:`ViTClsGrads`
  (``d_patch_kernel d_patch_bias [d_cls_token] d_pos d_encoder d_head_W d_head_b``)

Fields for parameters only some profiles have (biases, patch/final/head norms)
default to ``None``. :meth:`ViTGrads.to_dict` maps a record to the spec's
state-dict keys (``encoder.3.mha.dWq`` -> ``"encoder.3.mha.Wq"``) in state-dict
order, so ``grads.to_dict().keys() == model.state_dict().keys()``;
:meth:`ViTGrads.from_dict` is its inverse. Which field holds which key, and which
keys every model has, is read from the rows of :mod:`vitspec.schema` (``Param.grad``).
"""

# The field names are Lean's (dWq, d_head_W), kept verbatim on purpose.
# ruff: noqa: N815

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from torch import Tensor

from ..errors import MappingError
from ..schema import EMBED_PARAMS, HEAD_PARAMS, LAYER_PARAMS, Param, ProfileLike

__all__ = ["EncoderLayerGrads", "FFNGrads", "MHAGrads", "ViTClsGrads", "ViTGrads"]

G = TypeVar("G", bound="ViTGrads")


@dataclass
class MHAGrads:
    """Lean ``MultiHeadAttentionGrads``: ``dWq dWk dWv : (embed_dim, attn_dim)``, ``dWo : (attn_dim, embed_dim)``.

    ``dbq dbk dbv : (attn_dim,)`` and ``dbo : (embed_dim,)`` exist only under profiles with those biases.
    """

    dWq: Tensor
    dWk: Tensor
    dWv: Tensor
    dWo: Tensor
    dbq: Tensor | None = None
    dbk: Tensor | None = None
    dbv: Tensor | None = None
    dbo: Tensor | None = None
    # profile.qk_norm (a variation point): the per-head q/k norms' (head_dim,) parameters
    dq_norm_gamma: Tensor | None = None
    dq_norm_beta: Tensor | None = None
    dk_norm_gamma: Tensor | None = None
    dk_norm_beta: Tensor | None = None


@dataclass
class FFNGrads:
    """Lean ``FeedForwardGrads``: ``dW1 (embed_dim, hidden_dim)``, ``dW2 (hidden_dim, embed_dim)``, ``db1``, ``db2``."""

    dW1: Tensor
    dW2: Tensor
    db1: Tensor | None  # None under profile.ffn_bias=False (a variation point)
    db2: Tensor | None
    dWg: Tensor | None = None  # profile.ffn == "glu": the gate projection (a variation point)
    dbg: Tensor | None = None


@dataclass
class EncoderLayerGrads:
    """Lean ``TransformerEncoderLayerGrads``: attention, feed-forward and the two LayerNorms' ``(embed_dim,)`` grads."""

    mha: MHAGrads
    ffn: FFNGrads
    d_norm1_gamma: Tensor
    d_norm1_beta: Tensor | None  # None under profile.norm="rms" (a variation point: RMSNorm has no beta)
    d_norm2_gamma: Tensor
    d_norm2_beta: Tensor | None
    d_ls1_gamma: Tensor | None = None  # profile.layer_scale (a variation point)
    d_ls2_gamma: Tensor | None = None

    def items(self, prefix: str) -> Iterator[tuple[str, Tensor]]:
        """``(state-dict key, tensor)`` pairs in state-dict order, keys starting with ``prefix``."""
        for row in LAYER_PARAMS:
            t = _field(self, row.grad)
            if t is not None:
                yield prefix + row.key, t

    @classmethod
    def from_keys(
        cls, sub: dict[str, Tensor], prefix: str, *, variant: str, profile: ProfileLike | None = None
    ) -> tuple[EncoderLayerGrads | None, list[str]]:
        """The layer record from ``sub`` (keys relative to ``prefix``; consumed), and the keys every
        ``variant`` model has that it lacks (with ``prefix``; the record is None then)."""
        parts: dict[str, dict[str, Tensor | None]] = {name: {} for name in _LAYER_RECORDS}
        parts[""] = {}
        for row in LAYER_PARAMS:
            record, _, name = row.grad.rpartition(".")
            parts[record][name] = sub.pop(row.key, None)
        missing = [prefix + r.key for r in LAYER_PARAMS if _needed(r, variant, profile) and _field_in(parts, r) is None]
        if missing:
            return None, missing
        # Every required entry was found above, so the None values are optional fields.
        records = {name: rec(**parts[name]) for name, rec in _LAYER_RECORDS.items()}  # type: ignore[arg-type]
        return cls(**records, **parts[""]), []  # type: ignore[arg-type]


#: The per-layer sub-records, by the prefix of ``Param.grad`` (``mha.dWq``).
_LAYER_RECORDS: dict[str, type[MHAGrads] | type[FFNGrads]] = {"mha": MHAGrads, "ffn": FFNGrads}


def _needed(row: Param, variant: str, profile: ProfileLike | None) -> bool:
    """Whether a record must hold ``row``: under ``profile`` when given, else for the spec's parameters."""
    return row.when.holds(variant, profile) if profile is not None else row.when.required(variant)


def _field(obj: object, path: str) -> Tensor | None:
    """The value of a dotted field path (``mha.dWq``) of a grads record (None when absent)."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj  # type: ignore[return-value]


def _field_in(parts: dict[str, dict[str, Tensor | None]], row: Param) -> Tensor | None:
    record, _, name = row.grad.rpartition(".")
    return parts[record][name]


_LAYER_KEY = re.compile(r"^encoder\.(0|[1-9][0-9]*)\.(.+)$")


@dataclass(kw_only=True)
class ViTGrads:
    """Lean ``ViTGrads`` (mean-pool ``ViTSpec``); gradients are summed over a batch.

    Shapes: ``d_patch_kernel (embed_dim, channels, patch_h, patch_w)``, ``d_patch_bias (embed_dim,)``,
    ``d_pos (tokens, embed_dim)``, ``d_encoder`` one :class:`EncoderLayerGrads` per layer,
    ``d_head_W (classes, embed_dim)``, ``d_head_b (classes,)``. Profile fields (``None`` when the
    profile lacks the parameter): ``d_patch_norm_{in,out}_{gamma,beta}`` (``linear_ln`` patch
    embedding), ``d_final_norm_{gamma,beta}``, ``d_head_norm_{gamma,beta}``.
    """

    d_patch_kernel: Tensor
    d_patch_bias: Tensor | None = None  # None only under profile.patch_bias=False (a variation point)
    d_pos: Tensor | None = None  # None only without a learned table (profile.pos_embed)
    d_encoder: list[EncoderLayerGrads] = field(default_factory=list)
    d_head_W: Tensor
    d_head_b: Tensor | None = None  # None only under profile.head_bias=False
    d_patch_norm_in_gamma: Tensor | None = None
    d_patch_norm_in_beta: Tensor | None = None
    d_patch_norm_out_gamma: Tensor | None = None
    d_patch_norm_out_beta: Tensor | None = None
    d_final_norm_gamma: Tensor | None = None
    d_final_norm_beta: Tensor | None = None
    d_head_norm_gamma: Tensor | None = None
    d_head_norm_beta: Tensor | None = None
    # variation points (vitspec.primitives.variations)
    d_dist_token: Tensor | None = None
    d_reg_tokens: Tensor | None = None
    d_pre_norm_gamma: Tensor | None = None
    d_pre_norm_beta: Tensor | None = None
    d_head_dist_W: Tensor | None = None
    d_head_dist_b: Tensor | None = None
    # MAP pooling (profile.pooling == "map"): one field per vitspec.primitives.variations.MAP_KEYS name
    d_map_latent: Tensor | None = None
    d_map_Wq: Tensor | None = None
    d_map_bq: Tensor | None = None
    d_map_Wk: Tensor | None = None
    d_map_bk: Tensor | None = None
    d_map_Wv: Tensor | None = None
    d_map_bv: Tensor | None = None
    d_map_Wo: Tensor | None = None
    d_map_bo: Tensor | None = None
    d_map_norm_gamma: Tensor | None = None
    d_map_norm_beta: Tensor | None = None
    d_map_W1: Tensor | None = None
    d_map_b1: Tensor | None = None
    d_map_W2: Tensor | None = None
    d_map_b2: Tensor | None = None

    variant: ClassVar[str] = "mean"

    def to_dict(self) -> dict[str, Tensor]:
        """Spec state-dict key -> gradient, in state-dict order; ``None`` fields are left out."""
        out: dict[str, Tensor] = {}
        out.update(self._items(EMBED_PARAMS))
        for i, layer in enumerate(self.d_encoder):
            out.update(layer.items(f"encoder.{i}."))
        out.update(self._items(HEAD_PARAMS))
        return out

    def _items(self, rows: tuple[Param, ...]) -> Iterator[tuple[str, Tensor]]:
        for row in rows:
            t = getattr(self, row.grad, None)
            if t is not None:
                yield row.key, t

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self.to_dict().items())

    @classmethod
    def from_dict(cls: type[G], d: Mapping[str, Tensor], *, profile: ProfileLike | None = None) -> G:
        """Inverse of :meth:`to_dict`. Raises :class:`MappingError` listing every missing or unexpected key
        (missing: relative to ``profile`` when given, else the spec's parameters, e.g. ``pos``).

        The layer count is read off the keys; layers must be numbered ``0..L-1`` without gaps.
        """
        top_rows = [r for r in EMBED_PARAMS + HEAD_PARAMS if r.when.variant in (None, cls.variant)]
        known = {r.key: r for r in top_rows}
        missing: list[str] = []
        unexpected: list[str] = []
        top: dict[str, Any] = {}
        layers: dict[int, dict[str, Tensor]] = {}
        for key, t in d.items():
            m = _LAYER_KEY.match(key)
            if m:
                layers.setdefault(int(m.group(1)), {})[m.group(2)] = t
            elif key in known:
                top[known[key].grad] = t
            else:
                unexpected.append(key)
        missing += [r.key for r in top_rows if _needed(r, cls.variant, profile) and r.grad not in top]
        n_layers = max(layers) + 1 if layers else 0
        d_encoder: list[EncoderLayerGrads] = []
        for i in range(n_layers):
            sub = dict(layers.get(i, {}))
            layer, lacking = EncoderLayerGrads.from_keys(sub, f"encoder.{i}.", variant=cls.variant, profile=profile)
            unexpected += [f"encoder.{i}.{rest}" for rest in sub]
            missing += lacking
            if layer is not None:
                d_encoder.append(layer)
        if missing or unexpected:
            raise MappingError(f"cannot build {cls.__name__} from a dict", missing=missing, unexpected=unexpected)
        return cls(d_encoder=d_encoder, **top)


@dataclass(kw_only=True)
class ViTClsGrads(ViTGrads):
    """Lean ``ViTClsGrads``: :class:`ViTGrads` plus ``d_cls_token (embed_dim,)``; ``d_pos`` has patches + 1 rows."""

    d_cls_token: Tensor

    variant: ClassVar[str] = "cls"
