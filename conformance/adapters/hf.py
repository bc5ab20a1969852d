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

from dataclasses import replace
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
    hf_attention,
    identity_head,
    image_hw,
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

__all__ = ["HFAdapter"]

_MOD = "transformers.models.vit.modeling_vit"
_CLASSES = ("ViTForImageClassification", "ViTModel", "ViTForMaskedImageModeling")


def _paths(prefix: str, i: int, *, new: bool) -> LayerPaths:
    """Layer ``i``'s row of the table in the transformers 5.x (``new``) or 4.x layout.

    5.x: ``layers.i`` with ``attention.{q,k,v,o}_proj`` and ``ViTMLP`` (``mlp``: the FFN). 4.x:
    ``encoder.layer.i`` with ``attention.attention.{query,key,value}``, ``attention.output.dense``,
    and an FFN split into ``intermediate`` and ``output``, whose ``dense`` output precedes the
    residual that ``ViTOutput`` adds itself (so the ``mlp`` sub-op is that Linear's output).
    Attention returns ``(output, weights)``, 4.x layers a tuple too.
    """
    if new:
        b, a = f"{prefix}layers.{i}", f"{prefix}layers.{i}.attention"
        return LayerPaths(
            norm1=f"{b}.layernorm_before",
            attn=a,
            qkv=(f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"),
            proj=f"{a}.o_proj",
            norm2=f"{b}.layernorm_after",
            mlp=f"{b}.mlp",
            fc1=f"{b}.mlp.fc1",
            act=f"{b}.mlp.activation_fn",
            fc2=f"{b}.mlp.fc2",
            attn_in=a,
            mlp_in=f"{b}.mlp",
            block=b,
            tuple_out=True,
        )
    b, a = f"{prefix}encoder.layer.{i}", f"{prefix}encoder.layer.{i}.attention"
    return LayerPaths(
        norm1=f"{b}.layernorm_before",
        attn=a,
        qkv=(f"{a}.attention.query", f"{a}.attention.key", f"{a}.attention.value"),
        proj=f"{a}.output.dense",
        norm2=f"{b}.layernorm_after",
        mlp=f"{b}.output.dense",
        fc1=f"{b}.intermediate.dense",
        act=f"{b}.intermediate.intermediate_act_fn",
        fc2=f"{b}.output.dense",
        attn_in=a,
        mlp_in=f"{b}.intermediate",
        block=b,
        tuple_out=True,
    )


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

    def _layers(self) -> list[LayerPaths]:
        """One table row per encoder layer, with the other layout's names as aliases (4.x checkpoints)."""
        vit, p = self._vit, self._prefix
        if hasattr(vit, "layers"):  # transformers 5.x
            n, new = len(vit.layers), True
        elif hasattr(vit, "encoder") and hasattr(vit.encoder, "layer"):  # transformers 4.x
            n, new = len(vit.encoder.layer), False
        else:
            raise Unsupported(
                f"unknown ViT layout ({type(vit).__name__} has neither .layers nor .encoder.layer)", library=self.name
            )
        return [replace(_paths(p, i, new=new), aliases=_paths(p, i, new=not new)) for i in range(n)]

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
            if base is not None:
                bad += redefinitions(m, base, ("forward",))
        vit = self._vit
        config = m.config
        emb = vit.embeddings
        if type(emb).forward is not getattr(find_base(emb, _MOD, "ViTEmbeddings"), "forward", None):
            bad.append(f"embeddings is {type(emb).__name__} (only ViTEmbeddings)")
        e, in_c, ph, pw, stride, padding = conv_geometry(emb.patch_embeddings.projection, "patch projection", self.name)
        in_h, in_w = image_hw(emb.patch_embeddings.image_size)
        layers = self._layers()
        heads = int(config.num_attention_heads)
        r = PerLayer(heads=heads, hidden=int(config.intermediate_size))
        qkv_bias_by = self._read_layers(layers, e, r, bad)
        final = f"{self._prefix}layernorm"
        r.read_norm(vit.layernorm, final, e, self.name, bad)
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
        eps, eps_notes = consensus(r.eps, float(config.layer_norm_eps), "LayerNorm eps")
        act, act_notes = consensus(r.act, p0.activation, "activation")
        profile = p0.replace(
            ln_eps=eps,
            activation=act,
            qkv_bias=qkv_bias,
            out_bias=True,
            source=f"transformers {type(m).__name__} (hidden_act={config.hidden_act!r})",
        )
        cfg = ViTConfig(
            ph, pw, stride, padding, e, r.hidden, heads, len(layers), m.classifier.out_features if has_head else e
        )
        impl_note, precision = hf_attention(config, len(layers))
        notes = [impl_note, *eps_notes, *act_notes, *r.notes]
        if not has_head:
            notes.append("no classifier: the spec head is the identity; compared up to the pooled CLS vector")
        notes += [f"{rule.source}: {rule.note}" for rule in self._ignored_rules()]
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

    def _read_layers(self, layers: list[LayerPaths], e: int, r: PerLayer, bad: list[str]) -> dict[str, bool]:
        """Every layer's structure and own numerics into ``r`` / ``bad``; its q/k/v bias flag by layer."""

        def get(path: str) -> Any:
            return self.model.get_submodule(path)

        qkv_bias_by: dict[str, bool] = {}
        for i, t in enumerate(layers):
            w = t.block or f"layer {i}"
            read_layer(self.model, t, e, self.name, r, bad)
            try:
                for path in t.qkv:
                    check_linear(get(path), path, self.name, bias=None)
                for path in (t.proj, t.fc1, t.fc2):
                    check_linear(get(path), path, self.name)
            except Unsupported as err:
                bad.append(err.reason)
                continue
            q, k, v = (get(path) for path in t.qkv)
            if len({x.bias is None for x in (q, k, v)}) != 1:
                bad.append(f"{w}: query/key/value disagree on biases")
            qkv_bias_by[w] = q.bias is not None
            attn = get(t.attn)
            head_dim = int(getattr(attn, "head_dim", 0) or getattr(attn.attention, "attention_head_size", 0))
            if head_dim * r.heads != e or head_dim != e // r.heads:
                bad.append(f"{w}: head_dim={head_dim} with {r.heads} heads != hidden_size {e}")
            r.read_hidden(i, int(get(t.fc1).out_features), f"{w}: intermediate width", bad)
        return qkv_bias_by

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
        for i, t in enumerate(self._layers()):
            rules += layer_rules(t, i, embed=e, hidden=f, attn=a, profile=pr)
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
        layers = self._layers()
        after = [*(t.block for t in layers[1:]), f"{p}layernorm"]  # who consumes each layer's output
        t: dict[str, list[Tap]] = {
            "patch_embed": [out(f"{p}embeddings.patch_embeddings")],
            "pos_embed": [inp(str(layers[0].block) if layers else f"{p}layernorm"), out(f"{p}embeddings")],
        }
        for i, row in enumerate(layers):
            t.update(layer_taps(row, i, str(after[i])))
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
