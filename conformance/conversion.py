"""``convert(model, to=...)``: the same ViT in another library, through the spec bundle (docs/diff-convert.md).

Every adapter maps its library's tensors onto the spec's keys with a list of
:class:`~conformance.adapters.base.Rule` s, each a *pure index map* (copy, transpose, split a fused
``[q; k; v]``, reshape, permute). The converse needed here is derived from the rules themselves,
with no per-library inverse code: pushing ``arange(numel)`` (int64) through a rule shows which
library element feeds each spec element, so scattering the spec values back through those indices
rebuilds the library tensor bit for bit. A rule whose image is not a permutation of the indices
(arithmetic, a dtype change, a dropped or duplicated element) is refused (:class:`NotAnIndexMapError`).

The steps, one function each:

1. **read the source**: its adapter's :class:`~conformance.adapters.base.Description` (config,
   input size, variant, profile, head) and its parameters as a spec bundle, in their own dtype;
2. **build the target** for that description (:data:`BUILDERS`: timm ``VisionTransformer``,
   transformers ``ViTConfig`` + ``ViTForImageClassification`` / ``ViTModel``, torchvision
   ``VisionTransformer``, vit-pytorch ``ViT``), random weights;
3. **what the target computes**: the target's own adapter describes the built model; every field
   of the architecture and of the profile (the variation points) must equal the source's, else
   :class:`CannotExpress` names each one the target library cannot express (nothing is converted
   approximately);
4. **fill** every mapped parameter from the bundle through the inverse rules, and re-map the
   filled model: its bundle must equal the source's exactly;
5. **verify** (default): :func:`conformance.diff.compare_models` of source and target must say they
   compute the same function (:class:`ConversionMismatchError` if not).

``vitspec convert SRC --to LIB [-o OUT.safetensors]`` is :func:`run`; it writes the target's
``state_dict`` as safetensors atomically, with the description in the file's metadata so
:func:`load_converted` (and ``vitspec diff``) can rebuild the model from the file alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import IO, Any

import torch
from torch import Tensor, nn

from vitspec._fs import atomic_write_bytes
from vitspec.cli import EXIT_FAIL, EXIT_OK, EXIT_UNSUPPORTED, EXIT_USAGE
from vitspec.config import ViTConfig
from vitspec.errors import MappingError, VitSpecError
from vitspec.profiles import Profile

from .adapters import RuleAdapter, Unsupported, detect
from .adapters.base import Adapter, Description, Rule
from .diff import Comparison, compare_models, differing_fields, spec_bundle

__all__ = [
    "BUILDERS",
    "LIBRARIES",
    "METADATA_KEY",
    "CannotExpress",
    "ConversionMismatchError",
    "ConvertError",
    "Converted",
    "NotAnIndexMapError",
    "add_arguments",
    "build_for",
    "build_operand",
    "conversion",
    "convert",
    "description_from_json",
    "description_to_json",
    "expressible",
    "is_converted_file",
    "load_converted",
    "run",
    "save_converted",
    "spec_bundle",
    "to_library",
]

#: The libraries ``convert`` can build (the adapter names).
LIBRARIES = ("timm", "hf", "torchvision", "vit_pytorch")
#: The safetensors metadata entry holding the description the file's model was built from.
METADATA_KEY = "vitspec.description"


class ConvertError(VitSpecError):
    """A conversion cannot be done or did not come out right."""


class CannotExpress(Unsupported):
    """The target library cannot express a variation point (or architecture field) the source uses.

    ``points``: one ``"field: source value (target: its value)"`` line per point; ``library``: the target.
    """

    def __init__(self, points: list[str], *, library: str) -> None:
        self.points = points
        super().__init__("; ".join(points), library=library)
        self.args = (f"{library} cannot express: " + "; ".join(points),)


class NotAnIndexMapError(ConvertError):
    """An adapter rule is not a pure index map (its inverse cannot be derived exactly)."""


class ConversionMismatchError(ConvertError):
    """The converted model does not compute what the source computes (``comparison`` says where)."""

    def __init__(self, message: str, comparison: Comparison) -> None:
        self.comparison = comparison
        super().__init__(message)


# -- 1. the source as a spec bundle: ``spec_bundle`` (one definition, in :mod:`.diff`) ----------------


# -- 2. build the target -------------------------------------------------------------------------
_ACT_TIMM: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu_erf": nn.GELU,
    "gelu_tanh": partial(nn.GELU, approximate="tanh"),
    "quick_gelu": lambda: _timm_layer("QuickGELU"),
    "silu": nn.SiLU,
}
_ACT_HF = {
    "relu": "relu",
    "gelu_erf": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
}


def _timm_layer(name: str) -> nn.Module:
    import timm.layers

    return getattr(timm.layers, name)()  # type: ignore[no-any-return]


def _mlp_ratio(d: Description) -> float:
    # timm sizes the MLP as int(embed_dim * mlp_ratio); int() truncates, so half a unit keeps it exact.
    return (d.cfg.hidden_dim + 0.5) / d.cfg.embed_dim


def _timm(d: Description) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    p, c = d.profile, d.cfg
    if p.activation not in _ACT_TIMM:
        raise CannotExpress([f"activation: {p.activation} (no timm act_layer is built for it)"], library="timm")
    cls = d.variant == "cls"
    pool = "token" if (p.pooling or ("token" if cls else "mean")) == "token" else "avg"
    kwargs: dict[str, Any] = dict(
        img_size=(d.in_h, d.in_w),
        patch_size=(c.patch_h, c.patch_w),
        in_chans=d.in_c,
        num_classes=c.num_classes if d.has_head else 0,
        global_pool=pool,
        embed_dim=c.embed_dim,
        depth=c.num_layers,
        num_heads=c.head_count,
        mlp_ratio=_mlp_ratio(d),
        qkv_bias=p.qkv_bias,
        proj_bias=p.out_bias,
        class_token=cls,
        final_norm=p.final_norm != "none",
        fc_norm=p.final_norm == "after_pool",
        pool_include_prefix=p.pooling == "mean_all",
        norm_layer=partial(nn.LayerNorm, eps=p.ln_eps),
        act_layer=_ACT_TIMM[p.activation],
    )
    # Variation points beyond TorchLean that map onto a timm constructor argument (docs/profiles.md).
    if getattr(p, "layer_scale", False):
        kwargs["init_values"] = 1.0  # any non-zero value: the filled weights replace it
    for f, kw in (("reg_tokens", "reg_tokens"), ("pre_norm", "pre_norm"), ("qk_norm", "qk_norm")):
        if getattr(p, f, None):
            kwargs[kw] = getattr(p, f)
    if getattr(p, "pos_prefix", "all") == "none":
        kwargs["no_embed_class"] = True
    if p.head == "distilled":  # DeiT's class and distillation tokens, the mean of their two heads (eval)
        from timm.models.deit import VisionTransformerDistilled

        return VisionTransformerDistilled(**kwargs)
    return VisionTransformer(**kwargs)


def _square(d: Description, library: str) -> list[str]:
    out = []
    if d.in_h != d.in_w:
        out.append(f"input size: {d.in_h}x{d.in_w} ({library}: square images only)")
    if d.cfg.patch_h != d.cfg.patch_w:
        out.append(f"patch size: {d.cfg.patch_h}x{d.cfg.patch_w} ({library}: square patches only)")
    return out


def _torchvision(d: Description) -> nn.Module:
    from torchvision.models import VisionTransformer

    bad = _square(d, "torchvision")
    if not d.has_head:
        bad.append("classifier head: none (torchvision: always heads.head)")
    if d.variant != "cls":
        bad.append("class token: none (torchvision: always a class token)")
    if bad:
        raise CannotExpress(bad, library="torchvision")
    c = d.cfg
    return VisionTransformer(
        image_size=d.in_h,
        patch_size=c.patch_h,
        num_layers=c.num_layers,
        num_heads=c.head_count,
        hidden_dim=c.embed_dim,
        mlp_dim=c.hidden_dim,
        num_classes=c.num_classes,
        norm_layer=partial(nn.LayerNorm, eps=d.profile.ln_eps),
    )


def _hf(d: Description) -> nn.Module:
    """The transformers class that can compute ``d``: DeiT for a distillation token, DINOv2 (with
    registers) for LayerScale, else ViT. Whether it really does is :func:`expressible`'s question."""
    if d.profile.dist_token:
        return _hf_deit(d)
    if d.profile.layer_scale:
        return _hf_dinov2(d)
    return _hf_vit(d)


