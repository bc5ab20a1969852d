"""ViTSpec / ViTClsSpec: construction, parameters, forward semantics, stages and errors."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vitspec
from vitspec import PROFILES, ConfigError, MappingError, Profile, ShapeError, ViTConfig, param_count, shape_checks
from vitspec.models import (
    EncoderLayerGrads,
    FFNGrads,
    MHAGrads,
    ViTClsGrads,
    ViTClsSpec,
    ViTGrads,
    ViTSpec,
    encoder_layer,
)

TINY = ViTConfig(2, 2, 2, 0, 8, 12, 2, 2, 3)
CHW = (2, 4, 6)
VARIANTS = {"mean": ViTSpec, "cls": ViTClsSpec}
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add synchronisation (and stall on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def prof_for(variant: str, name: str) -> Profile:
    p = PROFILES[name]
    return p.replace(pooling=None) if variant == "mean" and p.pooling in ("token", "mean_all") else p


def rand(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- parameters --------------------------------------------------------------------------------
def test_state_dict_keys_follow_the_contract() -> None:
    m = ViTClsSpec.init(TINY.replace(num_layers=1), *CHW, profile="timm")
    assert list(m.state_dict()) == [
        "patch_kernel", "patch_bias", "cls_token", "pos",
        "encoder.0.mha.Wq", "encoder.0.mha.Wk", "encoder.0.mha.Wv", "encoder.0.mha.Wo",
        "encoder.0.mha.bq", "encoder.0.mha.bk", "encoder.0.mha.bv", "encoder.0.mha.bo",
        "encoder.0.ffn.W1", "encoder.0.ffn.b1", "encoder.0.ffn.W2", "encoder.0.ffn.b2",
        "encoder.0.norm1_gamma", "encoder.0.norm1_beta", "encoder.0.norm2_gamma", "encoder.0.norm2_beta",
        "final_norm_gamma", "final_norm_beta", "head_W", "head_b",
    ]  # fmt: skip
    shapes = m.param_shapes()
    assert shapes["patch_kernel"] == (8, 2, 2, 2) and shapes["pos"] == (7, 8) and shapes["head_W"] == (3, 8)
    assert shapes["encoder.0.mha.Wq"] == (8, 8) and shapes["encoder.0.ffn.W1"] == (8, 12)
    lucid = ViTClsSpec.init(TINY.replace(num_layers=0), *CHW, profile="vit_pytorch")
    assert list(lucid.state_dict())[:6] == [
        "patch_kernel", "patch_bias", "patch_norm_in_gamma", "patch_norm_in_beta",
        "patch_norm_out_gamma", "patch_norm_out_beta",
    ]  # fmt: skip
    assert lucid.param_shapes()["patch_norm_in_gamma"] == (2, 2, 2)
    d2l = ViTSpec.init(TINY, *CHW, profile=prof_for("mean", "d2l"))
    assert "head_norm_gamma" in d2l.state_dict() and "final_norm_gamma" not in d2l.state_dict()
    assert "cls_token" not in d2l.state_dict() and d2l.param_shapes()["pos"] == (6, 8)


def test_state_dict_is_live() -> None:
    m = ViTSpec.init(TINY, *CHW, dtype=F64)
    x = rand(*CHW)
    before = m.forward(x)
    m.state_dict()["head_b"].add_(1.0)
    torch.testing.assert_close(m.forward(x), before + 1.0)


@pytest.mark.parametrize("variant", ["mean", "cls"])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_param_count_equals_the_bundle(variant: str, profile: str) -> None:
    cfg = TINY.replace(embed_dim=6, head_count=3, num_layers=3)
    prof = prof_for(variant, profile)
    m = VARIANTS[variant].init(cfg, 3, 6, 4, profile=prof)
    n = sum(t.numel() for t in m.state_dict().values())
    assert m.num_params() == n == param_count(cfg, 3, 6, 4, variant, profile=prof)


def test_param_count_of_vit_base_matches_the_known_size() -> None:
    """ViT-B/16 with timm's numerics has 86,567,656 parameters (timm vit_base_patch16_224)."""
    cfg = vitspec.preset("vit_base_patch16")
    assert param_count(cfg, 3, 224, 224, "cls", profile="timm") == 86_567_656


