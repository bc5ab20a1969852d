"""Issue 6 — attention pictures: last-layer CLS attention and rollout, computed with the spec's own ops."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("matplotlib")

from vitspec import ConfigError, ViTClsSpec, ViTConfig, ViTSpec
from vitspec.viz import attention_maps, attention_probs, save_attention_png

CFG = ViTConfig(4, 4, 4, 0, 16, 32, 4, 2, 5)


@pytest.mark.parametrize("profile", ["torchlean", "timm"])
def test_probs_are_row_stochastic_and_match_an_independent_recomputation(profile: str) -> None:
    m = ViTClsSpec.init(CFG, 3, 12, 8, seed=1, dtype=torch.float64, profile=profile)
    x = torch.randn(3, 12, 8, dtype=torch.float64)
    probs = attention_probs(m, x)
    assert len(probs) == CFG.num_layers
    for p in probs:
        assert p.shape == (4, 7, 7)
        torch.testing.assert_close(p.sum(-1), torch.ones(4, 7, dtype=torch.float64))
    # Layer 0 by hand from the state dict: the capture-based path must agree.
    sd = m.state_dict()
    cap: dict[str, torch.Tensor] = {}
    m.forward(x, capture=cap)
    h = cap["pos_embed"]
    if m.profile.norm_placement == "pre":
        h = torch.nn.functional.layer_norm(
            h, (16,), sd["encoder.0.norm1_gamma"], sd["encoder.0.norm1_beta"], m.profile.ln_eps
        )
    q, k = h @ sd["encoder.0.mha.Wq"], h @ sd["encoder.0.mha.Wk"]
    if m.profile.qkv_bias:
        q, k = q + sd["encoder.0.mha.bq"], k + sd["encoder.0.mha.bk"]
    q, k = q.view(7, 4, 4).transpose(0, 1), k.view(7, 4, 4).transpose(0, 1)
    torch.testing.assert_close(probs[0], torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1))


def test_maps_have_the_patch_grid_shape_and_rollout_is_a_distribution() -> None:
    m = ViTClsSpec.init(CFG, 3, 12, 8, seed=2, dtype=torch.float64)
    cls_last, roll = attention_maps(m, torch.randn(3, 12, 8, dtype=torch.float64))
    assert cls_last.shape == (3, 2) and roll.shape == (3, 2), "out_h x out_w = 3 x 2"
    assert float(cls_last.sum()) <= 1 + 1e-12 and float(cls_last.min()) >= 0
    assert 0 < float(roll.sum()) <= 1 + 1e-12


def test_mean_pool_model_is_refused_with_a_reason() -> None:
    m = ViTSpec.init(CFG, 3, 12, 8, dtype=torch.float64)
    with pytest.raises(ConfigError, match="CLS token"):
        attention_maps(m, torch.randn(3, 12, 8, dtype=torch.float64))


def test_png_is_written(tmp_path) -> None:
    m = ViTClsSpec.init(CFG, 3, 12, 8, seed=2, dtype=torch.float64)
    x = torch.randn(3, 12, 8, dtype=torch.float64)
    out = tmp_path / "a.png"
    save_attention_png(x, *attention_maps(m, x), str(out), "t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
