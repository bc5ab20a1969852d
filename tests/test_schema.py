"""The spec schema (``vitspec.schema``) against expectations written down independently of it:
parameter counts from timm / torchvision's own ``numel`` sums and the Lean bundle worked out by
hand, shapes of a tiny config typed in by hand, stage and sub-op orders from the encoder layer's
equations, and the Lean records' field names."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from vitspec import ConfigError, Profile, ViTConfig, get_profile, param_count, schema
from vitspec.models import EncoderLayerGrads, FFNGrads, MHAGrads, ViTClsGrads, ViTClsSpec, ViTGrads, ViTSpec

DOCS = Path(__file__).resolve().parents[1] / "docs"

# patch 2x2, stride 2, padding 0; embed 8, hidden 12, 2 heads, 1 layer, 3 classes; input (3, 4, 6):
# out_h = (4 - 2)/2 + 1 = 2, out_w = (6 - 2)/2 + 1 = 3, so 6 patches.
TINY = ViTConfig(2, 2, 2, 0, 8, 12, 2, 1, 3)
CHW = (3, 4, 6)

TINY_TORCHLEAN_MEAN = {
    "patch_kernel": (8, 3, 2, 2),
    "patch_bias": (8,),
    "pos": (6, 8),
    "encoder.0.mha.Wq": (8, 8),
    "encoder.0.mha.Wk": (8, 8),
    "encoder.0.mha.Wv": (8, 8),
    "encoder.0.mha.Wo": (8, 8),
    "encoder.0.ffn.W1": (8, 12),
    "encoder.0.ffn.b1": (12,),
    "encoder.0.ffn.W2": (12, 8),
    "encoder.0.ffn.b2": (8,),
    "encoder.0.norm1_gamma": (8,),
    "encoder.0.norm1_beta": (8,),
    "encoder.0.norm2_gamma": (8,),
    "encoder.0.norm2_beta": (8,),
    "head_W": (3, 8),
    "head_b": (3,),
}

TINY_TIMM_CLS = {
    "patch_kernel": (8, 3, 2, 2),
    "patch_bias": (8,),
    "cls_token": (8,),
    "pos": (7, 8),
    "encoder.0.mha.Wq": (8, 8),
    "encoder.0.mha.Wk": (8, 8),
    "encoder.0.mha.Wv": (8, 8),
    "encoder.0.mha.Wo": (8, 8),
    "encoder.0.mha.bq": (8,),
    "encoder.0.mha.bk": (8,),
    "encoder.0.mha.bv": (8,),
    "encoder.0.mha.bo": (8,),
    "encoder.0.ffn.W1": (8, 12),
    "encoder.0.ffn.b1": (12,),
    "encoder.0.ffn.W2": (12, 8),
    "encoder.0.ffn.b2": (8,),
    "encoder.0.norm1_gamma": (8,),
    "encoder.0.norm1_beta": (8,),
    "encoder.0.norm2_gamma": (8,),
    "encoder.0.norm2_beta": (8,),
    "final_norm_gamma": (8,),
    "final_norm_beta": (8,),
    "head_W": (3, 8),
    "head_b": (3,),
}


def test_tiny_shapes_match_the_hand_written_tables() -> None:
    got = schema.param_shapes(TINY, *CHW, variant="mean", profile=get_profile("torchlean"))
    assert list(got.items()) == list(TINY_TORCHLEAN_MEAN.items()), "keys, shapes and state-dict order"
    got = schema.param_shapes(TINY, *CHW, variant="cls", profile=get_profile("timm"))
    assert list(got.items()) == list(TINY_TIMM_CLS.items())


def test_profile_only_parameters_sit_where_the_table_says() -> None:
    vp = schema.param_shapes(TINY, *CHW, variant="cls", profile=get_profile("vit_pytorch"))
    keys = list(vp)
    # vit-pytorch: LayerNorm over each flattened patch (channels*patch_h*patch_w values), then over E.
    assert keys[:6] == [
        "patch_kernel",
        "patch_bias",
        "patch_norm_in_gamma",
        "patch_norm_in_beta",
        "patch_norm_out_gamma",
        "patch_norm_out_beta",
    ]
    assert vp["patch_norm_in_gamma"] == (3, 2, 2) and vp["patch_norm_out_beta"] == (8,)
    assert "encoder.0.mha.bq" not in vp and vp["encoder.0.mha.bo"] == (8,)
    d2l = schema.param_shapes(TINY, *CHW, variant="cls", profile=get_profile("d2l"))
    assert list(d2l)[-4:] == ["head_norm_gamma", "head_norm_beta", "head_W", "head_b"]
    assert "final_norm_gamma" not in d2l


def test_floor_head_width_gives_the_attention_width() -> None:
    # 3 heads over embed 8: per-head width floor(8/3) = 2, so Q/K/V are 3*2 = 6 wide (Lean Nat division).
    cfg = TINY.replace(head_count=3)
    s = schema.param_shapes(cfg, *CHW, variant="mean", profile=get_profile("torchlean"))
    assert s["encoder.0.mha.Wq"] == (8, 6) and s["encoder.0.mha.Wo"] == (6, 8)


def test_vit_base_counts_match_the_libraries_own_counts() -> None:
    b16 = ViTConfig()  # Lean vitBasePatch16Config
    # timm.create_model("vit_base_patch16_224").parameters() and torchvision vit_b_16 both sum to
    # 86,567,656 scalars (numel, measured with timm 1.x / torchvision 0.29, random init).
    assert schema.param_count(b16, 3, 224, 224, variant="cls", profile=get_profile("timm")) == 86_567_656
    assert param_count(b16, 3, 224, 224, "cls", profile="torchvision") == 86_567_656
    # The Lean bundle, by hand: kernel 768*3*16*16 + bias 768; pos 196*768; per layer Wq Wk Wv Wo
    # 4*768*768, W1 b1 W2 b2 2*768*3072 + 3072 + 768, two LayerNorms 4*768; head 1000*768 + 1000.
    per_layer = 4 * 768 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
    lean = 768 * 3 * 16 * 16 + 768 + 196 * 768 + 12 * per_layer + 1000 * 768 + 1000
    assert lean == 86_527_720
    assert param_count(b16, 3, 224, 224) == lean


@pytest.mark.thirdparty
def test_vit_tiny_count_equals_timm_numel() -> None:
    timm = pytest.importorskip("timm")
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    want = sum(p.numel() for p in m.parameters())
    assert want == 5_717_416
    assert (
        param_count(ViTConfig(embed_dim=192, hidden_dim=768, head_count=3), 3, 224, 224, "cls", profile="timm") == want
    )


@pytest.mark.parametrize(("variant", "profile"), [("mean", "torchlean"), ("cls", "timm"), ("cls", "vit_pytorch")])
def test_models_and_grads_use_the_schema_keys(variant: str, profile: str) -> None:
    cls = ViTClsSpec if variant == "cls" else ViTSpec
    m = cls.init(TINY.replace(num_layers=2), *CHW, profile=profile)
    want = schema.param_keys(2, variant=variant, profile=m.profile)
    assert list(m.state_dict()) == want
    grads = m.grads_type.from_dict(m.state_dict())
    assert list(grads.to_dict()) == want


def test_grads_fields_are_the_lean_records_fields() -> None:
    """Every row's ``grad`` names a field of the record that mirrors the Lean one."""
    fields = {f.name for f in dataclasses.fields(ViTClsGrads)}
    assert {f.name for f in dataclasses.fields(ViTGrads)} < fields
    for row in schema.EMBED_PARAMS + schema.HEAD_PARAMS:
        assert row.grad in fields, row
    layer = {
        "mha": {f.name for f in dataclasses.fields(MHAGrads)},
        "ffn": {f.name for f in dataclasses.fields(FFNGrads)},
        "": {f.name for f in dataclasses.fields(EncoderLayerGrads)},
    }
    for row in schema.LAYER_PARAMS:
        record, _, name = row.grad.rpartition(".")
        assert name in layer[record], row
    # Lean's own names (Transformer.lean MultiHeadAttentionGrads / FeedForwardGrads, Vit.lean ViTGrads).
    assert {"dWq", "dWk", "dWv", "dWo"} <= layer["mha"] and {"dW1", "dW2", "db1", "db2"} <= layer["ffn"]
    assert {"d_patch_kernel", "d_patch_bias", "d_pos", "d_encoder", "d_head_W", "d_head_b"} <= fields


