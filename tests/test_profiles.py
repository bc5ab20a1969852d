"""The variation points of third-party ViTs (docs/profiles.md), as profile records."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitspec import ConfigError
from vitspec.profiles import PROFILES, Profile, deviations, get_profile, profiles_markdown


@pytest.mark.parametrize("name", ["torchlean", "torchlean@411682f", "torchlean@b2a2184"])
def test_torchlean_profiles_are_the_lean_vit(name: str) -> None:
    p = PROFILES[name]
    # Post-norm (TransformerEncoderLayer.forward), ε = Numbers.epsilon, ReLU (FeedForward.forward).
    assert (p.norm_placement, p.final_norm, p.ln_eps, p.activation) == ("post", "none", 1e-6, "relu")
    assert not p.qkv_bias and not p.out_bias and not p.head_norm, "structure MultiHeadAttention has no biases"
    assert p.pooling is None and p.patch_embed == "conv"
    assert deviations(p, against=name) == [] and deviations(p, variant="cls", against=name) == []


@pytest.mark.parametrize(
    ("name", "eps"), [("timm", 1e-6), ("torchvision", 1e-6), ("hf", 1e-12), ("vit_pytorch", 1e-5), ("d2l", 1e-5)]
)
def test_library_eps_and_norm_placement_match_spec_table(name: str, eps: float) -> None:
    p = PROFILES[name]
    assert p.ln_eps == eps, f"docs/profiles.md LN eps column: {name}"
    assert p.norm_placement == "pre", f"docs/profiles.md norm placement column: {name} is pre-norm"
    assert "norm placement: pre (spec: post)" in deviations(p)


def test_old_name_lucidrains_is_an_alias_of_vit_pytorch() -> None:
    """The vit-pytorch profile is named like its adapter; the old name still resolves to the same record."""
    assert get_profile("lucidrains") is PROFILES["vit_pytorch"]
    assert "lucidrains" not in PROFILES


def test_unknown_profile_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        get_profile("timmm")
    for name in PROFILES:
        assert name in str(e.value)


def test_invalid_field_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="norm_placement='middle'"):
        Profile("x", norm_placement="middle")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ln_eps"):
        Profile("x", ln_eps=0.0)


def test_docs_profiles_table_is_generated_from_the_records() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "profiles.md").read_text()
    assert profiles_markdown() in doc, "docs/profiles.md is stale: regenerate it from profiles_markdown()"
