"""``ViTSpec`` (mean pool) and ``ViTClsSpec`` (CLS token): Lean ``NN.Spec.Models.Vit`` in PyTorch.

Both are parameter bundles with a forward built from differentiable torch ops (so
autograd through :meth:`~ViTBase.forward` is a reference) and a fully explicit
:meth:`~ViTBase.backward` that chains the primitives' backward functions exactly
as the Lean ``ViTSpec.backward`` does (NN/Spec/Models/Vit.lean)::

    head backward -> pool backward -> encoder layers in reverse -> pos backward
      -> cls backward -> grid_to_tokens backward -> conv2d backward

The third-party numerics of :mod:`vitspec.profiles` (pre-norm, GELU, biases, final /
head norms, pooling, vit-pytorch's linear patch embedding) are switches on the same
code; the default profile ``torchlean`` is the spec. The variation points beyond TorchLean
(``docs/profiles.md``: prefix tokens, fixed or no position tables, a pre-norm, DINOv2's and MAP
pooling, DeiT's distilled head, and the layer's in :mod:`vitspec.models.variant_layer`) call
:mod:`vitspec.primitives.variations` only when the profile selects them. See ``docs/architecture.md``
for the API contract, the state-dict keys and the capture stages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor

from ..config import ViTConfig, config_violations
from ..dims import Dims, bind_dims
from ..errors import ConfigError, MappingError, ShapeError
from ..io import Checkpoint
from ..io import read as read_checkpoint
from ..io import save as save_checkpoint
from ..primitives import (
    cls_prepend,
    cls_prepend_backward,
    conv2d,
    conv2d_backward,
    grid_to_tokens,
    grid_to_tokens_backward,
    head,
    head_backward,
    mean_pool,
    mean_pool_backward,
    patch_linear_ln,
    patch_linear_ln_backward,
    pos_add,
    pos_add_backward,
    token_select,
    token_select_backward,
)
from ..primitives.variations import (
    MAP_KEYS,
    cls_mean_concat,
    cls_mean_concat_backward,
    distilled_head,
    distilled_head_backward,
    fixed_pos_add,
    fixed_pos_add_backward,
    map_pool,
    map_pool_backward,
    posemb_sincos_2d,
    prefix_embed,
    prefix_embed_backward,
    prefix_rows,
    prefix_rows_backward,
    sincos_2d_timm,
    sinusoidal_positional_encoding,
)
from ..profiles import Profile, get_profile
from ..schema import LAYER_PARAMS, Variant, pos_prefix_count, prefix_count
from ..schema import param_shapes as schema_param_shapes
from ..schema import stage_names as schema_stage_names
from .encoder import (
    LayerCache,
    LayerOptions,
    LayerParams,
    layer_backward,
    layer_forward,
    sub_op_forward,
    sub_op_input,
)
from .grads import EncoderLayerGrads, ViTClsGrads, ViTGrads
from .variant_layer import VariantCache, norm, norm_backward

__all__ = [
    "MODES",
    "ForwardCache",
    "Mode",
    "ViTBase",
    "ViTClsSpec",
    "ViTSpec",
    "config_violations",
    "load",
    "spec_param_shapes",
]

Mode = Literal["cache", "recompute"]
MODES: tuple[str, ...] = ("cache", "recompute")
M = TypeVar("M", bound="ViTBase")


# -- shapes and well-formedness -------------------------------------------------
def spec_param_shapes(
    cfg: ViTConfig, in_c: int, in_h: int, in_w: int, *, variant: Variant = "mean", profile: str | Profile = "torchlean"
) -> dict[str, tuple[int, ...]]:
    """Spec state-dict key -> shape, in state-dict order (:func:`vitspec.schema.param_shapes` for a profile
    name or record)."""
    return schema_param_shapes(cfg, in_c, in_h, in_w, variant=variant, profile=get_profile(profile))


# -- the cache one forward leaves for the backward ---------------------------------
@dataclass
class ForwardCache:
    """What :meth:`ViTBase.forward_with_cache` keeps for :meth:`ViTBase.backward_from_cache`: the input
    and the activations the explicit backward reads (batched: leading axis B). Opaque to callers."""

    mode: Mode
    x: Tensor  # (B, channels, in_h, in_w)
    single: bool  # the caller passed one image without a batch axis
    layer_inputs: list[Tensor] = field(default_factory=list)  # (B, tokens, E) per layer
    layer_caches: list[LayerCache | VariantCache | None] = field(default_factory=list)  # cache mode only
    encoded: Tensor | None = None  # last layer's output (B, tokens, E)
    pooled: Tensor | None = None  # pool output (B, pooled); the head's token sequence for a distilled head
    head_in: Tensor | None = None  # the vector the head is fed (after an after_pool norm)
    head_lin_in: Tensor | None = None  # the head Linear's input (after a head norm)
    pre_norm_in: Tensor | None = None  # the input of a pre-norm (profile.pre_norm), (B, tokens, E)
    pool_in: Tensor | None = None  # the pool's input (B, tokens, E) (MAP pooling's backward reads it)


class ViTBase:
    """Shared implementation of :class:`ViTSpec` and :class:`ViTClsSpec`; see ``docs/architecture.md``."""

    variant: ClassVar[Variant]
    grads_type: ClassVar[type[ViTGrads]]

    def __init__(
        self,
        cfg: ViTConfig,
        in_c: int,
        in_h: int,
        in_w: int,
        params: Mapping[str, Tensor],
        *,
        profile: str | Profile = "torchlean",
    ) -> None:
        """Wrap ``params`` (used as given, not copied) after checking config, profile and every tensor.

        Prefer :meth:`init`, :meth:`from_state_dict` or :meth:`load`.
        """
        prof = get_profile(profile)
        v = config_violations(cfg, in_c, in_h, in_w, variant=self.variant, profile=prof)
        if v:
            raise ConfigError(v, context=f"{type(self).__name__} with profile {prof.name!r}")
        shapes = spec_param_shapes(cfg, in_c, in_h, in_w, variant=self.variant, profile=prof)
        _check_params(params, shapes, what=f"{type(self).__name__} parameters", same_dtype=True)
        dims = Dims.from_config(cfg, in_c, in_h, in_w, cls_token=self.variant == "cls", profile=prof)
        self._setup(cfg, in_c, in_h, in_w, prof, dims, {k: params[k] for k in shapes})

    def _setup(
        self, cfg: ViTConfig, in_c: int, in_h: int, in_w: int, prof: Profile, dims: Dims, params: dict[str, Tensor]
    ) -> None:
        self.cfg = cfg
        self.in_c, self.in_h, self.in_w = in_c, in_h, in_w
        self.profile = prof
        self.dims = dims
        self._params: dict[str, Tensor] = params
        self._opts = LayerOptions(
            cfg.head_count,
            prof.norm_placement,
            prof.activation,
            float(prof.ln_eps),
            prof.head_split,
            prof.lean_backward,
            layer_scale=prof.layer_scale,
            qk_norm=prof.qk_norm,
            norm=prof.norm,
            ffn=prof.ffn,
            ffn_bias=prof.ffn_bias,
        )
        self._pool = self._pool_kind()
        # Prefix rows (CLS, distillation, registers) and the prefix rows the learned table covers.
        self._prefix = prefix_count(self.variant, prof)
        self._pos_prefix = pos_prefix_count(self.variant, prof)
        self._pos_table = self._fixed_pos_table()

    def rebind(self: M, params: Mapping[str, Tensor]) -> M:
        """The same model over other tensors with this model's keys and shapes (no re-validation of the
        config; for :class:`vitspec.SpecViT`, which calls this every step)."""
        if list(params) != list(self._params):
            raise MappingError("rebind: keys differ from the model's state-dict keys")
        new = object.__new__(type(self))
        new._setup(self.cfg, self.in_c, self.in_h, self.in_w, self.profile, self.dims, dict(params))
        return new

    # -- construction -----------------------------------------------------------
    @classmethod
    def init(
        cls: type[M],
        cfg: ViTConfig,
        in_c: int,
        in_h: int,
        in_w: int,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        profile: str | Profile = "torchlean",
    ) -> M:
        """A freshly initialised model, identical for a seed on every device and dtype.

        Every tensor is drawn on the CPU in float64 from ``torch.Generator().manual_seed(seed)``
        in state-dict order, then cast and moved, so the values do not depend on ``device``.
        Scales: weight matrices and the patch kernel ``N(0, 1/fan_in)``; biases, LayerNorm betas,
        ``pos`` and ``cls_token`` ``N(0, 0.02²)``; LayerNorm gammas ``1 + N(0, 0.1²)`` (non-trivial
        biases and gammas so gradient tests exercise them).
        """
        prof = get_profile(profile)
        v = config_violations(cfg, in_c, in_h, in_w, variant=cls.variant, profile=prof)
        if v:
            raise ConfigError(v, context=f"{cls.__name__}.init with profile {prof.name!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ConfigError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        dev = torch.device(device)
        g = torch.Generator().manual_seed(seed)
        params = {}
        for key, shape in spec_param_shapes(cfg, in_c, in_h, in_w, variant=cls.variant, profile=prof).items():
            t = torch.randn(shape, generator=g, dtype=torch.float64) * _init_scale(key, shape)
            if key.endswith("gamma"):
                t += 1.0
            params[key] = t.to(device=dev, dtype=dtype)
        return cls(cfg, in_c, in_h, in_w, params, profile=prof)

    @classmethod
    def from_state_dict(
        cls: type[M],
        cfg: ViTConfig,
        in_c: int,
        in_h: int,
        in_w: int,
        sd: Mapping[str, Tensor],
        *,
        profile: str | Profile = "torchlean",
    ) -> M:
        """A model over the tensors of ``sd`` (used as given, not copied: tensors that require grad
        make :meth:`forward` differentiable w.r.t. them). Raises :class:`MappingError` listing every
        missing, unexpected, mis-shaped or mixed-dtype/device entry."""
        return cls(cfg, in_c, in_h, in_w, sd, profile=profile)

    @classmethod
    def load(cls: type[M], path: str | Path, *, device: str | torch.device = "cpu") -> M:
        """Load a file written by :meth:`save`; a file of the other variant raises :class:`LoadError`
        (:func:`vitspec.models.load` takes whichever variant the file holds)."""
        return cls.from_checkpoint(read_checkpoint(path, variant=cls.variant, device=device))

    @classmethod
    def from_checkpoint(cls: type[M], ck: Checkpoint) -> M:
        """The model a validated file holds (:func:`vitspec.io.read`)."""
        return cls(ck.cfg, ck.in_c, ck.in_h, ck.in_w, ck.tensors, profile=ck.profile)

    def save(self, path: str | Path) -> None:
        """Write a safetensors file (tensors + config/profile metadata); see :mod:`vitspec.io`."""
        save_checkpoint(self, path)

    def to(self: M, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> M:
        """A new model with every tensor moved/cast (tensors already there are shared, as ``Tensor.to``)."""
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ConfigError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        params = {k: t.to(device=device, dtype=dtype) for k, t in self._params.items()}
        return type(self)(self.cfg, self.in_c, self.in_h, self.in_w, params, profile=self.profile)

    # -- parameters ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """The live parameter tensors under the spec keys, in state-dict order."""
        return dict(self._params)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(t.shape) for k, t in self._params.items()}

    def num_params(self) -> int:
        """Scalars in the bundle (equals :func:`vitspec.param_count` for this config, variant and profile)."""
        return sum(t.numel() for t in self._params.values())

    def load_state_dict(self, sd: Mapping[str, Tensor]) -> None:
        """Copy ``sd`` into the live tensors (cast to their dtype and device); strict and atomic.

        Every problem (missing, unexpected, mis-shaped, non-floating) is checked first and
        reported at once in one :class:`MappingError`; on error nothing is modified.
        """
        _check_params(sd, self.param_shapes(), what=f"{type(self).__name__}.load_state_dict", same_dtype=False)
        with torch.no_grad():
            # Convert everything first, so a failing conversion (e.g. out of memory) leaves the bundle as it was.
            staged = {k: sd[k].to(device=t.device, dtype=t.dtype) for k, t in self._params.items()}
            for k, t in self._params.items():
                t.copy_(staged[k])

    @property
    def dtype(self) -> torch.dtype:
        return self._params["patch_kernel"].dtype

    @property
    def device(self) -> torch.device:
        return self._params["patch_kernel"].device

    @property
    def tokens(self) -> int:
        """Sequence length (``pos`` rows): patches, +1 with a CLS token."""
        return self.dims["tokens"]

    def _layer(self, i: int) -> LayerParams:
        """Layer ``i``'s tensors; each schema row's last key part names its ``LayerParams`` field
        (a parameter the profile lacks: None)."""
        p, pre = self._params, f"encoder.{i}."
        kw = {row.key.rsplit(".", 1)[-1]: p.get(pre + row.key) for row in LAYER_PARAMS}
        return LayerParams(**kw)  # type: ignore[arg-type]  # every present key was checked at construction

    def _pool_kind(self) -> tuple[str, int]:
        """``("mean", first)`` (mean over tokens ``first..``), ``("token", 0)`` or ``("cls_mean_concat", first)``,
        from profile and variant; ``first`` skips every prefix token (CLS, distillation, registers)."""
        pooling, has_cls = self.profile.pooling, self.variant == "cls"
        prefix = prefix_count(self.variant, self.profile)
        if pooling is None:
            return ("token", 0) if has_cls else ("mean", 0)
        if pooling == "token":
            return ("token", 0)
        if pooling == "mean":
            return ("mean", prefix)  # timm 'avg': patch tokens only
        if pooling == "cls_mean_concat":
            return ("cls_mean_concat", prefix)  # HF DINOv2: [CLS; mean of the patch tokens]
        if pooling == "map":
            return ("map", prefix)  # timm drops the prefix tokens before its AttentionPoolLatent
        return ("mean", 0)  # mean_all: CLS included (vit-pytorch)

    def _fixed_pos_table(self) -> Tensor | None:
        """The fixed sin-cos table of ``profile.pos_embed`` (``(patches, E)``, model dtype/device), else None."""
        kind, (h, w), e = self.profile.pos_embed, (self.dims["out_h"], self.dims["out_w"]), self.cfg.embed_dim
        dev, dt = self._params["patch_kernel"].device, self._params["patch_kernel"].dtype
        if kind == "sincos_1d":
            table = sinusoidal_positional_encoding(h * w, e, dtype=dt)
        elif kind == "sincos_2d":
            table = posemb_sincos_2d(h, w, e, dtype=dt)  # computed in float32, as vit-pytorch does
        elif kind == "sincos_2d_timm":
            table = sincos_2d_timm(h, w, e, dtype=dt)
        else:
            return None
        return table.to(dev)

    @property
    def _core_tokens(self) -> bool:
        """The spec's token layout: at most a CLS token, a learned table over every row."""
        prof = self.profile
        return self._prefix == (self.variant == "cls") and prof.pos_embed == "learned" and prof.pos_prefix == "all"

    # -- pieces shared by forward, run_stage and backward ------------------------------
    def _patch_bias(self) -> Tensor:
        """The patch bias; zeros under ``patch_bias=False`` (adding 0.0 is exact; its gradient is dropped)."""
        b = self._params.get("patch_bias")
        return b if b is not None else self._params["patch_kernel"].new_zeros(self.cfg.embed_dim)

    def _head_bias(self) -> Tensor:
        """The head bias; zeros under ``head_bias=False`` (adding 0.0 is exact; its gradient is dropped)."""
        b = self._params.get("head_b")
        return b if b is not None else self._params["head_W"].new_zeros(self.cfg.num_classes)

    def _embed(self, pt: Tensor) -> Tensor:
        """Patch tokens -> the sequence: prefix rows (CLS, distillation, registers) and positions."""
        p = self._params
        if self._core_tokens:  # the spec's path, unchanged
            tok = cls_prepend(pt, p["cls_token"]) if self.variant == "cls" else pt
            return pos_add(tok, p["pos"])
        pos = p.get("pos")
        if self._prefix:
            rows = prefix_rows(p.get("cls_token"), p.get("dist_token"), p.get("reg_tokens"))
            return prefix_embed(pt, rows, pos, self._pos_prefix)
        if pos is not None:
            return pos_add(pt, pos)
        return pt if self._pos_table is None else fixed_pos_add(pt, self._pos_table)

    def _embed_backward(self, d_tok: Tensor, top: dict[str, Any]) -> Tensor:
        """Inverse of :meth:`_embed`: fills ``d_pos``, ``d_cls_token``, ... into ``top``; returns ``d_patch_tokens``."""
        if self._core_tokens:
            top["d_pos"], d_tok = pos_add_backward(d_tok)
            if self.variant == "cls":
                d_tok, top["d_cls_token"] = cls_prepend_backward(d_tok)
            return d_tok
        has_pos = "pos" in self._params
        if self._prefix:
            d_pt, d_rows, d_pos = prefix_embed_backward(d_tok, self._prefix, self._pos_prefix, has_pos)
            d_cls, d_dist, d_reg = prefix_rows_backward(
                d_rows, has_cls=self.variant == "cls", has_dist=self.profile.dist_token,
                registers=self.profile.reg_tokens,
            )  # fmt: skip
            named = {"d_pos": d_pos, "d_cls_token": d_cls, "d_dist_token": d_dist, "d_reg_tokens": d_reg}
            top.update({k: v for k, v in named.items() if v is not None})
            return d_pt
        if has_pos:
            top["d_pos"], d_tok = pos_add_backward(d_tok)
            return d_tok
        return d_tok if self._pos_table is None else fixed_pos_add_backward(d_tok)

    def _pool_forward(self, tok: Tensor) -> Tensor:
        kind, idx = self._pool
        if kind == "cls_mean_concat":
            return cls_mean_concat(tok, idx)
        if kind == "map":
            with bind_dims(self.dims if idx == 0 else None):  # the prefix rows are dropped first
                return map_pool(tok[..., idx:, :], **self._map_arguments())
        return mean_pool(tok, idx) if kind == "mean" else token_select(tok, idx)

    def _map_arguments(self) -> dict[str, Any]:
        """The MAP head's tensors and options under :func:`~vitspec.primitives.variations.map_pool`'s argument
        names (its heads, eps and activation are the model's, as in timm's AttentionPoolLatent and SigLIP)."""
        prof = self.profile
        return {**{k: self._params[f"map.{k}"] for k in MAP_KEYS}, "heads": self.cfg.head_count,
                "eps": self._opts.eps, "activation": prof.activation, "pool": prof.map_pool}  # fmt: skip

    def _pool_backward(self, d_pooled: Tensor, pool_in: Tensor | None, top: dict[str, Any]) -> Tensor:
        kind, idx = self._pool
        if kind == "cls_mean_concat":
            return cls_mean_concat_backward(d_pooled, self.tokens, idx)
        if kind == "map":
            assert pool_in is not None
            with bind_dims(self.dims if idx == 0 else None):
                d_rows, g = map_pool_backward(pool_in[..., idx:, :], d_pooled=d_pooled, **self._map_arguments())
            top.update({f"d_map_{k}": g[f"d{k}"] for k in MAP_KEYS})
            d_tok = torch.zeros_like(pool_in)
            d_tok[..., idx:, :] = d_rows  # the dropped prefix rows get no gradient
            return d_tok
        pool_backward = mean_pool_backward if kind == "mean" else token_select_backward
        return pool_backward(d_pooled, self.tokens, idx)

    def _head_norm(self, head_in: Tensor) -> Tensor:
        p, prof = self._params, self.profile
        if not prof.head_norm:
            return head_in
        return norm(head_in, p["head_norm_gamma"], p.get("head_norm_beta"), prof.norm, self._opts.eps)

    def _head_forward(self, inp: Tensor) -> Tensor:
        """The ``head`` stage on its input (the pooled vector; the token sequence for a distilled head)."""
        p = self._params
        if self.profile.head == "distilled":
            return distilled_head(inp, p["head_W"], p["head_b"], p["head_dist_W"], p["head_dist_b"])
        return self._linear_head(self._head_norm(inp))

    def _linear_head(self, lin_in: Tensor) -> Tensor:
        """The head Linear; its input is ``pooled`` wide (``2*embed_dim`` for ``cls_mean_concat``, where the
        primitive's ``embed_dim`` annotation is the pooled width, so the bound dims cannot check it)."""
        with bind_dims(self.dims if self.dims["pooled"] == self.cfg.embed_dim else None):
            return head(lin_in, self._params["head_W"], self._head_bias())

    # -- stages -----------------------------------------------------------------------
    def stage_names(self, *, sub_ops: bool = False, output: bool = False) -> list[str]:
        """The capture stages in forward order (:func:`vitspec.schema.stage_names`); with ``sub_ops`` also
        ``blocks.{i}.attn`` etc. ``output`` (the value :meth:`forward` returns, identical to ``head`` for
        the spec) is listed only with ``output=True``: ``capture`` does not hold it twice."""
        names = schema_stage_names(
            self.cfg.num_layers,
            final_norm=self.profile.final_norm,
            sub_ops=sub_ops,
            norm_placement=self.profile.norm_placement,
            pre_norm=self.profile.pre_norm,
            layer_scale=self.profile.layer_scale,
            pooled=self.profile.head != "distilled",
        )
        return names if output else names[:-1]

    def stage_input(self, name: str, outputs: Mapping[str, Tensor], x: Tensor) -> Tensor | None:
        """The input of stage ``name`` (a :meth:`stage_names` entry, sub-ops included), read off the
        ``outputs`` of the stages before it (``x``: the image batch): the stage's neighbours, in
        the spec's dataflow. ``None`` when a needed output is missing.

        Each top-level stage consumes the output of the one before it (``blocks.0`` the
        ``pos_embed`` tokens, ``pool`` the final norm's or the last block's output, ...); a
        sub-op's input comes from :func:`~vitspec.models.encoder.sub_op_input`.
        """
        top = self.stage_names()
        parts = name.split(".")
        block, sub = (".".join(parts[:2]), ".".join(parts[2:])) if parts[0] == "blocks" else (name, "")
        if block not in top:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(self.stage_names(sub_ops=True))}")
        k = top.index(block)
        block_in = x if k == 0 else outputs.get(top[k - 1])
        if not sub or block_in is None:
            return block_in
        prefix = block + "."
        own = {n.removeprefix(prefix): t for n, t in outputs.items() if n.startswith(prefix)}
        return sub_op_input(sub, block_in, own, self.profile.norm_placement, self.profile.layer_scale)

    def run_stage(self, name: str, inp: Tensor) -> Tensor:
        """Stage ``name`` alone on a batched input ``inp`` (what :meth:`stage_input` returns).

        The same primitives :meth:`forward` chains, one stage at a time, so a conformance check
        can apply the spec to *another model's* captured input of a stage (isolation).
        """
        p, prof, eps = self._params, self.profile, self._opts.eps
        with bind_dims(self.dims):
            if name == "patch_embed":
                if prof.patch_embed == "linear_ln":
                    return patch_linear_ln(
                        inp, p["patch_norm_in_gamma"], p["patch_norm_in_beta"], p["patch_kernel"], p["patch_bias"],
                        p["patch_norm_out_gamma"], p["patch_norm_out_beta"], eps,
                    )  # fmt: skip
                grid = conv2d(inp, p["patch_kernel"], self._patch_bias(), self.cfg.stride, self.cfg.padding)
                return grid_to_tokens(grid)
            if name == "pos_embed":
                return self._embed(inp)
            if name == "pre_norm":
                return norm(inp, p["pre_norm_gamma"], p.get("pre_norm_beta"), prof.norm, eps)
            if name.startswith("blocks."):
                parts = name.split(".")
                layer = self._layer(int(parts[1]))
                if len(parts) == 2:
                    return layer_forward(inp, layer, self._opts)[0]
                return sub_op_forward(parts[2], inp, layer, self._opts)
            if name == "final_norm":
                return norm(inp, p["final_norm_gamma"], p.get("final_norm_beta"), prof.norm, eps)
            if name == "pool":
                return self._pool_forward(inp)
            if name == "head":
                return self._head_forward(inp)
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(self.stage_names(sub_ops=True))}")

    # -- input checks -------------------------------------------------------------------
    def _check_input(self, x: object, fn: str) -> tuple[Tensor, bool]:
        """``(x with a batch axis, whether it had none)``; every mismatch is a :class:`ShapeError`."""
        c, h, w = self.in_c, self.in_h, self.in_w
        if not isinstance(x, Tensor):
            raise ShapeError(f"{fn}: x must be a torch.Tensor, got {type(x).__name__}", function=fn, argument="x")
        shape = tuple(x.shape)
        if x.dim() not in (3, 4):
            raise ShapeError(
                f"{fn}: x must have rank 3 (channels, in_h, in_w) = ({c}, {h}, {w}) or rank 4 "
                f"(batch, channels, in_h, in_w) = (B, {c}, {h}, {w}); got rank {x.dim()}, shape {shape}",
                function=fn, argument="x", expected="(channels, in_h, in_w) or (batch, channels, in_h, in_w)",
                actual=shape, shape=shape,
            )  # fmt: skip
        tok = self.dims.explain("tokens")
        for name, axis, expected in (("channels", -3, c), ("in_h", -2, h), ("in_w", -1, w)):
            got = shape[axis]
            if got == expected:
                continue
            if name == "channels":
                kernel = self.param_shapes()["patch_kernel"]
                extra = f"the patch kernel is (embed_dim, channels, patch_h, patch_w) = {kernel}"
                formula = f"channels = in_c = {c}"
            else:
                out = "out_h" if name == "in_h" else "out_w"
                extra = f"the model's pos has {tok} rows ({self.dims.explain(out)})"
                formula = f"{tok}; {self.dims.explain(out)}"
            raise ShapeError(
                f"{fn}: x dimension '{name}' (axis {x.dim() + axis}) must be {expected}, got {got}; {extra}; "
                f"x has shape {shape}",
                function=fn, argument="x", dim=name, expected=expected, actual=got, formula=formula, shape=shape,
            )  # fmt: skip
        self._check_like_params(fn, "x", x)
        return (x.unsqueeze(0), True) if x.dim() == 3 else (x, False)

    def _check_like_params(self, fn: str, arg: str, t: Tensor) -> None:
        for what in ("dtype", "device"):
            mine, theirs = getattr(self, what), getattr(t, what)
            if mine != theirs:
                raise ShapeError(
                    f"{fn}: {arg} has {what} {theirs}, but the model's parameters have {what} {mine}; "
                    f"move one of them (e.g. {arg}.to({what}=...) or model.to({what}=...))",
                    function=fn, argument=arg, expected=mine, actual=theirs, shape=tuple(t.shape),
                )  # fmt: skip

    def _check_cotangent(self, fn: str, arg: str, t: object, tape: ForwardCache, last: str) -> Tensor:
        """``t`` as a batched ``(B, last)`` cotangent matching the forward's input."""
        size = self.dims[last]
        b = tape.x.shape[0]
        expected = (size,) if tape.single else (b, size)
        if not isinstance(t, Tensor) or tuple(t.shape) != expected:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            names = f"({last},)" if tape.single else f"(batch, {last})"
            raise ShapeError(
                f"{fn}: {arg} must have shape {names} = {expected} to match x, got {got} ({self.dims.explain(last)})",
                function=fn, argument=arg, dim=last, expected=expected, actual=got,
            )  # fmt: skip
        self._check_like_params(fn, arg, t)
        return t.unsqueeze(0) if tape.single else t

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: Tensor, *, capture: MutableMapping[str, Tensor] | None = None) -> Tensor:
        """Logits: ``(channels, in_h, in_w) -> (classes,)`` or ``(batch, channels, in_h, in_w) -> (batch, classes)``.

        Only differentiable torch ops run here, so autograd through this method is the
        reference the explicit :meth:`backward` is tested against. ``capture`` receives
        the stage tensors of :meth:`stage_names` (with sub-ops), without a batch axis
        for a single image.
        """
        logits, _ = self._forward_tape(x, None, capture=capture)
        return logits

    __call__ = forward

    def forward_with_cache(
        self, x: Tensor, mode: Mode = "cache", *, capture: MutableMapping[str, Tensor] | None = None
    ) -> tuple[Tensor, ForwardCache]:
        """The forward split from its backward: ``(logits, cache)``, where ``cache`` holds what
        :meth:`backward_from_cache` consumes (``mode`` as in :meth:`backward`; ``capture`` as in
        :meth:`forward`, so one forward serves both a stage comparison and the backward).

        :meth:`backward` runs both halves on one input; :class:`vitspec.autograd.SpecViTFunction`
        calls them from autograd's separate forward and backward.
        """
        logits, cache = self._forward_tape(x, mode, capture=capture)
        assert cache is not None  # a mode was given
        return logits, cache

    def _forward_tape(
        self, x: Tensor, mode: Mode | None, *, capture: MutableMapping[str, Tensor] | None = None
    ) -> tuple[Tensor, ForwardCache | None]:
        """The forward; with ``mode`` also the :class:`ForwardCache` the explicit backward consumes."""
        if mode is not None and mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        xb, single = self._check_input(x, f"{type(self).__name__}.{'forward' if mode is None else 'backward'}")
        tape = ForwardCache(mode, xb, single) if mode is not None else None
        cap: dict[str, Tensor] | None = {} if capture is not None else None
        p, prof, eps = self._params, self.profile, self._opts.eps
        with bind_dims(self.dims):
            if prof.patch_embed == "linear_ln":
                pt = patch_linear_ln(
                    xb, p["patch_norm_in_gamma"], p["patch_norm_in_beta"], p["patch_kernel"], p["patch_bias"],
                    p["patch_norm_out_gamma"], p["patch_norm_out_beta"], eps,
                )  # fmt: skip
            else:
                grid = conv2d(xb, p["patch_kernel"], self._patch_bias(), self.cfg.stride, self.cfg.padding)
                pt = grid_to_tokens(grid)
            if cap is not None:
                cap["patch_embed"] = pt
            tok = self._embed(pt)
            if cap is not None:
                cap["pos_embed"] = tok
            if prof.pre_norm:
                if tape is not None:
                    tape.pre_norm_in = tok
                tok = norm(tok, p["pre_norm_gamma"], p.get("pre_norm_beta"), prof.norm, eps)
                if cap is not None:
                    cap["pre_norm"] = tok
            for i in range(self.cfg.num_layers):
                keep = mode == "cache"
                if tape is not None:
                    tape.layer_inputs.append(tok)
                # A recompute tape's layer inputs must be what the backward's replay of each layer computes.
                tok, lc = layer_forward(
                    tok, self._layer(i), self._opts, keep=keep, capture=cap, prefix=f"blocks.{i}.", fast=tape is None
                )
                if keep:
                    tape.layer_caches.append(lc)  # type: ignore[union-attr]
                if cap is not None:
                    cap[f"blocks.{i}"] = tok
            encoded = tok
            if prof.final_norm == "before_pool":
                tok = norm(tok, p["final_norm_gamma"], p.get("final_norm_beta"), prof.norm, eps)
                if cap is not None:
                    cap["final_norm"] = tok
            if prof.head == "distilled":  # DeiT: two heads read rows 0 and 1; there is no pooled vector
                pooled = head_in = lin_in = tok
                logits = distilled_head(tok, p["head_W"], p["head_b"], p["head_dist_W"], p["head_dist_b"])
            else:
                if tape is not None:
                    tape.pool_in = tok
                pooled = self._pool_forward(tok)
                if cap is not None:
                    cap["pool"] = pooled
                head_in = pooled
                if prof.final_norm == "after_pool":
                    head_in = norm(pooled, p["final_norm_gamma"], p.get("final_norm_beta"), prof.norm, eps)
                    if cap is not None:
                        cap["final_norm"] = head_in
                lin_in = self._head_norm(head_in)
                logits = self._linear_head(lin_in)
            if cap is not None:
                cap["head"] = logits
        if capture is not None and cap is not None:
            for k, t in cap.items():
                capture[k] = t[0] if single else t
        if tape is not None:
            tape.encoded, tape.pooled, tape.head_in, tape.head_lin_in = encoded, pooled, head_in, lin_in
        return (logits[0] if single else logits), tape

    # -- backward ---------------------------------------------------------------------------
    def backward(
        self,
        x: Tensor,
        grad_output: Tensor | None = None,
        *,
        grad_pooled: Tensor | None = None,
        mode: Mode = "cache",
        need_grad_x: bool = True,
        differentiable: bool = False,
    ) -> tuple[ViTGrads, Tensor | None]:
        """Explicit reverse mode: ``(grads, grad_x)`` for the cotangent of the logits or of the pooled vector.

        Give exactly one of:

        - ``grad_output``: ``∂L/∂logits``, shape ``(classes,)`` (or ``(batch, classes)`` for a batch);
        - ``grad_pooled``: ``∂L/∂v`` for ``v`` the vector fed to the head, i.e. the pooled vector
          *after* an ``after_pool`` final norm (and before a head norm, which is part of the head),
          shape ``(embed_dim,)`` / ``(batch, embed_dim)``. The head's gradients (``d_head_W``,
          ``d_head_b``, ``d_head_norm_*``) are then zeros.

        ``mode='cache'`` keeps every activation of one forward; ``mode='recompute'`` keeps only each
        encoder layer's input and recomputes that layer's internals during the backward, one layer
        at a time, bounding activation memory by ``L`` layer inputs plus one layer's activations.
        Parameter gradients are summed over a batch; ``grad_x`` has ``x``'s shape (``None`` with
        ``need_grad_x=False``, which skips the patch embedding's input gradient). No autograd is
        used: it runs under ``torch.no_grad()``, so even for parameters that require grad the
        returned tensors carry no ``grad_fn`` and no graph is recorded. ``differentiable=True``
        runs it with autograd recording instead (to differentiate through the explicit backward).
        """
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        if (grad_output is None) == (grad_pooled is None):
            raise ConfigError("backward needs exactly one of grad_output (logits) or grad_pooled (head input)")
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            _, tape = self._forward_tape(x, mode)
            assert tape is not None
            return self.backward_from_cache(tape, grad_output, grad_pooled=grad_pooled, need_grad_x=need_grad_x)

    def backward_from_cache(
        self,
        tape: ForwardCache,
        grad_output: Tensor | None = None,
        *,
        grad_pooled: Tensor | None = None,
        need_grad_x: bool = True,
        on_layer: Callable[[int, EncoderLayerGrads], None] | None = None,
    ) -> tuple[ViTGrads, Tensor | None]:
        """The explicit backward (the order of Lean ``ViTSpec.backward``) over ``tape``, the :class:`ForwardCache` of
        :meth:`forward_with_cache` (``grad_output`` / ``grad_pooled`` / ``need_grad_x`` as in
        :meth:`backward`, except that here both cotangents may be given: they add at the head input,
        as for a loss that reads the logits and the features). Frees layer caches as it goes; a second
        call on the same cache recomputes those layers instead. ``on_layer(i, grads)`` is called with each
        encoder layer's gradients as soon as they are computed (last layer first), e.g. to compare them
        while the backward goes on."""
        fn = f"{type(self).__name__}.backward"
        p, prof, eps, cfg = self._params, self.profile, self._opts.eps, self.cfg
        assert tape.head_lin_in is not None and tape.head_in is not None and tape.pooled is not None
        assert tape.encoded is not None
        top: dict[str, Any] = {}
        with bind_dims(self.dims):
            if prof.head == "distilled":  # DeiT: the two heads read rows 0 and 1 of the sequence
                if grad_output is None:
                    raise ConfigError(f"{fn}: a distilled head has no pooled vector; give grad_output")
                g = self._check_cotangent(fn, "grad_output", grad_output, tape, "classes")
                d_tok, top["d_head_W"], top["d_head_b"], top["d_head_dist_W"], top["d_head_dist_b"] = (
                    distilled_head_backward(tape.head_lin_in, p["head_W"], p["head_dist_W"], g)
                )
            else:
                d_tok = self._head_pool_backward(fn, tape, grad_output, grad_pooled, top)
            if prof.final_norm == "before_pool":
                d_tok, top["d_final_norm_gamma"], d_beta = norm_backward(
                    tape.encoded, p["final_norm_gamma"], d_tok, prof.norm, eps
                )
                if d_beta is not None:
                    top["d_final_norm_beta"] = d_beta
            # Encoder layers in reverse; a layer without a cache (recompute mode) recomputes its forward.
            d_encoder: list[EncoderLayerGrads] = [None] * cfg.num_layers  # type: ignore[list-item]
            for i in reversed(range(cfg.num_layers)):
                cache = tape.layer_caches[i] if i < len(tape.layer_caches) else None
                d_tok, d_encoder[i] = layer_backward(
                    tape.layer_inputs[i], self._layer(i), self._opts, d_tok, cache=cache
                )
                if cache is not None:
                    tape.layer_caches[i] = None  # release this layer's activations now
                del cache
                if on_layer is not None:
                    on_layer(i, d_encoder[i])
            # Pre-norm, positions, prefix tokens, token layout, patch embedding.
            grad_x: Tensor | None
            if prof.pre_norm:
                assert tape.pre_norm_in is not None
                d_tok, top["d_pre_norm_gamma"], d_beta = norm_backward(
                    tape.pre_norm_in, p["pre_norm_gamma"], d_tok, prof.norm, eps
                )
                if d_beta is not None:
                    top["d_pre_norm_beta"] = d_beta
            d_tok = self._embed_backward(d_tok, top)
            if prof.patch_embed == "linear_ln":
                (
                    top["d_patch_norm_in_gamma"],
                    top["d_patch_norm_in_beta"],
                    top["d_patch_kernel"],
                    top["d_patch_bias"],
                    top["d_patch_norm_out_gamma"],
                    top["d_patch_norm_out_beta"],
                    grad_x,
                ) = patch_linear_ln_backward(
                    tape.x, p["patch_norm_in_gamma"], p["patch_norm_in_beta"], p["patch_kernel"], p["patch_bias"],
                    p["patch_norm_out_gamma"], d_tok, eps,
                )  # fmt: skip
            else:
                d_grid = grid_to_tokens_backward(d_tok, self.dims["out_h"], self.dims["out_w"])
                top["d_patch_kernel"], top["d_patch_bias"], grad_x = conv2d_backward(
                    tape.x, p["patch_kernel"], d_grid, cfg.stride, cfg.padding, need_grad_x
                )
                if not prof.patch_bias:
                    del top["d_patch_bias"]  # the model has no patch bias (the forward added zeros)
        grads = self.grads_type(d_encoder=d_encoder, **top)
        if not need_grad_x or grad_x is None:
            return grads, None
        return grads, (grad_x[0] if tape.single else grad_x)

    def _head_pool_backward(
        self, fn: str, tape: ForwardCache, grad_output: Tensor | None, grad_pooled: Tensor | None, top: dict[str, Any]
    ) -> Tensor:
        """Head (with its norm), an after-pool final norm and the pool, backward: ``d_tokens``; fills ``top``."""
        p, prof, eps = self._params, self.profile, self._opts.eps
        assert tape.head_lin_in is not None and tape.head_in is not None and tape.pooled is not None
        head_norm_keys = ("d_head_norm_gamma", "d_head_norm_beta")
        width = "embed_dim" if self.dims["pooled"] == self.cfg.embed_dim else "pooled"  # cls_mean_concat: 2E
        if grad_output is not None:
            g = self._check_cotangent(fn, "grad_output", grad_output, tape, "classes")
            with bind_dims(self.dims if self.dims["pooled"] == self.cfg.embed_dim else None):
                d_lin_in, top["d_head_W"], d_head_b = head_backward(tape.head_lin_in, p["head_W"], g)
            if prof.head_bias:
                top["d_head_b"] = d_head_b
            d_head_in = d_lin_in
            if prof.head_norm:
                d_head_in, dg, db = norm_backward(tape.head_in, p["head_norm_gamma"], d_lin_in, prof.norm, eps)
                top.update({k: v for k, v in zip(head_norm_keys, (dg, db), strict=True) if v is not None})
            if grad_pooled is not None:  # both given (backward_from_cache only): the cotangents add
                d_head_in = d_head_in + self._check_cotangent(fn, "grad_pooled", grad_pooled, tape, width)
        else:
            d_head_in = self._check_cotangent(fn, "grad_pooled", grad_pooled, tape, width)
            zeros = {"d_head_W": "head_W", "d_head_b": "head_b", **dict(zip(head_norm_keys, ("head_norm_gamma",
                     "head_norm_beta"), strict=True))}  # fmt: skip
            top.update({k: torch.zeros_like(p[key]) for k, key in zeros.items() if key in p})
        d_pooled = d_head_in
        if prof.final_norm == "after_pool":
            d_pooled, top["d_final_norm_gamma"], db = norm_backward(
                tape.pooled, p["final_norm_gamma"], d_head_in, prof.norm, eps
            )
            if db is not None:
                top["d_final_norm_beta"] = db
        return self._pool_backward(d_pooled, tape.pool_in, top)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.cfg}, in_c={self.in_c}, in_h={self.in_h}, in_w={self.in_w}, "
            f"profile={self.profile.name!r}, dtype={self.dtype}, device={self.device}, params={self.num_params()})"
        )