def test_stage_names_follow_the_forward() -> None:
    assert schema.stage_names(2, final_norm="none") == [
        "patch_embed",
        "pos_embed",
        "blocks.0",
        "blocks.1",
        "pool",
        "head",
        "output",
    ]
    assert schema.stage_names(1, final_norm="before_pool", sub_ops=True, norm_placement="pre") == [
        "patch_embed",
        "pos_embed",
        "blocks.0.norm1",
        "blocks.0.attn",
        "blocks.0.norm2",
        "blocks.0.mlp",
        "blocks.0",
        "final_norm",
        "pool",
        "head",
        "output",
    ]
    assert schema.stage_names(0, final_norm="after_pool", has_head=False) == [
        "patch_embed",
        "pos_embed",
        "pool",
        "final_norm",
        "output",
    ]


def test_sub_op_order_is_the_encoder_layers_order() -> None:
    # post: h = LN1(x + MHA(x)); y = LN2(h + FFN(h))     pre: h = x + MHA(LN1(x)); y = h + FFN(LN2(h))
    assert schema.sub_op_order("post") == ("attn", "norm1", "mlp", "norm2")
    assert schema.sub_op_order("pre") == ("norm1", "attn", "norm2", "mlp")
    with pytest.raises(ValueError, match="norm_placement"):
        schema.sub_op_order("middle")


