"""Functional mutants of real third-party ViTs: each must be caught at the right stage and sub-op.

Every mutant is a *functional* change that leaves the parameters (and so the adapter's
description and weight mapping) untouched: a forward hook that rescales an output, a
changed LayerNorm eps in one layer, a re-bound ``forward`` that drops a residual, ... The
unmutated model of every library must pass with its float64 noise far below the bound,
and each mutant's error at its divergence point must sit far above it: together these
are the empirical half of docs/tolerance.md.

Models are the adapter tests' tiny configurations (img 32, patch 8, width 32, 2 layers).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conformance import check
from conformance.report import Report, Status

pytestmark = pytest.mark.thirdparty

#: A caught mutant's error must exceed the tolerance by at least this factor.
SEPARATION = 1e3
#: An original's largest float64 error must stay below tolerance / this factor.
NOISE_MARGIN = 1e2


# -- tiny models -------------------------------------------------------------------------
def tiny_timm(**kw: Any) -> nn.Module:
    VisionTransformer = pytest.importorskip("timm.models.vision_transformer").VisionTransformer
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)
    return VisionTransformer(**{**args, **kw})


def tiny_torchvision() -> nn.Module:
    VisionTransformer = pytest.importorskip("torchvision.models.vision_transformer").VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5
    )


def tiny_hf() -> nn.Module:
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
    )
    return tf.ViTForImageClassification(cfg)


def tiny_vit_pytorch(pool: str = "mean") -> nn.Module:
    ViT = pytest.importorskip("vit_pytorch").ViT
    torch.manual_seed(0)
    return ViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8, pool=pool)


ORIGINALS: dict[str, Callable[[], nn.Module]] = {
    "timm": tiny_timm,
    "timm_avg": lambda: tiny_timm(global_pool="avg"),
    "torchvision": tiny_torchvision,
    "hf": tiny_hf,
    "vit_pytorch_mean": tiny_vit_pytorch,
    "vit_pytorch_cls": lambda: tiny_vit_pytorch("cls"),
}


# -- mutation helpers (hooks use the module they are called with, so they follow deep copies) --
def scale_output(module: nn.Module, factor: float) -> None:
    """Multiply a module's output by ``factor`` (first element when it returns a tuple)."""

    def hook(_m: nn.Module, _a: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (out[0] * factor, *out[1:])
        return out * factor

    module.register_forward_hook(hook)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward scales the incoming gradient by 1.01."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return g * 1.01


def _tv_attention_scaled(self: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, **_: Any) -> Any:
    """torchvision's self-attention with the softmax scale changed to 1.05/sqrt(head_dim)."""
    b, t, e = query.shape
    h = self.num_heads
    d = e // h
    qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=1.05 / math.sqrt(d))
    return self.out_proj(o.transpose(1, 2).reshape(b, t, e)), None


def _hf_layers(model: Any) -> Any:
    """The encoder layers: ``vit.layers`` (transformers 5.x) or ``vit.encoder.layer`` (4.x)."""
    vit = model.vit
    return vit.layers if hasattr(vit, "layers") else vit.encoder.layer


