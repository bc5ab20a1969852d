"""lucidrains ``vit_pytorch.ViT`` (read against vit-pytorch 1.26.11, ``vit_pytorch/vit.py``; einops 0.8.2).

Quirks this adapter handles:

- Patch embedding is ``Sequential(Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)'),
  LayerNorm(patch_dim), Linear(patch_dim, dim), LayerNorm(dim))``: the spec's ``linear_ln``
  patch embedding. Patch vectors are flattened ``(p1 p2 c)`` (channels last); the spec flattens
  like its conv kernel, ``(c p1 p2)``. So the Linear weight ``(dim, p1*p2*c)`` becomes
  ``patch_kernel (dim, c, p1, p2)`` and the first LayerNorm's ``(p1*p2*c,)`` gamma/beta become
  ``(c, p1, p2)``, by the same permutation (LayerNorm statistics do not depend on the order).
- The image size is not stored: the grid is inferred as square from the position table
  (``input_hw=(H, W)`` overrides it for non-square images). ``channels`` is ``patch_dim / (p1*p2)``.
- ``cls_token`` is ``(1, dim)`` for ``pool='cls'`` and ``(0, dim)`` (empty, accounted for) for
  ``pool='mean'``; ``pos_embedding`` is ``(T + n_cls, dim)`` without a batch axis. Older releases
  used ``[1, 1, dim]`` / ``[1, T+1, dim]`` and kept the class token with ``pool='mean'`` (a mean over
  all tokens, class token included: ``pooling='mean_all'``); shapes are read, not assumed.
- ``Attention`` holds its own pre-norm ``norm``; ``to_qkv`` is a fused Linear ``[q; k; v]``
  **without bias**; ``to_out = Sequential(Linear, Dropout)`` (Identity when ``heads == 1 and
  dim_head == dim``: no output projection, not expressible). ``inner_dim = heads * dim_head`` may
  differ from ``dim``; the spec's per-head width is ``dim // heads``, so ``dim_head * heads`` must
  equal ``dim``.
- ``FeedForward.net = Sequential(LayerNorm, Linear, GELU, Dropout, Linear, Dropout)``: its output is
  the FFN output (``mlp``), ``net.0`` is the block's second LayerNorm (``norm2``).
- A layer is ``ModuleList([Attention, FeedForward])`` with the residual sums done in
  ``Transformer.forward``: there is no module whose output is the layer output, so ``blocks.{i}``
  is captured as the *input* of the next layer's ``Attention`` (the last one: the input of
  ``transformer.norm``, the final norm).
- LayerNorm eps is PyTorch's default 1e-5; ``mlp_head`` is a plain Linear (``None`` when
  ``num_classes=0``: the forward then returns every token, not expressible).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vitspec.config import ViTConfig
from vitspec.primitives.variations import posemb_sincos_2d
from vitspec.profiles import PROFILES, Pooling
from vitspec.schema import head_width

from .base import (
    Description,
    LayerPaths,
    PerLayer,
    Rule,
    RuleAdapter,
    Tap,
    Unsupported,
    as_vector,
    check_layer_norm,
    check_linear,
    consensus,
    copy,
    find_base,
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

__all__ = ["VitPytorchAdapter"]

_MOD = "vit_pytorch.vit"
_SIMPLE = "vit_pytorch.simple_vit"
_PATTERN = "b c (h p1) (w p2) -> b (h w) (p1 p2 c)"


def _is(m: Any, qualname: str) -> bool:
    return (type(m).__module__, type(m).__qualname__) == (_MOD, qualname)


def _kernel_from_linear(e: int, ph: int, pw: int, c: int) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """Linear weight ``(e, p1*p2*c)`` -> conv-layout ``(e, c, p1, p2)``."""

    def fn(t: Tensor) -> tuple[Tensor, ...]:
        return (t.reshape(e, ph, pw, c).permute(0, 3, 1, 2),)

    fn.__name__ = "p1p2c_to_cp1p2_kernel"
    return fn


def _patch_vector(ph: int, pw: int, c: int) -> Callable[[Tensor], tuple[Tensor, ...]]:
    """LayerNorm gamma/beta ``(p1*p2*c,)`` -> ``(c, p1, p2)``."""

    def fn(t: Tensor) -> tuple[Tensor, ...]:
        return (t.reshape(ph, pw, c).permute(2, 0, 1),)

    fn.__name__ = "p1p2c_to_cp1p2"
    return fn


def _patch_rules(e: int, ph: int, pw: int, c: int) -> list[Rule]:
    """Rules of ``to_patch_embedding`` (LayerNorm, Linear, LayerNorm; the same in ``ViT`` and ``SimpleViT``)."""
    pd, pe = c * ph * pw, "to_patch_embedding"
    return [
        Rule(f"{pe}.1.weight", ("patch_norm_in_gamma",), (pd,), _patch_vector(ph, pw, c)),
        Rule(f"{pe}.1.bias", ("patch_norm_in_beta",), (pd,), _patch_vector(ph, pw, c)),
        Rule(f"{pe}.2.weight", ("patch_kernel",), (e, pd), _kernel_from_linear(e, ph, pw, c)),
        Rule(f"{pe}.2.bias", ("patch_bias",), (e,), copy),
        Rule(f"{pe}.3.weight", ("patch_norm_out_gamma",), (e,), copy),
        Rule(f"{pe}.3.bias", ("patch_norm_out_beta",), (e,), copy),
    ]


def _trunk_rules(d: Description, layer: Callable[[int], LayerPaths], head: str) -> list[Rule]:
    """Rules of the layers (rows from ``layer``), ``transformer.norm`` and the Linear ``head`` (ViT and SimpleViT)."""
    c, p = d.cfg, d.profile
    e, f, a = c.embed_dim, c.hidden_dim, c.head_count * head_width(c, p)
    rules: list[Rule] = []
    for i in range(c.num_layers):
        rules += layer_rules(layer(i), i, embed=e, hidden=f, attn=a, profile=p)
    rules += norm_rules("transformer.norm", "final_norm", e)
    rules += [
        Rule(f"{head}.weight", ("head_W",), (c.num_classes, e), copy),
        Rule(f"{head}.bias", ("head_b",), (c.num_classes,), copy),
    ]
    return rules


def _layer(i: int) -> LayerPaths:
    """Layer ``i``'s row of the table. The layer has no module of its own (``block=None``): the residual
    sums run in ``Transformer.forward``; the Attention holds norm1, the FeedForward's ``net.0`` is norm2."""
    b = f"transformer.layers.{i}"
    return LayerPaths(
        norm1=f"{b}.0.norm",
        attn=f"{b}.0",
        qkv=f"{b}.0.to_qkv.",
        proj=f"{b}.0.to_out.0",
        norm2=f"{b}.1.net.0",
        mlp=f"{b}.1",
        fc1=f"{b}.1.net.1",
        act=f"{b}.1.net.2",
        fc2=f"{b}.1.net.4",
        attn_in=f"{b}.0.to_qkv",
        mlp_in=f"{b}.1.net.1",
    )