class ViTSpec(ViTBase):
    """Lean ``ViTSpec``: conv patch embedding, learned ``pos (patches, embed_dim)``, encoder, mean pool, head."""

    variant: ClassVar[Variant] = "mean"
    grads_type: ClassVar[type[ViTGrads]] = ViTGrads


class ViTClsSpec(ViTBase):
    """Lean ``ViTClsSpec``: as :class:`ViTSpec` with a learned ``cls_token`` prepended as token 0,
    ``pos (patches + 1, embed_dim)``, and token 0 pooled."""

    variant: ClassVar[Variant] = "cls"
    grads_type: ClassVar[type[ViTGrads]] = ViTClsGrads


def load(
    path: str | Path, *, variant: Variant | None = None, device: str | torch.device = "cpu"
) -> ViTSpec | ViTClsSpec:
    """Load a file written by ``m.save(path)``: a :class:`ViTSpec` or :class:`ViTClsSpec`, whichever the
    file holds (``variant`` demands one). Errors as :func:`vitspec.io.read`."""
    ck = read_checkpoint(path, variant=variant, device=device)
    return (ViTClsSpec if ck.variant == "cls" else ViTSpec).from_checkpoint(ck)


# -- helpers -----------------------------------------------------------------------------
def _init_scale(key: str, shape: tuple[int, ...]) -> float:
    name = key.rsplit(".", 1)[-1]
    if name.endswith("gamma"):
        return 0.1
    if name.endswith("beta") or name in ("pos", "cls_token", "dist_token", "reg_tokens", "latent") or len(shape) == 1:
        return 0.02  # betas, biases, positions, prefix tokens
    if name == "patch_kernel":
        fan_in = math.prod(shape[1:])
    elif name in ("head_W", "head_dist_W"):
        fan_in = shape[1]  # (out, in) layout
    else:
        fan_in = shape[0]  # spec matrices are (in, out)
    return 1.0 / math.sqrt(max(fan_in, 1))


