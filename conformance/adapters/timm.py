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
    SUB_OPS,
    CapturePoint,
    Description,
    Rule,
    RuleAdapter,
    Unsupported,
    activation_kind,
    as_vector,
    check_layer_norm,
    check_linear,
    conv_geometry,
    copy,
    find_base,
    fused_qkv_rules,
    identity_head,
    linear_rules,
    norm_rules,
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
    def _fail(self, problems: list[str]) -> None:
        raise_unsupported(problems, self.name)

    def describe(self) -> Description:
        m: Any = self.model
        bad: list[str] = []
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
        pe = m.patch_embed
        if not _is(pe, _PATCH):
            bad.append(f"patch embedding {type(pe).__name__} (only timm PatchEmbed, a single conv)")
        elif not isinstance(pe.norm, nn.Identity):
            bad.append("patch_embed.norm (a norm after the patch embedding)")
        elif not getattr(pe, "flatten", True):
            bad.append("patch_embed without flatten (NHWC output)")
        self._fail(bad)
        e, in_c, ph, pw, stride, padding = conv_geometry(pe.proj, "patch_embed.proj", self.name)
        if pe.img_size is None:
            raise Unsupported("patch_embed.img_size is None (no fixed input size)", library=self.name)
        in_h, in_w = (int(v) for v in pe.img_size)
        if getattr(pe, "dynamic_img_pad", False) and (in_h % ph or in_w % pw):
            bad.append("dynamic_img_pad with an image not divisible by the patch (right/bottom padding)")
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
        # Blocks (structure is checked in every block; numerics come from the first, see profile).
        blocks = list(m.blocks)
        heads, hidden = self._check_blocks(blocks, e, bad)
        self._fail(bad)

        final_norm: FinalNorm = "before_pool" if norm_on else "after_pool" if fc_norm_on else "none"
        for what, mod in (("norm", m.norm), ("fc_norm", m.fc_norm)):
            if not isinstance(mod, nn.Identity):
                check_layer_norm(mod, what, e, self.name)
        cls_token = m.cls_token is not None
        pooling: Pooling = "token" if gp == "token" else "mean_all" if m.pool_include_prefix and cls_token else "mean"
        # eps and activation from the FIRST block only: a later layer that differs must show up
        # in the numeric comparison, not be absorbed into the profile.
        if blocks:
            eps = float(blocks[0].norm1.eps)
            act = activation_kind(blocks[0].mlp.act, "blocks.0.mlp.act", self.name)
            qkv_bias = blocks[0].attn.qkv.bias is not None
            out_bias = blocks[0].attn.proj.bias is not None
        else:  # an empty encoder: nothing to read, keep timm's defaults
            p0 = PROFILES["timm"]
            eps = float(m.norm.eps) if norm_on else float(m.fc_norm.eps) if fc_norm_on else p0.ln_eps
            act, qkv_bias, out_bias = p0.activation, p0.qkv_bias, p0.out_bias
        profile = PROFILES["timm"].replace(
            final_norm=final_norm,
            ln_eps=eps,
            activation=act,
            qkv_bias=qkv_bias,
            out_bias=out_bias,
            pooling=pooling,
            source=f"timm VisionTransformer (global_pool={gp!r}, class_token={cls_token})",
        )
        cfg = ViTConfig(
            patch_h=ph,
            patch_w=pw,
            stride=stride,
            padding=padding,
            embed_dim=e,
            hidden_dim=hidden,
            head_count=heads,
            num_layers=len(blocks),
            num_classes=m.head.out_features if has_head else e,
        )
        notes = []
        if blocks:
            fused = bool(getattr(blocks[0].attn, "fused_attn", False))
            notes.append(
                "attention as shipped: "
                + ("F.scaled_dot_product_attention (fused_attn=True)" if fused else "manual softmax (fused_attn=False)")
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

    def _check_blocks(self, blocks: list[Any], e: int, bad: list[str]) -> tuple[int, int]:
        """Structural checks of every block; returns ``(num_heads, mlp hidden width)`` of block 0."""
        heads = blocks[0].attn.num_heads if blocks and hasattr(blocks[0], "attn") else 1
        hidden = blocks[0].mlp.fc1.out_features if blocks and hasattr(getattr(blocks[0], "mlp", None), "fc1") else 1
        for i, b in enumerate(blocks):
            w = f"blocks.{i}"
            if not _is(b, _BLOCK):
                bad.append(f"{w} is {type(b).__name__} (only the pre-norm timm Block)")
                continue
            if not (isinstance(b.ls1, nn.Identity) and isinstance(b.ls2, nn.Identity)):
                bad.append(f"{w}: layer scale (ls1/ls2, init_values)")
            a = b.attn
            if not _is(a, _ATTN):
                bad.append(f"{w}.attn is {type(a).__name__} (only timm Attention)")
            else:
                if not (isinstance(a.q_norm, nn.Identity) and isinstance(a.k_norm, nn.Identity)):
                    bad.append(f"{w}.attn: qk_norm (q_norm/k_norm)")
                if not isinstance(getattr(a, "norm", nn.Identity()), nn.Identity):
                    bad.append(f"{w}.attn: scale_attn_norm (a norm before proj)")
                if getattr(a, "gate", None) is not None:
                    bad.append(f"{w}.attn: gated attention")
                if a.num_heads != heads:
                    bad.append(f"{w}.attn: {a.num_heads} heads (block 0 has {heads})")
                if a.num_heads * a.head_dim != e or a.head_dim != e // a.num_heads:
                    bad.append(f"{w}.attn: head_dim={a.head_dim} with {a.num_heads} heads != embed_dim {e}")
                try:
                    check_linear(a.qkv, f"{w}.attn.qkv", self.name, bias=None)
                    check_linear(a.proj, f"{w}.attn.proj", self.name, bias=None)
                except Unsupported as err:
                    bad.append(err.reason)
            mlp = b.mlp
            if not _is(mlp, _MLP):
                bad.append(f"{w}.mlp is {type(mlp).__name__} (only a 2-layer Linear-act-Linear Mlp)")
            else:
                if not isinstance(mlp.norm, nn.Identity):
                    bad.append(f"{w}.mlp: scale_mlp_norm (a norm inside the MLP)")
                for fc in ("fc1", "fc2"):
                    try:
                        check_linear(getattr(mlp, fc), f"{w}.mlp.{fc}", self.name)
                    except Unsupported as err:
                        bad.append(err.reason + " (proj_bias=False)")
                if isinstance(mlp.fc1, nn.Linear) and mlp.fc1.out_features != hidden:
                    bad.append(f"{w}.mlp: hidden width {mlp.fc1.out_features} (block 0 has {hidden})")
            for n in ("norm1", "norm2"):
                try:
                    check_layer_norm(getattr(b, n), f"{w}.{n}", e, self.name)
                except Unsupported as err:
                    bad.append(err.reason)
        return heads, hidden

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
    def capture_points(self) -> dict[str, CapturePoint]:
        d = self.description()
        m: Any = self.model
        pts = {"patch_embed": CapturePoint(m.patch_embed), "pos_embed": CapturePoint(m.pos_drop)}
        for i, b in enumerate(m.blocks):
            subs = {"norm1": b.norm1, "attn": b.attn, "norm2": b.norm2, "mlp": b.mlp}
            pts.update({f"blocks.{i}.{s}": CapturePoint(subs[s]) for s in SUB_OPS})
            pts[f"blocks.{i}"] = CapturePoint(b)
        if d.profile.final_norm == "before_pool":
            pts["final_norm"] = CapturePoint(m.norm)
        # fc_norm is always called (Identity when unused), so its input is the pooled vector.
        pts["pool"] = CapturePoint(m.fc_norm, "input")
        if d.profile.final_norm == "after_pool":
            pts["final_norm"] = CapturePoint(m.fc_norm)
        if d.has_head:
            pts["head"] = CapturePoint(m.head)
        return pts

    def run(self, x: Tensor) -> Tensor:
        return self.model(x)


def _model_name(m: Any) -> str:
    cfg = getattr(m, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else getattr(cfg, "architecture", None)
    return str(arch) if arch else type(m).__name__