def _hf_common(d: Description, family: str) -> dict[str, Any]:
    """The config fields every transformers ViT family shares; :class:`CannotExpress` for what none takes."""
    p, c = d.profile, d.cfg
    bad = []
    if p.activation not in _ACT_HF:
        bad.append(f"activation: {p.activation} (no transformers hidden_act is built for it)")
    if d.variant != "cls":
        bad.append(f"class token: none (transformers {family}: always a class token)")
    if bad:
        raise CannotExpress(bad, library="hf")
    return dict(
        hidden_size=c.embed_dim,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.head_count,
        hidden_act=_ACT_HF[p.activation],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=p.ln_eps,
        image_size=d.in_h if d.in_h == d.in_w else (d.in_h, d.in_w),
        patch_size=c.patch_h if c.patch_h == c.patch_w else (c.patch_h, c.patch_w),
        num_channels=d.in_c,
        qkv_bias=p.qkv_bias,
    )


def _hf_deit(d: Description) -> nn.Module:
    """DeiT's class and distillation tokens: the mean of two heads (``WithTeacher``), or one head on
    the class token."""
    import transformers

    config = transformers.DeiTConfig(**_hf_common(d, "DeiT"), intermediate_size=d.cfg.hidden_dim)
    config.num_labels = d.cfg.num_classes
    if d.profile.head == "distilled":
        return transformers.DeiTForImageClassificationWithTeacher(config)
    return transformers.DeiTForImageClassification(config)


