"""The spec model under the variation points (issue 11 phase 2): ``Profile`` fields beyond TorchLean.

For every field (alone, and all together) the model's explicit backward equals autograd through its
forward in float64 (every gradient and ``grad_x``, cache and recompute, with and without a batch axis),
each stage run alone on its captured input reproduces the captured output, a perturbed LayerScale gain is
located at its sub-op, every non-default value is a deviation line, and the combinations no library
builds are refused. The TorchLean profiles keep their keys, shapes and stages (hard-coded below).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from vitspec.config import ViTConfig, config_violations
from vitspec.errors import ConfigError, MappingError
from vitspec.models import ViTClsSpec, ViTSpec
from vitspec.models.grads import ViTClsGrads
from vitspec.models.vit import ViTBase, load
from vitspec.profiles import PROFILES, VARIATION_FIELDS, Profile, deviations, variations_markdown

F64 = torch.float64
CFG = ViTConfig(4, 4, 4, 0, 16, 24, 2, 2, 5)  # embed 16, hidden 24, 2 heads, 2 layers, 5 classes
CHW = (3, 8, 12)  # a 2x3 patch grid: non-square, so a row/column mix-up in a 2-D table shows
TIMM = PROFILES["timm"]  # pre-norm, GELU, biases, final norm: the base the libraries' variations sit on
DOCS = Path(__file__).resolve().parents[1] / "docs"

#: name -> (variant, profile): each variation field alone (on the library base it occurs with), then all at once.
CASES: dict[str, tuple[str, Profile]] = {
    "head_dim": ("cls", TIMM.replace(head_dim=6)),  # attn_dim 12 != embed_dim 16
    "head_dim_post": ("mean", PROFILES["torchlean"].replace(head_dim=5)),
    "layer_scale": ("cls", TIMM.replace(layer_scale=True)),
    "reg_tokens": ("cls", TIMM.replace(reg_tokens=3)),
    "reg_tokens_avg": ("mean", TIMM.replace(reg_tokens=2, pooling="mean")),
    "dist_linear": ("cls", TIMM.replace(dist_token=True)),
    "dist_distilled": ("cls", TIMM.replace(dist_token=True, head="distilled")),
    "no_embed_class": ("cls", TIMM.replace(pos_prefix="none", reg_tokens=2)),
    "dinov2_reg": ("cls", TIMM.replace(pos_prefix="cls", reg_tokens=2, pooling="cls_mean_concat")),
    "cls_mean_concat": ("cls", TIMM.replace(pooling="cls_mean_concat")),
    "pos_none": ("cls", TIMM.replace(pos_embed="none")),
    "sincos_1d": ("mean", TIMM.replace(pos_embed="sincos_1d", pooling="mean")),
    "sincos_2d": ("mean", TIMM.replace(pos_embed="sincos_2d", pooling="mean")),
    "sincos_2d_timm": ("mean", TIMM.replace(pos_embed="sincos_2d_timm", pooling="mean")),
    "clip": ("cls", TIMM.replace(pre_norm=True, patch_bias=False, activation="quick_gelu", final_norm="after_pool")),
    "quick_gelu_post": ("mean", PROFILES["torchlean"].replace(activation="quick_gelu")),
    "head_bias": ("cls", TIMM.replace(head_bias=False)),
    "qk_norm": ("cls", TIMM.replace(qk_norm=True)),
    "qk_norm_rms": ("cls", TIMM.replace(qk_norm=True, norm="rms", pre_norm=True)),
    "rms": ("cls", TIMM.replace(norm="rms", final_norm="after_pool", head_norm=True)),
    "no_bias": ("cls", TIMM.replace(ffn_bias=False, out_bias=False)),
    "no_bias_post": ("mean", PROFILES["torchlean"].replace(ffn_bias=False)),
    "swiglu": ("cls", TIMM.replace(ffn="glu", activation="silu")),
    "glu_sigmoid_nobias": ("cls", TIMM.replace(ffn="glu", activation="sigmoid", ffn_bias=False)),
    "map": ("mean", TIMM.replace(pooling="map")),  # SigLIP: no class token, MAP head
    "map_prefix_avg": ("cls", TIMM.replace(pooling="map", reg_tokens=1, map_latents=3, map_pool="avg")),
    "all": ("cls", TIMM.replace(
        head_dim=6, layer_scale=True, reg_tokens=2, pos_prefix="none", pre_norm=True, patch_bias=False,
        qk_norm=True, ffn="glu", activation="silu", ffn_bias=False, out_bias=False, norm="rms",
    )),
}  # fmt: skip


def build(name: str, seed: int = 0) -> ViTBase:
    variant, prof = CASES[name]
    cls = ViTClsSpec if variant == "cls" else ViTSpec
    return cls.init(CFG, *CHW, seed=seed, dtype=F64, profile=prof)


def inputs(m: ViTBase, batch: int | None) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    lead = () if batch is None else (batch,)
    return torch.randn(*lead, *CHW, generator=g, dtype=F64), torch.randn(*lead, CFG.num_classes, generator=g, dtype=F64)


def autograd_reference(m: ViTBase, x: Tensor, cotangent: Tensor, stage: str | None = None) -> dict[str, Tensor]:
    """Autograd through ``forward`` (of the logits, or of a captured ``stage``) on leaf copies of every tensor."""
    sd = {k: v.detach().clone().requires_grad_() for k, v in m.state_dict().items()}
    r = type(m).from_state_dict(m.cfg, m.in_c, m.in_h, m.in_w, sd, profile=m.profile)
    xr = x.detach().clone().requires_grad_()
    cap: dict[str, Tensor] = {}
    out = r.forward(xr, capture=cap)
    got = torch.autograd.grad(out if stage is None else cap[stage], [xr, *sd.values()], cotangent, allow_unused=True)
    ref = {k: (g if g is not None else torch.zeros_like(sd[k])) for k, g in zip(sd, got[1:], strict=True)}
    return {**ref, "grad_x": got[0]}


def assert_matches(m: ViTBase, grads: dict[str, Tensor], grad_x: Tensor, ref: dict[str, Tensor]) -> None:
    assert list(grads) == list(m.state_dict()), "grads.to_dict() keys must be the state-dict keys, in order"
    for key, g in [*grads.items(), ("grad_x", grad_x)]:
        e = ref[key]
        assert g.shape == e.shape, key
        scale = max(1.0, e.abs().max().item())
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11 * scale, msg=lambda s, key=key: f"{key}: {s}")


@pytest.mark.parametrize("mode", ["cache", "recompute"])
@pytest.mark.parametrize("batch", [None, 2], ids=["single", "batch"])
@pytest.mark.parametrize("name", list(CASES))
def test_explicit_backward_equals_autograd(name: str, batch: int | None, mode: str) -> None:
    m = build(name)
    x, go = inputs(m, batch)
    grads, gx = m.backward(x, go, mode=mode)  # type: ignore[arg-type]
    assert gx is not None
    assert_matches(m, grads.to_dict(), gx, autograd_reference(m, x, go))


@pytest.mark.parametrize("name", ["layer_scale", "cls_mean_concat", "clip", "rms", "map", "map_prefix_avg", "all"])
def test_grad_pooled_is_the_cotangent_of_the_head_input(name: str) -> None:
    m = build(name)
    x, _ = inputs(m, 2)
    width = 2 * CFG.embed_dim if name == "cls_mean_concat" else CFG.embed_dim
    gp = torch.randn(2, width, generator=torch.Generator().manual_seed(3), dtype=F64)
    grads, gx = m.backward(x, grad_pooled=gp)
    assert gx is not None
    stage = "final_norm" if m.profile.final_norm == "after_pool" else "pool"
    ref = autograd_reference(m, x, gp, stage)
    d = grads.to_dict()
    for key in ("head_W", "head_b", "head_norm_gamma", "head_norm_beta"):
        if key in d:  # the head is past the cotangent: zeros, as autograd finds
            ref[key] = torch.zeros_like(d[key])
    assert_matches(m, d, gx, ref)


def test_a_distilled_head_has_no_pooled_vector() -> None:
    m = build("dist_distilled")
    x, _ = inputs(m, 2)
    assert "pool" not in m.stage_names()
    with pytest.raises(ConfigError, match="no pooled vector"):
        m.backward(x, grad_pooled=torch.zeros(2, CFG.embed_dim, dtype=F64))


@pytest.mark.parametrize("name", list(CASES))
def test_every_stage_alone_reproduces_its_captured_output(name: str) -> None:
    """``run_stage(s, stage_input(s, ...))`` == the captured ``s``: the isolation the conformance check uses."""
    m = build(name)
    x, _ = inputs(m, 2)
    cap: dict[str, Tensor] = {}
    logits = m.forward(x, capture=cap)
    names = m.stage_names(sub_ops=True)
    assert set(cap) == set(names), set(cap) ^ set(names)
    for s in names:
        inp = m.stage_input(s, cap, x)
        assert inp is not None, s
        torch.testing.assert_close(m.run_stage(s, inp), cap[s], rtol=1e-12, atol=1e-12, msg=s)
    torch.testing.assert_close(cap["head"], logits, rtol=0, atol=0)


def test_layer_scale_sub_ops_and_a_perturbed_gain_is_located_at_its_sub_op() -> None:
    m = build("layer_scale")
    assert m.stage_names(sub_ops=True)[2:9] == [
        "blocks.0.norm1", "blocks.0.attn", "blocks.0.ls1", "blocks.0.norm2", "blocks.0.mlp", "blocks.0.ls2", "blocks.0",
    ]  # fmt: skip
    x, _ = inputs(m, 2)
    cap: dict[str, Tensor] = {}
    m.forward(x, capture=cap)
    gamma = m.state_dict()["encoder.1.ls1_gamma"]
    torch.testing.assert_close(cap["blocks.1.ls1"], cap["blocks.1.attn"] * gamma, rtol=0, atol=0)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["encoder.1.ls1_gamma"][3] *= 1.01
    bad = type(m).from_state_dict(CFG, *CHW, sd, profile=m.profile)
    cap2: dict[str, Tensor] = {}
    bad.forward(x, capture=cap2)
    first = next(s for s in m.stage_names(sub_ops=True) if not torch.equal(cap[s], cap2[s]))
    assert first == "blocks.1.ls1"


def test_pre_norm_is_a_stage_after_pos_embed() -> None:
    m = build("clip")
    assert m.stage_names()[:3] == ["patch_embed", "pos_embed", "pre_norm"]
    assert "patch_bias" not in m.state_dict() and "head_b" in m.state_dict()
    assert "head_b" not in build("head_bias").state_dict()


def test_shapes_of_the_variation_parameters() -> None:
    s = build("all").param_shapes()
    assert s["encoder.0.mha.Wq"] == (16, 12) and s["encoder.0.mha.Wo"] == (12, 16)  # 2 heads * head_dim 6
    assert s["encoder.0.mha.q_norm_gamma"] == (6,) and "encoder.0.mha.q_norm_beta" not in s  # RMSNorm: no beta
    assert s["reg_tokens"] == (2, 16) and s["pos"] == (6, 16)  # no_embed_class: pos covers the 6 patches only
    assert s["encoder.0.ffn.Wg"] == (16, 24) and "encoder.0.ffn.b1" not in s and "encoder.0.ffn.bg" not in s
    assert "encoder.0.norm1_beta" not in s and "pre_norm_beta" not in s and s["pre_norm_gamma"] == (16,)
    assert build("dinov2_reg").param_shapes()["pos"] == (7, 16)  # CLS row + 6 patches; registers uncovered
    assert build("dinov2_reg").param_shapes()["head_W"] == (5, 32)  # [CLS; mean]
    assert build("dist_distilled").param_shapes()["head_dist_W"] == (5, 16)
    assert build("dist_distilled").tokens == 6 + 2
    assert "pos" not in build("sincos_2d").param_shapes() and "pos" not in build("pos_none").param_shapes()
    s = build("map_prefix_avg").param_shapes()
    assert s["map.latent"] == (3, 16) and s["map.W1"] == (16, 24) and s["map.Wk"] == (16, 16)


def test_the_fixed_tables_are_added_row_major() -> None:
    """sin-cos 2-D: token ``t = i*out_w + j`` gets the table row of (i, j) -- read off pos_embed - patch_embed."""
    for name in ("sincos_1d", "sincos_2d", "sincos_2d_timm"):
        m = build(name)
        x, _ = inputs(m, None)
        cap: dict[str, Tensor] = {}
        m.forward(x, capture=cap)
        table = cap["pos_embed"] - cap["patch_embed"]
        assert table.shape == (6, 16)
        # Row 1 (i=0, j=1) and row 3 (i=1, j=0) differ: the table depends on both grid axes, in that order.
        assert not torch.allclose(table[1], table[3])
    t = build("sincos_2d")
    cap = {}
    t.forward(inputs(t, None)[0], capture=cap)
    row = cap["pos_embed"][0] - cap["patch_embed"][0]  # (i, j) = (0, 0): sin 0 = 0, cos 0 = 1 per quarter
    expect = torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4, dtype=F64)
    torch.testing.assert_close(row, expect, rtol=0, atol=1e-7)


# -- TorchLean unchanged ------------------------------------------------------------------------------------
def test_torchlean_profiles_keep_every_variation_field_at_its_default() -> None:
    spec = Profile("x")
    for name, p in PROFILES.items():
        for f in VARIATION_FIELDS:
            assert getattr(p, f) == getattr(spec, f), (name, f)
        assert deviations(p, variant="cls", against=p) == []


def test_torchlean_keys_shapes_and_stages_are_the_spec() -> None:
    m = ViTClsSpec.init(CFG.replace(num_layers=1), *CHW, dtype=F64)
    layer = ["mha.Wq", "mha.Wk", "mha.Wv", "mha.Wo", "ffn.W1", "ffn.b1", "ffn.W2", "ffn.b2",
             "norm1_gamma", "norm1_beta", "norm2_gamma", "norm2_beta"]  # fmt: skip
    assert list(m.state_dict()) == [
        "patch_kernel", "patch_bias", "cls_token", "pos", *[f"encoder.0.{k}" for k in layer], "head_W", "head_b",
    ]  # fmt: skip
    assert m.param_shapes()["pos"] == (7, 16) and m.param_shapes()["head_W"] == (5, 16)
    assert m.stage_names(sub_ops=True) == [
        "patch_embed", "pos_embed", "blocks.0.attn", "blocks.0.norm1", "blocks.0.mlp", "blocks.0.norm2", "blocks.0",
        "pool", "head",
    ]  # fmt: skip


# -- deviations, violations, docs, files -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "line"),
    [
        ({"head_dim": 64}, "attention width heads*head_dim: head_dim=64 (spec: embed_dim // heads)"),
        ({"layer_scale": True}, "layer scale: on (spec: off)"),
        ({"dist_token": True}, "distillation token: on (spec: off)"),
        ({"reg_tokens": 4}, "register tokens: 4 (spec: 0)"),
        ({"pos_embed": "sincos_2d"}, "position embedding: sincos_2d (spec: learned)"),
        ({"pos_prefix": "none"}, "pos on prefix rows: none (spec: all)"),
        ({"pre_norm": True}, "norm before the blocks: on (spec: off)"),
        ({"patch_bias": False}, "patch embedding bias: off (spec: on)"),
        ({"norm": "rms"}, "norm kind: rms (spec: layer)"),
        ({"qk_norm": True}, "q/k norm: on (spec: off)"),
        ({"ffn": "glu"}, "FFN kind: glu (spec: mlp)"),
        ({"ffn_bias": False}, "FFN biases: off (spec: on)"),
        ({"head_bias": False}, "head bias: off (spec: on)"),
        ({"head": "distilled"}, "head: distilled (spec: linear)"),
        ({"activation": "quick_gelu"}, "FFN activation: quick_gelu (spec: relu)"),
        ({"pooling": "cls_mean_concat"}, "pooling: cls_mean_concat (spec: token)"),
        ({"pooling": "map"}, "pooling: map (spec: token)"),
        ({"pooling": "map", "map_latents": 2}, "pooling: map (spec: token)"),  # and the next line
        ({"pooling": "map", "map_pool": "avg"}, "pooling: map (spec: token)"),
    ],
)
def test_every_non_default_value_is_one_deviation_line(change: dict[str, object], line: str) -> None:
    extra = {"map_latents": ["MAP latents: 2 (spec: 1)"], "map_pool": ["MAP pool: avg (spec: token)"]}
    more = [x for f in change if f in extra for x in extra[f]]
    assert deviations(PROFILES["torchlean"].replace(**change), variant="cls") == [line, *more]


def test_every_variation_field_has_a_deviation_case() -> None:
    cases = test_every_non_default_value_is_one_deviation_line.pytestmark[0].args[1]  # type: ignore[attr-defined]
    assert set(VARIATION_FIELDS) <= {f for change, _ in cases for f in change}


@pytest.mark.parametrize(
    ("variant", "change", "field"),
    [
        ("cls", {"layer_scale": True}, "layer_scale"),  # post-norm base
        ("cls", {"qk_norm": True}, "qk_norm"),
        ("cls", {"ffn": "glu", "activation": "silu"}, "ffn"),
        ("cls", {"norm": "rms"}, "norm"),
        ("cls", {"norm_placement": "pre", "qk_norm": True, "head_split": "direct_reshape"}, "qk_norm"),
        ("cls", {"pos_embed": "sincos_2d"}, "pos_embed"),  # a CLS row under a fixed table
        ("mean", {"pos_prefix": "none", "pos_embed": "none"}, "pos_prefix"),
        ("mean", {"pos_prefix": "cls"}, "pos_prefix"),
        ("cls", {"head": "distilled"}, "head"),
        ("mean", {"dist_token": True}, "dist_token"),
        ("mean", {"pooling": "cls_mean_concat"}, "pooling"),
        ("cls", {"norm_placement": "pre", "ffn": "glu", "activation": "relu"}, "activation"),
        ("cls", {"patch_embed": "linear_ln", "patch_bias": False}, "patch_embed"),
        ("cls", {"norm_placement": "pre", "pooling": "map", "norm": "rms"}, "pooling"),
        ("cls", {"map_latents": 2}, "map_latents"),  # without MAP pooling
    ],
)
def test_combinations_no_library_builds_are_refused(variant: str, change: dict[str, object], field: str) -> None:
    prof = PROFILES["torchlean"].replace(**change)
    v = config_violations(CFG, *CHW, variant=variant, profile=prof)  # type: ignore[arg-type]
    assert field in [x.field for x in v], v
    with pytest.raises(ConfigError, match=field):
        (ViTClsSpec if variant == "cls" else ViTSpec).init(CFG, *CHW, profile=prof)


def test_head_dim_lifts_the_heads_divide_requirement() -> None:
    cfg = CFG.replace(head_count=3)  # 16 % 3 != 0
    assert config_violations(cfg, *CHW, variant="cls", profile=TIMM)  # PyTorch-style attention needs it
    assert not config_violations(cfg, *CHW, variant="cls", profile=TIMM.replace(head_dim=8))


@pytest.mark.parametrize(("field", "bad"), [("head_dim", 0), ("reg_tokens", -1), ("layer_scale", 1), ("ffn", "swiglu")])
def test_invalid_field_values_are_refused(field: str, bad: object) -> None:
    with pytest.raises(ConfigError, match=field):
        Profile("x", **{field: bad})  # type: ignore[arg-type]


def test_profiles_doc_lists_every_variation_point() -> None:
    text = (DOCS / "profiles.md").read_text(encoding="utf-8")
    assert variations_markdown() in text, "docs/profiles.md is stale: paste vitspec.profiles.variations_markdown()"
    for f in VARIATION_FIELDS:
        assert f"| `{f}` |" in text


def test_a_variation_model_round_trips_through_a_file_and_its_grads_through_a_dict(tmp_path: Path) -> None:
    m = build("all")
    m.save(tmp_path / "m.safetensors")
    back = load(tmp_path / "m.safetensors")
    assert back.profile == m.profile and list(back.state_dict()) == list(m.state_dict())
    x, go = inputs(m, 2)
    d = m.backward(x, go)[0].to_dict()
    again = ViTClsGrads.from_dict(d, profile=m.profile).to_dict()
    assert list(again) == list(d) and all(torch.equal(again[k], d[k]) for k in d)
    with pytest.raises(MappingError, match=r"ffn\.b1"):  # without the profile: the spec's FFN biases are expected
        ViTClsGrads.from_dict(d)
