"""torchvision ``VisionTransformer`` (read against torchvision 0.29.1, ``models/vision_transformer.py``).

Quirks this adapter handles:

- Patch embedding ``conv_proj`` (a Conv2d, or a ``Sequential`` conv stem with
  ``conv_stem_configs``, which the spec cannot express); its output ``(B, D, h, w)`` is
  reshaped and permuted to ``(B, h*w, D)`` in ``_process_input``, not in a module, so the
  ``patch_embed`` capture transforms the conv output.
- ``class_token [1, 1, D]`` is always there; ``encoder.pos_embedding [1, T+1, D]`` is added
  inside ``Encoder.forward`` and followed by ``encoder.dropout`` (the ``pos_embed`` capture).
- ``EncoderBlock`` is pre-norm (``ln_1``/``ln_2``, eps 1e-6 by default) with
  ``nn.MultiheadAttention(batch_first=True)``: fused ``in_proj_weight [3D, D]`` with rows
  ``[q; k; v]`` plus ``in_proj_bias``, and ``out_proj``. Its forward returns
  ``(output, weights)``; the ``attn`` capture takes element 0. In eval mode PyTorch may take the
  fused "fast path" kernel; that is the attention as shipped.
- ``MLPBlock`` is ``Sequential(Linear, GELU, Dropout, Linear, Dropout)`` (``mlp.0``/``mlp.3``).
- ``encoder.ln`` is the final norm over all tokens; ``heads`` is ``Sequential(head=Linear)``, or
  ``pre_logits + Tanh + head`` with ``representation_size`` (not expressible: a ``head_only``
  Unsupported, so a trunk-only check compares everything up to the pooled vector and leaves the
  head's parameters out). The pooled vector (token 0) is the input of ``heads``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from vitspec.config import ViTConfig
from vitspec.profiles import PROFILES

from .base import (
    Description,
    LayerPaths,
    PerLayer,
    Rule,
    RuleAdapter,
    Tap,
    Unsupported,
    as_vector,
    check_linear,
    consensus,
    conv_geometry,
    copy,
    find_base,
    flatten_grid,
    identity_head,
    inp,
    layer_rules,
    layer_taps,
    norm_rules,
    out,
    raise_unsupported,
    read_layer,
    redefinitions,
    squeeze_to,
)

__all__ = ["TorchvisionAdapter"]

_MOD = "torchvision.models.vision_transformer"
_FORWARD_METHODS = ("forward", "_process_input")


def _is(m: Any, qualname: str) -> bool:
    return (type(m).__module__, type(m).__qualname__) == (_MOD, qualname)


def _layer(name: str) -> LayerPaths:
    """Layer ``encoder.layers.<name>``'s row of the table (``nn.MultiheadAttention`` returns a tuple)."""
    b = f"encoder.layers.{name}"
    return LayerPaths(
        norm1=f"{b}.ln_1",
        attn=f"{b}.self_attention",
        qkv=f"{b}.self_attention.in_proj_",
        proj=f"{b}.self_attention.out_proj",
        norm2=f"{b}.ln_2",
        mlp=f"{b}.mlp",
        fc1=f"{b}.mlp.0",
        act=f"{b}.mlp.1",
        fc2=f"{b}.mlp.3",
        attn_in=f"{b}.self_attention",
        mlp_in=f"{b}.mlp",
        block=b,
        tuple_out=True,
    )