def _hf_dinov2(d: Description) -> nn.Module:
    import transformers

    c, regs = d.cfg, d.profile.reg_tokens
    bad = _square(d, "transformers DINOv2")  # it resamples its position table for any other input
    if c.hidden_dim % c.embed_dim:
        bad.append(f"FFN width: {c.hidden_dim} (transformers DINOv2: mlp_ratio x {c.embed_dim}, an integer ratio)")
    if d.profile.ffn != "mlp":
        bad.append(f"FFN: {d.profile.ffn} (the DINOv2 conversion builds the two-layer MLP)")
    if bad:
        raise CannotExpress(bad, library="hf")
    kwargs = {**_hf_common(d, "DINOv2"), "mlp_ratio": c.hidden_dim // c.embed_dim}
    kwargs["image_size"], kwargs["patch_size"] = d.in_h, c.patch_h
    head: Any
    backbone: Any
    if regs:
        config: Any = transformers.Dinov2WithRegistersConfig(**kwargs, num_register_tokens=regs)
        head, backbone = transformers.Dinov2WithRegistersForImageClassification, transformers.Dinov2WithRegistersModel
    else:
        config = transformers.Dinov2Config(**kwargs)
        head, backbone = transformers.Dinov2ForImageClassification, transformers.Dinov2Model
    if not d.has_head:
        return backbone(config)
    config.num_labels = c.num_classes
    return head(config)


def _hf_vit(d: Description) -> nn.Module:
    import transformers

    config = transformers.ViTConfig(**_hf_common(d, "ViT"), intermediate_size=d.cfg.hidden_dim)
    config.num_labels = d.cfg.num_classes if d.has_head else 2  # a property (also sets id2label): not an init kwarg
    if d.has_head:
        return transformers.ViTForImageClassification(config)
    return transformers.ViTModel(config, add_pooling_layer=False)  # the pooler is outside the spec


def _vit_pytorch(d: Description) -> nn.Module:
    import vit_pytorch

    c = d.cfg
    bad = []
    if c.patch_h != c.patch_w:
        bad.append(f"patch size: {c.patch_h}x{c.patch_w} (vit_pytorch adapter: square patches only)")
    if not d.has_head:
        bad.append("classifier head: none (vit_pytorch ViT: num_classes=0 returns every token)")
    if bad:
        raise CannotExpress(bad, library="vit_pytorch")
    return vit_pytorch.ViT(
        image_size=(d.in_h, d.in_w),
        patch_size=c.patch_h,
        num_classes=c.num_classes,
        dim=c.embed_dim,
        depth=c.num_layers,
        heads=c.head_count,
        mlp_dim=c.hidden_dim,
        pool="cls" if d.variant == "cls" else "mean",
        channels=d.in_c,
        dim_head=c.embed_dim // max(c.head_count, 1),
    )


#: Target library -> a builder of its model for a description (random weights; step 2).
BUILDERS: dict[str, Callable[[Description], nn.Module]] = {
    "timm": _timm,
    "hf": _hf,
    "torchvision": _torchvision,
    "vit_pytorch": _vit_pytorch,
}


def build_for(d: Description, to: str, *, seed: int = 0) -> nn.Module:
    """The ``to`` library's model for the architecture ``d`` describes (random weights, seeded, eval mode).

    Raises :class:`CannotExpress` for what the library's constructor cannot take at all; whether the
    built model computes what ``d`` says is :func:`expressible`'s question.
    """
    if to not in BUILDERS:
        raise ConvertError(f"unknown target library {to!r}; valid: {', '.join(LIBRARIES)}")
    torch.manual_seed(seed)
    try:
        model = BUILDERS[to](d)
    except (CannotExpress, ImportError):
        raise
    except Exception as e:  # the library's constructor refusing the arguments (an assertion, a ValueError)
        raise CannotExpress([f"architecture: {to} refuses it ({type(e).__name__}: {e})"], library=to) from e
    return model.eval()


# -- 3. what the target computes ------------------------------------------------------------------
def expressible(source: Description, target: Description) -> list[str]:
    """Every architecture field and variation point where ``target`` differs from ``source``, one line each:
    ``"field: source value (<target library>: its value)"``; empty when the target computes the same."""
    arch, points = differing_fields(source, target)
    return [f"{n}: {x} ({target.library}: {y})" for n, x, y in (*arch, *points)]


def _target_adapter(model: nn.Module, source: Description, to: str) -> RuleAdapter:
    try:
        adapter = detect(model, copy=False)
        target = adapter.description()
    except Unsupported as e:
        raise CannotExpress([f"the {to} model built for it is not expressible ({e.reason})"], library=to) from e
    if not isinstance(adapter, RuleAdapter) or adapter.name != to:
        raise ConvertError(f"the model built for {to} was detected as {adapter.name}, not {to}")
    problems = expressible(source, target)
    if problems:
        raise CannotExpress(problems, library=to)
    return adapter


# -- 4. fill the target through the inverse of its rules ------------------------------------------
def _inverse_index(rule: Rule) -> tuple[Tensor, ...]:
    """Per target key, the flat library indices feeding each of its elements; the rule must be a bijection."""
    assert rule.fn is not None
    n = math.prod(rule.shape)
    parts = rule.fn(torch.arange(n, dtype=torch.int64).reshape(rule.shape))
    flat = [p.reshape(-1) for p in parts] if len(parts) == len(rule.targets) else []
    if not flat or any(p.dtype != torch.int64 for p in parts):
        raise NotAnIndexMapError(f"rule for {rule.source} ({_fn_name(rule)}) does not map indices to indices")
    seen = torch.cat(flat)
    if seen.numel() != n or not torch.equal(seen.sort().values, torch.arange(n)):
        raise NotAnIndexMapError(
            f"rule for {rule.source} ({_fn_name(rule)}) is not a permutation of its {n} elements "
            f"(it yields {seen.numel()} indices, {seen.unique().numel()} distinct): its inverse is not exact"
        )
    return tuple(parts)


def _fn_name(rule: Rule) -> str:
    return getattr(rule.fn, "__name__", type(rule.fn).__name__)


def to_library(adapter: RuleAdapter, spec: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Library-named tensors (``adapter.rules()`` sources) holding the values of the spec bundle ``spec``:
    the exact inverse of ``adapter.to_spec`` on the mapped parameters (ignored rules are left out)."""
    out: dict[str, Tensor] = {}
    for rule in adapter.rules():
        if rule.ignored:
            continue
        parts = _inverse_index(rule)
        first = spec[rule.targets[0]]
        flat = torch.empty(math.prod(rule.shape), dtype=first.dtype, device=first.device)
        for key, idx in zip(rule.targets, parts, strict=True):
            value = spec[key]
            if tuple(value.shape) != tuple(idx.shape):
                raise ConvertError(f"spec key {key}: shape {tuple(value.shape)}, the {adapter.name} rule wants "
                                   f"{tuple(idx.shape)}")  # fmt: skip
            flat[idx.reshape(-1).to(flat.device)] = value.reshape(-1).to(flat.dtype)
        out[rule.source] = flat.reshape(rule.shape)
    return out


def _fill(model: nn.Module, adapter: RuleAdapter, spec: Mapping[str, Tensor]) -> int:
    """Copy the bundle into ``model``'s parameters; returns how many were filled. Every parameter that the
    target's rules map must be filled (an ignored one, e.g. an unused pooler, keeps its initial value)."""
    tensors = to_library(adapter, spec)
    named = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(named))
    if unknown:
        raise ConvertError(f"the {adapter.name} rules name parameters the model lacks: {', '.join(unknown)}")
    with torch.no_grad():
        for name, value in tensors.items():
            named[name].copy_(value)
    return len(tensors)


def _same_bundle(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> list[str]:
    """Spec keys whose tensors are not bit-identical (dtype, shape and value), or present on one side only."""

    def same(k: str) -> bool:
        x, y = a.get(k), b.get(k)
        if x is None or y is None or x.dtype != y.dtype or x.shape != y.shape:
            return False
        return torch.equal(x, y.to(x.device))

    return sorted(k for k in set(a) | set(b) if not same(k))


# -- the whole conversion --------------------------------------------------------------------------
@dataclass
class Converted:
    """A conversion: the target ``model``, both descriptions, the parameters filled, and the verification."""

    model: nn.Module
    source: Description
    target: Description
    filled: int
    comparison: Comparison | None = None


def conversion(model: nn.Module, *, to: str, adapter: Any = None, verify: bool = True, seed: int = 0) -> Converted:
    """Convert ``model`` to library ``to`` (see the module doc); the :class:`Converted` record.

    ``adapter``: the source's adapter, a class or an instance (default :func:`conformance.adapters.detect`).
    ``verify``: run :func:`conformance.diff.compare_models` (float64, batch 2, stages and gradients) and raise
    :class:`ConversionMismatchError` unless source and target compute the same function.
    Raises :class:`~conformance.adapters.Unsupported` for a source the spec cannot express,
    :class:`CannotExpress` naming what the target library cannot express, :class:`ConvertError` otherwise.
    """
    if to not in LIBRARIES:
        raise ConvertError(f"unknown target library {to!r}; valid: {', '.join(LIBRARIES)}")
    if adapter is None:
        src = detect(model)
    elif isinstance(adapter, type) and issubclass(adapter, Adapter):
        src = adapter(model)
    else:
        src = adapter
    source = src.description()
    bundle = spec_bundle(src)
    target_model = build_for(source, to, seed=seed)
    like = bundle["patch_kernel"]
    target_model.to(device=like.device, dtype=like.dtype)
    tgt = _target_adapter(target_model, source, to)
    filled = _fill(target_model, tgt, bundle)
    off = _same_bundle(bundle, spec_bundle(tgt))
    if off:  # the inverse rules did not reproduce the bundle: a bug, never a silent approximation
        raise ConvertError(f"the filled {to} model does not map back onto the source bundle at: {', '.join(off)}")
    result = Converted(target_model, source, tgt.description(), filled)
    if verify:
        result.comparison = cmp = compare_models(model, target_model, adapter_a=src, seed=seed, against_spec=False)
        if not cmp.ok:
            raise ConversionMismatchError(
                f"the converted {to} model does not compute what the source does: {cmp.why}", cmp
            )
    return result


def convert(model: nn.Module, *, to: str, adapter: Any = None, verify: bool = True, seed: int = 0) -> nn.Module:
    """``model`` rebuilt in library ``to`` (``timm``, ``hf``, ``torchvision``, ``vit_pytorch``) with the same
    weights, verified to compute the same function; see :func:`conversion` for the arguments and errors."""
    return conversion(model, to=to, adapter=adapter, verify=verify, seed=seed).model


# -- files -----------------------------------------------------------------------------------------
def description_to_json(d: Description) -> str:
    """The parts of a description a builder needs, as JSON (the safetensors metadata of a converted model)."""
    keep = {
        "library": d.library,
        "cfg": dataclasses.asdict(d.cfg),
        "input": [d.in_c, d.in_h, d.in_w],
        "variant": d.variant,
        "has_head": d.has_head,
        "profile": dataclasses.asdict(d.profile),
    }
    return json.dumps(keep, sort_keys=True)


def description_from_json(text: str) -> Description:
    """The inverse of :func:`description_to_json`; :class:`ConvertError` if ``text`` is not one."""
    try:
        data = json.loads(text)
        in_c, in_h, in_w = data["input"]
        known = {f.name for f in dataclasses.fields(Profile)}
        profile = Profile(**{k: v for k, v in data["profile"].items() if k in known})
        return Description(
            library=data["library"],
            model_name=f"converted {data['library']} model",
            cfg=ViTConfig(**data["cfg"]),
            in_c=in_c,
            in_h=in_h,
            in_w=in_w,
            variant=data["variant"],
            profile=profile,
            has_head=bool(data["has_head"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, VitSpecError) as e:  # any malformed field
        raise ConvertError(f"not a vitspec description ({type(e).__name__}: {e})") from None


def save_converted(converted: Converted, path: str | os.PathLike[str], *, source: str = "") -> None:
    """Write the target model's ``state_dict`` as safetensors, atomically, with the description as metadata."""
    from safetensors.torch import save

    sd = {k: v.detach().contiguous() for k, v in converted.model.state_dict().items()}
    meta = {METADATA_KEY: description_to_json(converted.target), "vitspec.source": source}
    atomic_write_bytes(path, save(sd, metadata=meta))


def load_converted(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a model written by :func:`save_converted` (or ``vitspec convert -o``) from the file alone."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
        sd = load_file(os.fspath(path))
    except Exception as e:  # unreadable, not safetensors: one line
        raise ConvertError(f"cannot read {os.fspath(path)!r}: {type(e).__name__}: {e}") from None
    if METADATA_KEY not in meta:
        raise ConvertError(
            f"{os.fspath(path)!r} was not written by vitspec convert (no {METADATA_KEY} metadata): name its "
            "architecture as a target and load the file with --weights"
        )
    d = description_from_json(meta[METADATA_KEY])
    dtypes = {t.dtype for t in sd.values() if t.is_floating_point()}
    if len(dtypes) != 1:  # a model convert wrote has one floating dtype
        found = ", ".join(sorted(str(t).removeprefix("torch.") for t in dtypes)) or "none"
        raise ConvertError(f"{os.fspath(path)!r}: its floating-point tensors have dtypes {found}, not one")
    model = build_for(d, d.library)
    model.to(dtype=dtypes.pop())
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ConvertError(f"{os.fspath(path)!r} does not fit the model it describes: {e}") from None
    return model.eval()


def is_converted_file(target: str) -> bool:
    """Whether a command line's model is a file (one ``vitspec convert -o`` wrote, for :func:`load_converted`)
    rather than a target string, which names a library or a factory (``path.py:factory``), never a file."""
    return os.path.isfile(target)


def build_operand(target: str, *, seed: int = 0, weights: str | None = None) -> nn.Module:
    """The model a command line names: a target (:func:`conformance.targets.build_target`), or a file
    ``vitspec convert -o`` wrote (:func:`load_converted`: its metadata says what to build); then
    ``weights`` loaded into it (:func:`conformance.weights.load_weights`)."""
    from .targets import build_target
    from .weights import load_weights

    if is_converted_file(target):
        model = load_converted(target)
    else:
        model, _ = build_target(target, seed=seed)
    if weights:
        load_weights(model, weights)
    return model


# -- the command ----------------------------------------------------------------------------------
EXIT_STATUS = (
    "exit status: 0 converted (and verified), 1 the converted model does not compute the same function, "
    "2 usage error (bad target, unreadable weights, unwritable output), 3 the target library cannot express "
    "a variation point of SRC (named), or the spec cannot express SRC"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vitspec convert`` arguments."""
    from vitspec.argtypes import TARGET_GRAMMAR, nonempty_str, output_path, seed_int

    parser.add_argument("source", type=nonempty_str, metavar="SRC", help="model to convert (TARGET grammar below)")
    parser.add_argument("--to", required=True, choices=LIBRARIES, help="library to convert to")
    parser.add_argument(
        "-o", "--output", metavar="OUT.safetensors", type=output_path, help="write the converted state_dict here"
    )
    parser.add_argument("--weights", metavar="PATH", help="load real weights into SRC first (strict key match)")
    parser.add_argument("--seed", type=seed_int, default=0, metavar="N", help="seed for SRC's random weights")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the diff of SRC and result")
    parser.add_argument("--json", metavar="PATH", type=output_path, help="write the verification diff as JSON")
    parser.add_argument("--markdown", metavar="PATH", type=output_path, help="write the verification diff as Markdown")
    parser.epilog = f"{TARGET_GRAMMAR}\n\n{EXIT_STATUS}"
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args: argparse.Namespace, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run a parsed ``convert`` command; returns the exit code."""
    from vitspec.cli import one_line

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    if (args.json or args.markdown) and not args.verify:
        print("vitspec convert: error: --json/--markdown write the verification diff; drop --no-verify", file=stderr)
        return EXIT_USAGE
    try:
        model = build_operand(args.source, seed=args.seed, weights=args.weights)
        done = conversion(model, to=args.to, verify=args.verify, seed=args.seed)
    except ConversionMismatchError as e:
        e.comparison.write_reports(args.json, args.markdown)
        print(f"MISMATCH: {one_line(e)}", file=stderr)
        return EXIT_FAIL
    except (Unsupported, MappingError) as e:  # CannotExpress included: the point is named
        print(f"UNSUPPORTED: {args.source} -> {args.to}: {one_line(e)}", file=stderr)
        return EXIT_UNSUPPORTED
    except VitSpecError as e:
        print(f"vitspec convert: error: {one_line(e)}", file=stderr)
        return EXIT_USAGE
    if done.comparison is not None:
        done.comparison.write_reports(args.json, args.markdown)
    if args.output:
        save_converted(done, args.output, source=args.source)
    verified = done.comparison.headline() if done.comparison is not None else "not verified (--no-verify)"
    where = f"; wrote {args.output}" if args.output else ""
    print(f"converted {args.source} -> {args.to} ({type(done.model).__name__}): {done.filled} parameters filled "
          f"bit for bit from the spec bundle; {verified}{where}", file=stdout)  # fmt: skip
    return EXIT_OK
