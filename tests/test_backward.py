"""The explicit backward equals autograd through the forward, for every gradient field and ``grad_x``.

The reference is ``torch.autograd.grad`` through :meth:`ViTSpec.forward` (differentiable torch
ops only) over leaf copies of the parameters. Covered: both variants × every profile in
``PROFILES`` (plus profiles exercising the remaining switches) × one image and a batch ×
``mode='cache'``/``'recompute'``; edge configs; random configs (Hypothesis); the reference
formulas alone (``fused_backward(False)``); ``grad_pooled``; and proofs that no autograd runs.

Tolerances. float64 (the default, CPU): ``rtol=1e-9, atol=1e-11`` relative to the gradient's
scale; observed errors are ~1e-14. float32 (used when the ``device`` fixture is CUDA): the two
sides sum the same products in different orders (our GEMM decomposition vs autograd's and
cuDNN's kernels), so each entry differs by a few ulps of the largest terms it sums — with at most
a few hundred terms of size ≲ the tensor's max |value|, about ``sqrt(n)·2^-24·scale ≈ 1e-6·scale``.
We allow ``atol = 1e-5·scale`` (10× margin) and ``rtol = 1e-4`` (covers the few-ulp differences
of erf/exp/tanh implementations), with TF32 disabled (cuDNN allows it by default, which would
round conv inputs to 10 mantissa bits on the autograd side only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from vitspec import PROFILES, ConfigError, Profile, ShapeError, ViTConfig
from vitspec.models import ViTClsSpec, ViTSpec, encoder_layer, encoder_layer_backward
from vitspec.primitives import fused_backward

Model = ViTSpec | ViTClsSpec
VARIANTS = {"mean": ViTSpec, "cls": ViTClsSpec}

#: Profiles beyond PROFILES that reach the remaining switches: timm's 'avg' head (fc_norm after
#: the pool, mean over patch tokens), GELU-tanh with post-norm, q/k/v bias without output bias,
#: a head norm with a final norm, and vit-pytorch's mean over all tokens.
EXTRA_PROFILES = {
    "timm_avg": PROFILES["timm"].replace(name="timm_avg", final_norm="after_pool", pooling="mean"),
    "mixed": Profile("mixed", "post", "before_pool", 1e-5, "gelu_tanh", True, False, None, "conv", True, False, "test"),
    "vit_pytorch_mean": PROFILES["vit_pytorch"].replace(name="vit_pytorch_mean", pooling="mean_all"),
}
ALL_PROFILES = {**PROFILES, **EXTRA_PROFILES}
# The 411682f backward as the Lean writes it is not the gradient of its forward (docs/spec-audit.md,
# tests/test_lean_transcription.py); its forward is checked here with the exact VJP.
ALL_PROFILES["torchlean@411682f"] = PROFILES["torchlean@411682f"].replace(lean_backward=False)

TINY = ViTConfig(patch_h=2, patch_w=2, stride=2, padding=0, embed_dim=8, hidden_dim=12, head_count=2, num_layers=2,
                 num_classes=3)  # fmt: skip
TINY_IN = (2, 4, 6)  # channels, in_h, in_w -> 2x3 = 6 patches


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add synchronisation (and stall on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def profile_for(variant: str, profile: Profile) -> Profile:
    """The mean-pool ViTSpec has no CLS token: token / mean_all pooling become its mean pool."""
    if variant == "mean" and profile.pooling in ("token", "mean_all"):
        return profile.replace(pooling=None)
    return profile


def reference(
    m: Model, x: Tensor, grad_output: Tensor | None = None, grad_pooled: Tensor | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """Autograd through ``forward`` on leaf copies of the parameters and ``x``."""
    sd = {k: v.detach().clone().requires_grad_() for k, v in m.state_dict().items()}
    r = type(m).from_state_dict(m.cfg, m.in_c, m.in_h, m.in_w, sd, profile=m.profile)
    xr = x.detach().clone().requires_grad_()
    cap: dict[str, Tensor] = {}
    out = r.forward(xr, capture=cap)
    if grad_pooled is not None:
        # The vector fed to the head: after an after_pool final norm, else the pooled vector.
        out = cap["final_norm"] if m.profile.final_norm == "after_pool" else cap["pool"]
        cot = grad_pooled
    else:
        cot = grad_output
    got = torch.autograd.grad(out, [xr, *sd.values()], cot, allow_unused=True)
    grads = {k: (g if g is not None else torch.zeros_like(sd[k])) for k, g in zip(sd, got[1:], strict=True)}
    return grads, got[0]


def assert_grads_close(m: Model, x: Tensor, grads_dict: dict[str, Tensor], grad_x: Tensor, ref: tuple) -> None:
    ref_grads, ref_x = ref
    assert list(grads_dict) == list(m.state_dict()), "grads.to_dict() keys must be the state-dict keys, in order"
    items = [*grads_dict.items(), ("grad_x", grad_x)]
    for key, g in items:
        e = ref_x if key == "grad_x" else ref_grads[key]
        assert g.shape == e.shape, f"{key}: shape {tuple(g.shape)} != {tuple(e.shape)}"
        assert g.dtype == e.dtype and g.device == e.device, key
        scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
        if g.dtype == torch.float64:
            tol = {"rtol": 1e-9, "atol": 1e-11 * scale}
        else:
            tol = {"rtol": 1e-4, "atol": 1e-5 * scale}
        torch.testing.assert_close(g, e, **tol, msg=lambda msg, key=key: f"{key}: {msg}")
    assert grad_x.shape == x.shape


@pytest.fixture
def dtype(device: str, monkeypatch: pytest.MonkeyPatch) -> torch.dtype:
    """float64 on the CPU; float32 on CUDA (the dtype one trains in) with TF32 off (see module docstring)."""
    if torch.device(device).type == "cuda":
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        return torch.float32
    return torch.float64


def make(
    variant: str, cfg: ViTConfig, in_chw: tuple[int, int, int], profile: Profile, *, device: str = "cpu",
    dtype: torch.dtype = torch.float64, seed: int = 0,
) -> Model:  # fmt: skip
    return VARIANTS[variant].init(cfg, *in_chw, seed=seed, dtype=dtype, device=device, profile=profile)


def inputs(m: Model, batch: int | None, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    x = torch.randn(*lead, m.in_c, m.in_h, m.in_w, generator=g, dtype=torch.float64)
    go = torch.randn(*lead, m.cfg.num_classes, generator=g, dtype=torch.float64)
    return x.to(m.device, m.dtype), go.to(m.device, m.dtype)


def check(m: Model, batch: int | None, mode: str, seed: int = 1) -> None:
    x, go = inputs(m, batch, seed)
    grads, gx = m.backward(x, go, mode=mode)  # type: ignore[arg-type]
    assert type(grads).__name__ == ("ViTClsGrads" if m.variant == "cls" else "ViTGrads")
    assert gx is not None
    assert_grads_close(m, x, grads.to_dict(), gx, reference(m, x, go))


# -- the full matrix ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["cache", "recompute"])
@pytest.mark.parametrize("batch", [None, 3], ids=["single", "batch"])
@pytest.mark.parametrize("profile", list(ALL_PROFILES))
@pytest.mark.parametrize("variant", ["mean", "cls"])
def test_backward_equals_autograd(
    variant: str, profile: str, batch: int | None, mode: str, device: str, dtype: torch.dtype
) -> None:
    m = make(variant, TINY, TINY_IN, profile_for(variant, ALL_PROFILES[profile]), device=device, dtype=dtype)
    check(m, batch, mode)


@pytest.mark.parametrize("profile", list(ALL_PROFILES))
@pytest.mark.parametrize("variant", ["mean", "cls"])
def test_backward_on_reference_formulas_equals_autograd(variant: str, profile: str) -> None:
    """The whole chain on the spelled-out derivative formulas (no fused kernels) is exact too."""
    m = make(variant, TINY, TINY_IN, profile_for(variant, ALL_PROFILES[profile]))
    with fused_backward(False):
        check(m, 2, "cache")


# -- edge configurations -----------------------------------------------------------------------
EDGE = {
    # name: (cfg, (C, H, W), profiles)
    "overlap_stride_padding": (
        TINY.replace(patch_h=4, patch_w=4, stride=2, padding=1),
        (2, 6, 8),
        ("torchlean", "timm"),
    ),
    "rectangular": (TINY.replace(patch_h=2, patch_w=4, stride=2), (1, 10, 14), ("torchlean", "hf", "d2l")),
    "rectangular_linear_ln": (TINY, (2, 6, 10), ("vit_pytorch",)),
    "patchify_leftover": (TINY, (1, 5, 7), ("torchlean", "timm")),
    "padding_patchify": (TINY.replace(padding=1), (1, 4, 4), ("torchlean",)),
    "heads_not_dividing": (TINY.replace(embed_dim=10, head_count=3), (2, 4, 6), ("torchlean",)),
    "one_token": (TINY.replace(patch_h=4, patch_w=4, stride=4), (2, 4, 4), ("torchlean", "timm", "vit_pytorch")),
    "zero_layers": (TINY.replace(num_layers=0), (2, 4, 6), ("torchlean", "timm", "d2l")),
    "one_head_one_class": (TINY.replace(head_count=1, num_classes=1, num_layers=1), (2, 4, 6), ("torchlean", "hf")),
}
EDGE_CASES = [
    pytest.param(name, prof, variant, id=f"{name}-{prof}-{variant}")
    for name, (_, _, profs) in EDGE.items()
    for prof in profs
    for variant in ("mean", "cls")
]


@pytest.mark.parametrize(("name", "profile", "variant"), EDGE_CASES)
def test_edge_configs(name: str, profile: str, variant: str, device: str, dtype: torch.dtype) -> None:
    cfg, chw, _ = EDGE[name]
    m = make(variant, cfg, chw, profile_for(variant, PROFILES[profile]), device=device, dtype=dtype)
    for batch, mode in ((None, "cache"), (2, "recompute")):
        check(m, batch, mode)


def test_heads_not_dividing_is_refused_by_pytorch_profiles() -> None:
    with pytest.raises(ConfigError, match="head_count divides embed_dim"):
        ViTClsSpec.init(TINY.replace(embed_dim=10, head_count=3), 2, 4, 6, profile="timm")


# -- random well-formed configs ----------------------------------------------------------------------
@st.composite
def configs(draw: st.DrawFn) -> tuple[str, ViTConfig, tuple[int, int, int], Profile, int | None, str]:
    variant = draw(st.sampled_from(["mean", "cls"]))
    pname = draw(st.sampled_from(sorted(ALL_PROFILES)))
    prof = profile_for(variant, ALL_PROFILES[pname])
    heads = draw(st.integers(1, 3))
    # PyTorch-style profiles need heads | embed_dim; the spec floors embed_dim / heads.
    embed = heads * draw(st.integers(1, 3)) if prof.require_heads_divide else draw(st.integers(heads, 8))
    if prof.patch_embed == "linear_ln":
        p = draw(st.integers(1, 3))
        ph = pw = stride = p
        padding = 0
    else:
        ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 1))
    in_h = draw(st.integers(max(1, ph - 2 * padding), 7))
    in_w = draw(st.integers(max(1, pw - 2 * padding), 7))
    cfg = ViTConfig(ph, pw, stride, padding, embed, draw(st.integers(1, 6)), heads, draw(st.integers(0, 2)),
                    draw(st.integers(1, 3)))  # fmt: skip
    chw = (draw(st.integers(1, 2)), in_h, in_w)
    batch = draw(st.sampled_from([None, 1, 2]))
    mode = draw(st.sampled_from(["cache", "recompute"]))
    return variant, cfg, chw, prof, batch, mode


@settings(max_examples=25, deadline=None)
@given(configs(), st.integers(0, 2**16))
def test_random_configs(case: tuple, seed: int) -> None:
    variant, cfg, chw, prof, batch, mode = case
    m = make(variant, cfg, chw, prof, seed=seed)
    check(m, batch, mode, seed=seed + 1)


# -- grad_pooled ----------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["torchlean", "timm", "timm_avg", "d2l", "mixed"])
@pytest.mark.parametrize("variant", ["mean", "cls"])
@pytest.mark.parametrize("batch", [None, 2], ids=["single", "batch"])
def test_grad_pooled_is_the_cotangent_of_the_head_input(variant: str, profile: str, batch: int | None) -> None:
    m = make(variant, TINY, TINY_IN, profile_for(variant, ALL_PROFILES[profile]))
    x, _ = inputs(m, batch)
    gp = torch.randn(*x.shape[:-3], m.cfg.embed_dim, dtype=torch.float64)
    for mode in ("cache", "recompute"):
        grads, gx = m.backward(x, grad_pooled=gp, mode=mode)  # type: ignore[arg-type]
        assert gx is not None
        d = grads.to_dict()
        for key in ("head_W", "head_b", "head_norm_gamma", "head_norm_beta"):
            if key in d:
                assert torch.equal(d[key], torch.zeros_like(d[key])), key
        assert_grads_close(m, x, d, gx, reference(m, x, grad_pooled=gp))


def test_backward_argument_errors() -> None:
    m = make("cls", TINY, TINY_IN, PROFILES["torchlean"])
    x, go = inputs(m, 2)
    with pytest.raises(ConfigError, match="exactly one"):
        m.backward(x)
    with pytest.raises(ConfigError, match="exactly one"):
        m.backward(x, go, grad_pooled=torch.zeros(2, 8, dtype=torch.float64))
    with pytest.raises(ConfigError, match="mode"):
        m.backward(x, go, mode="checkpoint")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"grad_output must have shape \(batch, classes\) = \(2, 3\)"):
        m.backward(x, go[:, :2])
    with pytest.raises(ShapeError, match=r"grad_output must have shape \(classes,\) = \(3,\)"):
        m.backward(x[0], go)
    with pytest.raises(ShapeError, match="dtype"):
        m.backward(x, go.float())
    with pytest.raises(ShapeError, match=r"grad_pooled must have shape \(batch, embed_dim\)"):
        m.backward(x, grad_pooled=torch.zeros(2, 7, dtype=torch.float64))


def test_need_grad_x_false_skips_only_grad_x() -> None:
    for prof in ("torchlean", "vit_pytorch"):
        m = make("cls", TINY, TINY_IN, PROFILES[prof])
        x, go = inputs(m, 2)
        full, gx = m.backward(x, go)
        part, none = m.backward(x, go, need_grad_x=False)
        assert gx is not None and none is None
        for (k, a), (_, b) in zip(full.to_dict().items(), part.to_dict().items(), strict=True):
            assert torch.equal(a, b), k


def test_modes_agree_bitwise_in_parameters() -> None:
    """Recompute replays the same ops on the same inputs, so it reproduces the cache mode exactly."""
    m = make("cls", TINY, TINY_IN, PROFILES["timm"])
    x, go = inputs(m, 3)
    a, ax = m.backward(x, go, mode="cache")
    b, bx = m.backward(x, go, mode="recompute")
    for (k, t), (_, u) in zip(a.to_dict().items(), b.to_dict().items(), strict=True):
        assert torch.equal(t, u), k
    assert ax is not None and bx is not None and torch.equal(ax, bx)


def test_batch_gradient_is_the_sum_over_images() -> None:
    m = make("mean", TINY, TINY_IN, PROFILES["torchlean"])
    x, go = inputs(m, 3)
    batch, bx = m.backward(x, go)
    singles = [m.backward(x[i], go[i]) for i in range(3)]
    for key, t in batch.to_dict().items():
        torch.testing.assert_close(t, sum(s[0].to_dict()[key] for s in singles), rtol=1e-12, atol=1e-12)
    assert bx is not None
    torch.testing.assert_close(bx, torch.stack([s[1] for s in singles]), rtol=1e-12, atol=1e-12)  # type: ignore[misc]


# -- no autograd inside the explicit backward -----------------------------------------------------------
def _flat(m: Model, x: Tensor, go: Tensor, mode: str) -> list[Tensor]:
    grads, gx = m.backward(x, go, mode=mode)  # type: ignore[arg-type]
    assert gx is not None
    return [*grads.to_dict().values(), gx]


@pytest.mark.parametrize("mode", ["cache", "recompute"])
@pytest.mark.parametrize("profile", ["torchlean", "timm", "vit_pytorch"])
def test_backward_is_identical_with_autograd_disabled(profile: str, mode: str) -> None:
    m = make("cls", TINY, TINY_IN, PROFILES[profile])
    x, go = inputs(m, 2)
    ref = _flat(m, x, go, mode)
    with torch.inference_mode():
        inf = _flat(m, x, go, mode)
    with torch.autograd.set_grad_enabled(False):
        off = _flat(m, x, go, mode)
    for a, b, c in zip(ref, inf, off, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
        assert b.grad_fn is None and c.grad_fn is None


@contextmanager
def _autograd_forbidden(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("autograd was called")

    with monkeypatch.context() as mp:
        mp.setattr(torch.autograd, "grad", boom)
        mp.setattr(torch.autograd, "backward", boom)
        mp.setattr(torch.Tensor, "backward", boom)
        yield


@pytest.mark.parametrize("mode", ["cache", "recompute"])
def test_backward_never_calls_autograd(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    m = make("cls", TINY, TINY_IN, EXTRA_PROFILES["mixed"])
    x, go = inputs(m, 2)
    ref = reference(m, x, go)
    with _autograd_forbidden(monkeypatch):
        with pytest.raises(AssertionError, match="autograd was called"):
            torch.zeros(1, requires_grad=True).sum().backward()
        grads, gx = m.backward(x, go, mode=mode)  # type: ignore[arg-type]
    assert gx is not None
    assert_grads_close(m, x, grads.to_dict(), gx, ref)


def test_backward_frees_layer_caches_and_can_run_twice_on_one_cache() -> None:
    """The cache's layer caches are released during the backward; a second pass recomputes them."""
    m = make("mean", TINY, TINY_IN, PROFILES["timm"].replace(pooling=None))
    x, go = inputs(m, 2)
    logits, cache = m.forward_with_cache(x, "cache")
    torch.testing.assert_close(logits, m.forward(x), rtol=1e-12, atol=1e-12)  # same forward, maybe another kernel
    assert all(c is not None for c in cache.layer_caches)
    g1, x1 = m.backward_from_cache(cache, go)
    assert all(c is None for c in cache.layer_caches)
    g2, x2 = m.backward_from_cache(cache, go)
    for (k, a), (_, b) in zip(g1.to_dict().items(), g2.to_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert x1 is not None and x2 is not None and torch.equal(x1, x2)


# -- the encoder layer on its own -----------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu_erf", "gelu_tanh"])
@pytest.mark.parametrize("placement", ["post", "pre"])
def test_encoder_layer_backward_equals_autograd(placement: str, activation: str, bias: bool) -> None:
    g = torch.Generator().manual_seed(3)
    e, a, f, heads = 6, 6, 10, 3

    def r(*shape: int, s: float = 0.4) -> Tensor:
        return (torch.randn(shape, generator=g, dtype=torch.float64) * s).requires_grad_()

    x = r(2, 5, e, s=1.0)
    ws = [r(e, a), r(e, a), r(e, a), r(a, e), r(e, f), r(f), r(f, e), r(e)]
    norms = [1 + r(e, s=0.1), r(e, s=0.1), 1 + r(e, s=0.1), r(e, s=0.1)]
    norms = [n.detach().requires_grad_() for n in norms]
    biases = [r(a), r(a), r(a), r(e)] if bias else [None] * 4
    kw = {"heads": heads, "norm_placement": placement, "activation": activation, "eps": 1e-6}
    y, _ = encoder_layer(x, *ws, *norms, *biases, **kw)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    leaves = [x, *ws, *norms, *[b for b in biases if b is not None]]
    expected = torch.autograd.grad(y, leaves, dy)
    detached = [t.detach() if t is not None else None for t in (x, *ws, *norms, *biases)]
    for cached in (False, True):
        cache = encoder_layer(*detached, **kw, keep=True)[1] if cached else None
        dx, lg = encoder_layer_backward(*detached[:13], dy, *detached[13:], **kw, cache=cache)
        got = [dx, lg.mha.dWq, lg.mha.dWk, lg.mha.dWv, lg.mha.dWo, lg.ffn.dW1, lg.ffn.db1, lg.ffn.dW2, lg.ffn.db2,
               lg.d_norm1_gamma, lg.d_norm1_beta, lg.d_norm2_gamma, lg.d_norm2_beta]  # fmt: skip
        if bias:
            got += [lg.mha.dbq, lg.mha.dbk, lg.mha.dbv, lg.mha.dbo]
        else:
            assert lg.mha.dbq is None and lg.mha.dbo is None
        for i, (t, ex) in enumerate(zip(got, expected, strict=True)):
            torch.testing.assert_close(t, ex, rtol=1e-10, atol=1e-12, msg=lambda m, i=i: f"grad {i}: {m}")