class TorchvisionAdapter(RuleAdapter):
    """``torchvision.models.VisionTransformer`` (``vit_b_16`` ... ``vit_h_14``)."""

    name: ClassVar[str] = "torchvision"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return find_base(model, _MOD, "VisionTransformer") is not None

    def _layers(self) -> list[tuple[str, Any]]:
        return list(self.model.encoder.layers.named_children())  # type: ignore[union-attr]

    def describe(self) -> Description:
        m: Any = self.model
        bad: list[str] = []
        base = find_base(m, _MOD, "VisionTransformer")
        assert base is not None
        bad += redefinitions(m, base, _FORWARD_METHODS)
        if not isinstance(m.conv_proj, nn.Conv2d):
            bad.append(f"conv stem (conv_proj is {type(m.conv_proj).__name__}, conv_stem_configs)")
        head_bad = self._head_problems()
        if not _is(m.encoder, "Encoder"):
            raise_unsupported(
                [*bad, *head_bad, f"encoder is {type(m.encoder).__name__} (only torchvision Encoder)"], self.name
            )
        e = int(m.hidden_dim)
        geometry = (0,) * 6
        if isinstance(m.conv_proj, nn.Conv2d):
            try:
                geometry = conv_geometry(m.conv_proj, "conv_proj", self.name)
            except Unsupported as err:
                bad.append(err.reason)
        layers = self._layers()
        r = self._check_layers(layers, e, bad)
        r.read_norm(m.encoder.ln, "encoder.ln", e, self.name, bad)
        if bad or not self.trunk:  # a trunk-only check leaves an inexpressible head out
            raise_unsupported([*bad, *head_bad], self.name, head_only=not bad)
        _, in_c, ph, pw, stride, padding = geometry
        p0 = PROFILES["torchvision"]
        eps, notes = consensus(r.eps, p0.ln_eps, "LayerNorm eps")
        act, act_notes = consensus(r.act, p0.activation, "activation")
        qkv_bias = r.qkv_bias if layers else p0.qkv_bias
        profile = p0.replace(ln_eps=eps, activation=act, qkv_bias=qkv_bias, out_bias=qkv_bias)
        heads, hidden = r.heads, r.hidden
        has_head = not head_bad  # else a trunk-only check (self.trunk): the spec head is the identity
        classes = m.heads.head.out_features if has_head else e
        cfg = ViTConfig(ph, pw, stride, padding, e, hidden, heads, len(layers), classes)
        size = int(m.image_size)
        return Description(
            library=self.name,
            model_name=type(m).__name__ if type(m) is not base else _guess_name(m),
            cfg=cfg,
            in_c=in_c,
            in_h=size,
            in_w=size,
            variant="cls",
            profile=profile,
            has_head=has_head,
            notes=(
                "attention as shipped: nn.MultiheadAttention (may use the fused fast path in eval)",
                *notes,
                *act_notes,
                *r.notes,
                *[f"trunk only: the head is not expressible ({why}); it is not checked" for why in head_bad],
            ),
            synthetic=() if has_head else ("head_W", "head_b"),
        )

    def _head_problems(self) -> list[str]:
        """Why the spec cannot express ``heads`` (a pre-logits layer, a custom classifier); empty if it can.

        Outside a trunk-only check they make the model UNSUPPORTED (``head_only`` when nothing else is off)."""
        heads_seq: Any = self.model.heads
        names = [n for n, _ in heads_seq.named_children()]
        if names != ["head"]:
            extra = "pre_logits + tanh, representation_size" if "pre_logits" in names else ", ".join(names)
            return [f"heads has layers before the classifier ({extra})"]
        if not (isinstance(heads_seq.head, nn.Linear) and heads_seq.head.bias is not None):
            return [f"heads.head is {type(heads_seq.head).__name__}, not nn.Linear with bias"]
        return []

    def synthetic(self, like: Tensor) -> dict[str, Tensor]:
        return identity_head(self.description().cfg.embed_dim, like)

    def _check_layers(self, layers: list[tuple[str, Any]], e: int, bad: list[str]) -> PerLayer:
        """Every layer's structure and own numerics (eps of each norm, activation, biases)."""
        heads = layers[0][1].self_attention.num_heads if layers else 1
        hidden = layers[0][1].mlp[0].out_features if layers else 1
        r = PerLayer(heads=heads, hidden=hidden)
        biases: dict[str, bool] = {}
        for name, blk in layers:
            w = f"encoder.layers.{name}"
            if not _is(blk, "EncoderBlock"):
                bad.append(f"{w} is {type(blk).__name__} (only torchvision EncoderBlock)")
                continue
            a = blk.self_attention
            if type(a) is not nn.MultiheadAttention:
                bad.append(f"{w}.self_attention is {type(a).__name__}, not nn.MultiheadAttention")
            else:
                if not a._qkv_same_embed_dim:
                    bad.append(f"{w}.self_attention: separate kdim/vdim projections")
                if a.bias_k is not None or a.bias_v is not None:
                    bad.append(f"{w}.self_attention: add_bias_kv (extra key/value tokens)")
                if a.add_zero_attn:
                    bad.append(f"{w}.self_attention: add_zero_attn")
                if not a.batch_first:
                    bad.append(f"{w}.self_attention: batch_first=False (attends over the batch axis)")
                if a.num_heads != heads:
                    bad.append(f"{w}.self_attention: {a.num_heads} heads (layer 0 has {heads})")
                if (a.in_proj_bias is None) != (a.out_proj.bias is None):
                    bad.append(f"{w}.self_attention: in_proj and out_proj biases disagree")
                biases[f"{w}.self_attention"] = a.in_proj_bias is not None
            mlp = blk.mlp
            kinds = [type(x) for x in mlp] if isinstance(mlp, nn.Sequential) else []
            if len(kinds) != 5 or not (isinstance(mlp[0], nn.Linear) and isinstance(mlp[3], nn.Linear)):
                bad.append(f"{w}.mlp is not Linear-act-Dropout-Linear-Dropout")
                continue
            if not (isinstance(mlp[2], nn.Dropout) and isinstance(mlp[4], nn.Dropout)):
                bad.append(f"{w}.mlp: unexpected layers {[k.__name__ for k in kinds]}")
            for j in (0, 3):
                try:
                    check_linear(mlp[j], f"{w}.mlp.{j}", self.name)
                except Unsupported as err:
                    bad.append(err.reason)
            if mlp[0].out_features != hidden:
                bad.append(f"{w}.mlp: hidden width {mlp[0].out_features} (layer 0 has {hidden})")
            read_layer(self.model, _layer(name), e, self.name, r, bad)
        r.qkv_bias, _ = consensus(biases, True, "attention biases")
        bad += [f"{k}: {'has' if v else 'lacks'} biases unlike the rest" for k, v in biases.items() if v != r.qkv_bias]
        return r

    def key_map(self) -> list[Rule]:
        d = self.description()
        c, p = d.cfg, d.profile
        e, f, a = c.embed_dim, c.hidden_dim, c.head_count * c.head_dim
        tokens = c.tokens(d.in_h, d.in_w) + 1
        rules = [
            Rule("conv_proj.weight", ("patch_kernel",), (e, d.in_c, c.patch_h, c.patch_w)),
            Rule("conv_proj.bias", ("patch_bias",), (e,)),
            Rule("class_token", ("cls_token",), (1, 1, e), as_vector),
            Rule("encoder.pos_embedding", ("pos",), (1, tokens, e), squeeze_to(tokens, e)),
        ]
        for i, (name, _) in enumerate(self._layers()):
            rules += layer_rules(_layer(name), i, embed=e, hidden=f, attn=a, profile=p)
        rules += norm_rules("encoder.ln", "final_norm", e)
        if not d.has_head:  # a trunk-only check of an inexpressible head: its parameters are left out
            why = "the head is not expressible; a trunk-only check leaves it out"
            heads: Any = self.model.heads
            return rules + [Rule.ignore(f"heads.{n}", t.shape, why) for n, t in heads.named_parameters()]
        rules += [
            Rule("heads.head.weight", ("head_W",), (c.num_classes, e), copy),
            Rule("heads.head.bias", ("head_b",), (c.num_classes,), copy),
        ]
        return rules

    def stage_paths(self) -> dict[str, list[Tap]]:
        self.description()
        paths = [f"encoder.layers.{name}" for name, _ in self._layers()]
        after = [*paths[1:], "encoder.ln"]  # who consumes each layer's output
        t: dict[str, list[Tap]] = {
            "patch_embed": [out("conv_proj", flatten_grid)],
            "pos_embed": [inp(paths[0] if paths else "encoder.ln"), out("encoder.dropout")],
        }
        for i, (name, _) in enumerate(self._layers()):
            t.update(layer_taps(_layer(name), i, after[i]))
        t["final_norm"] = [out("encoder.ln")]
        t["pool"] = [inp("heads")]
        if self.description().has_head:
            t["head"] = [out("heads")]
        return t


# torchvision builders: (patch, layers, hidden) -> name; models carry no name of their own.
_BUILDERS = {
    (16, 12, 768): "vit_b_16",
    (32, 12, 768): "vit_b_32",
    (16, 24, 1024): "vit_l_16",
    (32, 24, 1024): "vit_l_32",
    (14, 32, 1280): "vit_h_14",
}


def _guess_name(m: Any) -> str:
    key = (int(m.patch_size), len(m.encoder.layers), int(m.hidden_dim))
    return _BUILDERS.get(key, "VisionTransformer")
