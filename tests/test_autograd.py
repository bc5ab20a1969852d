"""SpecViTFunction / SpecViT: the explicit backward inside autograd, and training with torch.optim."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vitspec import PROFILES, ConfigError, Profile, ShapeError, ViTConfig, shape_checks
from vitspec.autograd import SpecViT, SpecViTFunction
from vitspec.models import ViTClsSpec, ViTSpec

F64 = torch.float64
TINY = ViTConfig(2, 2, 2, 0, 8, 12, 2, 2, 3)
CHW = (2, 4, 6)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add synchronisation (and stall on a shared 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def data(batch: int = 4, seed: int = 0, classes: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *CHW, generator=g, dtype=F64), torch.randint(0, classes, (batch,), generator=g)


# -- gradcheck -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "profile"),
    [(ViTSpec, "torchlean"), (ViTClsSpec, "timm"), (ViTClsSpec, "vit_pytorch")],
    ids=["mean-torchlean", "cls-timm", "cls-vit_pytorch"],
)
@pytest.mark.parametrize("mode", ["cache", "recompute"])
def test_gradcheck(cls: type[ViTSpec], profile: str, mode: str) -> None:
    """Finite differences (float64) agree with the explicit backward through autograd.Function."""
    cfg = ViTConfig(1, 1, 1, 0, 4, 3, 2, 1, 2) if profile != "vit_pytorch" else ViTConfig(2, 2, 2, 0, 4, 3, 2, 1, 2)
    chw = (1, 2, 2) if profile != "vit_pytorch" else (1, 2, 4)
    m = cls.init(cfg, *chw, dtype=F64, profile=profile, seed=1)
    params = [t.detach().clone().requires_grad_() for t in m.state_dict().values()]
    x = torch.randn(2, *chw, dtype=F64, generator=torch.Generator().manual_seed(2), requires_grad=True)

    def f(x: Tensor, *ps: Tensor) -> Tensor:
        return SpecViTFunction.apply(m, mode, x, *ps)

    with shape_checks(False):  # checks are tested elsewhere; here they would only slow the many evaluations
        assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_function_rejects_bad_arguments() -> None:
    m = ViTSpec.init(TINY, *CHW, dtype=F64)
    x = torch.zeros(*CHW, dtype=F64)
    with pytest.raises(ConfigError, match="mode"):
        SpecViTFunction.apply(m, "fast", x, *m.state_dict().values())
    with pytest.raises(ConfigError, match="parameter tensors"):
        SpecViTFunction.apply(m, "cache", x, *list(m.state_dict().values())[:-1])


# -- SpecViT --------------------------------------------------------------------------------------------
def test_spec_vit_holds_the_spec_parameters_under_spec_keys() -> None:
    spec = ViTClsSpec.init(TINY, *CHW, dtype=F64, profile="timm")
    mod = SpecViT.from_spec(spec)
    assert set(mod.state_dict()) == set(spec.state_dict())
    assert [k for k, _ in mod.named_parameters()] != []
    assert all(isinstance(p, torch.nn.Parameter) for p in mod.spec_params())
    assert mod.variant == "cls" and "profile='timm'" in repr(mod)
    for k, t in spec.state_dict().items():
        p = mod.get_parameter(k)
        assert torch.equal(p, t) and p.data_ptr() != t.data_ptr(), k  # a copy
    back = mod.to_spec()
    assert type(back) is ViTClsSpec and back.profile == spec.profile
    for k, t in back.state_dict().items():
        assert torch.equal(t, spec.state_dict()[k]) and not t.requires_grad
    x, _ = data()
    # Not bit for bit: a forward that keeps nothing runs the fused attention kernel (tests/test_fast_forward.py).
    torch.testing.assert_close(mod(x), spec.forward(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mod(x[0]), spec.forward(x[0]), rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError):
        SpecViT(spec, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SpecViT("not a model")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["cache", "recompute"])
@pytest.mark.parametrize("profile", ["torchlean", "timm", "vit_pytorch", "d2l"])
def test_spec_vit_gradients_equal_autograd(profile: str, mode: str, device: str) -> None:
    dtype = F64 if device == "cpu" else torch.float32
    spec = ViTClsSpec.init(TINY, *CHW, dtype=dtype, device=device, profile=profile)
    mod = SpecViT.from_spec(spec, mode=mode)  # type: ignore[arg-type]
    x, y = data()
    x, y = x.to(device, dtype).requires_grad_(), y.to(device)
    F.cross_entropy(mod(x), y).backward()
    sd = {k: t.detach().clone().requires_grad_() for k, t in spec.state_dict().items()}
    xr = x.detach().clone().requires_grad_()
    F.cross_entropy(ViTClsSpec.from_state_dict(TINY, *CHW, sd, profile=profile).forward(xr), y).backward()
    tol = {"rtol": 1e-9, "atol": 1e-11} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-5}
    for k, p in mod.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(p.grad, sd[k].grad, **tol, msg=lambda m, k=k: f"{k}: {m}")
    assert x.grad is not None and xr.grad is not None
    torch.testing.assert_close(x.grad, xr.grad, **tol)


def _train(
    step: Callable[[list[Tensor]], Tensor], params: list[Tensor], opt_cls: type[torch.optim.Optimizer], **kw: float
) -> list[Tensor]:
    opt = opt_cls(params, **kw)
    for _ in range(5):
        opt.zero_grad()
        step(params).backward()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize(
    ("opt_cls", "kw"),
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), (torch.optim.Adam, {"lr": 1e-2})],
    ids=["sgd", "adam"],
)
@pytest.mark.parametrize(("variant", "profile"), [("mean", "torchlean"), ("cls", "timm")])
def test_training_with_explicit_backward_equals_autograd(
    variant: str, profile: str, opt_cls: type[torch.optim.Optimizer], kw: dict[str, float]
) -> None:
    """Five optimizer steps with SpecViT land on the same parameters as five with plain autograd."""
    cls = ViTClsSpec if variant == "cls" else ViTSpec
    spec = cls.init(TINY, *CHW, dtype=F64, profile=profile, seed=7)
    batches = [data(seed=s) for s in range(5)]
    it = iter(batches)

    mod = SpecViT.from_spec(spec)

    def explicit(_: list[Tensor]) -> Tensor:
        x, y = next(it)
        return F.cross_entropy(mod(x), y)

    got = _train(explicit, mod.spec_params(), opt_cls, **kw)  # type: ignore[arg-type]
    it2 = iter(batches)
    leaves = [t.detach().clone().requires_grad_() for t in spec.state_dict().values()]
    ref_model = cls.from_state_dict(TINY, *CHW, dict(zip(spec.state_dict(), leaves, strict=True)), profile=profile)

    def plain(_: list[Tensor]) -> Tensor:
        x, y = next(it2)
        return F.cross_entropy(ref_model.forward(x), y)

    expected = _train(plain, leaves, opt_cls, **kw)
    # The key bias ``bk`` has an exactly-zero gradient (softmax ignores a per-query shift q·bk), so both
    # sides see rounding noise ~1e-17 there; Adam divides it by eps = 1e-8 and moves bk by ~1e-10 in
    # noise-dependent directions. Hence atol 1e-9 for Adam: still 1e-7 of the parameters' 5e-2 travel.
    atol = 1e-9 if opt_cls is torch.optim.Adam else 1e-11
    moved = False
    for k, a, b, start in zip(spec.state_dict(), got, expected, spec.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
        moved |= not torch.equal(a, start)
    assert moved


def test_spec_vit_follows_dtype_conversion_and_in_place_updates() -> None:
    spec = ViTSpec.init(TINY, *CHW, dtype=torch.float32)
    mod = SpecViT.from_spec(spec).double()
    x, _ = data()
    out = mod(x)
    assert out.dtype == F64
    with torch.no_grad():
        mod.get_parameter("head_b").add_(1.0)
    torch.testing.assert_close(mod(x), out + 1.0)
    with pytest.raises(ShapeError, match="dtype"):
        mod(x.float())


def test_in_place_change_between_forward_and_backward_is_detected() -> None:
    mod = SpecViT.from_spec(ViTSpec.init(TINY, *CHW, dtype=F64))
    x, y = data()
    loss = F.cross_entropy(mod(x), y)
    with torch.no_grad():
        mod.get_parameter("pos").mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_retain_graph_backward_twice_doubles_the_gradient() -> None:
    """The second backward finds the layer caches released and recomputes them: same gradient."""
    mod = SpecViT.from_spec(ViTClsSpec.init(TINY, *CHW, dtype=F64, profile="hf"))
    x, y = data()
    loss = F.cross_entropy(mod(x), y)
    loss.backward(retain_graph=True)
    first = {k: p.grad.clone() for k, p in mod.named_parameters()}  # type: ignore[union-attr]
    loss.backward()
    for k, p in mod.named_parameters():
        torch.testing.assert_close(p.grad, 2 * first[k], rtol=1e-12, atol=1e-12)


def test_frozen_parameters_and_input_get_no_gradient() -> None:
    mod = SpecViT.from_spec(ViTSpec.init(TINY, *CHW, dtype=F64))
    mod.get_parameter("patch_kernel").requires_grad_(False)
    x, y = data()
    F.cross_entropy(mod(x), y).backward()
    assert mod.get_parameter("patch_kernel").grad is None
    assert mod.get_parameter("patch_bias").grad is not None
    assert x.grad is None


def test_custom_profile_round_trips_through_the_module() -> None:
    prof = Profile("custom", "pre", "after_pool", 1e-5, "gelu_tanh", True, False, "mean", "conv", True, True)
    spec = ViTClsSpec.init(TINY, *CHW, dtype=F64, profile=prof)
    mod = SpecViT.from_spec(spec, mode="recompute")
    assert mod.to_spec().profile == prof and mod.profile is spec.profile
    assert PROFILES["torchlean"] != prof
