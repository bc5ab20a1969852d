"""``conformance.check`` and the capture hooks: statuses, bookkeeping, isolation from the caller.

Tiny models (the adapter tests' configurations) keep each check well under a second.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from conformance import check
from conformance.capture import CaptureError, capture
from conformance.report import Report, Status
from vitspec.errors import ConfigError, MappingError
from vitspec.schema import grad_group, sub_op_order

pytestmark = pytest.mark.thirdparty
timm = pytest.importorskip("timm")


def tiny(**kw: Any) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)
    return VisionTransformer(**{**args, **kw})


@pytest.fixture(scope="module")
def passing() -> Report:
    return check(tiny())


def test_isolate_true_computes_every_isolated_error(passing: Report) -> None:
    r = check(tiny(), isolate=True)
    assert r.status is Status.PASS and not any(n.startswith("isolated errors of the encoder") for n in r.notes)
    assert all(s.isolated_ok is True and s.isolated_tol == s.tol for s in r.stages)
    # the same propagated comparison either way
    assert [(s.name, s.rel_err) for s in r.stages] == [(s.name, s.rel_err) for s in passing.stages]


def test_isolated_errors_where_they_can_decide() -> None:
    # native float32: the isolated tolerance (one stage's rounding) is tighter than the propagated one
    low = check(tiny(), dtype="float32")
    assert all(s.isolated_ok is not None for s in low.stages if s.captured)
    # a failing float64 check: every stage is isolated, to locate the divergence
    bad = tiny()
    bad.blocks[1].mlp.register_forward_hook(lambda _m, _a, out: out * 1.01)  # type: ignore[operator]
    r = check(bad, grads=False)
    assert r.status is Status.MISMATCH and all(s.isolated_ok is not None for s in r.stages if s.captured)
    assert r.stage("blocks.0").isolated_ok is True and r.first_divergence == "blocks.1"


def _scale(m: nn.Module) -> tuple[float, float]:
    """(tolerance, largest |logit|) of a passing check of ``m``: the size of a within-tolerance change."""
    r = check(m, grads=False)
    return r.stage("output").tol, float(r.stage("output").max_abs_err / r.stage("output").rel_err)


@pytest.mark.parametrize("where", ["output", "blocks"])
def test_errors_that_cancel_within_the_tolerance_are_caught_in_isolation(where: str) -> None:
    # Two deliberate changes of 0.9 tol each, the second undoing the first: every propagated error stays
    # inside the tolerance, but the stage that undoes the change is 1.8 tol off on its own input.
    m = tiny().double()
    tol, logits = _scale(m)
    if where == "output":
        d = 0.9 * tol * logits
        m.head.register_forward_hook(lambda _m, _a, out: out + d)
        m.register_forward_hook(lambda _m, _a, out: out - 2 * d)
    else:
        big = 0.9 * tol * 50.0  # relative to a block output's scale, well above tol / ISOLATION_MARGIN

        def shift(sign: float) -> Any:
            return lambda _m, _a, out: out + sign * big * out.detach().abs().amax()

        m.blocks[0].register_forward_hook(shift(+1.0 / 50.0))
        m.blocks[1].register_forward_hook(shift(-2.0 / 50.0))
    r = check(m, grads=False)
    assert r.status is Status.MISMATCH, r.reason
    assert r.first_divergence == ("output" if where == "output" else "blocks.1"), r.reason
    assert r.stage(r.first_divergence).ok is True and r.stage(r.first_divergence).isolated_ok is False


# -- helpers -------------------------------------------------------------------------------
def test_sub_op_order_and_groups() -> None:
    assert sub_op_order("pre") == ("norm1", "attn", "norm2", "mlp")
    assert sub_op_order("post") == ("attn", "norm1", "mlp", "norm2")
    assert grad_group("encoder.11.mha.Wq") == "blocks.11"
    assert grad_group("patch_norm_in_gamma") == "patch_embed"
    assert grad_group("cls_token") == grad_group("pos") == "pos_embed"
    assert grad_group("final_norm_beta") == "final_norm"
    assert grad_group("head_norm_gamma") == grad_group("head_W") == "head"
    assert grad_group("grad_x") == "input"


# -- capture --------------------------------------------------------------------------------
class _Point:
    def __init__(self, module: nn.Module, kind: str = "output", transform: Any = lambda t: t) -> None:
        self.module, self.kind, self.transform = module, kind, transform


def test_capture_output_input_and_removal() -> None:
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    pts = {"out": _Point(lin), "in": _Point(lin, "input"), "bad": _Point(lin, transform=lambda t: 1 / 0)}
    with capture(pts) as cap:
        y = lin(x)
        lin(x + 1)  # a second call: the first one is kept, the count says so
    assert torch.equal(cap["out"], y.detach()) and torch.equal(cap["in"], x)
    assert cap.calls == {"out": 2, "in": 2, "bad": 2} and sorted(cap.repeated) == ["bad", "in", "out"]
    assert "ZeroDivisionError" in cap.errors["bad"]
    assert not cap["out"].requires_grad
    assert not lin._forward_hooks and not lin._forward_pre_hooks


def test_capture_candidates_stand_in_and_disagreements_are_reported() -> None:
    a, b, skipped = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
    x = torch.randn(2, 3)
    pts = {
        # the consumer b sees a's output: both candidates agree, the first is used, no note
        "agree": [_Point(b, "input"), _Point(a)],
        # the first candidate never runs: the second stands in, and the report says which
        "stand_in": [_Point(skipped, "input"), _Point(a)],
        # both run but see different tensors (b's input is a(x), b's output is not)
        "differ": [_Point(b), _Point(a)],
        "never": [_Point(skipped)],
    }
    for p, w in zip(pts["stand_in"], ("skipped (input)", "a (output)"), strict=True):
        p.where = w
    with capture(pts) as cap:
        b(a(x))
    assert torch.equal(cap["agree"], a(x).detach()) and torch.equal(cap["stand_in"], a(x).detach())
    assert "stand_in: skipped (input) did not run; a (output) stood in" in cap.notes
    assert any(n.startswith("differ: ") and "differ (max abs" in n for n in cap.notes)
    assert len(cap.notes) == 2 and "never" not in cap
    assert cap.missing_reason("never").startswith("not captured: none of never candidate 0 (output) ran")
    assert cap.missing_reason("unknown") == "not captured: the adapter names no capture point for this stage"


def test_capture_removes_hooks_when_the_forward_raises() -> None:
    lin = nn.Linear(3, 3)
    with pytest.raises(RuntimeError), capture({"a": _Point(lin), "b": _Point(lin, "input")}):
        lin(torch.randn(2, 4))  # wrong width: the forward raises
    assert not lin._forward_hooks and not lin._forward_pre_hooks


def test_capture_rejects_bad_points_and_cleans_up() -> None:
    lin = nn.Linear(3, 3)
    with pytest.raises(CaptureError, match="kind"), capture({"a": _Point(lin), "b": _Point(lin, "sideways")}):
        pass
    assert not lin._forward_hooks
    with pytest.raises(CaptureError, match=r"nn\.Module"), capture({"a": _Point("not a module")}):  # type: ignore[arg-type]
        pass


# -- a passing check ------------------------------------------------------------------------
def test_pass_report_contents(passing: Report) -> None:
    r = passing
    assert r.status is Status.PASS and r.ok and r.forward_ok and r.backward_ok
    assert [s.name for s in r.stages] == [
        "patch_embed",
        "pos_embed",
        "blocks.0",
        "blocks.1",
        "final_norm",
        "pool",
        "head",
        "output",
    ]
    assert all(s.ok and s.captured and s.tol == r.stages[0].tol for s in r.stages)
    # float64, every stage passing far inside its tolerance: the blocks' isolated comparison (same tolerance,
    # a block's forward each) is skipped, and said so; the other stages' costs nothing and is kept
    assert all(s.isolated_ok is None for s in r.stages if s.name.startswith("blocks."))
    assert all(s.isolated_ok is True for s in r.stages if not s.name.startswith("blocks."))
    assert any(n.startswith("isolated errors of the encoder blocks not computed") for n in r.notes)
    assert r.subops == [] and r.first_divergence is None
    d = r.description
    assert d["library"] == "timm" and d["variant"] == "cls" and d["input_size"] == [3, 32, 32]
    assert d["profile"] == "timm" and d["cfg"]["num_layers"] == 2
    assert "norm placement: pre (spec: post)" in r.deviations
    env = r.environment
    assert {"python", "torch", "device", "device_name", "dtype", "date", "timm_version"} <= set(env)
    assert env["dtype"] == "float64" and r.tolerance["fwd_tol64"] == r.stages[0].tol
    assert r.elapsed_s > 0


def test_grad_rows_link_library_and_spec_names(passing: Report) -> None:
    rows = {g.library_name: g for g in passing.grads}
    qkv = rows["blocks.0.attn.qkv.weight"]
    assert qkv.spec_names == ["encoder.0.mha.Wq", "encoder.0.mha.Wk", "encoder.0.mha.Wv"]
    assert qkv.group == "blocks.0" and qkv.ok
    assert rows["pos_embed"].spec_names == ["pos"] and rows["cls_token"].group == "pos_embed"
    assert passing.grads[-1].library_name == "input" and passing.grads[-1].spec_names == ["grad_x"]
    # Backward order: head first, the input last; every parameter appears once.
    assert list(passing.grad_groups()) == [
        "head",
        "final_norm",
        "blocks.1",
        "blocks.0",
        "pos_embed",
        "patch_embed",
        "input",
    ]
    assert len(rows) == len(dict(tiny().named_parameters())) + 1


def test_report_round_trips(passing: Report) -> None:
    assert Report.from_json(passing.to_json()).to_json() == passing.to_json()


def test_deterministic_for_a_seed() -> None:
    a, b = check(tiny(), seed=3), check(tiny(), seed=3)
    strip = lambda r: [(s.name, s.max_abs_err) for s in r.stages] + [(g.library_name, g.max_abs_err) for g in r.grads]  # noqa: E731
    assert strip(a) == strip(b)
    c = check(tiny(), seed=4)
    assert strip(c) != strip(a)


def test_caller_model_is_untouched() -> None:
    m = tiny().train()
    before = copy.deepcopy(m.state_dict())
    check(m)
    assert m.training  # still in train mode: check() worked on a copy
    assert all(p.dtype == torch.float32 and p.grad is None for p in m.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())


def test_adapter_as_class_or_instance() -> None:
    from conformance.adapters import TimmAdapter

    m = tiny()
    assert check(m, adapter=TimmAdapter).ok
    ad = TimmAdapter(m)
    assert check(m, adapter=ad).ok
    assert all(p.dtype == torch.float32 for p in ad.model.parameters())  # the instance was deep-copied
    with pytest.raises(TypeError, match="adapter"):
        check(m, adapter="timm")


def test_progress_callback() -> None:
    seen: list[tuple[str, int, int]] = []
    check(tiny(), progress=lambda step, done, total: seen.append((step, done, total)))
    dones = [d for _, d, _ in seen]
    assert dones == sorted(dones) and seen[-1][1] <= seen[-1][2]
    assert any(s.startswith("stage ") for s, _, _ in seen) and any("gradients" in s for s, _, _ in seen)


def test_forward_only() -> None:
    r = check(tiny(), grads=False)
    assert r.ok and r.backward_ok is None and r.grads == []


def test_headless_model_compares_through_the_pooled_vector() -> None:
    r = check(tiny(num_classes=0))
    assert r.ok, r.to_markdown()
    assert "head" not in [s.name for s in r.stages]
    assert not any(g.group == "head" for g in r.grads)
    assert any("no classification head" in n for n in r.notes)


def test_native_mode_records_both_errors() -> None:
    r = check(tiny(), dtype=torch.bfloat16)
    assert r.ok, r.to_markdown()
    assert r.environment["dtype"] == "bfloat16" and r.tolerance["native_k"] == 4.0
    assert all(s.spec_lowp_err is not None and s.tol >= r.tolerance["native_floor"] for s in r.stages)
    assert all(g.spec_lowp_err is not None for g in r.grads)


# -- argument errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch": 0}, "batch"),
        ({"batch": True}, "batch"),
        ({"dtype": "int8"}, "dtype"),
        ({"device": "nonsense"}, "device"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check(tiny(), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_missing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cuda"):
        check(tiny(), device="cuda")


# -- non-PASS statuses -----------------------------------------------------------------------
def test_unsupported_feature() -> None:
    r = check(tiny(global_pool="max", class_token=False))  # max pooling (MAP pooling is a variation point now)
    assert r.status is Status.UNSUPPORTED and r.exit_code == 3
    assert "global_pool='max'" in r.reason and r.stages == []


def test_no_adapter_is_unsupported() -> None:
    r = check(nn.Sequential(nn.Linear(2, 2)))
    assert r.status is Status.UNSUPPORTED and r.reason


def test_mapping_error_is_unsupported_and_lists_names() -> None:
    from conformance.adapters import TimmAdapter

    class Unmappable(TimmAdapter):
        def to_spec(self, tensors: Any) -> dict[str, Tensor]:
            raise MappingError("cannot map", missing=["patch_embed.proj.weight"], unexpected=["extra.w"])

    r = check(tiny(), adapter=Unmappable)
    assert r.status is Status.UNSUPPORTED
    assert "patch_embed.proj.weight" in r.reason
    assert any(n.startswith("unmapped: patch_embed.proj.weight, extra.w") for n in r.notes)


def test_forward_exception_is_a_crash() -> None:
    m = tiny()

    def boom(*_: Any) -> None:
        raise RuntimeError("kaboom in block 1")

    m.blocks[1].register_forward_hook(boom)
    r = check(m)
    assert r.status is Status.CRASH and r.exit_code == 1
    assert "forward raised" in r.reason and "RuntimeError: kaboom in block 1" in r.reason
    assert r.forward_ok is False


class _BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        raise ValueError("no gradient for you")


def test_backward_exception_is_a_crash() -> None:
    m = tiny()
    m.blocks[0].register_forward_hook(lambda _m, _a, out: _BadBackward.apply(out))
    r = check(m)
    assert r.status is Status.CRASH and "backward raised" in r.reason and "no gradient for you" in r.reason
    assert r.forward_ok is True and r.backward_ok is False


def test_nonfinite_output() -> None:
    m = tiny()
    m.blocks[1].register_forward_hook(lambda _m, _a, out: out * float("inf"))
    r = check(m, grads=False)
    assert r.status is Status.NONFINITE and r.first_divergence == "blocks.1"
    assert "non-finite" in r.stage("blocks.1").note


def test_uncaptured_stage_is_listed_never_passed() -> None:
    from conformance.adapters import TimmAdapter

    class Blind(TimmAdapter):
        def capture_points(self) -> dict[str, Any]:
            pts = super().capture_points()
            del pts["pos_embed"], pts["blocks.0"]
            return pts

    r = check(tiny(), adapter=Blind)
    assert r.ok
    s = r.stage("pos_embed")
    assert s.captured is False and s.ok is None and s.rel_err is None
    assert r.not_captured == ["pos_embed", "blocks.0"]
    assert any("not captured" in n and "pos_embed" in n for n in r.notes)
    assert "| pos_embed | - | - | - | - | - | not captured |" in r.to_markdown()


def test_uncaptured_sub_op_is_reported_in_the_drill_down() -> None:
    from conformance.adapters import TimmAdapter

    class NoSubops(TimmAdapter):
        def capture_points(self) -> dict[str, Any]:
            return {k: v for k, v in super().capture_points().items() if k.count(".") < 2}

    m = tiny()
    m.blocks[0].norm2.eps = 1e-5
    r = check(m, adapter=NoSubops, grads=False)
    assert r.first_divergence == "blocks.0" and r.first_divergence_subop is None
    assert [s.captured for s in r.subops] == [False] * 4
    assert any("sub-ops not compared may hide the cause" in n for n in r.notes)


def test_shape_mismatch_fails_the_stage() -> None:
    from conformance.adapters import TimmAdapter

    class Transposed(TimmAdapter):
        def capture_points(self) -> dict[str, Any]:
            pts = super().capture_points()
            p = pts["blocks.0"][-1]  # the block's own output (the first candidate is blocks.1's input)
            pts["blocks.0"] = (type(p)(p.module, "output", lambda t: t.transpose(1, 2)),)
            return pts

    r = check(tiny(), adapter=Transposed, grads=False)
    s = r.stage("blocks.0")
    assert s.ok is False and "shape" in s.note and r.first_divergence == "blocks.0"


# -- isolation: the spec's stages one at a time, and declared precision -------------------------------
@pytest.mark.parametrize("profile", ["torchlean", "timm", "vit_pytorch"])
def test_spec_stages_in_isolation_reproduce_its_own_forward(profile: str) -> None:
    """``run_stage(name, stage_input(name, captured, x))`` equals the spec's own forward for every stage
    and sub-op (pre- and post-norm, conv and linear_ln patches) to the last bit or two (a whole layer
    may take a differently fused path): isolation adds no error of its own."""
    from vitspec.config import ViTConfig
    from vitspec.models import ViTClsSpec, ViTSpec

    cls = ViTSpec if profile == "torchlean" else ViTClsSpec
    spec = cls.init(ViTConfig(4, 4, 4, 0, 16, 32, 2, 2, 5), 3, 8, 8, dtype=torch.float64, profile=profile)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cap: dict[str, Tensor] = {}
    spec.forward(x, capture=cap)
    names = spec.stage_names(sub_ops=True)
    assert len(names) >= 13
    for name in names:
        inp = spec.stage_input(name, cap, x)
        assert inp is not None, name
        torch.testing.assert_close(spec.run_stage(name, inp), cap[name], rtol=1e-14, atol=1e-14, msg=name)
    # A missing neighbour is said, not guessed: blocks.1 needs blocks.0's output.
    assert spec.stage_input("blocks.1", {k: v for k, v in cap.items() if k != "blocks.0"}, x) is None


def test_declared_lower_precision_keeps_its_teeth() -> None:
    """HF eager attention (float32 softmax) passes a float64 check, judged against the spec run in
    float32; a LayerNorm eps change in the same model is still caught, in isolation, at float64's bound."""
    tf = pytest.importorskip("transformers")

    def hf() -> nn.Module:
        torch.manual_seed(0)
        cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, num_labels=5, attn_implementation="eager")  # fmt: skip
        return tf.ViTForImageClassification(cfg)

    r = check(hf())
    assert r.status is Status.PASS, r.to_markdown()
    assert any(n.startswith("precision: the attention softmax") and "float32" in n for n in r.notes)
    assert r.tolerance["declared"]["dtype"] == "float32"
    blk = r.stage("blocks.0")
    assert blk.precision == "float32" and blk.spec_lowp_err is not None and blk.rel_err > r.tolerance["fwd_tol64"]
    assert r.stage("patch_embed").precision == "" and r.stage("patch_embed").tol == r.tolerance["fwd_tol64"]
    m = hf()
    m.vit.layers[1].layernorm_after.eps = 1e-5
    bad = check(m, grads=False)
    assert (bad.first_divergence, bad.first_divergence_subop) == ("blocks.1", "blocks.1.norm2")
    assert bad.stage("blocks.1.norm2").isolated_tol == r.tolerance["fwd_tol64"]


