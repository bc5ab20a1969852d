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
from vitspec.schema import FFNKind, MapPool, NormKind, head_width, pos_prefix_count

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
    check_rms_norm,
    consensus,
    conv_geometry,
    copy,
    find_base,
    identity_head,
    inp,
    layer_rules,
    layer_taps,
    linear_rules,
    norm_rules,
    out,
    raise_unsupported,
    read_layer,
    redefinitions,
    split_rows,
    squeeze_to,
)

__all__ = ["TimmAdapter"]

_VIT = ("timm.models.vision_transformer", "VisionTransformer")
_BLOCK = ("timm.models.vision_transformer", "Block")
_ATTN = ("timm.layers.attention", "Attention")
_MLP = ("timm.layers.mlp", "Mlp")
_PATCH = ("timm.layers.patch_embed", "PatchEmbed")
# Variation points (vitspec.primitives.variations) the adapter maps.
_DISTILLED = ("timm.models.deit", "VisionTransformerDistilled")
_LAYER_SCALE = ("timm.layers.layer_scale", "LayerScale")
_SWIGLU = ("timm.layers.mlp", "SwiGLU")
_GLU_MLP = ("timm.layers.mlp", "GluMlp")
_MAP_POOL = ("timm.layers.attention_pool", "AttentionPoolLatent")
# The forward path a subclass must not redefine for the mapping to hold.
_FORWARD_METHODS = ("forward", "forward_features", "forward_head", "_pos_embed", "pool")


def _is(m: Any, cls: tuple[str, str]) -> bool:
    t = type(m)
    return (t.__module__, t.__qualname__) == cls


def _layer(i: int, mlp: Any = None) -> LayerPaths:
    """Block ``i``'s row of the table: every path the key map, the stages and the reading use (a ``SwiGLU``
    ``mlp``'s value projection is ``fc1_x``)."""
    b = f"blocks.{i}"
    fc1 = f"{b}.mlp.fc1_x" if _is(mlp, _SWIGLU) else f"{b}.mlp.fc1"
    return LayerPaths(
        norm1=f"{b}.norm1",
        attn=f"{b}.attn",
        qkv=f"{b}.attn.qkv.",
        proj=f"{b}.attn.proj",
        norm2=f"{b}.norm2",
        mlp=f"{b}.mlp",
        fc1=fc1,
        act=f"{b}.mlp.act",
        fc2=f"{b}.mlp.fc2",
        attn_in=f"{b}.attn",
        mlp_in=f"{b}.mlp",
        block=b,
    )