def _hf_layer_without(residual: str) -> Callable[..., Tensor]:
    """transformers 5.x ``ViTLayer.forward`` with the attention or MLP residual dropped."""

    def forward(self: Any, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        a, _ = self.attention(self.layernorm_before(hidden_states), attention_mask, **kwargs)
        h = self.dropout(a) + (0 if residual == "attn" else hidden_states)
        f = self.dropout(self.mlp(self.layernorm_after(h)))
        return f + (0 if residual == "mlp" else h)

    return forward


def _vp_pool_without_cls(model: nn.Module) -> None:
    """vit-pytorch mean pooling that skips the CLS token (the library averages all tokens)."""
    seen: dict[str, Tensor] = {}
    model.transformer.register_forward_hook(lambda _m, _a, out: seen.__setitem__("tokens", out))
    model.to_latent.register_forward_hook(lambda _m, _a, _out: seen["tokens"][:, 1:].mean(dim=1))


def _swap_tokens(_m: nn.Module, _a: Any, out: Tensor) -> Tensor:
    """Swap patch tokens 0 and 1 (row-major order broken) right after the patch embedding."""
    idx = list(range(out.shape[1]))
    idx[0], idx[1] = 1, 0
    return out[:, idx]


@dataclass(frozen=True)
class Mutant:
    name: str
    build: Callable[[], nn.Module]
    stage: str | None  # expected first_divergence (None: forward conforms)
    subop: str | None  # expected first_divergence_subop
    grad_group: str | None = None  # expected first_grad_divergence when forward conforms


def _m(factory: Callable[[], nn.Module], mutate: Callable[[Any], Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = factory()
        mutate(model)
        return model

    return build


def _set(obj: Any, attr: str, value: Any) -> None:
    setattr(obj, attr, value)


MUTANTS = [
    # timm
    Mutant(
        "timm_attn_out_x1.001_block1",
        _m(tiny_timm, lambda m: scale_output(m.blocks[1].attn, 1 + 1e-3)),
        "blocks.1",
        "blocks.1.attn",
    ),
    Mutant(
        "timm_ln_eps_1e-5_block0_norm2",
        _m(tiny_timm, lambda m: _set(m.blocks[0].norm2, "eps", 1e-5)),
        "blocks.0",
        "blocks.0.norm2",
    ),
    Mutant(
        "timm_swapped_tokens",
        _m(tiny_timm, lambda m: m.patch_embed.register_forward_hook(_swap_tokens)),
        "patch_embed",
        None,
    ),
    Mutant(
        "timm_gelu_tanh_block1",
        _m(tiny_timm, lambda m: _set(m.blocks[1].mlp, "act", nn.GELU("tanh"))),
        "blocks.1",
        "blocks.1.mlp",
    ),
    Mutant("timm_head_x1.001", _m(tiny_timm, lambda m: scale_output(m.head, 1 + 1e-3)), "head", None),
    Mutant(
        "timm_avg_fc_norm_eps",
        _m(lambda: tiny_timm(global_pool="avg"), lambda m: _set(m.fc_norm, "eps", 1e-5)),
        "final_norm",
        None,
    ),
    Mutant(
        "timm_backward_only_block0",
        _m(tiny_timm, lambda m: m.blocks[0].register_forward_hook(lambda _m, _a, out: _ScaleGrad.apply(out))),
        None,
        None,
        grad_group="blocks.0",
    ),
    # torchvision
    Mutant(
        "torchvision_softmax_scale_block1",
        _m(
            tiny_torchvision,
            lambda m: _set(
                m.encoder.layers[1].self_attention,
                "forward",
                types.MethodType(_tv_attention_scaled, m.encoder.layers[1].self_attention),
            ),
        ),
        "blocks.1",
        "blocks.1.attn",
    ),
    Mutant(
        "torchvision_pos_add_skipped",
        _m(tiny_torchvision, lambda m: m.encoder.register_forward_pre_hook(lambda mod, a: (a[0] - mod.pos_embedding,))),
        "pos_embed",
        None,
    ),
    Mutant(
        "torchvision_mlp_x1.001_block0",
        _m(tiny_torchvision, lambda m: scale_output(m.encoder.layers[0].mlp, 1.001)),
        "blocks.0",
        "blocks.0.mlp",
    ),
    # transformers
    Mutant(
        "hf_layer_norm_eps_block1",
        _m(tiny_hf, lambda m: _set(_hf_layers(m)[1].layernorm_before, "eps", 1e-5)),
        "blocks.1",
        "blocks.1.norm1",
    ),
    Mutant(
        "hf_dropped_attn_residual_block0",
        _m(
            tiny_hf,
            lambda m: _set(_hf_layers(m)[0], "forward", types.MethodType(_hf_layer_without("attn"), _hf_layers(m)[0])),
        ),
        "blocks.0",
        "blocks.0.norm2",
    ),
    Mutant(
        "hf_dropped_mlp_residual_block1",
        _m(
            tiny_hf,
            lambda m: _set(_hf_layers(m)[1], "forward", types.MethodType(_hf_layer_without("mlp"), _hf_layers(m)[1])),
        ),
        "blocks.1",
        None,  # every sub-op agrees: only the composition is wrong
    ),
    # vit-pytorch
    Mutant("vit_pytorch_mean_pool_without_cls", _m(tiny_vit_pytorch, _vp_pool_without_cls), "pool", None),
    Mutant(
        "vit_pytorch_attn_scale_block0",
        _m(tiny_vit_pytorch, lambda m: _set(m.transformer.layers[0][0], "scale", 1.01 * 8**-0.5)),
        "blocks.0",
        "blocks.0.attn",
    ),
]


# -- the tests -------------------------------------------------------------------------------
def _max_fwd(r: Report) -> float:
    return max(s.rel_err / s.tol for s in r.stages if s.rel_err is not None and s.tol)


def _max_grad(r: Report) -> float:
    return max(g.rel_err / g.tol for g in r.grads if g.rel_err is not None and g.tol)


@pytest.mark.parametrize("name", list(ORIGINALS))
def test_original_passes_with_margin(name: str) -> None:
    r = check(ORIGINALS[name]())
    assert r.status is Status.PASS, r.to_markdown()
    assert r.first_divergence is None and r.first_grad_divergence is None
    assert not r.not_captured, r.not_captured
    # float64 noise far below the bound (forward and gradients).
    assert _max_fwd(r) < 1 / NOISE_MARGIN, r.to_markdown()
    assert _max_grad(r) < 1 / NOISE_MARGIN, r.to_markdown()


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_is_caught_at_the_right_stage(mutant: Mutant) -> None:
    model = mutant.build()
    r = check(model)
    assert r.status is Status.MISMATCH, r.to_markdown()
    assert r.first_divergence == mutant.stage, r.to_markdown()
    assert r.first_divergence_subop == mutant.subop, r.to_markdown()
    if mutant.stage is None:
        # Backward-only: the forward conforms, gradients diverge where the mutation sits.
        assert r.forward_ok is True and r.backward_ok is False
        assert r.first_grad_divergence == mutant.grad_group
        return
    assert r.forward_ok is False
    first = r.stage(mutant.stage)
    assert first.rel_err is not None and first.tol is not None
    assert first.rel_err > SEPARATION * first.tol, f"{mutant.name}: {first.rel_err:.1e} vs tol {first.tol:.1e}"
    if mutant.subop:
        sub = r.stage(mutant.subop)
        assert sub.rel_err is not None and sub.rel_err > SEPARATION * sub.tol
    # Every stage before the divergence conforms.
    names = [s.name for s in r.stages]
    assert all(s.ok for s in r.stages[: names.index(mutant.stage)])


def test_backward_only_mutant_blames_exactly_the_upstream_gradients() -> None:
    mutant = next(m for m in MUTANTS if m.name == "timm_backward_only_block0")
    r = check(mutant.build())
    groups = {g: all(x.ok for x in rows) for g, rows in r.grad_groups().items()}
    # The gradient is scaled where it enters block 0's output: everything downstream is exact,
    # block 0 and everything before it (pos, patch, the input) is off by 1 %.
    assert groups == {
        "head": True,
        "final_norm": True,
        "blocks.1": True,
        "blocks.0": False,
        "pos_embed": False,
        "patch_embed": False,
        "input": False,
    }
    gx = r.grads[-1]
    assert gx.library_name == "input" and gx.rel_err == pytest.approx(0.01, rel=0.05)


def test_dropped_mlp_residual_is_reported_as_composition() -> None:
    mutant = next(m for m in MUTANTS if m.name == "hf_dropped_mlp_residual_block1")
    r = check(mutant.build())
    assert [s.ok for s in r.subops] == [True, True, True, True]
    assert any("residual" in n for n in r.notes)


def test_mutants_span_libraries() -> None:
    libs = {m.name.split("_")[0] for m in MUTANTS}
    assert len(MUTANTS) >= 10 and len({m.name for m in MUTANTS}) == len(MUTANTS)
    assert libs >= {"timm", "torchvision", "hf", "vit"}


def test_real_vit_tiny_noise_and_eps_mutant() -> None:
    """timm ``vit_tiny_patch16_224`` at its default init: the float64 noise passes with a wide
    margin and an eps of 1e-5 (profile: 1e-6) in one LayerNorm is still caught far above tol."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    r = check(model, batch=1, grads=False)
    assert r.status is Status.PASS and _max_fwd(r) < 1 / NOISE_MARGIN
    model.blocks[5].norm2.eps = 1e-5
    m = check(model, batch=1, grads=False)
    assert (m.first_divergence, m.first_divergence_subop) == ("blocks.5", "blocks.5.norm2")
    assert m.stage("blocks.5.norm2").rel_err > SEPARATION * m.stage("blocks.5.norm2").tol


def test_mutants_are_caught_in_float32_too() -> None:
    """Native mode keeps its teeth for mutants far above float32 roundoff (1e-3 relative)."""
    r = check(MUTANTS[0].build(), dtype="float32")
    assert r.status is Status.MISMATCH
    assert (r.first_divergence, r.first_divergence_subop) == ("blocks.1", "blocks.1.attn")
    orig = check(tiny_timm(), dtype="float32")
    assert orig.status is Status.PASS, orig.to_markdown()
    assert all(s.spec_lowp_err is not None for s in orig.stages)
