"""Lean ``ViTConfig``, its well-formedness (``ViTConfig.WF`` and the model premises), presets, param_count.

The oracle for :meth:`ViTConfig.violations` is :func:`expected_violations` below, a
re-statement of the conditions from Lean ViTPatchOutH and ViTConfig.WF (Lean names) that does not call the
code under test; a property test holds the two together on arbitrary configs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitspec import PRESETS, ConfigError, ViTConfig, VitSpecError, param_count, preset
from vitspec.errors import Violation

FIELDS = (
    "patch_h",
    "patch_w",
    "stride",
    "padding",
    "embed_dim",
    "hidden_dim",
    "head_count",
    "num_layers",
    "num_classes",
)

# The six facts of Lean ViTConfig.WF: field -> Lean fact name.
WF_FACTS = {
    "patch_h": "patchH_ne0",
    "patch_w": "patchW_ne0",
    "embed_dim": "embedDim_pos",
    "hidden_dim": "hiddenDim_pos",
    "head_count": "headCount_pos",
    "num_classes": "numClasses_ne0",
}

SMALL = ViTConfig(patch_h=4, patch_w=4, stride=4, padding=0, embed_dim=8, hidden_dim=16, head_count=2, num_layers=1)


def expected_violations(
    cfg: ViTConfig,
    in_c: int | None,
    in_h: int | None,
    in_w: int | None,
    *,
    require_heads_divide: bool,
) -> set[tuple[str, str]]:
    """``{(field, lean name)}`` every violated condition, straight from Lean ViTPatchOutH/ViTConfig.WF (Nat inputs)."""
    want = {(f, lean) for f, lean in WF_FACTS.items() if getattr(cfg, f) == 0}
    if cfg.stride == 0:  # Lean ViTConfig.WF: "nothing forbids stride = 0" in the Lean, but no conv exists
        want.add(("stride", "extra:stride_pos"))
    if 0 < cfg.embed_dim < cfg.head_count:  # floor(embed_dim / head_count) = 0: heads of width 0
        want.add(("head_count", "extra:headDim_pos"))
    if require_heads_divide and cfg.head_count > 0 and cfg.embed_dim % cfg.head_count:
        want.add(("head_count", "headCount_dvd_embedDim"))
    if in_c == 0:
        want.add(("in_c", "h_inC"))
    for name, size, patch in (("in_h", in_h, cfg.patch_h), ("in_w", in_w, cfg.patch_w)):
        if size == 0:
            want.add((name, f"extra:{name}_pos"))
        elif size is not None and patch > 0 and size + 2 * cfg.padding < patch:
            want.add((name, f"extra:{name}_fits_kernel"))
    # h_tok (ViTPatchCount > 0) cannot fail: every Nat ViTPatchOut is >= 1 (see test_formulas).
    return want


def got_violations(vs: list[Violation] | tuple[Violation, ...]) -> set[tuple[str, str]]:
    return {(v.field, v.lean) for v in vs}


# -- fields and their types --------------------------------------------------------
def test_spec2_ViTConfig_defaults_are_lean_defaults() -> None:
    cfg = ViTConfig()
    got = tuple(getattr(cfg, f) for f in FIELDS)
    assert got == (16, 16, 16, 0, 768, 3072, 12, 12, 1000), f"Lean ViTConfig.WF ViTConfig Lean defaults, got {got}"
    assert [f.name for f in dataclasses.fields(ViTConfig)] == list(FIELDS), (
        "Lean ViTConfig.WF ViTConfig field order is Lean's"
    )


@pytest.mark.parametrize("bad", [-1, True, 3.0, "8", None], ids=repr)
@pytest.mark.parametrize("field", FIELDS)
def test_spec2_non_nat_field_is_a_config_error_naming_the_field(field: str, bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        ViTConfig(**{field: bad})
    assert info.value.fields == (field,), (
        f"Lean ViTConfig.WF ViTConfig fields are Nat: {field}={bad!r} must be named alone"
    )
    assert field in str(info.value) and repr(bad) in str(info.value), (
        f"Lean ViTConfig.WF message names {field}: {info.value}"
    )


def test_spec2_every_non_nat_field_is_reported_at_once() -> None:
    bad = dict.fromkeys(FIELDS, -1)
    with pytest.raises(ConfigError) as info:
        ViTConfig(**bad)
    assert set(info.value.fields) == set(FIELDS), (
        f"Lean ViTConfig.WF all bad fields in one ConfigError, got {info.value.fields}"
    )


def test_spec2_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, VitSpecError) and issubclass(ConfigError, ValueError), (
        "Lean ViTConfig.WF ConfigError is a VitSpecError and a ValueError"
    )


# -- ViTConfig.WF: each fact alone, and all together ---------------------------------
def test_spec2_lean_default_and_small_configs_are_well_formed() -> None:
    assert ViTConfig().violations(3, 224, 224) == [], "Lean ViTConfig.WF the Lean default config is WF at 3x224x224"
    assert ViTConfig().check(3, 224, 224) == ViTConfig(), "Lean ViTConfig.WF check returns the config when WF"
    assert SMALL.violations(3, 8, 8, require_heads_divide=True) == [], (
        "Lean ViTConfig.WF a small WF config has no violations"
    )


@pytest.mark.parametrize("variant", ["mean", "cls"])
@pytest.mark.parametrize(("field", "lean"), WF_FACTS.items(), ids=list(WF_FACTS.values()))
def test_spec2_each_WF_fact_alone(field: str, lean: str, variant: str) -> None:
    cfg = SMALL.replace(**{field: 0})
    with pytest.raises(ConfigError) as info:
        cfg.check(3, 8, 8, variant=variant)  # type: ignore[arg-type]
    err = info.value
    assert got_violations(err.violations) == {(field, lean)}, (
        f"Lean ViTConfig.WF ViTConfig.WF.{lean}: {field}=0 alone must be the only violation, got {err.violations}"
    )
    assert field in str(err) and lean in str(err), (
        f"Lean ViTConfig.WF message names field {field} and fact {lean}: {err}"
    )
    assert "1 well-formedness condition violated" in str(err), f"Lean ViTConfig.WF one violation counted: {err}"


def test_spec2_all_WF_facts_together_in_one_error() -> None:
    cfg = SMALL.replace(**dict.fromkeys(WF_FACTS, 0))
    with pytest.raises(ConfigError) as info:
        cfg.check()
    err = info.value
    assert got_violations(err.violations) == set(WF_FACTS.items()), (
        f"Lean ViTConfig.WF ViTConfig.WF: all six facts named in one ConfigError, got {err.violations}"
    )
    for field, lean in WF_FACTS.items():
        assert f"{field}:" in str(err) and f"[{lean}]" in str(err), (
            f"Lean ViTConfig.WF message lists {field} [{lean}]: {err}"
        )
    assert "6 well-formedness conditions violated" in str(err), f"Lean ViTConfig.WF all six counted: {err}"


@pytest.mark.parametrize(
    ("kwargs", "check_args", "field", "lean"),
    [
        ({"stride": 0}, (3, 8, 8), "stride", "extra:stride_pos"),
        ({}, (0, 8, 8), "in_c", "h_inC"),
        ({}, (3, 0, 8), "in_h", "extra:in_h_pos"),
        ({}, (3, 8, 0), "in_w", "extra:in_w_pos"),
        ({}, (3, 3, 8), "in_h", "extra:in_h_fits_kernel"),
        ({}, (3, 8, 3), "in_w", "extra:in_w_fits_kernel"),
        ({"head_count": 9}, (3, 8, 8), "head_count", "extra:headDim_pos"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_spec2_model_premises_and_runnable_conditions_alone(
    kwargs: dict[str, int], check_args: tuple[int, int, int], field: str, lean: str
) -> None:
    """Lean ViTConfig.WF: h_inC, and what a runnable conv needs that Lean's WF leaves out (stride, fit, head width)."""
    with pytest.raises(ConfigError) as info:
        SMALL.replace(**kwargs).check(*check_args)
    assert got_violations(info.value.violations) == {(field, lean)}, (
        f"Lean ViTConfig.WF {lean} alone, got {info.value.violations}"
    )
    assert field in str(info.value) and lean in str(info.value), f"Lean ViTConfig.WF message names {field} [{lean}]"