class TimmAdapter(RuleAdapter):
    """``timm.models.vision_transformer.VisionTransformer`` with standard ``Block`` s."""

    name: ClassVar[str] = "timm"
    # What _read_blocks found in every block (variation points), read by describe().
    _layer_scale: bool = False
    _qk_norm: bool = False
    _ffn: FFNKind = "mlp"
    _ffn_bias: bool = True

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return find_base(model, *_VIT) is not None

    # -- description -------------------------------------------------------------------
    def describe(self) -> Description:
        m: Any = self.model
        bad: list[str] = []  # every problem, reported at once (Unsupported lists them all)
        base = find_base(m, *_VIT)
        assert base is not None
        # DeiT's VisionTransformerDistilled (eval: the mean of its two heads) is a variation point.
        distilled = _is(m, _DISTILLED) and not getattr(m, "distilled_training", False)
        if type(m) is not base and not distilled:
            if getattr(m, "dist_token", None) is not None:
                bad.append("distillation token (a VisionTransformerDistilled in distilled_training mode)")
            bad += redefinitions(m, base, _FORWARD_METHODS)
        # Token layout (register tokens, pos_embed='none', no_embed_class: variation points).
        registers = int(getattr(m, "num_reg_tokens", 0) or 0)
        dynamic = bool(getattr(m, "dynamic_img_size", False))
        if getattr(m, "dynamic_img_pad", False):
            bad.append("dynamic_img_pad=True (the image is padded to a multiple of the patch per input)")
        pos_prefix = "none" if getattr(m, "no_embed_class", False) and m.num_prefix_tokens > 0 else "all"
        # Patch embedding.
        e = int(m.embed_dim)
        geometry = self._patch_geometry(m.patch_embed, bad)
        norm_kind = self._norm_kind(m)
        # Pooling and final norm.
        gp = m.global_pool
        map_pool = None
        if getattr(m, "attn_pool", None) is not None:
            map_pool = self._read_map_pool(m, e, bad)  # MAP pooling (a variation point), or its problems
        elif gp == "":
            bad.append("global_pool='' (no pooling: the head sees every token)")
        elif gp not in ("token", "avg"):
            bad.append(f"global_pool={gp!r} (spec pooling: token or mean)")
        norm_on, fc_norm_on = not isinstance(m.norm, nn.Identity), not isinstance(m.fc_norm, nn.Identity)
        if norm_on and fc_norm_on:
            bad.append("both norm and fc_norm are active (the spec has one final norm)")
        head_bad: list[str] = []  # only the head: a trunk-only check (self.trunk) leaves it out
        if not isinstance(getattr(m, "pre_logits", nn.Identity()), nn.Identity):
            head_bad.append("pre_logits (representation layer before the head)")
        has_head = not isinstance(m.head, nn.Identity)
        if has_head and not (isinstance(m.head, nn.Linear) and m.head.bias is not None):
            head_bad.append(f"head is {type(m.head).__name__}, not nn.Linear with bias")
        # Blocks: structure, and every block's own numerics (nothing inferred from block 0).
        blocks = list(m.blocks)
        per_layer = self._read_blocks(blocks, e, bad)
        if map_pool is not None:
            self._read_map_numerics(m.attn_pool, e, per_layer, bad)
        pre_norm = not isinstance(m.norm_pre, nn.Identity)  # timm pre_norm=True (CLIP's ln_pre)
        check_norm = check_rms_norm if norm_kind == "rms" else check_layer_norm
        for what, mod, on in (("norm", m.norm, norm_on), ("fc_norm", m.fc_norm, fc_norm_on), ("norm_pre", m.norm_pre,
                              pre_norm)):  # fmt: skip
            if on:
                try:
                    per_layer.eps[what] = check_norm(mod, what, e, self.name)
                except Unsupported as err:
                    bad.append(err.reason)
        if bad or not self.trunk:
            raise_unsupported([*bad, *head_bad], self.name, head_only=not bad)
        has_head = has_head and not head_bad
        notes_head = [f"trunk only: the head is not expressible ({why}); it is not checked" for why in head_bad]
        assert geometry is not None
        in_c, ph, pw, stride, padding, in_h, in_w = geometry

        p0 = PROFILES["timm"]
        eps, notes = consensus(per_layer.eps, p0.ln_eps, "LayerNorm eps")
        act, act_notes = consensus(per_layer.act, p0.activation, "activation")
        notes += act_notes + per_layer.notes + notes_head
        final_norm: FinalNorm = "before_pool" if norm_on else "after_pool" if fc_norm_on else "none"
        cls_token = m.cls_token is not None
        pooling: Pooling | None = (
            "token" if gp == "token" else "mean_all" if m.pool_include_prefix and cls_token else "mean"
        )
        if gp == "avg" and m.pool_include_prefix and not cls_token and m.num_prefix_tokens:
            pooling = None  # registers without a class token, averaged too: the mean-pool variant's own mean
        if map_pool is not None:
            pooling = "map"
        profile = p0.replace(
            final_norm=final_norm,
            ln_eps=eps,
            activation=act,
            qkv_bias=per_layer.qkv_bias if blocks else p0.qkv_bias,
            out_bias=per_layer.out_bias if blocks else p0.out_bias,
            pooling=pooling,
            source=f"timm VisionTransformer (global_pool={gp!r}, class_token={cls_token})",
            # variation points (vitspec.primitives.variations)
            head_dim=per_layer_head_dim(blocks, e),
            layer_scale=self._layer_scale,
            dist_token=distilled,
            reg_tokens=registers,
            pos_embed="none" if m.pos_embed is None else "learned",
            pos_prefix=pos_prefix if m.pos_embed is not None else "all",
            pre_norm=pre_norm,
            patch_bias=m.patch_embed.proj.bias is not None,
            norm=norm_kind,
            qk_norm=self._qk_norm,
            ffn=self._ffn,
            ffn_bias=self._ffn_bias,
            head="distilled" if distilled else "linear",
            map_latents=map_pool[0] if map_pool else 1,
            map_pool=map_pool[1] if map_pool else "token",
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
        if not has_head and not head_bad:
            notes.append("num_classes=0: no classifier; the spec head is the identity, logits = pooled features")
        if dynamic:
            notes.append("dynamic_img_size=True: checked at the native grid, where timm leaves its position table "
                         "as is; resampling to other sizes is not checked")  # fmt: skip
        if distilled:
            notes.append("VisionTransformerDistilled in eval: logits = (head(token 0) + head_dist(token 1)) / 2")
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
        if not getattr(pe, "flatten", True) and not getattr(self.model, "dynamic_img_size", False):
            bad.append("patch_embed without flatten (NHWC output)")
        try:  # a bias-free conv is profile patch_bias=False (timm pre_norm=True, CLIP)
            _, in_c, ph, pw, stride, padding = conv_geometry(pe.proj, "patch_embed.proj", self.name, bias=False)
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
        if blocks and _is(getattr(blocks[0], "mlp", None), _SWIGLU):
            r.hidden = blocks[0].mlp.fc1_x.out_features
        elif blocks and _is(getattr(blocks[0], "mlp", None), _GLU_MLP):
            r.hidden = blocks[0].mlp.fc1.out_features // 2
        qkv_bias: dict[str, bool] = {}
        out_bias: dict[str, bool] = {}
        # Variation points, one value per block (every block must agree: the profile holds one).
        layer_scale: dict[str, bool] = {}
        qk_norm: dict[str, bool] = {}
        ffn: dict[str, bool] = {}
        ffn_bias: dict[str, bool] = {}
        kind = self._norm_kind(self.model)
        for i, b in enumerate(blocks):
            w = f"blocks.{i}"
            if not _is(b, _BLOCK):
                bad.append(f"{w} is {type(b).__name__} (only the pre-norm timm Block)")
                continue
            layer_scale[w] = self._read_layer_scale(b, w, e, bad)
            self._read_attention(b.attn, w, e, r, bad, qkv_bias, out_bias)
            qk_norm[f"{w}.attn"] = self._read_qk_norm(b.attn, w, kind, r, bad)
            if self._read_mlp(b.mlp, w, r, bad):
                ffn[f"{w}.mlp"] = not _is(b.mlp, _MLP)
                ffn_bias[f"{w}.mlp"] = getattr(b.mlp.fc2, "bias", None) is not None
                read_layer(self.model, _layer(i, b.mlp), e, self.name, r, bad, norm=kind)
        if blocks:
            r.qkv_bias = self._uniform(qkv_bias, "a qkv bias", bad)
            r.out_bias = self._uniform(out_bias, "an output-projection bias", bad)
        self._layer_scale = self._uniform(layer_scale, "layer scale (ls1/ls2)", bad, default=False)
        self._qk_norm = self._uniform(qk_norm, "a q/k norm", bad, default=False)
        glu = self._uniform(ffn, "a gated (GLU) MLP", bad, default=False)
        self._ffn: FFNKind = "glu" if glu else "mlp"
        self._ffn_bias = self._uniform(ffn_bias, "MLP biases", bad)
        return r

    def _read_map_pool(self, m: Any, e: int, bad: list[str]) -> tuple[int, MapPool] | None:
        """``(latents, pool)`` of timm's ``AttentionPoolLatent`` (``global_pool='map'``), or None with every
        option the spec's MAP pooling does not express in ``bad``."""
        ap = m.attn_pool
        w, n = "attn_pool", len(bad)
        if not _is(ap, _MAP_POOL):
            bad.append(f"{w} is {type(ap).__name__} (global_pool={m.global_pool!r}; only AttentionPoolLatent)")
            return None
        if getattr(m, "pool_include_prefix", False) and m.num_prefix_tokens:
            bad.append(f"{w}: pool_include_prefix=True (MAP over the prefix tokens too)")
        if ap.pos_embed is not None:
            bad.append(f"{w}: pos_embed='abs' (a position table inside the pool)")
        if not (isinstance(ap.q_norm, nn.Identity) and isinstance(ap.k_norm, nn.Identity)):
            bad.append(f"{w}: qk_norm=True")
        if not isinstance(ap.q, nn.Linear) or ap.latent_dim != e:
            bad.append(f"{w}: q_proj=False or latent_dim={ap.latent_dim} != embed_dim {e}")
        if ap.mlp is None or not _is(ap.mlp, _MLP) or not isinstance(ap.proj, nn.Linear):
            bad.append(f"{w}: out_features=0 or an MLP other than timm Mlp")
        if ap.pool not in ("token", "avg"):
            bad.append(f"{w}: pool_type={ap.pool!r} (token or avg)")
        blocks = list(m.blocks)
        heads = blocks[0].attn.num_heads if blocks else ap.num_heads
        if ap.num_heads != heads:
            bad.append(f"{w}: {ap.num_heads} heads (the blocks have {heads})")
        for lin in ("q", "kv", "proj"):
            if getattr(getattr(ap, lin), "bias", None) is None:
                bad.append(f"{w}.{lin} has no bias (qkv_bias=False in the pool)")
        return (int(ap.latent_len), ap.pool) if len(bad) == n else None

    def _read_map_numerics(self, ap: Any, e: int, r: PerLayer, bad: list[str]) -> None:
        """The MAP pool's norm eps and activation join the model's (the profile holds one of each)."""
        try:
            r.eps["attn_pool.norm"] = check_layer_norm(ap.norm, "attn_pool.norm", e, self.name)
            r.act["attn_pool.mlp.act"], note = activation_kind(ap.mlp.act, "attn_pool.mlp.act", self.name)
            r.notes += [note] if note else []
        except Unsupported as err:
            bad.append(err.reason)
        if ap.mlp.fc1.out_features != r.hidden:
            bad.append(f"attn_pool.mlp: hidden width {ap.mlp.fc1.out_features} (the blocks have {r.hidden})")

    @staticmethod
    def _norm_kind(m: Any) -> NormKind:
        """``rms`` when the model's norms are RMSNorms (timm ``norm_layer='rmsnorm'``): read off the first
        block's ``norm1`` (a weight, no bias); every norm is then checked as that kind."""
        blocks = list(getattr(m, "blocks", []))
        n1 = getattr(blocks[0], "norm1", None) if blocks else getattr(m, "norm", None)
        w, b = getattr(n1, "weight", None), getattr(n1, "bias", None)
        return "rms" if isinstance(w, Tensor) and b is None else "layer"

    def _read_layer_scale(self, b: Any, w: str, e: int, bad: list[str]) -> bool:
        """Whether block ``b`` has LayerScale gains (timm ``init_values``): both ``(E,)`` or neither."""
        ls = [getattr(b, n) for n in ("ls1", "ls2")]
        if all(isinstance(x, nn.Identity) for x in ls):
            return False
        for name, x in zip(("ls1", "ls2"), ls, strict=True):
            if not (_is(x, _LAYER_SCALE) and tuple(x.gamma.shape) == (e,)):
                bad.append(f"{w}.{name} is {type(x).__name__} (LayerScale with both ls1 and ls2, gamma ({e},))")
        return True

    def _read_qk_norm(self, a: Any, w: str, kind: NormKind, r: PerLayer, bad: list[str]) -> bool:
        """Whether ``a`` normalises q and k per head (timm ``qk_norm=True``); their eps go to ``r.eps``."""
        norms = [getattr(a, n, None) for n in ("q_norm", "k_norm")]
        if all(isinstance(x, nn.Identity) for x in norms):
            return False
        check = check_rms_norm if kind == "rms" else check_layer_norm
        for name, x in zip(("q_norm", "k_norm"), norms, strict=True):
            assert isinstance(x, nn.Module)
            try:
                r.eps[f"{w}.attn.{name}"] = check(x, f"{w}.attn.{name}", int(a.head_dim), self.name)
            except Unsupported as err:
                bad.append(err.reason)
        return True

    def _read_attention(
        self, a: Any, w: str, e: int, r: PerLayer, bad: list[str], qkv_bias: dict[str, bool], out_bias: dict[str, bool]
    ) -> None:
        if not _is(a, _ATTN):
            bad.append(f"{w}.attn is {type(a).__name__} (only timm Attention)")
            return
        if not isinstance(getattr(a, "norm", nn.Identity()), nn.Identity):
            bad.append(f"{w}.attn: scale_attn_norm (a norm before proj)")
        if getattr(a, "gate", None) is not None:
            bad.append(f"{w}.attn: gated attention")
        if a.num_heads != r.heads:
            bad.append(f"{w}.attn: {a.num_heads} heads (block 0 has {r.heads})")
        first: Any = self.model.get_submodule("blocks.0.attn")
        if a.head_dim != getattr(first, "head_dim", a.head_dim):
            bad.append(f"{w}.attn: head_dim={a.head_dim} (block 0 has {first.head_dim})")
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

    def _read_mlp(self, mlp: Any, w: str, r: PerLayer, bad: list[str]) -> bool:
        """Structural checks of the MLP (timm ``Mlp``, or a GLU: ``SwiGLU``, ``GluMlp``); whether it has the
        table's layout (value ``fc1``, ``act``, ``fc2``; a GLU also a gate)."""
        if not (_is(mlp, _MLP) or _is(mlp, _SWIGLU) or _is(mlp, _GLU_MLP)):
            bad.append(f"{w}.mlp is {type(mlp).__name__} (only timm Mlp, SwiGLU or GluMlp)")
            return False
        if not isinstance(mlp.norm, nn.Identity):
            bad.append(f"{w}.mlp: scale_mlp_norm (a norm inside the MLP)")
        if _is(mlp, _GLU_MLP) and getattr(mlp, "chunk_dim", -1) != -1:
            bad.append(f"{w}.mlp: GluMlp chunk_dim={mlp.chunk_dim} (only the last axis)")
        fcs = ("fc1_x", "fc1_g", "fc2") if _is(mlp, _SWIGLU) else ("fc1", "fc2")
        try:
            lin = [check_linear(getattr(mlp, fc), f"{w}.mlp.{fc}", self.name, bias=None) for fc in fcs]
        except Unsupported as err:
            bad.append(err.reason)
            return False
        if len({x.bias is None for x in lin}) > 1:
            bad.append(f"{w}.mlp: some of {', '.join(fcs)} have a bias and some not (profile ffn_bias is one flag)")
        width = lin[-1].in_features
        if width != r.hidden:
            bad.append(f"{w}.mlp: hidden width {width} (block 0 has {r.hidden})")
        return True

    @staticmethod
    def _uniform(values: dict[str, bool], what: str, bad: list[str], *, default: bool = True) -> bool:
        """The one value every block shares; a block that differs is named (the profile has one flag)."""
        value, _ = consensus(values, default, what)
        bad += [
            f"{k}: {'has' if v else 'lacks'} {what}, unlike the other blocks" for k, v in values.items() if v != value
        ]
        return value

    # -- tensors -----------------------------------------------------------------------
    def key_map(self) -> list[Rule]:
        d = self.description()
        c, p = d.cfg, d.profile
        hd = head_width(c, p)
        e, f, a = c.embed_dim, c.hidden_dim, c.head_count * hd
        rows = c.tokens(d.in_h, d.in_w) + pos_prefix_count(d.variant, p)  # learned-table rows
        ln = p.norm == "layer"
        rules = [Rule("patch_embed.proj.weight", ("patch_kernel",), (e, d.in_c, c.patch_h, c.patch_w))]
        if p.patch_bias:
            rules.append(Rule("patch_embed.proj.bias", ("patch_bias",), (e,)))
        if d.variant == "cls":
            rules.append(Rule("cls_token", ("cls_token",), (1, 1, e), as_vector))
        if p.dist_token:
            rules.append(Rule("dist_token", ("dist_token",), (1, 1, e), as_vector))
        if p.reg_tokens:
            rules.append(Rule("reg_token", ("reg_tokens",), (1, p.reg_tokens, e), squeeze_to(p.reg_tokens, e)))
        if p.pos_embed == "learned":
            rules.append(Rule("pos_embed", ("pos",), (1, rows, e), squeeze_to(rows, e)))
        if p.pre_norm:
            rules += norm_rules("norm_pre", "pre_norm", e, beta=ln)
        for i in range(c.num_layers):
            rules += self._block_rules(i, e, f, a, hd)
        if p.final_norm != "none":
            rules += norm_rules("norm" if p.final_norm == "before_pool" else "fc_norm", "final_norm", e, beta=ln)
        if p.pooling == "map":  # AttentionPoolLatent: latent, q, fused kv ([k; v] rows), proj, norm, mlp
            rules += [
                Rule("attn_pool.latent", ("map.latent",), (1, p.map_latents, e), squeeze_to(p.map_latents, e)),
                *linear_rules("attn_pool.q", "map.Wq", "map.bq", e, e),
                Rule("attn_pool.kv.weight", ("map.Wk", "map.Wv"), (2 * e, e), split_rows(2, transposed=True)),
                Rule("attn_pool.kv.bias", ("map.bk", "map.bv"), (2 * e,), split_rows(2, transposed=False)),
                *linear_rules("attn_pool.proj", "map.Wo", "map.bo", e, e),
                *norm_rules("attn_pool.norm", "map.norm", e),
                *linear_rules("attn_pool.mlp.fc1", "map.W1", "map.b1", f, e),
                *linear_rules("attn_pool.mlp.fc2", "map.W2", "map.b2", e, f),
            ]
        if d.has_head:
            rules += [
                Rule("head.weight", ("head_W",), (c.num_classes, e), copy),
                Rule("head.bias", ("head_b",), (c.num_classes,), copy),
            ]
        else:  # an inexpressible head in a trunk-only check (num_classes=0 has no parameters here)
            why = "the head is not expressible; a trunk-only check leaves it out"
            rules += [
                Rule.ignore(n, t.shape, why)
                for n, t in self.model.named_parameters()
                if n.startswith(("head.", "pre_logits."))
            ]
        if p.head == "distilled":
            rules += [
                Rule("head_dist.weight", ("head_dist_W",), (c.num_classes, e), copy),
                Rule("head_dist.bias", ("head_dist_b",), (c.num_classes,), copy),
            ]
        return rules

    def _block_rules(self, i: int, e: int, f: int, a: int, hd: int) -> list[Rule]:
        """Block ``i``'s rules: the shared layer table, then its variation points (LayerScale gains, q/k norms,
        the GLU gate)."""
        p, b, s = self.description().profile, f"blocks.{i}", f"encoder.{i}"
        mlp = self.model.get_submodule(f"{b}.mlp")
        rules = layer_rules(_layer(i, mlp), i, embed=e, hidden=f, attn=a, profile=p)
        if p.layer_scale:
            rules += [Rule(f"{b}.ls{k}.gamma", (f"{s}.ls{k}_gamma",), (e,), copy) for k in (1, 2)]
        if p.qk_norm:
            rules += norm_rules(f"{b}.attn.q_norm", f"{s}.mha.q_norm", hd, beta=p.norm == "layer")
            rules += norm_rules(f"{b}.attn.k_norm", f"{s}.mha.k_norm", hd, beta=p.norm == "layer")
        bias = p.ffn_bias
        if _is(mlp, _SWIGLU):  # separate gate and value projections
            rules += linear_rules(f"{b}.mlp.fc1_g", f"{s}.ffn.Wg", f"{s}.ffn.bg" if bias else None, f, e)
        elif _is(mlp, _GLU_MLP):  # one fc1 of width 2F: gate_last -> [value; gate], else [gate; value]
            fc1 = f"{b}.mlp.fc1"
            order = (f"{s}.ffn.W1", f"{s}.ffn.Wg") if mlp.gate_last else (f"{s}.ffn.Wg", f"{s}.ffn.W1")
            rules = [r for r in rules if not r.source.startswith(fc1 + ".")]
            rules.append(Rule(f"{fc1}.weight", order, (2 * f, e), split_rows(2, transposed=True)))
            if bias:
                b_order = tuple(k.replace(".W", ".b") for k in order)
                rules.append(Rule(f"{fc1}.bias", b_order, (2 * f,), split_rows(2, transposed=False)))
        return rules

    def synthetic(self, like: Tensor) -> dict[str, Tensor]:
        return identity_head(self.description().cfg.embed_dim, like)

    # -- stages ------------------------------------------------------------------------
    def stage_paths(self) -> dict[str, list[Tap]]:
        d = self.description()
        n = d.cfg.num_layers
        # The final norm is always called (Identity when unused): its input is the last block's output.
        after = [f"blocks.{i + 1}" if i + 1 < n else "norm" for i in range(n)]
        p = d.profile
        # dynamic_img_size: patch_embed returns NHWC, which _pos_embed flattens row-major (view(B, -1, C)).
        nhwc = not getattr(self.model.patch_embed, "flatten", True)
        t: dict[str, list[Tap]] = {
            "patch_embed": [out("patch_embed", _flatten_nhwc if nhwc else _same)],
            "pos_embed": [inp("blocks.0" if n else "norm"), out("pos_drop")],
        }
        if p.pre_norm:  # norm_pre sits between pos_drop and the blocks
            t["pos_embed"] = [out("pos_drop"), inp("norm_pre")]
            t["pre_norm"] = [out("norm_pre"), inp("blocks.0" if n else "norm")]
        for i in range(n):
            t.update(layer_taps(_layer(i), i, after[i]))
            if p.layer_scale:
                t[f"blocks.{i}.ls1"] = [out(f"blocks.{i}.ls1")]
                t[f"blocks.{i}.ls2"] = [out(f"blocks.{i}.ls2")]
        if p.final_norm == "before_pool":
            t["final_norm"] = [out("norm")]
        if p.head == "distilled":  # no pooled vector; the logits are the mean of two heads: the model's output
            t["head"] = [out("")]
            return t
        # fc_norm is always called (Identity when unused), so its input is the pooled vector.
        t["pool"] = [inp("fc_norm")]
        if p.final_norm == "after_pool":
            t["final_norm"] = [inp("head_drop"), out("fc_norm")]
        if d.has_head:
            t["head"] = [out("head")]
        return t


def per_layer_head_dim(blocks: list[Any], e: int) -> int | None:
    """The profile ``head_dim``: ``None`` when block 0's ``heads * head_dim`` is the spec's ``embed_dim // heads``
    split, else its ``head_dim`` (timm ``attn_head_dim``; every block is checked against block 0)."""
    a = getattr(blocks[0], "attn", None) if blocks else None
    if a is None or not hasattr(a, "head_dim"):
        return None
    return None if a.head_dim == e // a.num_heads else int(a.head_dim)


def _same(t: Any) -> Tensor:
    return t  # type: ignore[no-any-return]


def _flatten_nhwc(t: Tensor) -> Tensor:
    """Patch tokens ``(B, h, w, E)`` (timm ``dynamic_img_size``) -> ``(B, h*w, E)``, row-major as timm's ``view``."""
    return t.flatten(1, 2)


def _model_name(m: Any) -> str:
    cfg = getattr(m, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, dict) else getattr(cfg, "architecture", None)
    return str(arch) if arch else type(m).__name__