def test_init_is_deterministic_and_dtype_independent(device: str) -> None:
    a = ViTClsSpec.init(TINY, *CHW, seed=3, dtype=F64, profile="timm")
    b = ViTClsSpec.init(TINY, *CHW, seed=3, dtype=F64, profile="timm")
    c = ViTClsSpec.init(TINY, *CHW, seed=4, dtype=F64, profile="timm")
    f32 = ViTClsSpec.init(TINY, *CHW, seed=3, dtype=torch.float32, profile="timm")
    on_dev = ViTClsSpec.init(TINY, *CHW, seed=3, dtype=torch.float32, device=device, profile="timm")
    assert on_dev.device.type == torch.device(device).type
    for k, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[k]), k
        assert not torch.equal(t, c.state_dict()[k]), k
        assert torch.equal(t.float(), f32.state_dict()[k]), k
        assert torch.equal(on_dev.state_dict()[k].cpu(), f32.state_dict()[k]), k


def test_init_scales_exercise_every_parameter() -> None:
    m = ViTClsSpec.init(TINY, *CHW, profile="timm", dtype=F64)
    for k, t in m.state_dict().items():
        if k.endswith("gamma"):
            assert not torch.equal(t, torch.ones_like(t)) and (t - 1).abs().max() < 0.6, k
        else:
            assert t.abs().min() > 0 or t.numel() > 4, k  # no all-zero biases
            assert t.std() > 1e-3, k
    # Weight matrices: N(0, 1/fan_in); patch kernel fan_in = channels*patch_h*patch_w.
    big = ViTSpec.init(TINY.replace(embed_dim=64, hidden_dim=64, num_layers=1), 4, 8, 8, dtype=F64)
    assert abs(big.state_dict()["patch_kernel"].std().item() * math.sqrt(16) - 1) < 0.15
    assert abs(big.state_dict()["encoder.0.ffn.W1"].std().item() * math.sqrt(64) - 1) < 0.1


def test_init_refuses_non_float_dtype() -> None:
    with pytest.raises(ConfigError, match="floating-point"):
        ViTSpec.init(TINY, *CHW, dtype=torch.int64)


def test_load_state_dict_is_strict_and_atomic() -> None:
    m = ViTClsSpec.init(TINY, *CHW, dtype=F64)
    before = {k: t.clone() for k, t in m.state_dict().items()}
    sd = {k: torch.zeros_like(t) for k, t in m.state_dict().items()}
    del sd["pos"]
    sd["extra.weight"] = torch.zeros(2)
    sd["head_W"] = torch.zeros(4, 8, dtype=F64)
    sd["head_b"] = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(MappingError) as ei:
        m.load_state_dict(sd)
    err = ei.value
    assert err.missing == ("pos",) and err.unexpected == ("extra.weight",)
    assert any("head_W" in s and "(3, 8)" in s and "(4, 8)" in s for s in err.mismatched)
    assert any("head_b" in s and "floating" in s for s in err.mismatched)
    for k, t in m.state_dict().items():
        assert torch.equal(t, before[k]), f"{k} was modified by a failed load"
    # A good one is copied into the live tensors, cast to the model's dtype.
    good = {k: torch.full_like(t, 0.5, dtype=torch.float32) for k, t in m.state_dict().items()}
    live = m.state_dict()["pos"]
    m.load_state_dict(good)
    assert m.state_dict()["pos"] is live and m.dtype == F64 and torch.all(live == 0.5)


def test_from_state_dict_uses_the_tensors_and_checks_them() -> None:
    m = ViTSpec.init(TINY, *CHW, dtype=F64)
    sd = m.state_dict()
    n = ViTSpec.from_state_dict(TINY, *CHW, sd)
    assert all(n.state_dict()[k] is t for k, t in sd.items())
    mixed = dict(sd, head_b=sd["head_b"].float())
    with pytest.raises(MappingError, match="share dtype"):
        ViTSpec.from_state_dict(TINY, *CHW, mixed)
    with pytest.raises(MappingError, match="missing: cls_token"):
        ViTClsSpec.from_state_dict(TINY, *CHW, {**sd, "pos": torch.zeros(7, 8, dtype=F64)})