class VitPytorchAdapter(RuleAdapter):
    """``vit_pytorch.ViT`` (``pool='cls'`` or ``'mean'``)."""

    name: ClassVar[str] = "vit_pytorch"

    def __init__(self, model: nn.Module, *, copy: bool = True, input_hw: tuple[int, int] | None = None) -> None:
        super().__init__(model, copy=copy)
        self.input_hw = input_hw
        self._dim_heads: dict[str, int] = {}  # per-head width of every Attention (read by describe)

    def _head_dim(self, e: int, heads: int, bad: list[str]) -> int | None:
        """The profile ``head_dim``: None when every layer's ``dim_head`` is ``dim // heads`` (the spec's split)."""
        dim_head, _ = consensus(self._dim_heads, e // max(heads, 1), "dim_head")
        bad += [f"{k}: dim_head {v} (the others have {dim_head})" for k, v in self._dim_heads.items() if v != dim_head]
        if dim_head <= 0:
            bad.append(f"dim_head {dim_head} (an attention needs a positive per-head width)")
        return None if dim_head == e // max(heads, 1) else dim_head

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return find_base(model, _MOD, "ViT") is not None or find_base(model, _SIMPLE, "SimpleViT") is not None

    @property
    def _simple(self) -> bool:
        """The model is a ``SimpleViT`` (fixed 2-D sin-cos table, mean pool, bias-free attention)."""
        return find_base(self.model, _MOD, "ViT") is None

    def _fail(self, problems: list[str]) -> None:
        raise_unsupported(problems, self.name)

    def describe(self) -> Description:
        if self._simple:
            return self._describe_simple()
        m: Any = self.model
        bad: list[str] = []
        base = find_base(m, _MOD, "ViT")
        assert base is not None
        bad += redefinitions(m, base, ("forward",))
        in_c, ph, pw, e = self._patches(m, bad)
        # Tokens.
        n_cls = m.cls_token.numel() // e if m.cls_token.shape[-1] == e else -1
        if n_cls not in (0, 1):
            bad.append(f"class-token table of shape {tuple(m.cls_token.shape)} (0 or 1 class token)")
        rows = m.pos_embedding.numel() // e if m.pos_embedding.shape[-1] == e else 0
        patches = rows - max(n_cls, 0)
        if self.input_hw is not None:
            in_h, in_w = self.input_hw
            inferred = False
        else:
            side = math.isqrt(max(patches, 0))
            if side * side != patches or patches <= 0:
                self._fail([*bad, f"cannot infer the image size from {patches} patches (pass input_hw=(H, W))"])
            in_h, in_w, inferred = side * ph, side * pw, True
        if (in_h // ph) * (in_w // pw) != patches or in_h % ph or in_w % pw:
            bad.append(f"input {in_h}x{in_w} does not give the {patches} patches of the position table")
        pool = getattr(m, "pool", None)
        pooling: Pooling
        if pool == "cls" and n_cls == 1:
            pooling = "token"
        elif pool == "mean":
            pooling = "mean_all" if n_cls == 1 else "mean"
        else:
            bad.append(f"pool={pool!r} with {n_cls} class tokens (spec pooling: cls or mean)")
            pooling = "token"
        if not isinstance(getattr(m, "to_latent", nn.Identity()), nn.Identity):
            bad.append(f"to_latent is {type(m.to_latent).__name__}, not Identity")
        head = getattr(m, "mlp_head", None)
        if head is None:
            bad.append("no mlp_head (num_classes=0: the forward returns every token)")
        elif not (isinstance(head, nn.Linear) and head.bias is not None):
            bad.append(f"mlp_head is {type(head).__name__}, not nn.Linear with bias")
        tr = m.transformer
        if not _is(tr, "Transformer"):
            self._fail([*bad, f"transformer is {type(tr).__name__} (only vit_pytorch.vit.Transformer)"])
        layers = list(tr.layers)
        r = self._check_layers(layers, e, bad)
        head_dim = self._head_dim(e, r.heads, bad)
        r.read_norm(tr.norm, "transformer.norm", e, self.name, bad)
        self._fail(bad)
        p0 = PROFILES["vit_pytorch"]
        eps, eps_notes = consensus(r.eps, p0.ln_eps, "LayerNorm eps")
        act, act_notes = consensus(r.act, p0.activation, "activation")
        profile = p0.replace(
            ln_eps=eps,
            activation=act,
            qkv_bias=r.qkv_bias if layers else p0.qkv_bias,
            out_bias=r.out_bias if layers else p0.out_bias,
            pooling=pooling,
            source=f"vit_pytorch.ViT (pool={pool!r})",
            head_dim=head_dim,
        )
        heads, hidden = r.heads, r.hidden
        cfg = ViTConfig(ph, pw, ph, 0, e, hidden, heads, len(layers), m.mlp_head.out_features)
        notes = [*eps_notes, *act_notes, *r.notes]
        if inferred:
            notes.append(f"input size inferred as a square {in_h}x{in_w} from the {patches}-row position table")
        if n_cls == 0:
            notes.append("cls_token is the empty (0, dim) table of pool='mean'")
        return Description(
            library=self.name,
            model_name=f"vit_pytorch.ViT(pool={pool!r})",
            cfg=cfg,
            in_c=in_c,
            in_h=in_h,
            in_w=in_w,
            variant="cls" if n_cls == 1 else "mean",
            profile=profile,
            notes=tuple(notes),
        )

    def _check_layers(self, layers: list[Any], e: int, bad: list[str]) -> PerLayer:
        """Every layer's structure and own numerics (eps of each norm, activation, biases, scale)."""
        r = PerLayer()
        qkv_bias: dict[str, bool] = {}
        out_bias: dict[str, bool] = {}
        for i, layer in enumerate(layers):
            w = f"transformer.layers.{i}"
            if not (isinstance(layer, nn.ModuleList) and len(layer) == 2):
                bad.append(f"{w} is not ModuleList([Attention, FeedForward])")
                continue
            attn: Any = layer[0]
            ff: Any = layer[1]
            if not _is(attn, "Attention"):
                bad.append(f"{w}.0 is {type(attn).__name__} (only vit_pytorch Attention; PreNorm-era layouts differ)")
            else:
                self._check_attention(attn, i, e, r, bad)
                qkv_bias[f"{w}.0.to_qkv"] = attn.to_qkv.bias is not None
                if not isinstance(attn.to_out, nn.Identity):
                    out_bias[f"{w}.0.to_out.0"] = attn.to_out[0].bias is not None
            net: Any = getattr(ff, "net", None)
            if not _is(ff, "FeedForward") or not (isinstance(net, nn.Sequential) and len(net) == 6):
                bad.append(f"{w}.1 is not FeedForward(LayerNorm, Linear, act, Dropout, Linear, Dropout)")
                continue
            try:
                check_linear(net[1], f"{w}.1.net.1", self.name)
                check_linear(net[4], f"{w}.1.net.4", self.name)
            except Unsupported as err:
                bad.append(err.reason)
                continue
            if _is(attn, "Attention"):
                read_layer(self.model, _layer(i), e, self.name, r, bad)
            r.read_hidden(i, int(getattr(net[1], "out_features", 0)), f"{w}.1: hidden width", bad)
        for flags, what in ((qkv_bias, "a qkv bias"), (out_bias, "an output bias")):
            value, _ = consensus(flags, False, what)
            bad += [f"{k}: {'has' if v else 'lacks'} {what} unlike the rest" for k, v in flags.items() if v != value]
            if flags is qkv_bias:
                r.qkv_bias = value
            else:
                r.out_bias = value
        return r

    def _check_attention(self, attn: Any, i: int, e: int, r: PerLayer, bad: list[str]) -> None:
        w = f"transformer.layers.{i}"
        if i == 0:
            r.heads = attn.heads
        try:
            check_linear(attn.to_qkv, f"{w}.0.to_qkv", self.name, bias=None)
        except Unsupported as err:
            bad.append(err.reason)
        inner = attn.to_qkv.out_features // 3
        dim_head = inner // attn.heads if attn.heads else 0
        if attn.heads != r.heads:
            bad.append(f"{w}.0: {attn.heads} heads (layer 0 has {r.heads})")
        # dim_head * heads != dim is the variation point head_dim (vit-pytorch's default dim_head is 64).
        self._dim_heads[f"{w}.0"] = dim_head
        if dim_head and abs(float(attn.scale) - dim_head**-0.5) > 1e-12 * dim_head**-0.5:
            r.notes.append(
                f"{w}.0: scale {float(attn.scale)!r} is not 1/sqrt(dim_head) = {dim_head**-0.5!r}; "
                f"the comparison is expected to diverge at blocks.{i}.attn"
            )
        if isinstance(attn.to_out, nn.Identity):
            bad.append(f"{w}.0: no output projection (heads == 1 and dim_head == dim)")
        else:
            try:
                check_linear(attn.to_out[0], f"{w}.0.to_out.0", self.name, bias=None)
            except Unsupported as err:
                bad.append(err.reason)

    def key_map(self) -> list[Rule]:
        if self._simple:
            return self._simple_key_map()
        d = self.description()
        c, e = d.cfg, d.cfg.embed_dim
        m: Any = self.model
        n_cls = 1 if d.variant == "cls" else 0
        tokens = c.tokens(d.in_h, d.in_w) + n_cls
        rules = _patch_rules(e, c.patch_h, c.patch_w, d.in_c)
        cls_shape = tuple(m.cls_token.shape)
        if n_cls:
            rules.append(Rule("cls_token", ("cls_token",), cls_shape, as_vector))
        else:
            rules.append(Rule.ignore("cls_token", cls_shape, "empty class-token table of pool='mean'"))
        rules.append(Rule("pos_embedding", ("pos",), tuple(m.pos_embedding.shape), squeeze_to(tokens, e)))
        return rules + _trunk_rules(d, _layer, "mlp_head")

    def stage_paths(self) -> dict[str, list[Tap]]:
        if self._simple:
            return self._simple_stage_paths()
        n = self.description().cfg.num_layers
        return _taps(n, _layer, [inp("transformer"), out("dropout")], "mlp_head")

    # -- SimpleViT (vit_pytorch.simple_vit): a variation-point model ------------------------------------
    def _describe_simple(self) -> Description:
        """``SimpleViT``: the ViT's linear_ln patch embedding, a fixed 2-D sin-cos table (``pos_embed='sincos_2d'``,
        built in float32 like the library), pre-norm layers with bias-free q/k/v and output projections,
        GELU, a final norm, the mean over every token, a Linear head."""
        m: Any = self.model
        bad: list[str] = []
        base = find_base(m, _SIMPLE, "SimpleViT")
        assert base is not None
        bad += redefinitions(m, base, ("forward",))
        in_c, ph, pw, e = self._patches(m, bad)
        tr: Any = m.transformer
        if (type(tr).__module__, type(tr).__qualname__) != (_SIMPLE, "Transformer"):
            self._fail([*bad, f"transformer is {type(tr).__name__} (only vit_pytorch.simple_vit.Transformer)"])
        layers = list(tr.layers)
        r = self._simple_layers(layers, e, bad)
        head_dim = self._head_dim(e, r.heads, bad)
        r.read_norm(tr.norm, "transformer.norm", e, self.name, bad)
        head = getattr(m, "linear_head", None)
        if not (isinstance(head, nn.Linear) and head.bias is not None):
            bad.append(f"linear_head is {type(head).__name__}, not nn.Linear with bias")
        if not isinstance(getattr(m, "to_latent", nn.Identity()), nn.Identity):
            bad.append(f"to_latent is {type(m.to_latent).__name__}, not Identity")
        grid = self._simple_grid(m, ph, pw, e, bad)
        self._fail(bad)
        assert grid is not None and isinstance(head, nn.Linear)
        (gh, gw), how = grid
        p0 = PROFILES["vit_pytorch"]
        eps, eps_notes = consensus(r.eps, p0.ln_eps, "LayerNorm eps")
        act, act_notes = consensus(r.act, p0.activation, "activation")
        profile = p0.replace(
            ln_eps=eps,
            activation=act,
            qkv_bias=False,
            out_bias=False,
            pooling="mean",
            pos_embed="sincos_2d",
            head_dim=head_dim,
            source="vit_pytorch.SimpleViT (posemb_sincos_2d, mean pool)",
        )
        cfg = ViTConfig(ph, pw, ph, 0, e, r.hidden, r.heads, len(layers), head.out_features)
        return Description(
            library=self.name,
            model_name="vit_pytorch.SimpleViT",
            cfg=cfg,
            in_c=in_c,
            in_h=gh * ph,
            in_w=gw * pw,
            variant="mean",
            profile=profile,
            notes=(*eps_notes, *act_notes, *r.notes, how),
        )

    def _patches(self, m: Any, bad: list[str]) -> tuple[int, int, int, int]:
        """``(in_c, patch_h, patch_w, dim)`` of the Rearrange-LayerNorm-Linear-LayerNorm patch embedding
        (the same module in ``ViT`` and ``SimpleViT``)."""
        pe = m.to_patch_embedding
        if not (isinstance(pe, nn.Sequential) and len(pe) == 4):
            self._fail([f"to_patch_embedding is not Rearrange-LayerNorm-Linear-LayerNorm ({type(pe).__name__})"])
        rearr, ln_in, lin, ln_out = pe
        pattern = " ".join(str(getattr(rearr, "pattern", "")).split())
        if type(rearr).__name__ != "Rearrange" or pattern != _PATTERN:
            self._fail(
                [f"to_patch_embedding.0 is not Rearrange({_PATTERN!r}) (got {pattern or type(rearr).__name__!r})"]
            )
        ph, pw = int(rearr.axes_lengths["p1"]), int(rearr.axes_lengths["p2"])
        if ph != pw:
            bad.append(f"non-square patches {ph}x{pw} (the spec's linear_ln patch embedding steps by one stride)")
        try:
            check_linear(lin, "to_patch_embedding.2", self.name)
        except Unsupported as err:
            self._fail([err.reason])
        e, patch_dim = lin.out_features, lin.in_features
        if patch_dim % (ph * pw):
            self._fail([f"patch_dim {patch_dim} is not channels * {ph} * {pw}"])
        for what, ln, dim in (("to_patch_embedding.1", ln_in, patch_dim), ("to_patch_embedding.3", ln_out, e)):
            try:
                check_layer_norm(ln, what, dim, self.name)
            except Unsupported as err:
                bad.append(err.reason)
        return patch_dim // (ph * pw), ph, pw, e

    def _simple_grid(self, m: Any, ph: int, pw: int, e: int, bad: list[str]) -> tuple[tuple[int, int], str] | None:
        """The patch grid: the ``(h, w)`` whose ``posemb_sincos_2d`` *is* the model's table (it depends on ``w``,
        so a non-square grid is read off it exactly), or ``input_hw`` when given (and checked against it)."""
        table = getattr(m, "pos_embedding", None)
        if not isinstance(table, Tensor) or table.dim() != 2 or table.shape[1] != e:
            bad.append(f"pos_embedding is not a (patches, {e}) table")
            return None
        rows = table.shape[0]
        if e % 4 or e < 8:
            bad.append(f"dim {e}: the 2-D sin-cos table needs a multiple of 4, at least 8")
            return None
        fits = [(h, rows // h) for h in range(1, rows + 1) if rows % h == 0 and _sincos_matches(table, h, rows // h)]
        if self.input_hw is not None:
            gh, gw = self.input_hw[0] // ph, self.input_hw[1] // pw
            if self.input_hw[0] % ph or self.input_hw[1] % pw or (gh, gw) not in fits:
                bad.append(f"input_hw={self.input_hw} is not the {ph}x{pw}-patch grid of the model's sin-cos table "
                           f"(grids that fit: {fits or 'none'})")  # fmt: skip
                return None
            return (gh, gw), f"input size {self.input_hw[0]}x{self.input_hw[1]} (given), matches the sin-cos table"
        if len(fits) != 1:
            bad.append(f"cannot infer the image size from the {rows}-row sin-cos table "
                       f"(grids that fit: {fits or 'none'}; pass input_hw=(H, W))")  # fmt: skip
            return None
        (gh, gw) = fits[0]
        return (gh, gw), f"input size {gh * ph}x{gw * pw} read off the sin-cos table (the only {gh}x{gw} grid it fits)"

    def _simple_layers(self, layers: list[Any], e: int, bad: list[str]) -> PerLayer:
        """Every layer: ``Attention(norm, to_qkv, to_out)`` without biases, ``FeedForward(LN, Linear, act, Linear)``."""
        r = PerLayer(qkv_bias=False, out_bias=False)
        for i, layer in enumerate(layers):
            w = f"transformer.layers.{i}"
            attn: Any = layer[0] if isinstance(layer, nn.ModuleList) and len(layer) == 2 else None
            ff: Any = layer[1] if attn is not None else None
            kinds = [(type(x).__module__, type(x).__qualname__) for x in (attn, ff)]
            if kinds != [(_SIMPLE, "Attention"), (_SIMPLE, "FeedForward")]:
                bad.append(f"{w} is not ModuleList([Attention, FeedForward]) of vit_pytorch.simple_vit")
                continue
            if i == 0:
                r.heads = attn.heads
            elif attn.heads != r.heads:
                bad.append(f"{w}.0: {attn.heads} heads (layer 0 has {r.heads})")
            net: Any = ff.net
            try:
                for lin, what in ((attn.to_qkv, "0.to_qkv"), (attn.to_out, "0.to_out")):
                    if check_linear(lin, f"{w}.{what}", self.name, bias=None).bias is not None:
                        bad.append(f"{w}.{what} has a bias (SimpleViT's have none)")
                check_linear(net[1], f"{w}.1.net.1", self.name)
                check_linear(net[3], f"{w}.1.net.3", self.name)
            except (Unsupported, IndexError, TypeError) as err:
                bad.append(getattr(err, "reason", f"{w}.1.net is not LayerNorm-Linear-act-Linear"))
                continue
            dim_head = attn.to_qkv.out_features // 3 // max(attn.heads, 1)
            self._dim_heads[f"{w}.0"] = dim_head
            if dim_head and abs(float(attn.scale) - dim_head**-0.5) > 1e-12 * dim_head**-0.5:
                r.notes.append(f"{w}.0: scale {float(attn.scale)!r} is not 1/sqrt(dim_head); expect blocks.{i}.attn")
            read_layer(self.model, _simple_layer(i), e, self.name, r, bad)
            r.read_hidden(i, int(net[1].out_features), f"{w}.1: hidden width", bad)
        return r

    def _simple_key_map(self) -> list[Rule]:
        d = self.description()
        c = d.cfg
        return _patch_rules(c.embed_dim, c.patch_h, c.patch_w, d.in_c) + _trunk_rules(d, _simple_layer, "linear_head")

    def _simple_stage_paths(self) -> dict[str, list[Tap]]:
        n = self.description().cfg.num_layers
        # The table is added in SimpleViT.forward (x += pos), not in a module: pos_embed is what the transformer gets.
        return _taps(n, _simple_layer, [inp("transformer")], "linear_head")


def _simple_layer(i: int) -> LayerPaths:
    """SimpleViT layer ``i``: as the ViT's, with ``to_out`` a bare Linear and ``net = (LN, Linear, act, Linear)``."""
    b = f"transformer.layers.{i}"
    return replace(_layer(i), proj=f"{b}.0.to_out", fc2=f"{b}.1.net.3")


def _taps(n: int, layer: Callable[[int], LayerPaths], pos_embed: list[Tap], head: str) -> dict[str, list[Tap]]:
    """Stage taps of a ``ViT`` or ``SimpleViT`` with ``n`` layers (rows from ``layer``) and a Linear ``head``."""
    lay = [f"transformer.layers.{i}" for i in range(n)]
    # The residual sums run in Transformer.forward, not in a module: a layer's output is what
    # the next layer's Attention (the last one: the final norm) receives.
    after = [f"{p}.0" for p in lay[1:]] + ["transformer.norm"]
    t: dict[str, list[Tap]] = {"patch_embed": [out("to_patch_embedding")], "pos_embed": pos_embed}
    for i in range(n):
        t.update(layer_taps(layer(i), i, after[i]))
    t["final_norm"] = [out("transformer"), out("transformer.norm")]
    t["pool"] = [inp(head), out("to_latent")]  # to_latent is an Identity between them
    t["head"] = [out(head)]
    return t


def _sincos_matches(table: Tensor, h: int, w: int) -> bool:
    """Whether ``table`` is vit-pytorch's ``posemb_sincos_2d(h, w, dim)`` (float32, as the library builds it)."""
    ref = posemb_sincos_2d(h, w, table.shape[1], dtype=torch.float32)
    return bool(torch.equal(table.detach().to("cpu", torch.float32), ref))
