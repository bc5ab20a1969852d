"""Hugging Face ``ViTForImageClassification`` / ``ViTModel`` (transformers 5.23.0 and 4.x layouts).

Quirks this adapter handles (read against transformers 5.23.0 ``models/vit/modeling_vit.py``
and its checkpoint conversion table ``conversion_mapping.py`` for the 4.x names):

- Parameter names changed in 5.x. 5.x: ``vit.layers.{i}.attention.{q,k,v,o}_proj``,
  ``vit.layers.{i}.mlp.fc1/fc2``; 4.x: ``vit.encoder.layer.{i}.attention.attention.{query,key,value}``,
  ``...attention.output.dense``, ``...intermediate.dense``, ``...output.dense``. LayerNorms are
  ``layernorm_before`` / ``layernorm_after`` in both. ``to_spec`` accepts either name for every
  tensor (a 4.x state dict maps through a 5.x model's adapter and vice versa); hooks follow the
  layout of the model actually given.
- Separate ``query/key/value`` Linears with bias (``config.qkv_bias``), output projection with bias.
- LayerNorm eps ``config.layer_norm_eps`` = 1e-12 by default (spec: 1e-6).
- ``ViTEmbeddings`` prepends ``cls_token [1, 1, D]`` and adds ``position_embeddings [1, T+1, D]``;
  ``interpolate_pos_encoding`` (a forward argument, off unless passed) would resample them:
  ``run`` never passes it. ``mask_token`` (``use_mask_token=True``) is only used with
  ``bool_masked_pos``: accounted for, not compared.
- ``vit.layernorm`` is the final norm over all tokens; the classifier reads token 0.
- ``ViTModel`` has no classifier: ``has_head=False``, the spec head is the identity and
  ``run`` returns ``last_hidden_state[:, 0]`` (the CLS vector after the final LayerNorm). Its
  ``pooler`` (dense + tanh, ``add_pooling_layer=True``) is outside the spec: accounted for, not compared.
- The attention kernel is ``config._attn_implementation`` as shipped (``sdpa`` by default);
  ``eager`` computes the softmax in float32 even for float64 inputs (noted in the description).
- Activations come from ``ACT2FN[hidden_act]``: ``gelu`` (erf), ``gelu_new`` / ``gelu_pytorch_tanh``
  (tanh approximation), ``relu``; anything else is unsupported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from vitspec.config import ViTConfig
from vitspec.profiles import PROFILES, Activation

from .base import (
    Description,
    LowPrecision,
    Rule,
    RuleAdapter,
    Tap,
    Unsupported,
    activation_kind,
    as_vector,
    check_layer_norm,
    check_linear,
    consensus,
    conv_geometry,
    copy,
    find_base,
    identity_head,
    inp,
    linear_rules,
    norm_rules,
    out,
    overridden,
    raise_unsupported,
    squeeze_to,
    take0,
)

__all__ = ["HFAdapter"]

_MOD = "transformers.models.vit.modeling_vit"
_CLASSES = ("ViTForImageClassification", "ViTModel", "ViTForMaskedImageModeling")


@dataclass(frozen=True)
class _Layer:
    """One encoder layer under either layout: module paths (relative to the ``vit`` prefix) and modules."""

    module: Any
    path: str  # "layers.3" (5.x) or "encoder.layer.3" (4.x)
    other: str  # the same layer under the other layout
    new: bool  # 5.x layout
    norm1: Any
    norm2: Any
    attn: Any  # returns (output, weights) in both layouts
    q: Any
    k: Any
    v: Any
    o: Any
    fc1: Any
    act: Any
    fc2: Any
    mlp_out: Any  # whose output is the FFN output before the residual (5.x: mlp, 4.x: output.dense)
    head_dim: int

    def names(self, part: str) -> tuple[str, str]:
        """``(path in this model's layout, path in the other layout)`` of a sub-module."""
        new, old = _PARTS[part]
        return (f"{self.path}.{new if self.new else old}", f"{self.other}.{old if self.new else new}")


# sub-module: (5.x path, 4.x path) inside a layer
_PARTS = {
    "q": ("attention.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"),
    "o": ("attention.o_proj", "attention.output.dense"),
    "fc1": ("mlp.fc1", "intermediate.dense"),
    "fc2": ("mlp.fc2", "output.dense"),
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
}


class HFAdapter(RuleAdapter):
    """transformers ``ViTForImageClassification`` and ``ViTModel``."""

    name: ClassVar[str] = "hf"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return any(find_base(model, _MOD, c) is not None for c in _CLASSES)

    # -- structure -----------------------------------------------------------------------
    @property
    def _classifier(self) -> bool:
        return find_base(self.model, _MOD, "ViTForImageClassification") is not None

    @property
    def _vit(self) -> Any:
        return self.model.vit if self._classifier else self.model

    @property
    def _prefix(self) -> str:
        return "vit." if self._classifier else ""

    def _layers(self) -> list[_Layer]:
        vit = self._vit
        out = []
        if hasattr(vit, "layers"):  # transformers 5.x
            for i, lay in enumerate(vit.layers):
                a = lay.attention
                out.append(
                    _Layer(
                        module=lay,
                        path=f"layers.{i}",
                        other=f"encoder.layer.{i}",
                        new=True,
                        norm1=lay.layernorm_before,
                        norm2=lay.layernorm_after,
                        attn=a,
                        q=a.q_proj,
                        k=a.k_proj,
                        v=a.v_proj,
                        o=a.o_proj,
                        fc1=lay.mlp.fc1,
                        act=lay.mlp.activation_fn,
                        fc2=lay.mlp.fc2,
                        mlp_out=lay.mlp,
                        head_dim=int(a.head_dim),
                    )
                )
        elif hasattr(vit, "encoder") and hasattr(vit.encoder, "layer"):  # transformers 4.x
            for i, lay in enumerate(vit.encoder.layer):
                sa = lay.attention.attention
                out.append(
                    _Layer(
                        module=lay,
                        path=f"encoder.layer.{i}",
                        other=f"layers.{i}",
                        new=False,
                        norm1=lay.layernorm_before,
                        norm2=lay.layernorm_after,
                        attn=lay.attention,  # ViTAttention: self-attention + output.dense, no residual
                        q=sa.query,
                        k=sa.key,
                        v=sa.value,
                        o=lay.attention.output.dense,
                        fc1=lay.intermediate.dense,
                        act=lay.intermediate.intermediate_act_fn,
                        fc2=lay.output.dense,
                        mlp_out=lay.output.dense,  # ViTOutput adds the residual itself: hook the Linear
                        head_dim=int(sa.attention_head_size),
                    )
                )
        else:
            raise Unsupported(
                f"unknown ViT layout ({type(vit).__name__} has neither .layers nor .encoder.layer)", library=self.name
            )
        return out

    # -- description -----------------------------------------------------------------------
    def describe(self) -> Description:
        m: Any = self.model
        if find_base(m, _MOD, "ViTForMaskedImageModeling") is not None:
            raise Unsupported(
                "ViTForMaskedImageModeling (a pixel decoder, not a classifier); check its .vit (a ViTModel)",
                library=self.name,
            )
        bad: list[str] = []
        for c in ("ViTForImageClassification", "ViTModel"):
            base = find_base(m, _MOD, c)
            if base is not None and type(m) is not base and (redefined := overridden(m, base, ("forward",))):
                bad.append(f"{type(m).__name__} redefines {', '.join(redefined)}")
        vit = self._vit
        config = m.config
        emb = vit.embeddings
        if type(emb).forward is not getattr(find_base(emb, _MOD, "ViTEmbeddings"), "forward", None):
            bad.append(f"embeddings is {type(emb).__name__} (only ViTEmbeddings)")
        e, in_c, ph, pw, stride, padding = conv_geometry(emb.patch_embeddings.projection, "patch projection", self.name)
        image = emb.patch_embeddings.image_size
        in_h, in_w = (int(image[0]), int(image[1])) if isinstance(image, tuple | list) else (int(image), int(image))
        layers = self._layers()
        heads = int(config.num_attention_heads)
        hidden = layers[0].fc1.out_features if layers else int(config.intermediate_size)
        eps_by: dict[str, float] = {}
        act_by: dict[str, Activation] = {}
        qkv_bias_by: dict[str, bool] = {}
        notes: list[str] = []
        for i, lay in enumerate(layers):
            w = f"{self._prefix}{lay.path}"
            for part in ("norm1", "norm2"):
                where = f"{self._prefix}{lay.names(part)[0]}"
                try:
                    eps_by[where] = check_layer_norm(getattr(lay, part), where, e, self.name)
                except Unsupported as err:
                    bad.append(err.reason)
            try:  # every layer's own activation, judged by probing it
                act_by[f"{w} activation"], note = activation_kind(lay.act, f"{w} activation", self.name)
                notes += [note] if note else []
            except Unsupported as err:
                bad.append(err.reason)
            try:
                for part in ("q", "k", "v"):
                    check_linear(getattr(lay, part), f"{self._prefix}{lay.names(part)[0]}", self.name, bias=None)
                for part in ("o", "fc1", "fc2"):
                    check_linear(getattr(lay, part), f"{self._prefix}{lay.names(part)[0]}", self.name)
            except Unsupported as err:
                bad.append(err.reason)
                continue
            if len({getattr(lay, p).bias is None for p in ("q", "k", "v")}) != 1:
                bad.append(f"{w}: query/key/value disagree on biases")
            qkv_bias_by[w] = lay.q.bias is not None
            if lay.head_dim * heads != e or lay.head_dim != e // heads:
                bad.append(f"{w}: head_dim={lay.head_dim} with {heads} heads != hidden_size {e}")
            if lay.fc1.out_features != hidden:
                bad.append(f"{w}: intermediate width {lay.fc1.out_features} (layer 0 has {hidden})")
            if i and lay.new != layers[0].new:
                bad.append(f"{w}: mixed 4.x/5.x layer layouts")
        try:
            eps_by[f"{self._prefix}layernorm"] = check_layer_norm(
                vit.layernorm, f"{self._prefix}layernorm", e, self.name
            )
        except Unsupported as err:
            bad.append(err.reason)
        qkv_bias, _ = consensus(qkv_bias_by, bool(config.qkv_bias), "query/key/value bias")
        bad += [f"{w}: query/key/value {'have' if v else 'lack'} biases, unlike the other layers"
                for w, v in qkv_bias_by.items() if v != qkv_bias]  # fmt: skip
        has_head = self._classifier and not isinstance(m.classifier, nn.Identity)
        if (
            self._classifier
            and has_head
            and not (isinstance(m.classifier, nn.Linear) and m.classifier.bias is not None)
        ):
            bad.append(f"classifier is {type(m.classifier).__name__}, not nn.Linear with bias")
        raise_unsupported(bad, self.name)
        p0 = PROFILES["hf"]
        eps, eps_notes = consensus(eps_by, float(config.layer_norm_eps), "LayerNorm eps")
        act, act_notes = consensus(act_by, p0.activation, "activation")
        profile = p0.replace(
            ln_eps=eps,
            activation=act,
            qkv_bias=qkv_bias,
            out_bias=True,
            source=f"transformers {type(m).__name__} (hidden_act={config.hidden_act!r})",
        )
        cfg = ViTConfig(
            ph, pw, stride, padding, e, hidden, heads, len(layers), m.classifier.out_features if has_head else e
        )
        impl = getattr(config, "_attn_implementation", None)
        notes = [f"attention as shipped: attn_implementation={impl!r}", *eps_notes, *act_notes, *notes]
        precision: tuple[LowPrecision, ...] = ()
        if impl == "eager":  # eager_attention_forward: softmax(..., dtype=torch.float32).to(query.dtype)
            op = "the attention softmax (HF eager attention: softmax(dtype=torch.float32))"
            precision = (LowPrecision(tuple(f"blocks.{i}.attn" for i in range(len(layers))), "float32", op),)
        if not has_head:
            notes.append("no classifier: the spec head is the identity; compared up to the pooled CLS vector")
        for r in self._ignored_rules():
            notes.append(f"{r.source}: {r.note}")
        return Description(
            library=self.name,
            model_name=getattr(config, "name_or_path", "") or type(m).__name__,
            cfg=cfg,
            in_c=in_c,
            in_h=in_h,
            in_w=in_w,
            variant="cls",
            profile=profile,
            has_head=has_head,
            notes=tuple(notes),
            synthetic=() if has_head else ("head_W", "head_b"),
            precision=precision,
        )

    def _ignored_rules(self) -> list[Rule]:
        """Parameters that exist but are outside the spec (accounted for, never compared)."""
        vit, p = self._vit, self._prefix
        e = vit.layernorm.normalized_shape[0]
        rules = []
        if getattr(vit.embeddings, "mask_token", None) is not None:
            rules.append(
                Rule.ignore(f"{p}embeddings.mask_token", (1, 1, e), "mask token, used only with bool_masked_pos")
            )
        pooler = getattr(vit, "pooler", None)
        if pooler is not None:
            d = pooler.dense
            note = "pooler (dense + tanh) is outside the spec; not compared"
            rules.append(Rule.ignore(f"{p}pooler.dense.weight", (d.out_features, d.in_features), note))
            rules.append(Rule.ignore(f"{p}pooler.dense.bias", (d.out_features,), note))
        return rules

    # -- tensors ---------------------------------------------------------------------------
    def key_map(self) -> list[Rule]:
        d = self.description()
        c, pr, p = d.cfg, d.profile, self._prefix
        e, f, a = c.embed_dim, c.hidden_dim, c.head_count * c.head_dim
        tokens = c.tokens(d.in_h, d.in_w) + 1
        emb = f"{p}embeddings"
        rules = [
            Rule(f"{emb}.patch_embeddings.projection.weight", ("patch_kernel",), (e, d.in_c, c.patch_h, c.patch_w)),
            Rule(f"{emb}.patch_embeddings.projection.bias", ("patch_bias",), (e,)),
            Rule(f"{emb}.cls_token", ("cls_token",), (1, 1, e), as_vector),
            Rule(f"{emb}.position_embeddings", ("pos",), (1, tokens, e), squeeze_to(tokens, e)),
        ]
        for i, lay in enumerate(self._layers()):
            s = f"encoder.{i}"

            def names(part: str, lay: _Layer = lay) -> tuple[str, str]:
                here, there = lay.names(part)
                return f"{p}{here}", f"{p}{there}"

            def lin(part: str, w: str, b: str | None, out_f: int, in_f: int) -> list[Rule]:
                src, alias = names(part)
                return linear_rules(src, w, b, out_f, in_f, aliases=alias)

            def norm(part: str, prefix: str) -> list[Rule]:
                src, alias = names(part)
                return norm_rules(src, prefix, e, aliases=alias)

            rules += norm("norm1", f"{s}.norm1")
            for part in "qkv":
                rules += lin(part, f"{s}.mha.W{part}", f"{s}.mha.b{part}" if pr.qkv_bias else None, a, e)
            rules += lin("o", f"{s}.mha.Wo", f"{s}.mha.bo", e, a)
            rules += norm("norm2", f"{s}.norm2")
            rules += lin("fc1", f"{s}.ffn.W1", f"{s}.ffn.b1", f, e)
            rules += lin("fc2", f"{s}.ffn.W2", f"{s}.ffn.b2", e, f)
        rules += norm_rules(f"{p}layernorm", "final_norm", e)
        if d.has_head:
            rules += [
                Rule("classifier.weight", ("head_W",), (c.num_classes, e), copy),
                Rule("classifier.bias", ("head_b",), (c.num_classes,), copy),
            ]
        return rules + self._ignored_rules()

    def synthetic(self, like: Tensor) -> dict[str, Tensor]:
        return identity_head(self.description().cfg.embed_dim, like)

    # -- stages ----------------------------------------------------------------------------
    def stage_paths(self) -> dict[str, list[Tap]]:
        d = self.description()
        p = self._prefix
        layers = [f"{p}{lay.path}" for lay in self._layers()]
        new = [lay.new for lay in self._layers()]
        after = [*layers[1:], f"{p}layernorm"]  # who consumes each layer's output
        t: dict[str, list[Tap]] = {
            "patch_embed": [out(f"{p}embeddings.patch_embeddings")],
            "pos_embed": [inp(layers[0] if layers else f"{p}layernorm"), out(f"{p}embeddings")],
        }
        for i, b in enumerate(layers):
            s = f"blocks.{i}"
            # 5.x: ViTMLP is the FFN; 4.x: ViTIntermediate + ViTOutput, whose dense output precedes the residual.
            ffn_in, ffn_out = (f"{b}.mlp", f"{b}.mlp") if new[i] else (f"{b}.intermediate", f"{b}.output.dense")
            t[f"{s}.norm1"] = [inp(f"{b}.attention"), out(f"{b}.layernorm_before")]
            t[f"{s}.attn"] = [out(f"{b}.attention", take0)]  # (output, weights); no residual inside
            t[f"{s}.norm2"] = [inp(ffn_in), out(f"{b}.layernorm_after")]
            t[f"{s}.mlp"] = [out(ffn_out)]
            t[s] = [inp(after[i]), out(b, take0)]  # 4.x layers return a tuple
        t["final_norm"] = [out(f"{p}layernorm")]
        t["pool"] = [inp("classifier")] if self._classifier else [out(f"{p}layernorm", _cls_row)]
        if d.has_head:
            t["head"] = [out("classifier")]
        return t

    def run(self, x: Tensor) -> Tensor:
        out = self.model(pixel_values=x)
        return out.logits if self._classifier else out.last_hidden_state[:, 0]


def _cls_row(t: Tensor) -> Tensor:
    """Token 0 of ``(B, T, D)`` (ViTModel's pooled vector: the CLS row after the final LayerNorm)."""
    return t[:, 0]