def test_to_returns_a_converted_copy() -> None:
    m = ViTSpec.init(TINY, *CHW, dtype=F64)
    f = m.to(dtype=torch.float32)
    assert f.dtype == torch.float32 and m.dtype == F64 and type(f) is ViTSpec
    torch.testing.assert_close(f.forward(rand(*CHW).float()), m.forward(rand(*CHW)).float(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError):
        m.to(dtype=torch.int32)


# -- config and profile validity ------------------------------------------------------------------------
def test_linear_ln_needs_non_overlapping_patches() -> None:
    for cfg in (TINY.replace(stride=1), TINY.replace(patch_w=3), TINY.replace(padding=1)):
        with pytest.raises(ConfigError, match="linear_ln") as ei:
            ViTClsSpec.init(cfg, 2, 6, 6, profile="vit_pytorch")
        assert "stride" in ei.value.fields


@pytest.mark.parametrize("pooling", ["token", "mean_all"])
def test_mean_variant_refuses_cls_poolings(pooling: str) -> None:
    with pytest.raises(ConfigError, match="pooling") as ei:
        ViTSpec.init(TINY, *CHW, profile=PROFILES["torchlean"].replace(pooling=pooling))
    assert "pooling" in ei.value.fields
    ViTClsSpec.init(TINY, *CHW, profile=PROFILES["torchlean"].replace(pooling=pooling))  # fine with a CLS token


def test_config_violations_are_listed_together() -> None:
    bad = TINY.replace(embed_dim=0, stride=0)
    with pytest.raises(ConfigError) as ei:
        ViTSpec.init(bad, 0, 4, 6)
    assert {"embed_dim", "stride", "in_c"} <= set(ei.value.fields)
    with pytest.raises(ConfigError, match="head_count divides embed_dim"):
        ViTClsSpec.init(TINY.replace(embed_dim=10, head_count=3), *CHW, profile="hf")
    ViTClsSpec.init(TINY.replace(embed_dim=10, head_count=3), *CHW)  # the spec floors the head width
    with pytest.raises(ConfigError, match="unknown profile"):
        ViTSpec.init(TINY, *CHW, profile="nope")


# -- forward ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["mean", "cls"])
def test_forward_shapes_and_batch_consistency(variant: str) -> None:
    m = VARIANTS[variant].init(TINY, *CHW, dtype=F64, profile=prof_for(variant, "timm"))
    x = rand(3, *CHW)
    out = m.forward(x)
    assert out.shape == (3, 3) and m(x[1]).shape == (3,)
    for i in range(3):
        torch.testing.assert_close(m.forward(x[i]), out[i], rtol=1e-12, atol=1e-12)
    with shape_checks(False):
        assert torch.equal(m.forward(x), out)


def _torch_encoder_layer(m: ViTSpec | ViTClsSpec, i: int) -> nn.TransformerEncoderLayer:
    """A torch.nn.TransformerEncoderLayer carrying layer i of ``m`` (absent MHA biases set to 0)."""
    p, e, prof = m.state_dict(), m.cfg.embed_dim, m.profile
    act = {"relu": "relu", "gelu_erf": "gelu"}[prof.activation]
    layer = nn.TransformerEncoderLayer(
        e, m.cfg.head_count, m.cfg.hidden_dim, dropout=0.0, activation=act, layer_norm_eps=prof.ln_eps,
        batch_first=True, norm_first=prof.norm_placement == "pre", dtype=F64,
    )  # fmt: skip
    pre = f"encoder.{i}."
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(torch.cat([p[pre + f"mha.W{n}"].T for n in "qkv"]))
        zeros = torch.zeros(e, dtype=F64)
        qkv_b = [p.get(pre + f"mha.b{n}", zeros) for n in "qkv"]
        layer.self_attn.in_proj_bias.copy_(torch.cat(qkv_b))
        layer.self_attn.out_proj.weight.copy_(p[pre + "mha.Wo"].T)
        layer.self_attn.out_proj.bias.copy_(p.get(pre + "mha.bo", zeros))
        layer.linear1.weight.copy_(p[pre + "ffn.W1"].T)
        layer.linear1.bias.copy_(p[pre + "ffn.b1"])
        layer.linear2.weight.copy_(p[pre + "ffn.W2"].T)
        layer.linear2.bias.copy_(p[pre + "ffn.b2"])
        for n in (1, 2):
            getattr(layer, f"norm{n}").weight.copy_(p[pre + f"norm{n}_gamma"])
            getattr(layer, f"norm{n}").bias.copy_(p[pre + f"norm{n}_beta"])
    return layer.train()  # train mode: the plain (non-fast-path) math; dropout is 0


@pytest.mark.parametrize(("variant", "profile"), [("mean", "torchlean"), ("cls", "torchlean"), ("cls", "timm")])
def test_forward_matches_an_independent_torch_nn_model(variant: str, profile: str) -> None:
    """Lean ViTSpec.forward via torch.nn blocks: Conv2d, flatten/transpose, TransformerEncoderLayer, pool, Linear."""
    m = VARIANTS[variant].init(TINY, *CHW, dtype=F64, profile=profile, seed=5)
    p = m.state_dict()
    x = rand(2, *CHW, seed=6)
    t = F.conv2d(x, p["patch_kernel"], p["patch_bias"], stride=2).flatten(2).transpose(1, 2)
    if variant == "cls":
        t = torch.cat([p["cls_token"].expand(2, 1, 8), t], dim=1)
    t = t + p["pos"]
    for i in range(TINY.num_layers):
        t = _torch_encoder_layer(m, i)(t)
    if m.profile.final_norm == "before_pool":
        t = F.layer_norm(t, (8,), p["final_norm_gamma"], p["final_norm_beta"], m.profile.ln_eps)
    pooled = t[:, 0] if variant == "cls" else t.mean(1)
    expected = F.linear(pooled, p["head_W"], p["head_b"])
    torch.testing.assert_close(m.forward(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("variant", ["mean", "cls"])
def test_capture_gives_every_stage_in_order(variant: str, profile: str) -> None:
    m = VARIANTS[variant].init(TINY, *CHW, dtype=F64, profile=prof_for(variant, profile))
    for batch in ((), (2,)):
        cap: dict[str, Tensor] = {}
        out = m.forward(rand(*batch, *CHW), capture=cap)
        assert list(cap) == m.stage_names(sub_ops=True)
        tokens = m.dims["tokens"]
        assert cap["patch_embed"].shape == (*batch, 6, 8)
        assert cap["pos_embed"].shape == (*batch, tokens, 8)
        for i in range(TINY.num_layers):
            for s in ("", ".attn", ".norm1", ".mlp", ".norm2"):
                assert cap[f"blocks.{i}{s}"].shape == (*batch, tokens, 8)
        assert cap["pool"].shape == (*batch, 8)
        assert torch.equal(cap["head"], out)
    names = m.stage_names()
    assert names[:2] == ["patch_embed", "pos_embed"] and names[-1] == "head"
    assert [n for n in names if n.startswith("blocks.")] == ["blocks.0", "blocks.1"]
    assert ("final_norm" in names) == (m.profile.final_norm != "none")


def test_stage_order_with_an_after_pool_norm_and_sub_op_semantics() -> None:
    prof = PROFILES["timm"].replace(final_norm="after_pool", pooling="mean")
    m = ViTClsSpec.init(TINY.replace(num_layers=1), *CHW, dtype=F64, profile=prof)
    assert m.stage_names() == ["patch_embed", "pos_embed", "blocks.0", "pool", "final_norm", "head"]
    assert m.stage_names(sub_ops=True)[2:7] == [
        "blocks.0.norm1", "blocks.0.attn", "blocks.0.norm2", "blocks.0.mlp", "blocks.0",
    ]  # fmt: skip
    cap: dict[str, Tensor] = {}
    m.forward(rand(*CHW), capture=cap)
    p = m.state_dict()
    # pre-norm: y = h + mlp, h = x + attn
    torch.testing.assert_close(cap["blocks.0"], cap["pos_embed"] + cap["blocks.0.attn"] + cap["blocks.0.mlp"])
    torch.testing.assert_close(cap["pool"], cap["blocks.0"][1:].mean(0))  # timm 'avg': patch tokens only
    fn = F.layer_norm(cap["pool"], (8,), p["final_norm_gamma"], p["final_norm_beta"], 1e-6)
    torch.testing.assert_close(cap["final_norm"], fn)
    post = ViTSpec.init(TINY.replace(num_layers=1), *CHW, dtype=F64)
    cap = {}
    post.forward(rand(*CHW), capture=cap)
    assert torch.equal(cap["blocks.0.norm2"], cap["blocks.0"])  # post-norm: LN2's output is the block's


@pytest.mark.parametrize(("pooling", "first"), [(None, None), ("token", None), ("mean", 1), ("mean_all", 0)])
def test_cls_poolings(pooling: str | None, first: int | None) -> None:
    m = ViTClsSpec.init(TINY, *CHW, dtype=F64, profile=PROFILES["torchlean"].replace(pooling=pooling))
    cap: dict[str, Tensor] = {}
    m.forward(rand(2, *CHW), capture=cap)
    last = cap["blocks.1"]
    expected = last[:, 0] if first is None else last[:, first:].mean(1)
    torch.testing.assert_close(cap["pool"], expected)


def test_head_norm_is_part_of_the_head() -> None:
    m = ViTClsSpec.init(TINY, *CHW, dtype=F64, profile="d2l")
    cap: dict[str, Tensor] = {}
    out = m.forward(rand(*CHW), capture=cap)
    p = m.state_dict()
    normed = F.layer_norm(cap["pool"], (8,), p["head_norm_gamma"], p["head_norm_beta"], 1e-5)
    torch.testing.assert_close(out, F.linear(normed, p["head_W"], p["head_b"]))


def test_linear_ln_patch_embedding() -> None:
    """vit-pytorch: (c, p1, p2)-flattened patches -> LN -> Linear -> LN (the kernel in conv layout)."""
    m = ViTClsSpec.init(TINY, *CHW, dtype=F64, profile="vit_pytorch")
    p = m.state_dict()
    x = rand(*CHW)
    cap: dict[str, Tensor] = {}
    m.forward(x, capture=cap)
    patches = x.reshape(2, 2, 2, 3, 2).permute(1, 3, 0, 2, 4).reshape(6, 8)  # (i, j) row-major, (c, u, v) cols
    h = F.layer_norm(patches, (8,), p["patch_norm_in_gamma"].reshape(-1), p["patch_norm_in_beta"].reshape(-1), 1e-5)
    y = F.linear(h, p["patch_kernel"].reshape(8, -1), p["patch_bias"])
    expected = F.layer_norm(y, (8,), p["patch_norm_out_gamma"], p["patch_norm_out_beta"], 1e-5)
    torch.testing.assert_close(cap["patch_embed"], expected)


# -- input errors ------------------------------------------------------------------------------------------
def test_input_rank_errors() -> None:
    m = ViTSpec.init(TINY, *CHW, dtype=F64)
    for x in (rand(4, 6), rand(1, 2, *CHW)):
        with pytest.raises(ShapeError, match=rf"rank 3 \(channels, in_h, in_w\) = \(2, 4, 6\).*got rank {x.dim()}"):
            m.forward(x)
    with pytest.raises(ShapeError, match=r"must be a torch\.Tensor"):
        m.forward([[1.0]])  # type: ignore[arg-type]


def test_input_channel_error_names_channels() -> None:
    m = ViTSpec.init(TINY, *CHW, dtype=F64)
    with pytest.raises(ShapeError) as ei:
        m.forward(rand(3, 3, 4, 6))
    e = ei.value
    assert (e.dim, e.expected, e.actual) == ("channels", 2, 3)
    assert "'channels' (axis 1) must be 2, got 3" in str(e)


@pytest.mark.parametrize("variant", ["mean", "cls"])
def test_input_size_error_shows_the_token_formula(variant: str) -> None:
    cfg = vitspec.preset("vit_tiny_patch16").replace(num_layers=0, embed_dim=6, head_count=3, hidden_dim=4)
    m = VARIANTS[variant].init(cfg, 3, 224, 224)
    with pytest.raises(ShapeError) as ei:
        m.forward(torch.zeros(3, 225, 224))
    msg = str(ei.value)
    plus = " + 1" if variant == "cls" else ""
    assert "'in_h' (axis 1) must be 224, got 225" in msg
    assert f"the model's pos has tokens = out_h*out_w{plus} = 14*14{plus} = {196 + len(plus) // 4} rows" in msg
    assert "out_h = (in_h + 2*padding - patch_h)/stride + 1 = (224 + 2*0 - 16)/16 + 1 = 14" in msg
    assert ei.value.dim == "in_h"
    with pytest.raises(ShapeError, match=r"'in_w' \(axis 3\) must be 224, got 200.*out_w ="):
        m.forward(torch.zeros(2, 3, 224, 200))


def test_input_dtype_and_device_errors_name_both() -> None:
    m = ViTSpec.init(TINY, *CHW, dtype=F64)
    with pytest.raises(
        ShapeError, match=r"x has dtype torch\.float32, but the model's parameters have dtype torch\.float64"
    ):
        m.forward(rand(*CHW).float())
    with pytest.raises(ShapeError, match="x has device meta, but the model's parameters have device cpu"):
        m.forward(torch.empty(*CHW, dtype=F64, device="meta"))
    with pytest.raises(ShapeError, match=r"dtype torch\.int64"):
        m.forward(torch.zeros(*CHW, dtype=torch.int64))
    with pytest.raises(ShapeError, match="backward: x has dtype"):
        m.backward(rand(*CHW).float(), torch.zeros(3))


# -- grads records -------------------------------------------------------------------------------------------
def test_grads_records_mirror_lean_and_round_trip() -> None:
    m = ViTClsSpec.init(TINY, *CHW, dtype=F64, profile="timm")
    grads, _ = m.backward(rand(*CHW), rand(3))
    assert isinstance(grads, ViTClsGrads) and isinstance(grads.d_encoder[0], EncoderLayerGrads)
    assert isinstance(grads.d_encoder[0].mha, MHAGrads) and isinstance(grads.d_encoder[0].ffn, FFNGrads)
    assert grads.d_cls_token.shape == (8,) and grads.d_pos.shape == (7, 8) and grads.d_head_W.shape == (3, 8)
    assert grads.d_encoder[1].mha.dbq is not None and grads.d_final_norm_gamma is not None
    assert grads.d_head_norm_gamma is None and grads.d_patch_norm_in_gamma is None
    d = grads.to_dict()
    assert list(d) == list(m.state_dict())
    assert d["encoder.1.ffn.W2"] is grads.d_encoder[1].ffn.dW2
    back = ViTClsGrads.from_dict(d)
    assert list(back.to_dict()) == list(d) and all(back.to_dict()[k] is t for k, t in d.items())
    assert dict(iter(grads)) == d
    spec_grads, _ = ViTSpec.init(TINY, *CHW, dtype=F64).backward(rand(*CHW), rand(3))
    assert type(spec_grads) is ViTGrads and spec_grads.d_encoder[0].mha.dbq is None
    assert list(ViTGrads.from_dict(spec_grads.to_dict()).to_dict()) == list(spec_grads.to_dict())


def test_grads_from_dict_lists_every_problem() -> None:
    d = ViTClsSpec.init(TINY, *CHW, dtype=F64).backward(rand(*CHW), rand(3))[0].to_dict()
    with pytest.raises(MappingError) as ei:
        ViTGrads.from_dict(d)  # the mean-pool record has no cls_token
    assert ei.value.unexpected == ("cls_token",)
    broken = {k: v for k, v in d.items() if k not in ("pos", "encoder.1.ffn.b1")}
    broken["encoder.1.mha.Wx"] = d["pos"]
    with pytest.raises(MappingError) as ei:
        ViTClsGrads.from_dict(broken)
    assert set(ei.value.missing) == {"pos", "encoder.1.ffn.b1"}
    assert ei.value.unexpected == ("encoder.1.mha.Wx",)


# -- package surface ------------------------------------------------------------------------------------------
def test_package_exports() -> None:
    from vitspec.autograd import SpecViT

    assert vitspec.ViTSpec is ViTSpec and vitspec.ViTClsSpec is ViTClsSpec
    assert vitspec.ViTGrads is ViTGrads and vitspec.ViTClsGrads is ViTClsGrads and vitspec.SpecViT is SpecViT
    assert issubclass(ViTClsSpec, ViTSpec.__mro__[1]) and ViTSpec.variant == "mean" and ViTClsSpec.variant == "cls"
    r = repr(ViTSpec.init(TINY, *CHW))
    assert r.startswith("ViTSpec(ViTConfig(") and "profile='torchlean'" in r and "params=" in r


def test_encoder_layer_is_shape_checked_under_bound_dims() -> None:
    m = ViTSpec.init(TINY, *CHW, dtype=F64)
    lp = m._layer(0)
    x = rand(6, 8)
    with shape_checks(True), vitspec.bind_dims(m.dims), pytest.raises(ShapeError, match="'hidden_dim'"):
        encoder_layer(x, lp.Wq, lp.Wk, lp.Wv, lp.Wo, lp.W1[:, :5], lp.b1, lp.W2, lp.b2,
                      lp.norm1_gamma, lp.norm1_beta, lp.norm2_gamma, lp.norm2_beta, heads=2)  # fmt: skip
    with shape_checks(True), vitspec.bind_dims(m.dims), pytest.raises(ShapeError, match="'tokens'"):
        encoder_layer(rand(5, 8), lp.Wq, lp.Wk, lp.Wv, lp.Wo, lp.W1, lp.b1, lp.W2, lp.b2,
                      lp.norm1_gamma, lp.norm1_beta, lp.norm2_gamma, lp.norm2_beta, heads=2)  # fmt: skip
