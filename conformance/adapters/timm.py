"""timm ``VisionTransformer`` (read against timm 1.0.31, ``timm/models/vision_transformer.py``).

Quirks this adapter handles:

- Pre-norm ``Block``: ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``; layer scale
  (``init_values``) makes ``ls1/ls2`` non-identity, which the spec cannot express.
- Attention is one fused ``qkv`` Linear with rows ``[q; k; v]`` (each ``num_heads*head_dim``),
  optional bias (``qkv_bias``), then ``proj`` (``proj_bias``). ``fused_attn`` picks
  ``F.scaled_dot_product_attention`` or the manual softmax path; both are supported and the
  setting is left as shipped. ``Mlp`` uses ``bias=proj_bias`` for ``fc1``/``fc2`` too.
- ``pos_embed`` is ``[1, T+1, D]`` with the class token's row first (``no_embed_class=False``).
- Final norm: ``norm`` (over all tokens, before pooling) unless ``fc_norm`` is used, which
  timm enables by default for ``global_pool='avg'``: then ``norm`` is Identity and ``fc_norm``
  normalizes the pooled vector (``final_norm='after_pool'``). ``global_pool='avg'`` averages the
  patch tokens only (the class token is dropped, ``num_prefix_tokens``), unless
  ``pool_include_prefix=True`` (``pooling='mean_all'``).
- The pooled vector has no module of its own: it is the input of ``fc_norm`` (Identity when
  unused), captured with a pre-hook.
- ``num_classes=0`` makes ``head`` Identity: then ``has_head=False`` and the spec head is the
  identity (``Description.synthetic``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from vitspec.config import ViTConfig
from vitspec.profiles import PROFILES, FinalNorm, Pooling

from .base import (
    Description,
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
    find_base,
    fused_qkv_rules,
    identity_head,
    inp,
    linear_rules,
    norm_rules,
    out,
    overridden,
    raise_unsupported,
    squeeze_to,
)

__all__ = ["TimmAdapter"]

_VIT = ("timm.models.vision_transformer", "VisionTransformer")
_BLOCK = ("timm.models.vision_transformer", "Block")
_ATTN = ("timm.layers.attention", "Attention")
_MLP = ("timm.layers.mlp", "Mlp")
_PATCH = ("timm.layers.patch_embed", "PatchEmbed")
# The forward path a subclass must not redefine for the mapping to hold.
_FORWARD_METHODS = ("forward", "forward_features", "forward_head", "_pos_embed", "pool")


def _is(m: Any, cls: tuple[str, str]) -> bool:
    t = type(m)
    return (t.__module__, t.__qualname__) == cls


class TimmAdapter(RuleAdapter):
    """``timm.models.vision_transformer.VisionTransformer`` with standard ``Block`` s."""

    name: ClassVar[str] = "timm"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return find_base(model, *_VIT) is not None

    # -- description -------------------------------------------------------------------
    def describe(self) -> Description:
        m: Any = self.model
        bad: list[str] = []  # every problem, reported at once (Unsupported lists them all)
        base = find_base(m, *_VIT)
        assert base is not None
        if type(m) is not base:
            if getattr(m, "dist_token", None) is not None:
                bad.append("distillation token (DeiT VisionTransformerDistilled)")
            if redefined := overridden(m, base, _FORWARD_METHODS):
                bad.append(f"{type(m).__name__} redefines {', '.join(redefined)}")
        # Token layout.
        if getattr(m, "num_reg_tokens", 0) or getattr(m, "reg_token", None) is not None:
            bad.append(f"register tokens (reg_tokens={getattr(m, 'num_reg_tokens', '?')})")
        if getattr(m, "dynamic_img_size", False):
            bad.append("dynamic_img_size=True (position embeddings resampled per input)")
        if m.pos_embed is None:
            bad.append("no position embedding (pos_embed='none'; the spec adds a learned table)")
        if getattr(m, "no_embed_class", False) and m.num_prefix_tokens > 0:
            bad.append("no_embed_class=True (the class token gets no position embedding)")
        if not isinstance(m.norm_pre, nn.Identity):
            bad.append("pre_norm=True (norm_pre LayerNorm before the blocks)")
        # Patch embedding.
        e = int(m.embed_dim)
        geometry = self._patch_geometry(m.patch_embed, bad)
        # Pooling and final norm.
        gp = m.global_pool
        if getattr(m, "attn_pool", None) is not None:
            bad.append(f"attention pooling (global_pool={gp!r})")
        elif gp == "":
            bad.append("global_pool='' (no pooling: the head sees every token)")
        elif gp not in ("token", "avg"):
            bad.append(f"global_pool={gp!r} (spec pooling: token or mean)")
        norm_on, fc_norm_on = not isinstance(m.norm, nn.Identity), not isinstance(m.fc_norm, nn.Identity)
        if norm_on and fc_norm_on:
            bad.append("both norm and fc_norm are active (the spec has one final norm)")
        if not isinstance(getattr(m, "pre_logits", nn.Identity()), nn.Identity):
            bad.append("pre_logits (representation layer before the head)")
        has_head = not isinstance(m.head, nn.Identity)
        if has_head and not (isinstance(m.head, nn.Linear) and m.head.bias is not None):
            bad.append(f"head is {type(m.head).__name__}, not nn.Linear with bias")
        # Blocks: structure, and every block's own numerics (nothing inferred from block 0).
        blocks = list(m.blocks)
        per_layer = self._read_blocks(blocks, e, bad)
        for what, mod, on in (("norm", m.norm, norm_on), ("fc_norm", m.fc_norm, fc_norm_on)):
            if on:
                try:
                    per_layer.eps[what] = check_layer_norm(mod, what, e, self.name)
                except Unsupported as err:
                    bad.append(err.reason)
        raise_unsupported(bad, self.name)
        assert geometry is not None
        in_c, ph, pw, stride, padding, in_h, in_w = geometry

        p0 = PROFILES["timm"]
        eps, notes = consensus(per_layer.eps, p0.ln_eps, "LayerNorm eps")
        act, act_notes = consensus(per_layer.act, p0.activation, "activation")
        notes += act_notes + per_layer.notes
        final_norm: FinalNorm = "before_pool" if norm_on else "after_pool" if fc_norm_on else "none"
        cls_token = m.cls_token is not None
        pooling: Pooling = "token" if gp == "token" else "mean_all" if m.pool_include_prefix and cls_token else "mean"
        profile = p0.replace(
            final_norm=final_norm,
            ln_eps=eps,
            activation=act,
            qkv_bias=per_layer.qkv_bias if blocks else p0.qkv_bias,
            out_bias=per_layer.out_bias if blocks else p0.out_bias,
            pooling=pooling,
            source=f"timm VisionTransformer (global_pool={gp!r}, class_token={cls_token})",
        )
        cfg = ViTConfig(
            patch_h=ph,
            patch_w=pw,
            stride=stride,
            padding=padding,
            embed_dim=e,
            hidden_dim=per_layer.hidden,
            head_count=per_layer.heads,
            num_layers=len(blocks),
            num_classes=m.head.out_features if has_head else e,
        )
        if blocks:
            fused = bool(getattr(blocks[0].attn, "fused_attn", False))
            notes.insert(
                0,
                "attention as shipped: "
                + (
                    "F.scaled_dot_product_attention (fused_attn=True)" if fused else "manual softmax (fused_attn=False)"
                ),
            )
        if not has_head:
            notes.append("num_classes=0: no classifier; the spec head is the identity, logits = pooled features")
        return Description(
            library=self.name,
            model_name=_model_name(m),
            cfg=cfg,
            in_c=in_c,
            in_h=in_h,
            in_w=in_w,
            variant="cls" if cls_token else "mean",
            profile=profile,
            has_head=has_head,
            notes=tuple(notes),
            synthetic=() if has_head else ("head_W", "head_b"),
        )

    def _patch_geometry(self, pe: Any, bad: list[str]) -> tuple[int, int, int, int, int, int, int] | None:
        """``(in_c, patch_h, patch_w, stride, padding, in_h, in_w)``, or ``None`` with the problems in ``bad``."""
        if not _is(pe, _PATCH):
            bad.append(f"patch embedding {type(pe).__name__} (only timm PatchEmbed, a single conv)")
            return None
        if not isinstance(pe.norm, nn.Identity):
            bad.append("patch_embed.norm (a norm after the patch embedding)")
        if not getattr(pe, "flatten", True):
            bad.append("patch_embed without flatten (NHWC output)")
        try:
            _, in_c, ph, pw, stride, padding = conv_geometry(pe.proj, "patch_embed.proj", self.name)
        except Unsupported as err:
            bad.append(err.reason)
            return None
        if pe.img_size is None:
            bad.append("patch_embed.img_size is None (no fixed input size)")
            return None
        in_h, in_w = (int(v) for v in pe.img_size)
        if getattr(pe, "dynamic_img_pad", False) and (in_h % ph or in_w % pw):
            bad.append("dynamic_img_pad with an image not divisible by the patch (right/bottom padding)")
        return in_c, ph, pw, stride, padding, in_h, in_w

    def _read_blocks(self, blocks: list[Any], e: int, bad: list[str]) -> PerLayer:
        """Every block's structure and own numerics (eps of each norm, activation, biases, scale)."""
        r = PerLayer(
            heads=blocks[0].attn.num_heads if blocks and hasattr(blocks[0], "attn") else 1,
            hidden=blocks[0].mlp.fc1.out_features if blocks and hasattr(getattr(blocks[0], "mlp", None), "fc1") else 1,
        )
        qkv_bias: dict[str, bool] = {}
        out_bias: dict[str, bool] = {}
        for i, b in enumerate(blocks):
            w = f"blocks.{i}"
            if not _is(b, _BLOCK):
                bad.append(f"{w} is {type(b).__name__} (only the pre-norm timm Block)")
                continue
            if not (isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity)):
                bad.append(f"{w}: layer scale (ls1/ls2, init_values)")
            for n in ("norm1", "norm2"):
                try:
                    r.eps[f"{w}.{n}"] = check_layer_norm(getattr(b, n), f"{w}.{n}", e, self.name)
                except Unsupported as err:
                    bad.append(err.reason)
            self._read_attention(b.attn, w, e, r, bad, qkv_bias, out_bias)
            self._read_mlp(b.mlp, w, r, bad)
        if blocks:
            r.qkv_bias = self._uniform(qkv_bias, "a qkv bias", bad)
            r.out_bias = self._uniform(out_bias, "an output-projection bias", bad)
        return r

    def _read_attention(
        self, a: Any, w: str, e: int, r: PerLayer, bad: list[str], qkv_bias: dict[str, bool], out_bias: dict[str, bool]
    ) -> None:
        if not _is(a, _ATTN):
            bad.append(f"{w}.attn is {type(a).__name__} (only timm Attention)")
            return
        if not (isinstance(a.q_norm, nn.Identity) and isinstance(a.k_norm, nn.Identity)):
            bad.append(f"{w}.attn: qk_norm (q_norm/k_norm)")
        if not isinstance(getattr(a, "norm", nn.Identity()), nn.Identity):
            bad.append(f"{w}.attn: scale_attn_norm (a norm before proj)")
        if getattr(a, "gate", None) is not None:
            bad.append(f"{w}.attn: gated attention")
        if a.num_heads != r.heads:
            bad.append(f"{w}.attn: {a.num_heads} heads (block 0 has {r.heads})")
        if a.num_heads * a.head_dim != e or a.head_dim != e // a.num_heads:
            bad.append(f"{w}.attn: head_dim={a.head_dim} with {a.num_heads} heads != embed_dim {e}")
        # The manual path multiplies by self.scale; the fused one uses 1/sqrt(head_dim) regardless.
        scale = float(getattr(a, "scale", a.head_dim**-0.5))
        if not getattr(a, "fused_attn", False) and abs(scale - a.head_dim**-0.5) > 1e-12 * a.head_dim**-0.5:
            r.notes.append(
                f"{w}.attn: scale {scale!r} is not 1/sqrt(head_dim) = {a.head_dim**-0.5!r}; "
                f"the comparison is expected to diverge at {w}.attn"
            )
        try:
            check_linear(a.qkv, f"{w}.attn.qkv", self.name, bias=None)
            check_linear(a.proj, f"{w}.attn.proj", self.name, bias=None)
        except Unsupported as err:
            bad.append(err.reason)
            return
        qkv_bias[f"{w}.attn.qkv"] = a.qkv.bias is not None
        out_bias[f"{w}.attn.proj"] = a.proj.bias is not None

    def _read_mlp(self, mlp: Any, w: str, r: PerLayer, bad: list[str]) -> None:
        if not _is(mlp, _MLP):
            bad.append(f"{w}.mlp is {type(mlp).__name__} (only a 2-layer Linear-act-Linear Mlp)")
            return
        if not isinstance(mlp.norm, nn.Identity):
            bad.append(f"{w}.mlp: scale_mlp_norm (a norm inside the MLP)")
        for fc in ("fc1", "fc2"):
            try:
                check_linear(getattr(mlp, fc), f"{w}.mlp.{fc}", self.name)
            except Unsupported as err:
                bad.append(err.reason + " (proj_bias=False)")
        if isinstance(mlp.fc1, nn.Linear) and mlp.fc1.out_features != r.hidden:
            bad.append(f"{w}.mlp: hidden width {mlp.fc1.out_features} (block 0 has {r.hidden})")
        try:
            r.act[f"{w}.mlp.act"], note = activation_kind(mlp.act, f"{w}.mlp.act", self.name)
        except Unsupported as err:
            bad.append(err.reason)
            return
        if note:
            r.notes.append(note)

    @staticmethod
    def _uniform(values: dict[str, bool], what: str, bad: list[str]) -> bool:
        """The one value every block shares; a block that differs is named (the profile has one flag)."""
        value, _ = consensus(values, True, what)
        bad += [
            f"{k}: {'has' if v else 'lacks'} {what}, unlike the other blocks" for k, v in values.items() if v != value
        ]
        return value

    # -- tensors -----------------------------------------------------------------------
    def key_map(self) -> list[Rule]:
        d = self.description()
        c, p = d.cfg, d.profile
        e, f, a = c.embed_dim, c.hidden_dim, c.head_count * c.head_dim
        tokens = c.tokens(d.in_h, d.in_w) + (1 if d.variant == "cls" else 0)
        rules = [
            Rule("patch_embed.proj.weight", ("patch_kernel",), (e, d.in_c, c.patch_h, c.patch_w)),
            Rule("patch_embed.proj.bias", ("patch_bias",), (e,)),
        ]
        if d.variant == "cls":
            rules.append(Rule("cls_token", ("cls_token",), (1, 1, e), as_vector))
        rules.append(Rule("pos_embed", ("pos",), (1, tokens, e), squeeze_to(tokens, e)))
        for i in range(c.num_layers):
            b, s = f"blocks.{i}", f"encoder.{i}"
            rules += norm_rules(f"{b}.norm1", f"{s}.norm1", e)
            rules += fused_qkv_rules(f"{b}.attn.qkv.", i, a, e, bias=p.qkv_bias)
            rules += linear_rules(f"{b}.attn.proj", f"{s}.mha.Wo", f"{s}.mha.bo" if p.out_bias else None, e, a)
            rules += norm_rules(f"{b}.norm2", f"{s}.norm2", e)
            rules += linear_rules(f"{b}.mlp.fc1", f"{s}.ffn.W1", f"{s}.ffn.b1", f, e)
            rules += linear_rules(f"{b}.mlp.fc2", f"{s}.ffn.W2", f"{s}.ffn.b2", e, f)
        if p.final_norm != "none":
            rules += norm_rules("norm" if p.final_norm == "before_pool" else "fc_norm", "final_norm", e)
        if d.has_head:
            rules += [
                Rule("head.weight", ("head_W",), (c.num_classes, e), copy),
                Rule("head.bias", ("head_b",), (c.num_classes,), copy),
            ]
        return rules

    def synthetic(self, like: Tensor) -> dict[str, Tensor]:
        return identity_head(self.description().cfg.embed_dim, like)

    # -- stages ------------------------------------------------------------------------
    def stage_paths(self) -> dict[str, list[Tap]]:
        d = self.description()
        n = d.cfg.num_layers
        # The final norm is always called (Identity when unused): its input is the last block's output.
        after = [f"blocks.{i + 1}" if i + 1 < n else "norm" for i in range(n)]
        t: dict[str, list[Tap]] = {
            "patch_embed": [out("patch_embed")],
            "pos_embed": [inp("blocks.0" if n else "norm"), out("pos_drop")],
        }
        for i in range(n):
            b = f"blocks.{i}"
            t[f"{b}.norm1"] = [inp(f"{b}.attn"), out(f"{b}.norm1")]
            t[f"{b}.attn"] = [out(f"{b}.attn")]
            t[f"{b}.norm2"] = [inp(f"{b}.mlp"), out(f"{b}.norm2")]
            t[f"{b}.mlp"] = [out(f"{b}.mlp")]
            t[b] = [inp(after[i]), out(b)]
        if d.profile.final_norm == "before_pool":
            t["final_norm"] = [out("norm")]
        # fc_norm is always called (Identity when unused), so its input is the pooled vector.
        t["pool"] = [inp("fc_norm")]
        if d.profile.final_norm == "after_pool":
            t["final_norm"] = [inp("head_drop"), out("fc_norm")]
        if d.has_head:
            t["head"] = [out("head")]
        return t


def _model_name(m: Any) -> str:
    cfg = getattr(m, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else getattr(cfg, "architecture", None)
    return str(arch) if arch else type(m).__name__