def test_spec1_degenerate_formula_cases_are_refused_by_check() -> None:
    """Lean Vit.lean formulas: 'the runtime checks must refuse the degenerate cases … rather than silently return 1'."""
    cfg = ViTConfig(patch_h=5, patch_w=5, stride=0, padding=0, embed_dim=8, hidden_dim=8, head_count=2)
    assert cfg.out_h(2) == 1 and cfg.tokens(2, 2) == 1, "Lean Vit.lean formulas the bare formulas give 1 here"
    with pytest.raises(ConfigError) as info:
        cfg.check(1, 2, 2)
    got = got_violations(info.value.violations)
    assert got == {
        ("stride", "extra:stride_pos"),
        ("in_h", "extra:in_h_fits_kernel"),
        ("in_w", "extra:in_w_fits_kernel"),
    }
    assert "silently give out_h = 1" in str(info.value), f"Lean Vit.lean formulas the message says why: {info.value}"


def test_spec2_non_nat_image_sizes_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        SMALL.check(-1, True, 8.0)  # type: ignore[arg-type]
    assert {v.field for v in info.value.violations} == {"in_c", "in_h", "in_w"}, (
        f"Lean ViTConfig.WF in_c/in_h/in_w must be natural numbers, got {info.value.violations}"
    )


# -- head_count | embed_dim ------------------------------------------------------
def test_spec2_heads_divide_embed_is_exposed_not_demanded_by_default() -> None:
    cfg = SMALL.replace(embed_dim=10, head_count=4)  # head_dim = floor(10/4) = 2
    assert cfg.heads_divide_embed is False, "Lean ViTConfig.WF 4 does not divide 10"
    assert cfg.head_dim == 2, "Lean ViTConfig.WF per-head width is embedDim / headCount, floored"
    assert cfg.violations(3, 8, 8) == [], "Lean ViTConfig.WF ViTConfig.WF does not demand headCount ∣ embedDim"
    with pytest.raises(ConfigError) as info:
        cfg.check(3, 8, 8, require_heads_divide=True)
    assert got_violations(info.value.violations) == {("head_count", "headCount_dvd_embedDim")}, (
        "Lean ViTConfig.WF TransformerLayerConfig.WF.headCount_dvd_embedDim on request"
    )
    assert "10 % 4 = 2" in str(info.value), f"Lean ViTConfig.WF the message shows the remainder: {info.value}"
    assert SMALL.heads_divide_embed is True, "Lean ViTConfig.WF 2 divides 8"
    assert SMALL.replace(head_count=0).heads_divide_embed is False, "Lean ViTConfig.WF 0 heads divide nothing"


