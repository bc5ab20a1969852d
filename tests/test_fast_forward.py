"""The forward-only fast path (``mha_inference`` and the encoder layer's no-keep branch).

A forward that keeps nothing (no backward cache, no capture, no autograd graph) runs the
attention core as ``F.scaled_dot_product_attention`` and adds residuals in place. It must
compute the same function as the path that keeps activations, to float64 rounding, under
every profile (both TorchLean head splits included), and must stand aside whenever
something is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest
import torch
from torch import Tensor

import vitspec.models.encoder as encoder_module
from vitspec import PROFILES, ViTConfig, shape_checks
from vitspec.models import ViTClsSpec, ViTSpec, encoder_layer
from vitspec.primitives import gelu_erf, gelu_tanh, linear, relu
from vitspec.primitives.activations import IN_PLACE
from vitspec.primitives.attention import mha, mha_inference, mha_reference
from vitspec.primitives.linear import linear_inference

F64 = torch.float64
TINY = ViTConfig(2, 2, 2, 0, 8, 12, 2, 2, 3)  # embed 8, hidden 12, 2 heads of 4, 2 layers
CHW = (2, 4, 6)  # 2x3 patches + CLS = 7 tokens
#: The profiles whose layers are the core encoder layer (the fast path must run for them).
CORE = ("torchlean", "torchlean@411682f", "torchlean@b2a2184", "timm", "torchvision", "hf", "vit_pytorch", "d2l")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the encoder's calls of the fast attention (one entry per call)."""
    calls: list[int] = []

    def spy(*args: object, **kwargs: object) -> Tensor:
        calls.append(1)
        return mha_inference(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(encoder_module, "mha_inference", spy)
    return calls


def close(got: Tensor, want: Tensor) -> None:
    """Equal to float64 rounding of O(1) values through a few layers."""
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def rand(*shape: int, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def attention_args(embed: int, attn: int, *, biases: bool, seed: int) -> tuple[list[Tensor], list[Tensor | None]]:
    ws = [rand(embed, attn, seed=seed + i) for i in range(3)] + [rand(attn, embed, seed=seed + 3)]
    if not biases:
        return ws, [None] * 4
    return ws, [*(rand(attn, seed=seed + 4 + i) for i in range(3)), rand(embed, seed=seed + 7)]


# -- the primitive ---------------------------------------------------------------------------
@pytest.mark.parametrize("head_split", ["reshape_swap", "direct_reshape"])
@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize(("batch", "embed", "heads"), [((2,), 12, 3), ((), 12, 3), ((2, 3), 8, 2), ((2,), 9, 2)])
def test_mha_inference_equals_mha(
    head_split: str, biases: bool, batch: tuple[int, ...], embed: int, heads: int
) -> None:
    # (2,), 9, 2: head_dim = floor(9/2) = 4, so attn_dim 8 < embed_dim 9 (legal for the spec).
    attn = heads * (embed // heads)
    x = rand(*batch, 5, embed, seed=1)
    ws, bs = attention_args(embed, attn, biases=biases, seed=10)
    want, _ = mha(x, *ws, *bs, heads=heads, head_split=head_split)  # type: ignore[arg-type]
    got = mha_inference(x, *ws, *bs, heads=heads, head_split=head_split)  # type: ignore[arg-type]
    assert got.shape == want.shape
    close(got, want)


@pytest.mark.parametrize("head_split", ["reshape_swap", "direct_reshape"])
def test_mha_inference_equals_the_per_head_reference(head_split: str) -> None:
    # Independent of mha: the Lean's order, one head at a time (no biases: the reference has none).
    x = rand(3, 6, 12, seed=2)
    ws, _ = attention_args(12, 12, biases=False, seed=20)
    want = mha_reference(x, *ws, heads=3, head_split=head_split)  # type: ignore[arg-type]
    close(mha_inference(x, *ws, heads=3, head_split=head_split), want)  # type: ignore[arg-type]


def test_the_two_head_splits_differ_in_the_fast_path() -> None:
    # Guards the test above against a fast path that ignored head_split.
    x = rand(2, 6, 12, seed=3)
    ws, bs = attention_args(12, 12, biases=True, seed=30)
    swap = mha_inference(x, *ws, *bs, heads=3, head_split="reshape_swap")
    direct = mha_inference(x, *ws, *bs, heads=3, head_split="direct_reshape")
    assert (swap - direct).abs().max() > 1e-3


def test_mha_inference_rejects_bad_input() -> None:
    x = rand(2, 5, 8, seed=4)
    ws, bs = attention_args(8, 8, biases=True, seed=40)
    with pytest.raises(ValueError, match=r"head.split"):  # the shape checks' typed error
        mha_inference(x, *ws, heads=2, head_split="sideways")  # type: ignore[arg-type]
    with shape_checks(False), pytest.raises(ValueError, match="head split must be one of"):
        mha_inference(x, *ws, heads=2, head_split="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="all given or all None"):
        mha_inference(x, ws[0], ws[1], ws[2], ws[3], bs[0], None, None, heads=2)


@pytest.mark.parametrize("head_split", ["reshape_swap", "direct_reshape"])
@pytest.mark.parametrize("biases", [False, True])
def test_mha_inference_adds_the_residual(head_split: str, biases: bool) -> None:
    x, r = rand(2, 5, 12, seed=13), rand(2, 5, 12, seed=14)
    r_before = r.clone()
    ws, bs = attention_args(12, 12, biases=biases, seed=70)
    want = mha(x, *ws, *bs, heads=3, head_split=head_split)[0] + r  # type: ignore[arg-type]
    close(mha_inference(x, *ws, *bs, heads=3, head_split=head_split, residual=r), want)  # type: ignore[arg-type]
    assert torch.equal(r, r_before)  # the sum is accumulated into a fresh tensor


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "unbatched"])
def test_linear_inference_equals_linear_plus_residual(bias: bool, layout: str) -> None:
    x, w, b = rand(2, 5, 6, seed=15), rand(6, 4, seed=16), (rand(4, seed=17) if bias else None)
    r = rand(2, 5, 4, seed=18)
    if layout == "strided":
        x, r = rand(5, 2, 6, seed=15).transpose(0, 1), rand(4, 2, 5, seed=18).permute(1, 2, 0)
    elif layout == "unbatched":
        x, r = x[0], r[0]
    r_before = r.clone()
    close(linear_inference(x, w, b), linear(x, w, b))
    got = linear_inference(x, w, b, residual=r)
    close(got, r + linear(x, w, b))
    assert torch.equal(r, r_before)


@pytest.mark.parametrize("name", ["relu", "gelu_erf", "gelu_tanh"])
def test_in_place_activations_equal_the_forwards_and_write_their_input(name: str) -> None:
    forward = {"relu": relu, "gelu_erf": gelu_erf, "gelu_tanh": gelu_tanh}[name]
    z = rand(3, 7, seed=12) * 3
    want = forward(z)
    buf = z.clone()
    got = IN_PLACE[name](buf)
    assert got.data_ptr() == buf.data_ptr() and torch.equal(buf, want)  # the same ATen kernel, in place
    assert not torch.equal(z, want)  # the test input is not a fixed point


# -- the encoder layer -------------------------------------------------------------------------
@pytest.mark.parametrize("norm_placement", ["post", "pre"])
@pytest.mark.parametrize("activation", ["relu", "gelu_erf", "gelu_tanh"])
@pytest.mark.parametrize("head_split", ["reshape_swap", "direct_reshape"])
def test_encoder_layer_fast_path_equals_the_kept_path(
    norm_placement: str, activation: str, head_split: str, fast_calls: list[int]
) -> None:
    e, hidden = 8, 12
    x = rand(2, 5, e, seed=5)
    x_before = x.clone()
    ws, bs = attention_args(e, e, biases=True, seed=50)
    ffn = [rand(e, hidden, seed=60), rand(hidden, seed=61), rand(hidden, e, seed=62), rand(e, seed=63)]
    norms = [1 + 0.1 * rand(e, seed=64), rand(e, seed=65), 1 + 0.1 * rand(e, seed=66), rand(e, seed=67)]
    kw = {"heads": 2, "norm_placement": norm_placement, "activation": activation, "head_split": head_split}
    args = (x, *ws, *ffn, *norms, *bs)
    fast, no_cache = encoder_layer(*args, **kw)  # type: ignore[arg-type]
    assert no_cache is None and len(fast_calls) == 1
    kept, cache = encoder_layer(*args, keep=True, **kw)  # type: ignore[arg-type]
    assert cache is not None and len(fast_calls) == 1  # keeping a cache takes the full path
    assert fast is not None and kept is not None
    close(fast, kept)
    assert torch.equal(x, x_before)  # the in-place residual sums write only fresh tensors


# -- the whole model, every profile ----------------------------------------------------------------
def model(variant: str, profile: str) -> ViTSpec | ViTClsSpec:
    prof = PROFILES[profile]
    if variant == "mean" and prof.pooling in ("token", "mean_all"):
        prof = prof.replace(pooling=None)  # token pooling needs a CLS token
    return (ViTSpec if variant == "mean" else ViTClsSpec).init(TINY, *CHW, dtype=F64, profile=prof, seed=7)


@pytest.mark.parametrize("variant", ["mean", "cls"])
@pytest.mark.parametrize("profile", list(PROFILES))
def test_model_forward_fast_path_equals_the_captured_path(variant: str, profile: str, fast_calls: list[int]) -> None:
    m = model(variant, profile)
    x = rand(3, *CHW, seed=8)
    with torch.no_grad():
        fast = m.forward(x)
        calls_without_capture = len(fast_calls)
        stages: dict[str, Tensor] = {}
        captured = m.forward(x, capture=stages)
    assert len(fast_calls) == calls_without_capture  # a capture keeps every sub-op: the full path
    assert "blocks.0.attn" in stages
    if profile in CORE:
        assert calls_without_capture == TINY.num_layers
    close(fast, captured)
    close(fast, stages["head"])


@pytest.mark.parametrize("profile", ["torchlean@411682f", "timm"])
def test_model_forward_fast_path_equals_autograd_forward_and_stays_out_of_it(
    profile: str, fast_calls: list[int]
) -> None:
    m = model("cls", profile)
    x = rand(2, *CHW, seed=9)
    with torch.no_grad():
        fast = m.forward(x)
    assert len(fast_calls) == TINY.num_layers
    # Parameters that require grad: autograd must differentiate the spec's own ops.
    params = {k: t.detach().clone().requires_grad_(True) for k, t in m.state_dict().items()}
    graph = type(m).from_state_dict(TINY, *CHW, params, profile=m.profile)
    out = graph.forward(x)
    assert len(fast_calls) == TINY.num_layers  # not called again
    assert out.grad_fn is not None
    close(fast, out.detach())
    # Grad mode on but nothing requires grad: nothing is recorded, so the fast path runs.
    m.forward(x)
    assert len(fast_calls) == 2 * TINY.num_layers


def test_model_forward_fast_path_single_image() -> None:
    m = model("cls", "torchlean@411682f")
    x = rand(*CHW, seed=10)
    with torch.no_grad():
        single = m.forward(x)
        batched = m.forward(x.unsqueeze(0))[0]
    close(single, batched)


@pytest.mark.parametrize("mode", ["cache", "recompute"])
def test_explicit_backward_does_not_take_the_fast_path(
    mode: Literal["cache", "recompute"], fast_calls: list[int]
) -> None:
    # The explicit backward keeps a cache (mode='cache') or recomputes each layer with keep=True,
    # so its gradients are those of the spec's own ops, as autograd's through forward are.
    # (torchlean, not 411682f: there the Lean's backward is not the forward's gradient on purpose.)
    m = model("cls", "torchlean")
    x = rand(*CHW, seed=10)
    g = rand(3, seed=11)
    grads, gx = m.backward(x, g, mode=mode)
    assert fast_calls == []
    params = {k: t.detach().clone().requires_grad_(True) for k, t in m.state_dict().items()}
    xr = x.clone().requires_grad_(True)
    out = type(m).from_state_dict(TINY, *CHW, params, profile=m.profile).forward(xr)
    (out * g).sum().backward()
    assert gx is not None and xr.grad is not None
    wq_grad = params["encoder.0.mha.Wq"].grad
    assert wq_grad is not None
    close(gx, xr.grad)
    close(grads.d_encoder[0].mha.dWq, wq_grad)