def _check_params(sd: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], *, what: str, same_dtype: bool) -> None:
    """Raise one :class:`MappingError` listing every missing, unexpected and mis-shaped entry."""
    if not isinstance(sd, Mapping):
        raise MappingError(f"{what}: expected a mapping of spec keys to tensors, got {type(sd).__name__}")
    missing = [k for k in shapes if k not in sd]
    unexpected = [k for k in sd if k not in shapes]
    bad: list[str] = []
    first: tuple[str, Tensor] | None = None
    for k, shape in shapes.items():
        if k not in sd:
            continue
        t = sd[k]
        if not isinstance(t, Tensor):
            bad.append(f"{k}: expected a tensor of shape {shape}, got {type(t).__name__}")
            continue
        if t.layout != torch.strided:  # sparse / mkldnn: copy_ would fail (or densify) midway
            bad.append(f"{k}: expected a dense (strided) tensor, got layout {t.layout}")
        if t.is_meta:  # a meta tensor has a shape but no data to copy
            bad.append(f"{k}: is on the meta device (it has no data)")
        if tuple(t.shape) != shape:
            bad.append(f"{k}: expected shape {shape}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            bad.append(f"{k}: expected a floating-point tensor, got dtype {t.dtype}")
        elif same_dtype:
            if first is None:
                first = (k, t)
            elif (t.dtype, t.device) != (first[1].dtype, first[1].device):
                bad.append(
                    f"{k}: dtype {t.dtype} on {t.device}, but {first[0]} is {first[1].dtype} on {first[1].device} "
                    "(all parameters must share dtype and device)"
                )
    if missing or unexpected or bad:
        raise MappingError(
            f"{what}: the tensors do not match the spec bundle", missing=missing, unexpected=unexpected, mismatched=bad
        )
