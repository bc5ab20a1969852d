"""SPEC §5 — the variation points of third-party ViTs, as profile records."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitspec import ConfigError
from vitspec.profiles import PROFILES, Profile, deviations, get_profile, profiles_markdown


def test_torchlean_profile_is_spec_section_3() -> None:
    p = PROFILES["torchlean"]
    assert (p.norm_placement, p.final_norm, p.ln_eps, p.activation) == ("post", "none", 1e-6, "relu"), "SPEC §3"
    assert not p.qkv_bias and not p.out_bias and not p.head_norm, "SPEC §3: MHA has no biases"
    assert p.pooling is None and p.patch_embed == "conv"
    assert deviations(p) == [] and deviations(p, variant="cls") == []


@pytest.mark.parametrize(
    ("name", "eps"), [("timm", 1e-6), ("torchvision", 1e-6), ("hf", 1e-12), ("lucidrains", 1e-5), ("d2l", 1e-5)]
)
def test_library_eps_and_norm_placement_match_spec_table(name: str, eps: float) -> None:
    p = PROFILES[name]
    assert p.ln_eps == eps, f"SPEC §5 LN eps row: {name}"
    assert p.norm_placement == "pre", f"SPEC §5 norm placement row: {name} is pre-norm"
    assert "norm placement: pre (spec: post)" in deviations(p)


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