# -- the property: every combination, one error naming all of them -------------------
@st.composite
def configs(draw: st.DrawFn) -> ViTConfig:
    # 0 is likely enough to hit every WF fact, alone and combined.
    small = st.integers(0, 6)
    return ViTConfig(
        patch_h=draw(small),
        patch_w=draw(small),
        stride=draw(small),
        padding=draw(st.integers(0, 2)),
        embed_dim=draw(st.integers(0, 12)),
        hidden_dim=draw(small),
        head_count=draw(small),
        num_layers=draw(small),
        num_classes=draw(small),
    )


maybe_size = st.one_of(st.none(), st.integers(0, 12))


@settings(max_examples=200)
@given(
    cfg=configs(),
    in_c=maybe_size,
    in_h=maybe_size,
    in_w=maybe_size,
    require=st.booleans(),
    variant=st.sampled_from(["mean", "cls"]),
)
def test_spec2_check_reports_exactly_the_violated_conditions_in_one_error(
    cfg: ViTConfig, in_c: int | None, in_h: int | None, in_w: int | None, require: bool, variant: str
) -> None:
    want = expected_violations(cfg, in_c, in_h, in_w, require_heads_divide=require)
    vs = cfg.violations(in_c, in_h, in_w, variant=variant, require_heads_divide=require)  # type: ignore[arg-type]
    assert got_violations(vs) == want, (
        f"Lean ViTConfig.WF violations of {cfg} at ({in_c},{in_h},{in_w}): {vs} != {want}"
    )
    assert len(vs) == len(want), f"Lean ViTConfig.WF each condition reported once: {vs}"
    if not want:
        assert cfg.check(in_c, in_h, in_w, variant=variant, require_heads_divide=require) is cfg  # type: ignore[arg-type]
        return
    with pytest.raises(ConfigError) as info:
        cfg.check(in_c, in_h, in_w, variant=variant, require_heads_divide=require)  # type: ignore[arg-type]
    msg = str(info.value)
    assert got_violations(info.value.violations) == want, "Lean ViTConfig.WF one ConfigError carries every violation"
    for field, lean in want:
        assert f"{field}:" in msg and f"[{lean}]" in msg, f"Lean ViTConfig.WF message names {field} [{lean}]: {msg}"