def test_model_stages_are_the_schema_stages_and_output_is_what_forward_returns() -> None:
    m = ViTClsSpec.init(TINY, *CHW, profile=get_profile("timm").replace(final_norm="after_pool"))
    assert m.stage_names(output=True) == schema.stage_names(1, final_norm="after_pool")
    assert m.stage_names() == m.stage_names(output=True)[:-1]
    cap: dict[str, torch.Tensor] = {}
    out = m.forward(torch.randn(*CHW), capture=cap)
    assert list(cap) == m.stage_names(sub_ops=True)
    assert torch.equal(cap["head"], out)  # the spec's output stage is its head's logits


@pytest.mark.parametrize(
    ("key", "group"),
    [
        ("encoder.3.mha.Wq", "blocks.3"),
        ("encoder.10.norm2_beta", "blocks.10"),
        ("encoder.0.ffn.b1", "blocks.0"),
        ("pos", "pos_embed"),
        ("cls_token", "pos_embed"),
        ("patch_kernel", "patch_embed"),
        ("patch_norm_in_gamma", "patch_embed"),
        ("final_norm_beta", "final_norm"),
        ("head_norm_gamma", "head"),
        ("head_W", "head"),
        ("grad_x", "input"),
        ("something_else", "other"),
    ],
)
def test_grad_group(key: str, group: str) -> None:
    assert schema.grad_group(key) == group


def test_group_rank_is_backward_order() -> None:
    groups = ["input", "blocks.0", "pos_embed", "head", "blocks.2", "patch_embed", "final_norm", "blocks.1", "other"]
    got = sorted(groups, key=lambda g: schema.group_rank(g, 3))
    want = ["head", "final_norm", "blocks.2", "blocks.1", "blocks.0", "pos_embed", "patch_embed", "input", "other"]
    assert got == want


def test_literals_are_the_profile_vocabulary() -> None:
    assert set(schema.VARIANTS) == {"mean", "cls"}
    assert set(schema.NORM_PLACEMENTS) == {"post", "pre"}
    assert set(schema.FINAL_NORMS) == {"none", "before_pool", "after_pool"}
    # quick_gelu / silu / sigmoid, cls_mean_concat and map are variation points (vitspec.primitives.variations)
    assert set(schema.ACTIVATIONS) == {"relu", "gelu_erf", "gelu_tanh", "quick_gelu", "silu", "sigmoid"}
    assert set(schema.POOLINGS) == {"mean", "token", "mean_all", "cls_mean_concat", "map"}
    assert set(schema.PATCH_EMBEDS) == {"conv", "linear_ln"}
    for field, bad in (("activation", "swish"), ("final_norm", "after_head"), ("patch_embed", "linear")):
        with pytest.raises(ConfigError, match=field):
            Profile("x", **{field: bad})  # type: ignore[arg-type]


def test_a_new_row_extends_every_derived_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schema is data: one more per-layer row (a LayerScale-like gain) shows up in the keys, the
    shapes, the count and the gradient groups, with nothing else edited."""
    gain = schema.Param("ls1", ("embed_dim",), "blocks.{i}", "d_ls1", "(none)", schema.When("test"), "attn")
    monkeypatch.setattr(schema, "LAYER_PARAMS", (*schema.LAYER_PARAMS, gain))
    prof = get_profile("torchlean")
    shapes = schema.param_shapes(TINY.replace(num_layers=2), *CHW, variant="mean", profile=prof)
    assert shapes["encoder.0.ls1"] == (8,) and shapes["encoder.1.ls1"] == (8,)
    assert list(shapes).index("encoder.0.ls1") == list(shapes).index("encoder.0.norm2_beta") + 1
    two_gains = 2 * 8  # one (embed_dim,) gain per layer, two layers
    n = schema.param_count(TINY.replace(num_layers=2), *CHW, variant="mean", profile=prof)
    monkeypatch.undo()
    assert n == schema.param_count(TINY.replace(num_layers=2), *CHW, variant="mean", profile=prof) + two_gains
    assert schema.grad_group("encoder.1.ls1") == "blocks.1"


def test_architecture_doc_holds_the_generated_vocabulary_table() -> None:
    assert schema.vocabulary_markdown() in (DOCS / "architecture.md").read_text(encoding="utf-8"), (
        "docs/architecture.md is stale: paste vitspec.schema.vocabulary_markdown() between its markers"
    )
    assert schema.stages_markdown() in (DOCS / "architecture.md").read_text(encoding="utf-8")
