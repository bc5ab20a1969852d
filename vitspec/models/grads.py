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
:meth:`ViTGrads.from_dict` is its inverse.
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

    # state-dict suffix -> field, in state-dict order
    KEYS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("Wq", "dWq"),
        ("Wk", "dWk"),
        ("Wv", "dWv"),
        ("Wo", "dWo"),
        ("bq", "dbq"),
        ("bk", "dbk"),
        ("bv", "dbv"),
        ("bo", "dbo"),
    )
    REQUIRED: ClassVar[frozenset[str]] = frozenset({"dWq", "dWk", "dWv", "dWo"})


@dataclass
class FFNGrads:
    """Lean ``FeedForwardGrads``: ``dW1 (embed_dim, hidden_dim)``, ``dW2 (hidden_dim, embed_dim)``, ``db1``, ``db2``."""

    dW1: Tensor
    dW2: Tensor
    db1: Tensor
    db2: Tensor

    KEYS: ClassVar[tuple[tuple[str, str], ...]] = (("W1", "dW1"), ("b1", "db1"), ("W2", "dW2"), ("b2", "db2"))
    REQUIRED: ClassVar[frozenset[str]] = frozenset({"dW1", "dW2", "db1", "db2"})


@dataclass
class EncoderLayerGrads:
    """Lean ``TransformerEncoderLayerGrads``: attention, feed-forward and the two LayerNorms' ``(embed_dim,)`` grads."""

    mha: MHAGrads
    ffn: FFNGrads
    d_norm1_gamma: Tensor
    d_norm1_beta: Tensor
    d_norm2_gamma: Tensor
    d_norm2_beta: Tensor

    NORM_KEYS: ClassVar[tuple[str, ...]] = ("norm1_gamma", "norm1_beta", "norm2_gamma", "norm2_beta")

    def items(self, prefix: str) -> Iterator[tuple[str, Tensor]]:
        """``(state-dict key, tensor)`` pairs in state-dict order, keys starting with ``prefix``."""
        for key, name in MHAGrads.KEYS:
            t = getattr(self.mha, name)
            if t is not None:
                yield f"{prefix}mha.{key}", t
        for key, name in FFNGrads.KEYS:
            yield f"{prefix}ffn.{key}", getattr(self.ffn, name)
        for key in self.NORM_KEYS:
            yield f"{prefix}{key}", getattr(self, "d_" + key)


# Top-level fields of the ViT records in state-dict order: (state-dict key, field, required).
# ``None`` marks where the encoder layers go.
_TOP: tuple[tuple[str, str, bool] | None, ...] = (
    ("patch_kernel", "d_patch_kernel", True),
    ("patch_bias", "d_patch_bias", True),
    ("patch_norm_in_gamma", "d_patch_norm_in_gamma", False),
    ("patch_norm_in_beta", "d_patch_norm_in_beta", False),
    ("patch_norm_out_gamma", "d_patch_norm_out_gamma", False),
    ("patch_norm_out_beta", "d_patch_norm_out_beta", False),
    ("cls_token", "d_cls_token", True),  # ViTClsGrads only
    ("pos", "d_pos", True),
    None,
    ("final_norm_gamma", "d_final_norm_gamma", False),
    ("final_norm_beta", "d_final_norm_beta", False),
    ("head_norm_gamma", "d_head_norm_gamma", False),
    ("head_norm_beta", "d_head_norm_beta", False),
    ("head_W", "d_head_W", True),
    ("head_b", "d_head_b", True),
)
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
    d_patch_bias: Tensor
    d_pos: Tensor
    d_encoder: list[EncoderLayerGrads] = field(default_factory=list)
    d_head_W: Tensor
    d_head_b: Tensor
    d_patch_norm_in_gamma: Tensor | None = None
    d_patch_norm_in_beta: Tensor | None = None
    d_patch_norm_out_gamma: Tensor | None = None
    d_patch_norm_out_beta: Tensor | None = None
    d_final_norm_gamma: Tensor | None = None
    d_final_norm_beta: Tensor | None = None
    d_head_norm_gamma: Tensor | None = None
    d_head_norm_beta: Tensor | None = None

    variant: ClassVar[str] = "mean"

    def to_dict(self) -> dict[str, Tensor]:
        """Spec state-dict key -> gradient, in state-dict order; ``None`` fields are left out."""
        out: dict[str, Tensor] = {}
        for entry in _TOP:
            if entry is None:
                for i, layer in enumerate(self.d_encoder):
                    out.update(layer.items(f"encoder.{i}."))
                continue
            key, name, _ = entry
            t = getattr(self, name, None)
            if t is not None:
                out[key] = t
        return out

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self.to_dict().items())

    @classmethod
    def from_dict(cls: type[G], d: Mapping[str, Tensor]) -> G:
        """Inverse of :meth:`to_dict`. Raises :class:`MappingError` listing every missing or unexpected key.

        The layer count is read off the keys; layers must be numbered ``0..L-1`` without gaps.
        """
        has_cls = cls.variant == "cls"
        missing: list[str] = []
        unexpected: list[str] = []
        top: dict[str, Any] = {}
        layers: dict[int, dict[str, Tensor]] = {}
        known = {e[0]: e for e in _TOP if e is not None}
        for key, t in d.items():
            m = _LAYER_KEY.match(key)
            if m:
                layers.setdefault(int(m.group(1)), {})[m.group(2)] = t
            elif key in known and (key != "cls_token" or has_cls):
                top[known[key][1]] = t
            else:
                unexpected.append(key)
        for entry in _TOP:
            if entry is not None and entry[2] and entry[1] not in top and (entry[0] != "cls_token" or has_cls):
                missing.append(entry[0])
        n_layers = max(layers) + 1 if layers else 0
        d_encoder: list[EncoderLayerGrads] = []
        for i in range(n_layers):
            sub = dict(layers.get(i, {}))
            mha = {name: sub.pop(f"mha.{key}", None) for key, name in MHAGrads.KEYS}
            ffn = {name: sub.pop(f"ffn.{key}", None) for key, name in FFNGrads.KEYS}
            norms = {"d_" + key: sub.pop(key, None) for key in EncoderLayerGrads.NORM_KEYS}
            unexpected += [f"encoder.{i}.{rest}" for rest in sub]
            missing += [f"encoder.{i}.mha.{k}" for k, n in MHAGrads.KEYS if n in MHAGrads.REQUIRED and mha[n] is None]
            missing += [f"encoder.{i}.ffn.{k}" for k, n in FFNGrads.KEYS if ffn[n] is None]
            missing += [f"encoder.{i}.{k}" for k in EncoderLayerGrads.NORM_KEYS if norms["d_" + k] is None]
            if not missing:
                # Every required entry was found above, so the None defaults are gone.
                d_encoder.append(EncoderLayerGrads(MHAGrads(**mha), FFNGrads(**ffn), **norms))  # type: ignore[arg-type]
        if missing or unexpected:
            raise MappingError(f"cannot build {cls.__name__} from a dict", missing=missing, unexpected=unexpected)
        return cls(d_encoder=d_encoder, **top)


@dataclass(kw_only=True)
class ViTClsGrads(ViTGrads):
    """Lean ``ViTClsGrads``: :class:`ViTGrads` plus ``d_cls_token (embed_dim,)``; ``d_pos`` has patches + 1 rows."""

    d_cls_token: Tensor

    variant: ClassVar[str] = "cls"