# -- presets ---------------------------------------------------------------------
PRESET_VALUES = {
    # name: (patch, embed, hidden, heads, layers, classes, input)  -- Lean ViTConfig.WF
    "vit_base_patch16": (16, 768, 3072, 12, 12, 1000, (3, 224, 224)),
    "vit_large_patch16": (16, 1024, 4096, 16, 24, 1000, (3, 224, 224)),
    "vit_tiny_patch16": (16, 192, 768, 3, 12, 1000, (3, 224, 224)),
    "vit_small_patch16": (16, 384, 1536, 6, 12, 1000, (3, 224, 224)),
    "vit_huge_patch14": (14, 1280, 5120, 16, 32, 1000, (3, 224, 224)),
    "vit_d2l": (16, 512, 2048, 8, 2, 10, (3, 96, 96)),
}


@pytest.mark.parametrize("name", sorted(PRESET_VALUES))
def test_spec2_presets_have_spec_values_a_source_and_are_well_formed(name: str) -> None:
    patch, e, f, h, n, c, size = PRESET_VALUES[name]
    cfg, default_input, source = PRESETS[name]
    assert preset(name) is cfg, f"Lean ViTConfig.WF preset({name!r}) returns the registered config"
    assert cfg == ViTConfig(patch, patch, patch, 0, e, f, h, n, c), f"Lean ViTConfig.WF preset {name} values, got {cfg}"
    assert default_input == size, f"Lean ViTConfig.WF preset {name} default input {size}, got {default_input}"
    assert source.strip(), f"Lean ViTConfig.WF preset {name} names its source"
    assert cfg.violations(*size, require_heads_divide=True) == [], f"Lean ViTConfig.WF preset {name} is WF"


def test_spec2_lean_presets_are_the_lean_configs() -> None:
    assert preset("vit_base_patch16") == ViTConfig(), "Lean ViTConfig.WF vitBasePatch16Config = the Lean defaults"
    assert "vitBasePatch16Config" in PRESETS["vit_base_patch16"][2], "Lean ViTConfig.WF source cites the Lean name"
    assert "vitLargePatch16Config" in PRESETS["vit_large_patch16"][2], "Lean ViTConfig.WF source cites the Lean name"


def test_spec2_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        preset("vit_gigantic")
    assert all(name in str(info.value) for name in PRESETS), (
        f"Lean ViTConfig.WF the error lists valid presets: {info.value}"
    )