def _under_autocast(self: nn.Module, x: Tensor) -> Tensor:
    """The module's own forward inside ``torch.autocast(bfloat16)``, cast back to the input's dtype."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = type(self).forward(self, x)
    return y.to(x.dtype)


def test_autocast_region_is_seen_at_run_time() -> None:
    """A module the model runs under autocast is found while the model runs, named with its dtype, and
    judged against the spec in bfloat16; the stages before it keep float32's rule. In a float64 check
    autocast casts nothing, and the report says so instead of loosening anything."""
    import types

    m = tiny()
    m.blocks[1].mlp.forward = types.MethodType(_under_autocast, m.blocks[1].mlp)
    r = check(m, dtype="float32")
    assert r.status is Status.PASS, r.to_markdown()
    assert any(n.startswith("precision: the ops inside a torch.autocast region runs in bfloat16 at blocks.1.mlp")
               for n in r.notes), r.notes  # fmt: skip
    assert r.stage("blocks.0").precision == "" and r.stage("blocks.1").precision == "bfloat16"
    assert r.stage("blocks.1").tol > 100 * r.stage("blocks.0").tol
    m.blocks[0].norm1.eps = 1e-5  # upstream of the region, float32's own rule still applies
    bad = check(m, dtype="float32", grads=False)
    assert (bad.first_divergence, bad.first_divergence_subop) == ("blocks.0", "blocks.0.norm1")
    m.blocks[0].norm1.eps = 1e-6
    r64 = check(m, grads=False)
    assert r64.ok and "declared" not in r64.tolerance
    assert any("autocast does not cast float64 ops" in n for n in r64.notes)


@pytest.mark.parametrize("consume", [False, True])
def test_a_forward_that_rewrites_its_own_weights_is_not_judged_by_them(consume: bool) -> None:
    # The spec is built from the weights as given; the check's copy of them (or, consumed, the model's
    # snapshot) must not alias what the model's forward then rewrites in place.
    m = tiny().double()

    def rewrite(mod: nn.Module, _args: Any) -> None:
        mod.weight.data.mul_(1.5)  # type: ignore[operator]

    m.blocks[0].mlp.fc1.register_forward_pre_hook(rewrite)  # type: ignore[union-attr]
    r = check(m, grads=False, consume=consume)
    assert r.status is Status.MISMATCH and r.first_divergence == "blocks.0", r.reason


def test_copy_model_casts_while_copying_and_keeps_ties() -> None:
    from conformance.adapters import copy_model

    m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    m[1].weight = m[0].bias  # one parameter in two places
    c = copy_model(m, "test", device=torch.device("cpu"), dtype=torch.float64)
    assert c[0].weight.dtype == torch.float64 and c[1].weight is c[0].bias
    assert (
        torch.equal(c[0].weight, m[0].weight.double()) and m[0].weight.dtype == torch.float32
    )  # the original as it was
    assert c[0].weight.requires_grad and isinstance(c[0].weight, nn.Parameter)
    same = copy_model(m, "test", device=torch.device("cpu"), dtype=torch.float32)  # nothing to cast: a plain deep copy
    assert same[1].weight is same[0].bias and same[0].weight.data_ptr() != m[0].weight.data_ptr()


def test_a_copy_sharing_a_module_with_the_original_still_compares_the_weights_as_given() -> None:
    # A module that deep-copies to itself: the check's copy and the caller's model share it, and its
    # forward rewrites its weight. The spec must use the weights as they were given, not as rewritten.
    m = tiny().double()
    fc1 = m.blocks[0].mlp.fc1

    def rewrite(mod: nn.Module, _args: Any) -> None:
        mod.weight.data.mul_(1.5)  # type: ignore[operator]

    fc1.__deepcopy__ = lambda memo: fc1  # type: ignore[method-assign,assignment]
    fc1.register_forward_pre_hook(rewrite)
    r = check(m, grads=False)
    assert r.status is Status.MISMATCH and r.first_divergence == "blocks.0", r.reason


def test_an_adapter_that_unwraps_the_model_it_is_given() -> None:
    from conformance.adapters import TimmAdapter

    class Wrap(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x)  # type: ignore[no-any-return]

    class Unwrapping(TimmAdapter):
        def __init__(self, model: nn.Module, *, copy: bool = True) -> None:
            super().__init__(model.inner if isinstance(model, Wrap) else model, copy=copy)

    r = check(Wrap(tiny()), adapter=Unwrapping, grads=False)
    assert r.status is Status.PASS, r.reason
