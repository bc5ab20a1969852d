"""Hugging Face ViT families beyond ``ViTForImageClassification`` (read against transformers 5.24).

One table row per family (:data:`FAMILIES`); the parts they share with the ViT adapter
(:mod:`.hf`) are the layer table (:class:`~.base.LayerPaths`) and the rule builders. Each family's
departures from the spec are profile variation points (:mod:`vitspec.primitives.variations`):

- ``ViTMSNForImageClassification``: the ViT's layers and embeddings under ``vit.``, classifier on token 0.
- ``DeiTForImageClassification``: ``cls_token`` and ``distillation_token`` prepended (``dist_token``),
  one table over every row, classifier on token 0. ``...WithTeacher``: the mean of ``cls_classifier``
  (token 0) and ``distillation_classifier`` (token 1), ``head='distilled'``.
- ``IJepaForImageClassification``: no class token, classifier on the mean of every token.
- ``Dinov2ForImageClassification``: pre-norm layers ``norm1, attention, layer_scale1, norm2, mlp,
  layer_scale2`` (``layer_scale``); ``mlp`` an MLP or (``use_swiglu_ffn``) ``gate_proj/up_proj/down_proj``
  (``ffn='glu'``, SiLU); the classifier reads ``[CLS; mean of the patch tokens]`` (``cls_mean_concat``).
  Its position table is resampled for any non-square input, even at the native token count: only
  square inputs are checked. ``Dinov2WithRegisters...``: ``register_tokens`` inserted after CLS, after
  the table was added to ``[CLS; patches]`` (``pos_prefix='cls'``).
- ``CLIPVisionModel`` / ``...WithProjection``: a bias-free patch conv (``patch_bias=False``),
  ``class_embedding``, ``pre_layrnorm`` (``pre_norm``), ``post_layernorm`` on token 0
  (``final_norm='after_pool'``), no classifier (the pooled vector is the output) or the bias-free
  ``visual_projection`` (``head_bias=False``); ``hidden_act`` is probed (``quick_gelu`` for OpenAI CLIP).
- ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (backbones): as above without a classifier; the pooled
  vector is ``pooler_output``, the CLS row after ``layernorm`` (``pooling='token'``).
- ``SiglipVisionModel``: CLIP's layer names, no class token, ``post_layernorm`` over every token, then the
  MAP head (``pooling='map'``): ``probe`` queries a ``torch.nn.MultiheadAttention`` (``in_proj`` rows
  ``[q; k; v]``), ``x + mlp(layernorm(x))``, token 0. ``vision_use_head=False`` has no pooled output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from vitspec.config import ViTConfig
from vitspec.profiles import PROFILES, Pooling
from vitspec.schema import Variant, head_width, pos_prefix_count

from .base import (
    Description,
    LayerPaths,
    PerLayer,
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
    flatten_grid,
    hf_attention,
    identity_head,
    image_hw,
    inp,
    layer_rules,
    layer_taps,
    linear_rules,
    norm_rules,
    out,
    raise_unsupported,
    read_layer,
    split_rows,
    squeeze_to,
)

__all__ = ["FAMILIES", "Family", "HFFamilyAdapter"]


@dataclass(frozen=True)
class Family:
    """One transformers model family: where its pieces live and which variation points it has."""

    module: str  # the modeling module
    root: str  # the backbone attribute ("deit"), "" for a bare backbone
    layout: str  # "vit" (layers.i, layernorm_before/after), "dinov2" (encoder.layer.i), "clip"
    variant: Variant
    pooling: Pooling
    head: str  # "classifier", "teacher" (DeiT's two heads), "projection" (CLIP), "" (none)


FAMILIES: dict[str, Family] = {
    "ViTMSNForImageClassification": Family("transformers.models.vit_msn.modeling_vit_msn", "vit", "vit", "cls",
                                           "token", "classifier"),
    "DeiTForImageClassification": Family("transformers.models.deit.modeling_deit", "deit", "vit", "cls", "token",
                                         "classifier"),
    "DeiTForImageClassificationWithTeacher": Family("transformers.models.deit.modeling_deit", "deit", "vit", "cls",
                                                    "token", "teacher"),
    "IJepaForImageClassification": Family("transformers.models.ijepa.modeling_ijepa", "ijepa", "vit", "mean", "mean",
                                          "classifier"),
    "Dinov2ForImageClassification": Family("transformers.models.dinov2.modeling_dinov2", "dinov2", "dinov2", "cls",
                                           "cls_mean_concat", "classifier"),
    "Dinov2WithRegistersForImageClassification": Family(
        "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers", "dinov2_with_registers",
        "dinov2", "cls", "cls_mean_concat", "classifier"),
    "CLIPVisionModel": Family("transformers.models.clip.modeling_clip", "", "clip", "cls", "token", ""),
    "CLIPVisionModelWithProjection": Family("transformers.models.clip.modeling_clip", "vision_model", "clip", "cls",
                                            "token", "projection"),
    # DINOv2 backbones: the pooled vector (pooler_output) is the final-normed CLS row; no classifier
    "Dinov2Model": Family("transformers.models.dinov2.modeling_dinov2", "", "dinov2", "cls", "token", ""),
    "Dinov2WithRegistersModel": Family("transformers.models.dinov2_with_registers.modeling_dinov2_with_registers", "",
                                       "dinov2", "cls", "token", ""),
    "SiglipVisionModel": Family("transformers.models.siglip.modeling_siglip", "", "siglip", "mean", "map", ""),
}  # fmt: skip


def _family(model: nn.Module) -> Family | None:
    """The family of ``model``'s class (exact class: a subclass may redefine the forward)."""
    t = type(model)
    fam = FAMILIES.get(t.__qualname__)
    return fam if fam is not None and t.__module__ == fam.module else None