# -- param_count -------------------------------------------------------------------
def spec_param_shapes(cfg: ViTConfig, in_c: int, in_h: int, in_w: int, variant: str) -> dict[str, tuple[int, ...]]:
    """The torchlean-profile state dict (docs/architecture.md, 'Spec parameter keys'), shapes only."""
    e, f, c = cfg.embed_dim, cfg.hidden_dim, cfg.num_classes
    attn = cfg.head_count * (e // cfg.head_count)
    oh = (in_h + 2 * cfg.padding - cfg.patch_h) // cfg.stride + 1
    ow = (in_w + 2 * cfg.padding - cfg.patch_w) // cfg.stride + 1
    tokens = oh * ow + (variant == "cls")
    shapes: dict[str, tuple[int, ...]] = {
        "patch_kernel": (e, in_c, cfg.patch_h, cfg.patch_w),
        "patch_bias": (e,),
        "pos": (tokens, e),
    }
    if variant == "cls":
        shapes["cls_token"] = (e,)
    for i in range(cfg.num_layers):
        p = f"encoder.{i}."
        shapes |= {p + f"mha.{w}": (e, attn) for w in ("Wq", "Wk", "Wv")}
        shapes[p + "mha.Wo"] = (attn, e)
        shapes |= {p + "ffn.W1": (e, f), p + "ffn.b1": (f,), p + "ffn.W2": (f, e), p + "ffn.b2": (e,)}
        shapes |= {p + n: (e,) for n in ("norm1_gamma", "norm1_beta", "norm2_gamma", "norm2_beta")}
    shapes |= {"head_W": (c, e), "head_b": (c,)}
    return shapes


@settings(max_examples=100)
@given(
    cfg=st.builds(
        ViTConfig,
        patch_h=st.integers(1, 5),
        patch_w=st.integers(1, 5),
        stride=st.integers(1, 5),
        padding=st.integers(0, 2),
        embed_dim=st.integers(1, 12),
        hidden_dim=st.integers(1, 12),
        head_count=st.integers(1, 4),
        num_layers=st.integers(0, 3),
        num_classes=st.integers(1, 5),
    ),
    in_c=st.integers(1, 4),
    in_hw=st.tuples(st.integers(5, 16), st.integers(5, 16)),
    variant=st.sampled_from(["mean", "cls"]),
)
def test_spec2_param_count_is_the_size_of_the_spec_bundle(
    cfg: ViTConfig, in_c: int, in_hw: tuple[int, int], variant: str
) -> None:
    shapes = spec_param_shapes(cfg, in_c, *in_hw, variant)
    want = sum(math.prod(s) for s in shapes.values())
    got = param_count(cfg, in_c, *in_hw, variant)  # type: ignore[arg-type]
    assert got == want, f"Lean ViTConfig/ViTSpec param_count of {cfg} ({variant}) = {got}, the spec bundle has {want}"


def test_spec2_param_count_known_values() -> None:
    # ViT-B/16 mean pool at 224 (torchlean profile), summed by hand from Lean ViTSpec.forward:
    # conv 768*3*16*16 + 768, pos 196*768, 12 * (4*768*768 + 2*768*3072 + 3072 + 768 + 4*768), head 768*1000 + 1000.
    layer = 4 * 768 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
    want = 768 * 3 * 16 * 16 + 768 + 196 * 768 + 12 * layer + 768 * 1000 + 1000
    assert param_count(preset("vit_base_patch16"), 3, 224, 224) == want, "Lean ViTConfig.WF vitBasePatch16Config size"
    # timm's vit_base_patch16_224 has 86,567,656 parameters (CLS token, biases, final norm).
    assert param_count(preset("vit_base_patch16"), 3, 224, 224, "cls", profile="timm") == 86_567_656, (
        "docs/profiles.md param_count under the timm profile = timm vit_base_patch16_224"
    )


def test_spec2_param_count_refuses_unknown_variant() -> None:
    with pytest.raises(ConfigError, match="variant"):
        param_count(SMALL, 3, 8, 8, "max")  # type: ignore[arg-type]


# Third-party models of a tiny size: param_count under each library's profile must be
# the library's own parameter count. Cheap (no weights downloaded, tiny modules).
TINY = ViTConfig(
    patch_h=4, patch_w=4, stride=4, padding=0, embed_dim=16, hidden_dim=24, head_count=2, num_layers=2, num_classes=5
)


@pytest.mark.thirdparty
def test_spec5_param_count_matches_torchvision() -> None:
    tv = pytest.importorskip("torchvision.models.vision_transformer")
    m = tv.VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=24, num_classes=5
    )
    want = sum(p.numel() for p in m.parameters())
    assert param_count(TINY, 3, 16, 16, "cls", profile="torchvision") == want, (
        "docs/profiles.md torchvision profile size"
    )


@pytest.mark.thirdparty
def test_spec5_param_count_matches_timm() -> None:
    vt = pytest.importorskip("timm.models.vision_transformer")
    m = vt.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=1.5, num_classes=5
    )
    want = sum(p.numel() for p in m.parameters())
    assert param_count(TINY, 3, 16, 16, "cls", profile="timm") == want, "docs/profiles.md timm profile size"


@pytest.mark.thirdparty
def test_spec5_param_count_matches_vit_pytorch() -> None:
    vp = pytest.importorskip("vit_pytorch")
    m = vp.ViT(image_size=16, patch_size=4, num_classes=5, dim=16, depth=2, heads=2, mlp_dim=24, dim_head=8, pool="cls")
    want = sum(p.numel() for p in m.parameters())
    assert param_count(TINY, 3, 16, 16, "cls", profile="vit_pytorch") == want, (
        "docs/profiles.md vit_pytorch profile size"
    )
