"""Adapters: detection, strict key maps, and end-to-end agreement with the spec in float64.

Every case is a tiny model built directly (random weights, re-randomised so no parameter is
trivially zero). For each: ``detect`` picks the right adapter; ``to_spec`` yields exactly the
spec's keys and shapes; the spec model built from the mapped weights reproduces the library's
logits and every captured stage and sub-op to ~1e-10 relative; and the library's autograd
gradients, mapped by the same ``to_spec``, equal the spec's explicit backward.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conformance.adapters import (
    ADAPTERS,
    CapturePoint,
    CustomAdapter,
    Description,
    NoAdapterError,
    Unsupported,
    detect,
    expected_stages,
    register,
    unregister,
)
from conformance.adapters.base import raise_unsupported, spec_keys
from conformance.capture import capture
from vitspec.errors import MappingError
from vitspec.models import ViTClsSpec, ViTSpec

pytestmark = pytest.mark.thirdparty
DOCS = Path(__file__).resolve().parents[1] / "docs" / "custom-adapters.md"
RTOL = 1e-10


# -- model factories (tiny) ----------------------------------------------------------------
def _timm(**kw: Any) -> nn.Module:
    vt = pytest.importorskip("timm.models.vision_transformer")
    base = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)
    return vt.VisionTransformer(**{**base, **kw})


def _timm_unfused() -> nn.Module:
    m = _timm()
    for b in m.blocks:
        b.attn.fused_attn = False  # the manual softmax path
    return m


def _tv(**kw: Any) -> nn.Module:
    tv = pytest.importorskip("torchvision.models.vision_transformer")
    base = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5)
    return tv.VisionTransformer(**{**base, **kw})


def _hf_config(**kw: Any) -> Any:
    tf = pytest.importorskip("transformers")
    base = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
    )
    return tf.ViTConfig(**{**base, **kw})


def _hf(**kw: Any) -> nn.Module:
    return pytest.importorskip("transformers").ViTForImageClassification(_hf_config(**kw))


def _hf_model(**kw: Any) -> nn.Module:
    return pytest.importorskip("transformers").ViTModel(_hf_config(**kw))


def _vp(**kw: Any) -> nn.Module:
    vp = pytest.importorskip("vit_pytorch")
    base = dict(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8)
    return vp.ViT(**{**base, **kw})


# id -> (factory, adapter name, variant, has_head)
CASES: dict[str, tuple[Callable[[], nn.Module], str, str, bool]] = {
    "timm_token": (_timm, "timm", "cls", True),
    "timm_avg": (lambda: _timm(global_pool="avg"), "timm", "cls", True),
    "timm_avg_prefix": (lambda: _timm(global_pool="avg", pool_include_prefix=True), "timm", "cls", True),
    "timm_no_cls": (lambda: _timm(global_pool="avg", class_token=False), "timm", "mean", True),
    "timm_fc_norm": (lambda: _timm(fc_norm=True), "timm", "cls", True),
    "timm_no_final_norm": (lambda: _timm(final_norm=False), "timm", "cls", True),
    "timm_relu_nobias": (lambda: _timm(act_layer=nn.ReLU, qkv_bias=False), "timm", "cls", True),
    "timm_gelu_tanh": (lambda: _timm(act_layer="gelu_tanh"), "timm", "cls", True),
    "timm_unfused": (_timm_unfused, "timm", "cls", True),
    "timm_headless": (lambda: _timm(num_classes=0), "timm", "cls", False),
    "timm_avg_norm_before_pool": (lambda: _timm(global_pool="avg", fc_norm=False), "timm", "cls", True),
    "timm_rect_1ch": (lambda: _timm(img_size=(32, 16), in_chans=1), "timm", "cls", True),
    "torchvision": (_tv, "torchvision", "cls", True),
    "hf_cls": (_hf, "hf", "cls", True),
    "hf_gelu_new_nobias": (lambda: _hf(hidden_act="gelu_new", qkv_bias=False), "hf", "cls", True),
    "hf_model": (_hf_model, "hf", "cls", False),
    "hf_headless": (lambda: _hf(num_labels=0), "hf", "cls", False),
    "vit_pytorch_cls": (_vp, "vit_pytorch", "cls", True),
    "vit_pytorch_mean": (lambda: _vp(pool="mean"), "vit_pytorch", "mean", True),
    "vit_pytorch_1ch": (lambda: _vp(channels=1), "vit_pytorch", "cls", True),
}


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere (library inits leave heads, biases, tokens at or near zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    return model


def _build(case: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomize(CASES[case][0]().double())


def _spec_cls(desc: Description) -> type[ViTSpec] | type[ViTClsSpec]:
    return ViTClsSpec if desc.variant == "cls" else ViTSpec


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _capture(adapter: Any, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with capture(adapter.capture_points()) as cap, torch.no_grad():
        out = adapter.run(x)
    # An unmodified library model: every stage's first candidate ran, and every other candidate
    # (a neighbour standing for the same tensor) saw exactly the same values.
    assert cap.notes == [] and not cap.errors, cap.notes
    return out, dict(cap.tensors)


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- every case ------------------------------------------------------------------------------
def test_detect_picks_the_adapter(case: str) -> None:
    _, name, variant, has_head = CASES[case]
    adapter = detect(_build(case))
    assert adapter.name == name
    desc = adapter.describe()
    assert (desc.library, desc.variant, desc.has_head) == (name, variant, has_head)
    assert adapter.model.training is False


def test_to_spec_gives_exactly_the_spec_keys_and_shapes(case: str) -> None:
    adapter = detect(_build(case))
    desc = adapter.describe()
    sd = adapter.to_spec(dict(adapter.model.named_parameters()))
    want = _spec_cls(desc).init(desc.cfg, desc.in_c, desc.in_h, desc.in_w, profile=desc.profile).param_shapes()
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    assert list(sd) == list(want) == spec_keys(desc)
    # detached copies: the spec model never aliases the library's live parameters
    assert not any(t.requires_grad for t in sd.values())
    first = next(iter(adapter.model.parameters()))
    assert all(t.data_ptr() != first.data_ptr() for t in sd.values())


def test_links_account_for_every_parameter(case: str) -> None:
    adapter = detect(_build(case))
    desc = adapter.describe()
    links = dict(adapter.links())
    assert set(links) == {n for n, _ in adapter.model.named_parameters()}
    fed = [k for keys in links.values() for k in keys]
    assert sorted(fed) == sorted(k for k in spec_keys(desc) if k not in desc.synthetic)


def test_capture_points_are_the_spec_stages(case: str) -> None:
    adapter = detect(_build(case))
    desc = adapter.describe()
    pts = adapter.capture_points()
    assert list(pts) == expected_stages(desc)
    assert all(
        isinstance(p, CapturePoint) and p.kind in ("output", "input") and p.where for ps in pts.values() for p in ps
    )
    spec = _spec_cls(desc).init(desc.cfg, desc.in_c, desc.in_h, desc.in_w, profile=desc.profile)
    spec_names = set(spec.stage_names(sub_ops=True)) - (set() if desc.has_head else {"head"})
    assert set(pts) == spec_names


def test_end_to_end_float64_forward_and_stages(case: str) -> None:
    adapter = detect(_build(case))
    desc = adapter.describe()
    spec = _spec_cls(desc).from_state_dict(
        desc.cfg, desc.in_c, desc.in_h, desc.in_w, adapter.to_spec(dict(adapter.model.named_parameters())),
        profile=desc.profile,
    )  # fmt: skip
    x = torch.randn(2, desc.in_c, desc.in_h, desc.in_w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, lib = _capture(adapter, x)
    spec_stages: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        logits = spec.forward(x, capture=spec_stages)
    assert _rel(out, logits) < RTOL
    assert set(lib) == set(expected_stages(desc))
    errors = {name: _rel(t, spec_stages[name]) for name, t in lib.items()}
    assert max(errors.values()) < RTOL, {k: v for k, v in errors.items() if v >= RTOL}


def test_gradients_map_like_parameters(case: str) -> None:
    """``to_spec`` on the library's ``.grad`` s equals the spec's explicit backward (synthetic keys aside)."""
    adapter = detect(_build(case))
    desc = adapter.describe()
    spec = _spec_cls(desc).from_state_dict(
        desc.cfg, desc.in_c, desc.in_h, desc.in_w, adapter.to_spec(dict(adapter.model.named_parameters())),
        profile=desc.profile,
    )  # fmt: skip
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, desc.in_c, desc.in_h, desc.in_w, dtype=torch.float64, generator=g)
    out = adapter.run(x)
    cot = torch.randn(out.shape, dtype=torch.float64, generator=g)
    (out * cot).sum().backward()
    lib_grads = adapter.to_spec({n: p.grad for n, p in adapter.model.named_parameters()})
    grads, _ = spec.backward(x, grad_output=cot)
    want = grads.to_dict()
    # Relative to the largest gradient anywhere: some are exactly zero in theory (a key bias
    # shifts every score of a query alike, so softmax ignores it) and only rounding remains.
    scale = max(float(t.abs().max()) for t in want.values())
    for key, t in lib_grads.items():
        if key in desc.synthetic:
            continue
        assert float((t - want[key]).abs().max()) <= 1e-10 * max(scale, float(want[key].abs().max())), key


# -- profiles read off the model ---------------------------------------------------------------
def test_profiles_follow_the_model() -> None:
    p = detect(_timm(act_layer=nn.ReLU, qkv_bias=False)).describe().profile
    assert (p.activation, p.qkv_bias, p.out_bias, p.pooling, p.final_norm) == (
        "relu",
        False,
        True,
        "token",
        "before_pool",
    )
    p = detect(_timm(global_pool="avg")).describe().profile
    assert (p.pooling, p.final_norm) == ("mean", "after_pool")
    p = detect(_timm(global_pool="avg", pool_include_prefix=True)).describe().profile
    assert p.pooling == "mean_all"
    p = detect(_hf(hidden_act="gelu_new", layer_norm_eps=1e-9)).describe().profile
    assert (p.activation, p.ln_eps) == ("gelu_tanh", 1e-9)
    p = detect(_hf(hidden_act="relu")).describe().profile
    assert p.activation == "relu"
    d = detect(_vp(pool="mean")).describe()
    assert (d.variant, d.profile.pooling, d.profile.patch_embed, d.profile.ln_eps) == (
        "mean",
        "mean",
        "linear_ln",
        1e-5,
    )


def test_every_block_is_read_and_the_odd_one_is_named() -> None:
    """A block whose eps differs from the others is named up front; the profile keeps the majority's
    value (nothing is inferred from block 0), so the comparison diverges at that block."""
    m = _randomize(_timm(depth=3).double())
    m.blocks[0].norm1.eps = 1e-5  # block 0, the one an adapter reading only block 0 would copy
    adapter = detect(m)
    desc = adapter.describe()
    assert desc.profile.ln_eps == 1e-6
    assert any(n.startswith("blocks.0.norm1: LayerNorm eps 1e-05 differs") for n in desc.notes), desc.notes
    spec = ViTClsSpec.from_state_dict(
        desc.cfg, desc.in_c, desc.in_h, desc.in_w, adapter.to_spec(dict(adapter.model.named_parameters())),
        profile=desc.profile,
    )  # fmt: skip
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out, lib = _capture(adapter, x)
    cap: dict[str, torch.Tensor] = {}
    spec.forward(x, capture=cap)
    assert _rel(lib["blocks.0.norm1"], cap["blocks.0.norm1"]) > 1e-6
    assert _rel(out, cap["head"]) > 1e-6
    # Only block 0's activation changed: with a tie (1 vs 1) the library default stays.
    m2 = _timm()
    m2.blocks[0].mlp.act = nn.GELU(approximate="tanh")
    d2 = detect(m2).describe()
    assert d2.profile.activation == "gelu_erf"
    assert any(n.startswith("blocks.0.mlp.act: activation 'gelu_tanh' differs") for n in d2.notes), d2.notes


def test_unknown_modules_are_probed() -> None:
    """An activation of an unknown class is what it computes: a forward match is accepted (with its VJP
    error noted), no match is UNSUPPORTED naming the module, the closest candidate and the error."""

    class MyGELU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    m = _timm()
    m.blocks[1].mlp.act = MyGELU()
    d = detect(m).describe()
    assert d.profile.activation == "gelu_erf" and not any("MyGELU" in n for n in d.notes)
    m.blocks[1].mlp.act = nn.Softplus()
    with pytest.raises(Unsupported, match=r"blocks\.1\.mlp\.act is Softplus, which matches no spec .* \(closest "):
        detect(m).describe()

    class MyNorm(nn.Module):  # a LayerNorm in all but name
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.layer_norm(x, x.shape[-1:], self.weight, self.bias, 1e-6)

    m = _timm()
    m.blocks[0].norm2 = MyNorm(32)
    assert detect(m).describe().profile.ln_eps == 1e-6


def test_attention_implementation_is_noted() -> None:
    notes = " ".join(detect(_timm_unfused()).describe().notes)
    assert "fused_attn=False" in notes
    d = detect(_hf(attn_implementation="eager")).describe()
    assert "eager" in " ".join(d.notes)
    # Eager attention's float32 softmax is declared, per block, for the check to judge at that precision.
    (lp,) = d.precision
    assert lp.dtype == "float32" and lp.stages == ("blocks.0.attn", "blocks.1.attn") and "softmax" in lp.op
    assert detect(_hf()).describe().precision == ()


# -- unsupported features ----------------------------------------------------------------------
def _timm_both_norms() -> nn.Module:
    m = _timm()
    m.fc_norm = nn.LayerNorm(32, eps=1e-6)
    return m


def _timm_res_post() -> nn.Module:
    from timm.models.vision_transformer import ResPostBlock

    return _timm(block_fn=ResPostBlock)


def _timm_glu() -> nn.Module:
    from timm.layers import SwiGLUPacked

    return _timm(mlp_layer=SwiGLUPacked)


def _timm_seq_head() -> nn.Module:
    m = _timm()
    m.head = nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5))
    return m


def _timm_relu6() -> nn.Module:
    m = _timm()
    m.blocks[0].mlp.act = nn.ReLU6()
    return m


def _tv_conv_stem() -> nn.Module:
    from torchvision.models.vision_transformer import ConvStemConfig

    return _tv(conv_stem_configs=[ConvStemConfig(out_channels=16, kernel_size=3, stride=8)])


def _hf_mim() -> nn.Module:
    return pytest.importorskip("transformers").ViTForMaskedImageModeling(_hf_config(encoder_stride=8))


UNSUPPORTED: dict[str, tuple[Callable[[], nn.Module], str]] = {
    # MAP pooling is a variation point now; MAP over the prefix tokens too is not expressed
    "timm_map_pool_prefix": (lambda: _timm(global_pool="map", pool_include_prefix=True), "pool_include_prefix"),
    "timm_no_pool": (lambda: _timm(global_pool=""), "global_pool=''"),
    "timm_max_pool": (lambda: _timm(global_pool="max", class_token=False), "global_pool='max'"),
    "timm_patch_norm": (lambda: _timm(embed_norm_layer="layernorm"), "patch_embed.norm"),
    "timm_both_norms": (_timm_both_norms, "both norm and fc_norm"),
    "timm_res_post_block": (_timm_res_post, "ResPostBlock"),
    "timm_head_not_linear": (_timm_seq_head, "head is Sequential"),
    # Register tokens, layer scale, qk-norm, dynamic size, no_embed_class, pre-norm, no position
    # table, GLU and bias-free MLPs are variation points now (tests/test_variations.py, tests/test_zoo.py).
    "timm_scale_mlp_norm": (lambda: _timm(scale_mlp_norm=True), "scale_mlp_norm"),
    "timm_scale_attn_norm": (lambda: _timm(scale_attn_norm=True), "scale_attn_norm"),
    "timm_relu6": (_timm_relu6, "ReLU6"),
    "tv_representation": (lambda: _tv(representation_size=16), "representation_size"),
    "tv_conv_stem": (_tv_conv_stem, "conv stem"),
    "hf_mish": (lambda: _hf(hidden_act="mish"), "which matches no spec candidate"),
    "hf_masked_image_modeling": (_hf_mim, "ViTForMaskedImageModeling"),
    "vp_no_out_proj": (lambda: _vp(heads=1, dim_head=32), "no output projection"),
    "vp_no_head": (lambda: _vp(num_classes=0), "mlp_head"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_features_are_named(name: str) -> None:
    factory, feature = UNSUPPORTED[name]
    torch.manual_seed(0)
    adapter = detect(factory())
    with pytest.raises(Unsupported) as err:
        adapter.describe()
    assert feature in err.value.reason, err.value.reason
    assert err.value.library == adapter.name
    with pytest.raises(Unsupported):  # nothing downstream silently works either
        adapter.to_spec(dict(adapter.model.named_parameters()))


def test_repeated_problems_are_grouped() -> None:
    with pytest.raises(Unsupported) as err:
        detect(_timm(scale_mlp_norm=True, depth=3)).describe()
    assert err.value.reason == "blocks.{0..2}.mlp: scale_mlp_norm (a norm inside the MLP)"
    with pytest.raises(Unsupported, match=r"a\.\{1,3\}: x; b"):
        raise_unsupported(["a.1: x", "b", "a.3: x"], "lib")
    raise_unsupported([], "lib")  # nothing to say: no error


def test_no_adapter_for_unknown_models() -> None:
    with pytest.raises(NoAdapterError, match=r"no adapter for torch\.nn\.modules\.linear\.Linear"):
        detect(nn.Linear(2, 2))
    with pytest.raises(TypeError):
        detect("timm:vit_tiny_patch16_224")  # type: ignore[arg-type]


# -- strict mapping --------------------------------------------------------------------------
def test_bad_state_dict_lists_every_problem_at_once() -> None:
    adapter = detect(_timm())
    sd = dict(adapter.model.named_parameters())
    del sd["blocks.0.attn.qkv.weight"], sd["head.bias"]
    sd["blocks.0.attn.ls_gamma"] = torch.zeros(32)
    sd["pos_embed"] = torch.zeros(1, 16, 32)
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(64, 31)
    sd["cls_token"] = "not a tensor"  # type: ignore[assignment]
    with pytest.raises(MappingError) as err:
        adapter.to_spec(sd)
    e = err.value
    assert set(e.missing) == {"blocks.0.attn.qkv.weight", "head.bias"}
    assert e.unexpected == ("blocks.0.attn.ls_gamma",)
    assert len(e.mismatched) == 3
    assert "pos_embed: expected (1, 17, 32), got (1, 16, 32)" in e.mismatched
    assert any(m.startswith("cls_token: expected a tensor") for m in e.mismatched)
    assert "timm" in str(e) and "blocks.0.attn.ls_gamma" in str(e)


def test_none_gradients_count_as_missing_unless_ignored() -> None:
    adapter = detect(_hf_model())
    grads: dict[str, Any] = {n: torch.zeros_like(p) for n, p in adapter.model.named_parameters()}
    grads["pooler.dense.weight"] = grads["pooler.dense.bias"] = None  # ignored: fine
    adapter.to_spec(grads)
    del grads["pooler.dense.weight"]  # ignored rules are optional
    adapter.to_spec(grads)
    grads["layers.0.mlp.fc1.bias"] = None
    with pytest.raises(MappingError) as err:
        adapter.to_spec(grads)
    assert err.value.missing == ("layers.0.mlp.fc1.bias (None)",)


def test_ignored_parameters_are_explained() -> None:
    adapter = detect(_hf_model())
    ignored = dict(adapter.ignored())  # type: ignore[attr-defined]
    assert set(ignored) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert any("pooler" in n for n in adapter.describe().notes)
    assert dict(adapter.links())["pooler.dense.weight"] == ()
    vp = detect(_vp(pool="mean"))
    assert dict(vp.ignored())["cls_token"].startswith("empty")  # type: ignore[attr-defined]


# transformers 5.x name fragment -> 4.x (transformers' own conversion table, conversion_mapping.py)
_HF4 = [
    (r"^(vit\.)?layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"attention\.([qkv])_proj", None),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"mlp\.fc1", "intermediate.dense"),
    (r"mlp\.fc2", "output.dense"),
]
_QKV = {"q": "query", "k": "key", "v": "value"}


def _to_hf4(name: str) -> str:
    for pat, rep in _HF4:
        if rep is None:
            name = re.sub(pat, lambda m: f"attention.attention.{_QKV[m.group(1)]}", name)
        else:
            name = re.sub(pat, rep, name)
    return name


@pytest.mark.parametrize("factory", [_hf, _hf_model], ids=["classifier", "model"])
def test_hf_accepts_transformers_4x_names(factory: Callable[[], nn.Module]) -> None:
    adapter = detect(_randomize(factory().double()))
    new = dict(adapter.model.named_parameters())
    old = {_to_hf4(n): t for n, t in new.items()}
    assert any(".encoder.layer.0.attention.attention.query.weight" in "." + n for n in old)
    assert any("intermediate.dense" in n for n in old)
    a, b = adapter.to_spec(new), adapter.to_spec(old)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(MappingError, match="duplicate"):
        adapter.to_spec({**new, **old})


def test_vit_pytorch_non_square_input_needs_input_hw() -> None:
    from conformance.adapters import VitPytorchAdapter

    m = _randomize(_vp(image_size=(32, 16)).double())
    with pytest.raises(Unsupported, match="input_hw"):
        detect(m).describe()  # 8 patches: not a square grid
    adapter = VitPytorchAdapter(m, input_hw=(32, 16))
    desc = adapter.describe()
    assert (desc.in_h, desc.in_w) == (32, 16) and not desc.notes
    spec = ViTClsSpec.from_state_dict(
        desc.cfg, 3, 32, 16, adapter.to_spec(dict(adapter.model.named_parameters())), profile=desc.profile
    )
    x = torch.randn(2, 3, 32, 16, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(adapter.run(x), spec.forward(x)) < RTOL


def test_adapter_copies_the_model_by_default() -> None:
    m = _timm().train()
    adapter = detect(m)
    assert adapter.model is not m and m.training and not adapter.model.training
    same = detect(m, copy=False)
    assert same.model is m and not m.training


# -- registration and custom adapters -------------------------------------------------------
def test_register_puts_user_adapters_first_and_is_idempotent() -> None:
    class Tiny(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    class TinyAdapter(CustomAdapter):
        name = "tiny"
        model_class = Tiny

        def describe(self) -> Description:
            raise Unsupported("not a ViT", library=self.name)

        def key_map(self) -> list:
            return []

        def stages(self) -> dict:
            return {}

    before = list(ADAPTERS)
    try:
        assert register(TinyAdapter) is TinyAdapter
        register(TinyAdapter)
        assert ADAPTERS[0] is TinyAdapter and ADAPTERS.count(TinyAdapter) == 1
        assert isinstance(detect(Tiny()), TinyAdapter)
        with pytest.raises(TypeError):
            register(Tiny)  # type: ignore[arg-type]
    finally:
        unregister(TinyAdapter)
    assert before == ADAPTERS


def test_capture_point_input_kind_sees_keyword_inputs() -> None:
    lin = nn.Linear(3, 2)
    x = torch.ones(1, 3)
    with capture({"kw": CapturePoint(lin, "input", lambda t: t * 2)}) as cap:
        lin(input=x)
        lin(x)
    assert torch.equal(cap["kw"], 2 * x) and cap.calls["kw"] == 2
    assert not lin._forward_pre_hooks


def _doc_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert len(blocks) >= 3, "docs/custom-adapters.md lost its worked example"
    return "\n".join(blocks)


def test_custom_adapters_doc_example() -> None:
    """The worked example in docs/custom-adapters.md runs as written (it asserts its own agreement)."""
    ns: dict[str, Any] = {"__name__": "custom_adapters_doc"}
    try:
        exec(compile(_doc_code(), str(DOCS), "exec"), ns)
        adapter_cls = ns["D2LViTAdapter"]
        # and the strict machinery applies to it as to the built-ins
        torch.manual_seed(0)
        adapter = detect(_randomize(ns["make_model"]().double()))
        assert isinstance(adapter, adapter_cls)
        desc = adapter.describe()
        assert (desc.profile.head_norm, desc.profile.qkv_bias, desc.profile.out_bias) == (True, False, False)
        assert list(adapter.capture_points()) == expected_stages(desc)
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        spec = ViTClsSpec.from_state_dict(
            desc.cfg, 3, 32, 32, adapter.to_spec(dict(adapter.model.named_parameters())), profile=desc.profile
        )
        out = adapter.run(x)
        cot = torch.randn_like(out)
        (out * cot).sum().backward()
        got = adapter.to_spec({n: p.grad for n, p in adapter.model.named_parameters()})
        want = spec.backward(x, grad_output=cot)[0].to_dict()
        scale = max(float(t.abs().max()) for t in want.values())
        assert all(float((got[k] - want[k]).abs().max()) <= 1e-10 * scale for k in got)
    finally:
        if "D2LViTAdapter" in ns:
            unregister(ns["D2LViTAdapter"])


def test_custom_adapter_stage_mismatch_is_reported() -> None:
    ns: dict[str, Any] = {"__name__": "custom_adapters_doc"}
    try:
        exec(compile(_doc_code().split("Check it by hand")[0].split("from conformance.adapters import detect")[0],
                     str(DOCS), "exec"), ns)  # fmt: skip
        base = ns["D2LViTAdapter"]

        class Broken(base):  # type: ignore[misc, valid-type]
            def stages(self) -> dict:
                st = dict(super().stages())
                del st["pool"]
                st["blocks.0.extra"] = "blks.0"
                st["blocks.1"] = "blks.7"
                return st

        with pytest.raises(MappingError) as err:
            Broken(ns["make_model"]()).capture_points()
        assert err.value.missing == ("pool",) and err.value.unexpected == ("blocks.0.extra",)
        assert len(err.value.mismatched) == 1 and "blocks.1" in err.value.mismatched[0]
    finally:
        if "D2LViTAdapter" in ns:
            unregister(ns["D2LViTAdapter"])


# -- transformers 4.x module layout (not installed here: a faithful replica of its ViT forward) ------------
def _hf4_model(config: Any) -> nn.Module:
    """``ViTForImageClassification`` as transformers 4.x builds it (``encoder.layer.{i}.attention.attention.query``,
    ``ViTSelfOutput``, ``ViTIntermediate``, ``ViTOutput`` adding the residual itself, tuple outputs).
    Classes carry transformers' module name, as the real ones would."""
    from types import SimpleNamespace

    from transformers.activations import ACT2FN
    from transformers.models.vit import modeling_vit

    mod = modeling_vit.__name__

    class ViTSelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.num_attention_heads = config.num_attention_heads
            self.attention_head_size = config.hidden_size // config.num_attention_heads
            self.all_head_size = self.num_attention_heads * self.attention_head_size
            self.query = nn.Linear(config.hidden_size, self.all_head_size, bias=config.qkv_bias)
            self.key = nn.Linear(config.hidden_size, self.all_head_size, bias=config.qkv_bias)
            self.value = nn.Linear(config.hidden_size, self.all_head_size, bias=config.qkv_bias)

        def split(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size).permute(0, 2, 1, 3)

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor]:
            q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
            probs = (q @ k.transpose(-1, -2) / math.sqrt(self.attention_head_size)).softmax(-1)
            ctx = (probs @ v).permute(0, 2, 1, 3).contiguous()
            return (ctx.view(*ctx.shape[:-2], self.all_head_size),)

    class ViTSelfOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)

        def forward(self, h: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
            return self.dense(h)

    class ViTAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = ViTSelfAttention()
            self.output = ViTSelfOutput()

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
            self_outputs = self.attention(h)
            return (self.output(self_outputs[0], h), *self_outputs[1:])

    class ViTIntermediate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
            self.intermediate_act_fn = ACT2FN[config.hidden_act]

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.intermediate_act_fn(self.dense(h))

    class ViTOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(config.intermediate_size, config.hidden_size)

        def forward(self, h: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
            return self.dense(h) + input_tensor

    class ViTLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = ViTAttention()
            self.intermediate = ViTIntermediate()
            self.output = ViTOutput()
            self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor]:
            h = self.attention(self.layernorm_before(h))[0] + h
            return (self.output(self.intermediate(self.layernorm_after(h)), h),)

    class ViTEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.ModuleList([ViTLayer() for _ in range(config.num_hidden_layers)])

    class ViTModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            self.embeddings = modeling_vit.ViTEmbeddings(config)
            self.encoder = ViTEncoder()
            self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

        def forward(self, pixel_values: torch.Tensor) -> Any:
            h = self.embeddings(pixel_values)
            for layer in self.encoder.layer:
                h = layer(h)[0]
            return SimpleNamespace(last_hidden_state=self.layernorm(h))

    class ViTForImageClassification(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            self.vit = ViTModel()
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)

        def forward(self, pixel_values: torch.Tensor) -> Any:
            return SimpleNamespace(logits=self.classifier(self.vit(pixel_values).last_hidden_state[:, 0]))

    for c in (ViTSelfAttention, ViTSelfOutput, ViTAttention, ViTIntermediate, ViTOutput, ViTLayer, ViTEncoder,
              ViTModel, ViTForImageClassification):  # fmt: skip
        c.__module__, c.__qualname__ = mod, c.__name__
    return ViTForImageClassification()


def test_hf_4x_layout_end_to_end() -> None:
    """A 4.x-layout model: names, hooks (tuple outputs, ViTOutput's own residual) and numbers all line up."""
    config = _hf_config(hidden_act="gelu_new")
    new = _randomize(pytest.importorskip("transformers").ViTForImageClassification(config).double())
    old = _hf4_model(config).double()
    old.load_state_dict({_to_hf4(n): t for n, t in new.state_dict().items()})
    adapter = detect(old)
    assert adapter.name == "hf"
    desc = adapter.describe()
    assert desc.profile.activation == "gelu_tanh"
    names = dict(adapter.model.named_parameters())
    assert "vit.encoder.layer.1.attention.attention.value.bias" in names
    sd = adapter.to_spec(names)
    sd5 = detect(new).to_spec(dict(new.named_parameters()))  # and the 5.x model maps to the same bundle
    assert all(torch.equal(sd[k], sd5[k]) for k in sd5)
    spec = ViTClsSpec.from_state_dict(desc.cfg, 3, 32, 32, sd, profile=desc.profile)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out, lib = _capture(adapter, x)
    cap: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        logits = spec.forward(x, capture=cap)
        assert _rel(new(pixel_values=x).logits, out) < RTOL
    assert _rel(out, logits) < RTOL
    assert set(lib) == set(expected_stages(desc))
    assert max(_rel(t, cap[k]) for k, t in lib.items()) < RTOL