def _layer(fam: Family, i: int, mlp: Any) -> LayerPaths:
    """Layer ``i``'s row of the table for a family (``mlp``: the layer's FFN module, for the GLU names)."""
    r = f"{fam.root}." if fam.root else ""
    if fam.layout == "vit":
        b = f"{r}layers.{i}"
        a = f"{b}.attention"
        return LayerPaths(
            norm1=f"{b}.layernorm_before", attn=a, qkv=(f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"),
            proj=f"{a}.o_proj", norm2=f"{b}.layernorm_after", mlp=f"{b}.mlp", fc1=f"{b}.mlp.fc1",
            act=f"{b}.mlp.activation_fn", fc2=f"{b}.mlp.fc2", attn_in=a, mlp_in=f"{b}.mlp", block=b, tuple_out=True,
        )  # fmt: skip
    if fam.layout == "dinov2":
        b = f"{r}encoder.layer.{i}"
        a = f"{b}.attention"
        glu = hasattr(mlp, "gate_proj")
        return LayerPaths(
            norm1=f"{b}.norm1", attn=a, qkv=(f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"), proj=f"{a}.o_proj",
            norm2=f"{b}.norm2", mlp=f"{b}.mlp", fc1=f"{b}.mlp.{'up_proj' if glu else 'fc1'}",
            act=f"{b}.mlp.{'act_fn' if glu else 'activation_fn'}", fc2=f"{b}.mlp.{'down_proj' if glu else 'fc2'}",
            attn_in=a, mlp_in=f"{b}.mlp", block=b, tuple_out=True,
        )  # fmt: skip
    b = f"{r}encoder.layers.{i}"
    a = f"{b}.self_attn"
    return LayerPaths(
        norm1=f"{b}.layer_norm1", attn=a, qkv=(f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"), proj=f"{a}.out_proj",
        norm2=f"{b}.layer_norm2", mlp=f"{b}.mlp", fc1=f"{b}.mlp.fc1", act=f"{b}.mlp.activation_fn",
        fc2=f"{b}.mlp.fc2", attn_in=a, mlp_in=f"{b}.mlp", block=b, tuple_out=True,
    )  # fmt: skip


def _cls_row(t: Tensor) -> Tensor:
    """Token 0 of ``(B, T, D)`` (a DINOv2 backbone's pooled vector: the CLS row after the final LayerNorm)."""
    return t[:, 0]


def _logits(output: Any) -> Tensor:
    """The ``logits`` of a transformers output record (DeiT with teacher: the mean of its two heads)."""
    return output.logits  # type: ignore[no-any-return]


class HFFamilyAdapter(RuleAdapter):
    """transformers DeiT (with and without teacher), ViTMSN, I-JEPA, DINOv2 (with registers), CLIP vision."""

    name: ClassVar[str] = "hf"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return _family(model) is not None

    # -- structure ---------------------------------------------------------------------------
    @property
    def _fam(self) -> Family:
        fam = _family(self.model)
        assert fam is not None
        return fam

    @property
    def _r(self) -> str:
        return f"{self._fam.root}." if self._fam.root else ""

    def _get(self, path: str) -> Any:
        return self.model.get_submodule(path)

    def _backbone(self) -> Any:
        return self._get(self._fam.root) if self._fam.root else self.model

    def _layers(self) -> list[LayerPaths]:
        bb, fam = self._backbone(), self._fam
        mods = bb.layers if fam.layout == "vit" else bb.encoder.layer if fam.layout == "dinov2" else bb.encoder.layers
        # (clip and siglip share the CLIP layer names)
        return [_layer(fam, i, getattr(m, "mlp", None)) for i, m in enumerate(mods)]

    # -- description ---------------------------------------------------------------------------
    def describe(self) -> Description:
        m: Any = self.model
        fam, bb = self._fam, self._backbone()
        config: Any = m.config
        bad: list[str] = []
        emb = bb.embeddings
        towers = ("clip", "siglip")  # CLIP's layer names
        conv = emb.patch_embedding if fam.layout in towers else emb.patch_embeddings.projection
        e, in_c, ph, pw, stride, padding = conv_geometry(conv, "patch embedding", self.name, bias=False)
        in_h, in_w = image_hw(config.image_size)
        if fam.layout == "dinov2" and in_h != in_w:
            bad.append("DINOv2 resamples its position table for non-square inputs (even at the native token count)")
        layers = self._layers()
        heads = int(config.num_attention_heads)
        r = PerLayer(heads=heads, hidden=1)
        flags = self._read_layers(layers, e, r, bad)
        final = self._final_norm()
        norms = [final] + ([f"{self._r}pre_layrnorm"] if fam.layout == "clip" else [])
        if fam.pooling == "map":
            self._read_map_head(e, heads, r, bad)
        for path in norms:
            r.read_norm(self._get(path), path, e, self.name, bad)
        head_ok = self._check_head(e, bad)
        raise_unsupported(bad, self.name)
        p0 = PROFILES["hf"]
        eps, eps_notes = consensus(r.eps, float(config.layer_norm_eps), "LayerNorm eps")
        act, act_notes = consensus(r.act, p0.activation, "activation")
        registers = int(getattr(config, "num_register_tokens", 0) or 0) if "register" in fam.module else 0
        hd = int(getattr(self._get(layers[0].attn), "head_dim", e // heads)) if layers else e // heads
        profile = p0.replace(
            ln_eps=eps,
            activation=act,
            qkv_bias=flags["qkv_bias"],
            out_bias=flags["out_bias"],
            pooling=fam.pooling,
            final_norm="after_pool" if fam.layout == "clip" else "before_pool",
            # SigLIP: the pool's norm, heads and activation are the model's (read above)
            source=f"transformers {type(m).__name__} (hidden_act={config.hidden_act!r})",
            # variation points
            head_dim=None if hd == e // heads else hd,
            layer_scale=fam.layout == "dinov2",
            dist_token=fam.root == "deit",
            reg_tokens=registers,
            pos_prefix="cls" if registers else "all",
            pre_norm=fam.layout == "clip",
            patch_bias=conv.bias is not None,
            ffn="glu" if flags["glu"] else "mlp",
            head="distilled" if fam.head == "teacher" else "linear",
            head_bias=fam.head != "projection",
        )
        has_head = head_ok is not None
        classes = head_ok if head_ok is not None else e
        cfg = ViTConfig(ph, pw, stride, padding, e, r.hidden, heads, len(layers), classes)
        impl_note, precision = hf_attention(config, len(layers))
        notes = [impl_note, *eps_notes, *act_notes, *r.notes]
        if not has_head:
            notes.append("no classifier: the spec head is the identity; compared up to the pooled vector")
        return Description(
            library=self.name,
            model_name=type(m).__name__,
            cfg=cfg,
            in_c=in_c,
            in_h=in_h,
            in_w=in_w,
            variant=fam.variant,
            profile=profile,
            has_head=has_head,
            notes=tuple(notes),
            synthetic=() if has_head else ("head_W", "head_b"),
            precision=precision,
        )

    def _read_layers(self, layers: list[LayerPaths], e: int, r: PerLayer, bad: list[str]) -> dict[str, bool]:
        """Every layer's structure and numerics into ``r`` / ``bad``; the flags every layer must share."""
        by: dict[str, dict[str, bool]] = {"qkv_bias": {}, "out_bias": {}, "glu": {}}
        for i, t in enumerate(layers):
            w = t.block or f"layer {i}"
            read_layer(self.model, t, e, self.name, r, bad)
            glu = hasattr(self._get(t.mlp), "gate_proj")
            try:
                q, k, v = (check_linear(self._get(p), p, self.name, bias=None) for p in t.qkv)
                o = check_linear(self._get(t.proj), t.proj, self.name, bias=None)
                fcs = [t.fc1, t.fc2] + ([f"{t.mlp}.gate_proj"] if glu else [])
                lin = [check_linear(self._get(p), p, self.name) for p in fcs]
            except Unsupported as err:
                bad.append(err.reason)
                continue
            if len({x.bias is None for x in (q, k, v)}) != 1:
                bad.append(f"{w}: query/key/value disagree on biases")
            by["qkv_bias"][w], by["out_bias"][w], by["glu"][w] = q.bias is not None, o.bias is not None, glu
            if self._fam.layout == "dinov2":  # LayerScale on both branches
                for n in ("layer_scale1", "layer_scale2"):
                    lam = getattr(self._get(f"{w}.{n}"), "lambda1", None)
                    if not (isinstance(lam, Tensor) and tuple(lam.shape) == (e,)):
                        bad.append(f"{w}.{n}: no lambda1 of shape ({e},)")
            r.read_hidden(i, int(lin[1].in_features), f"{w}: intermediate width", bad)
        out: dict[str, bool] = {}
        for key, values in by.items():
            out[key], _ = consensus(values, key != "glu", key)
            bad += [f"{w}: {key}={v} unlike the other layers" for w, v in values.items() if v != out[key]]
        return out

    def _final_norm(self) -> str:
        return f"{self._r}{'post_layernorm' if self._fam.layout in ('clip', 'siglip') else 'layernorm'}"

    def _read_map_head(self, e: int, heads: int, r: PerLayer, bad: list[str]) -> None:
        """SigLIP's ``head`` (``SiglipMultiheadAttentionPoolingHead``): the MAP pooling the profile expresses."""
        head = getattr(self.model, "head", None)
        if head is None or not getattr(self.model, "use_head", True):
            bad.append("vision_use_head=False: no pooled output (the model returns every token)")
            return
        mha = getattr(head, "attention", None)
        if not (isinstance(mha, nn.MultiheadAttention) and mha.batch_first and mha._qkv_same_embed_dim
                and mha.in_proj_bias is not None and mha.num_heads == heads and mha.bias_k is None):  # fmt: skip
            bad.append("head.attention is not a batch-first nn.MultiheadAttention with in_proj biases and the "
                       f"model's {heads} heads")  # fmt: skip
        probe = getattr(head, "probe", None)
        if not (isinstance(probe, Tensor) and tuple(probe.shape) == (1, 1, e)):
            bad.append(f"head.probe is not a (1, 1, {e}) latent")
        try:
            r.eps["head.layernorm"] = check_layer_norm(head.layernorm, "head.layernorm", e, self.name)
            check_linear(head.mlp.fc1, "head.mlp.fc1", self.name)
            check_linear(head.mlp.fc2, "head.mlp.fc2", self.name)
        except (Unsupported, AttributeError) as err:
            bad.append(getattr(err, "reason", f"head is not probe-attention-layernorm-mlp ({err})"))
            return
        try:  # the head's MLP activation joins the layers' (the profile holds one)
            r.act["head.mlp.activation_fn"], note = activation_kind(
                head.mlp.activation_fn, "head.mlp.activation_fn", self.name
            )
            r.notes += [note] if note else []
        except Unsupported as err:
            bad.append(err.reason)
        if head.mlp.fc1.out_features != r.hidden:
            bad.append(f"head.mlp: hidden width {head.mlp.fc1.out_features} (the layers have {r.hidden})")

    def _check_head(self, e: int, bad: list[str]) -> int | None:
        """The class count of the head (``None``: no head), every head Linear checked."""
        fam, m = self._fam, self.model
        names = {"classifier": ["classifier"], "teacher": ["cls_classifier", "distillation_classifier"],
                 "projection": ["visual_projection"], "": []}[fam.head]  # fmt: skip
        width = 2 * e if fam.pooling == "cls_mean_concat" else e
        classes: int | None = None
        for n in names:
            lin = getattr(m, n, None)
            if isinstance(lin, nn.Identity):
                return None
            bias = fam.head != "projection"
            if not (isinstance(lin, nn.Linear) and (lin.bias is not None) == bias and lin.in_features == width):
                bad.append(f"{n} is not an nn.Linear({width}, classes, bias={bias})")
                continue
            classes = lin.out_features
        return classes

    # -- tensors -------------------------------------------------------------------------------------
    def key_map(self) -> list[Rule]:
        d = self.description()
        c, p, fam, r = d.cfg, d.profile, self._fam, self._r
        e, f, a = c.embed_dim, c.hidden_dim, c.head_count * head_width(c, p)
        rows = c.tokens(d.in_h, d.in_w) + pos_prefix_count(d.variant, p)
        emb = f"{r}embeddings"
        rules = self._embedding_rules(emb, e, rows, d.in_c, c.patch_h, c.patch_w)
        for i, t in enumerate(self._layers()):
            rules += layer_rules(t, i, embed=e, hidden=f, attn=a, profile=p)
            if p.layer_scale:
                rules += [
                    Rule(f"{t.block}.layer_scale{k}.lambda1", (f"encoder.{i}.ls{k}_gamma",), (e,)) for k in (1, 2)
                ]
            if p.ffn == "glu":
                rules += linear_rules(f"{t.mlp}.gate_proj", f"encoder.{i}.ffn.Wg", f"encoder.{i}.ffn.bg", f, e)
        if fam.layout == "clip":
            rules += norm_rules(f"{r}pre_layrnorm", "pre_norm", e)
        rules += norm_rules(self._final_norm(), "final_norm", e)
        if fam.pooling == "map":  # SigLIP's head: probe, in_proj [q; k; v], out_proj, layernorm, mlp
            rules += [
                Rule("head.probe", ("map.latent",), (1, 1, e), squeeze_to(1, e)),
                Rule("head.attention.in_proj_weight", ("map.Wq", "map.Wk", "map.Wv"), (3 * e, e),
                     split_rows(3, transposed=True)),
                Rule("head.attention.in_proj_bias", ("map.bq", "map.bk", "map.bv"), (3 * e,),
                     split_rows(3, transposed=False)),
                *linear_rules("head.attention.out_proj", "map.Wo", "map.bo", e, e),
                *norm_rules("head.layernorm", "map.norm", e),
                *linear_rules("head.mlp.fc1", "map.W1", "map.b1", f, e),
                *linear_rules("head.mlp.fc2", "map.W2", "map.b2", e, f),
            ]  # fmt: skip
        width = 2 * e if fam.pooling == "cls_mean_concat" else e
        if fam.head == "classifier" and d.has_head:
            rules += [Rule("classifier.weight", ("head_W",), (c.num_classes, width)),
                      Rule("classifier.bias", ("head_b",), (c.num_classes,))]  # fmt: skip
        elif fam.head == "teacher":
            rules += [Rule("cls_classifier.weight", ("head_W",), (c.num_classes, e)),
                      Rule("cls_classifier.bias", ("head_b",), (c.num_classes,)),
                      Rule("distillation_classifier.weight", ("head_dist_W",), (c.num_classes, e)),
                      Rule("distillation_classifier.bias", ("head_dist_b",), (c.num_classes,))]  # fmt: skip
        elif fam.head == "projection":
            rules.append(Rule("visual_projection.weight", ("head_W",), (c.num_classes, e)))
        return rules

    def _embedding_rules(self, emb: str, e: int, rows: int, in_c: int, ph: int, pw: int) -> list[Rule]:
        fam, p = self._fam, self.description().profile
        if fam.layout == "siglip":
            return [
                Rule(f"{emb}.patch_embedding.weight", ("patch_kernel",), (e, in_c, ph, pw)),
                Rule(f"{emb}.patch_embedding.bias", ("patch_bias",), (e,)),
                Rule(f"{emb}.position_embedding.weight", ("pos",), (rows, e), copy),
            ]
        if fam.layout == "clip":
            return [
                Rule(f"{emb}.patch_embedding.weight", ("patch_kernel",), (e, in_c, ph, pw)),
                Rule(f"{emb}.class_embedding", ("cls_token",), (e,), copy),
                Rule(f"{emb}.position_embedding.weight", ("pos",), (rows, e), copy),
            ]
        proj = f"{emb}.patch_embeddings.projection"
        rules = [
            Rule(f"{proj}.weight", ("patch_kernel",), (e, in_c, ph, pw)),
            Rule(f"{proj}.bias", ("patch_bias",), (e,)),
            Rule(f"{emb}.position_embeddings", ("pos",), (1, rows, e), squeeze_to(rows, e)),
        ]
        if fam.variant == "cls":
            rules.append(Rule(f"{emb}.cls_token", ("cls_token",), (1, 1, e), as_vector))
        if p.dist_token:
            rules.append(Rule(f"{emb}.distillation_token", ("dist_token",), (1, 1, e), as_vector))
        if p.reg_tokens:
            rules.append(
                Rule(f"{emb}.register_tokens", ("reg_tokens",), (1, p.reg_tokens, e), squeeze_to(p.reg_tokens, e))
            )
        mask = getattr(self._get(emb), "mask_token", None)
        if isinstance(mask, Tensor):
            rules.append(
                Rule.ignore(f"{emb}.mask_token", tuple(mask.shape), "mask token, used only with bool_masked_pos")
            )
        return rules

    def synthetic(self, like: Tensor) -> dict[str, Tensor]:
        return identity_head(self.description().cfg.embed_dim, like)

    # -- stages -------------------------------------------------------------------------------------
    def stage_paths(self) -> dict[str, list[Tap]]:
        d = self.description()
        fam, r, p = self._fam, self._r, d.profile
        layers = self._layers()
        final = self._final_norm()
        first = str(layers[0].block) if layers else final
        after = [*(str(t.block) for t in layers[1:]), final if fam.layout != "clip" else f"{r}encoder"]
        emb = f"{r}embeddings"
        if fam.layout == "clip":
            t: dict[str, list[Tap]] = {
                "patch_embed": [out(f"{emb}.patch_embedding", flatten_grid)],
                "pos_embed": [out(emb), inp(f"{r}pre_layrnorm")],
                "pre_norm": [out(f"{r}pre_layrnorm"), inp(first)],
            }
        elif fam.layout == "siglip":
            t = {"patch_embed": [out(f"{emb}.patch_embedding", flatten_grid)], "pos_embed": [inp(first), out(emb)]}
        else:
            t = {"patch_embed": [out(f"{emb}.patch_embeddings")], "pos_embed": [inp(first), out(emb)]}
        for i, row in enumerate(layers):
            taps = layer_taps(row, i, after[i])
            if fam.layout == "clip" and i == len(layers) - 1:  # the encoder returns a record: read the block
                taps[f"blocks.{i}"] = [tp for tp in taps[f"blocks.{i}"] if tp.kind == "output"]
            t.update(taps)
            if p.layer_scale:
                t[f"blocks.{i}.ls1"] = [out(f"{row.block}.layer_scale1")]
                t[f"blocks.{i}.ls2"] = [out(f"{row.block}.layer_scale2")]
        if fam.layout == "clip":
            t["pool"] = [inp(final)]
            t["final_norm"] = [out(final)]
            if d.has_head:
                t["head"] = [out("visual_projection")]
            return t
        t["final_norm"] = [out(final)]
        if fam.pooling == "map":
            t["pool"] = [out("head")]
            return t
        if fam.head == "":  # a backbone: its pooler_output is the CLS row of the final norm's output
            t["pool"] = [out(final, _cls_row)]
            return t
        if fam.head == "teacher":
            t["head"] = [out("", _logits)]
            return t
        t["pool"] = [inp("classifier")]
        if d.has_head:
            t["head"] = [out("classifier")]
        return t

    def run(self, x: Tensor) -> Tensor:
        o = self.model(pixel_values=x)
        if self._fam.head == "projection":
            return o.image_embeds  # type: ignore[no-any-return]
        return o.pooler_output if self._fam.head == "" else o.logits  # type: ignore[no-any-return]
