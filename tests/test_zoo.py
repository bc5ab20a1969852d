"""The zoo registry and runner (``conformance.zoo``): well-formed data, and verdicts that can fail."""

from __future__ import annotations

import re

import pytest

from conformance import zoo
from conformance.zoo import ZOO, Entry, Perturbation, run_entry

_STAGE = re.compile(r"^(patch_embed|pos_embed|pre_norm|blocks\.\d+|final_norm|pool|head)$")


def test_registry_is_large_unique_and_covers_every_library() -> None:
    ids = [e.id for e in ZOO]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids), "duplicate zoo ids"
    assert {e.library for e in ZOO} == {"timm", "torchvision", "hf", "vit_pytorch"}


def test_every_perturbation_names_a_spec_stage_and_its_own_sub_op() -> None:
    for e in ZOO:
        p = e.perturb
        assert _STAGE.match(p.stage), (e.id, p.stage)
        if p.stage.startswith("blocks."):
            assert p.sub_op is not None and p.sub_op.startswith(p.stage + "."), (e.id, p.sub_op)
            assert p.sub_op.rsplit(".", 1)[1] in ("norm1", "attn", "ls1", "norm2", "mlp", "ls2"), (e.id, p.sub_op)


def test_every_variation_point_of_issue_11_is_in_the_zoo() -> None:
    points = {f for e in ZOO for f in e.features}
    wanted = {
        "layer_scale", "reg_tokens", "dist_token", "distilled_head", "no_embed_class", "pre_norm", "quick_gelu",
        "qk_norm", "proj_bias", "pos_none", "glu", "rmsnorm", "dynamic_img_size", "map_pool", "attn_dim",
        "sincos_2d", "cls_mean_concat",
    }  # fmt: skip
    assert wanted <= points, wanted - points


_VANILLA = next(e for e in ZOO if e.id == "timm-vanilla-token")


@pytest.fixture(autouse=True)
def _needs_timm(request: pytest.FixtureRequest) -> None:
    if request.node.name.startswith("test_runner"):
        pytest.importorskip("timm")


def test_runner_catches_the_perturbation_where_expected() -> None:
    r = run_entry(_VANILLA)
    assert (r.status, r.verdict) == ("PASS", "caught"), r


def test_runner_flags_a_wrong_place() -> None:
    """The same perturbation, declared at another sub-op: the runner must not call it caught."""
    wrong = Entry("x", "timm", _VANILLA.build, zoo.block(1, "attn", "blocks.1.mlp"))
    r = run_entry(wrong)
    assert r.verdict == "WRONG PLACE" and r.failed, r


def test_runner_flags_a_missed_perturbation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A perturbation that changes nothing leaves the model PASSing: the runner must call that a false PASS."""
    monkeypatch.setattr(zoo, "FACTOR", 1.0)
    r = run_entry(Entry("x", "timm", _VANILLA.build, Perturbation("blocks.1.mlp", "blocks.1", "blocks.1.mlp")))
    assert r.verdict == "MISSED (false PASS)" and r.failed, r


# -- the variation points through the adapters (issue 11 phase 2): a few representative rows, end to end ---------
_BY_ID = {e.id: e for e in ZOO}


@pytest.mark.parametrize(
    ("entry", "library"),
    [
        ("timm-layer-scale-ls1", "timm"),  # sub-op ls1
        ("timm-pre-norm-perturbed", "timm"),  # stage pre_norm
        ("timm-map-pool-mlp-perturbed", "timm"),  # MAP pooling with register tokens
        ("timm-distilled-head-perturbed", "timm"),  # the second head of a distilled DeiT
        ("vit_pytorch-simple-non-square", "vit_pytorch"),  # sin-cos table read off the model
        ("vit_pytorch-dim-head-64-attn-perturbed", "vit_pytorch"),  # heads * dim_head != dim
        ("hf-dinov2-ls1-perturbed", "transformers"),
        ("hf-siglip-head-perturbed", "transformers"),
    ],
)
def test_variation_rows_pass_and_their_perturbation_is_caught_in_place(entry: str, library: str) -> None:
    pytest.importorskip(library)
    r = run_entry(_BY_ID[entry])
    assert (r.status, r.verdict) == ("PASS", "caught"), r


def test_a_wrong_layer_scale_gain_is_not_a_pass() -> None:
    """A LayerScale whose gain is applied twice is a different computation: the check must not PASS."""
    pytest.importorskip("timm")
    from conformance import check
    from conformance.report import Status

    model = _BY_ID["timm-layer-scale-ls1"].build().eval()
    model.blocks[1].ls2.register_forward_hook(lambda mod, _i, out: out * mod.gamma)
    report = check(model)
    assert report.status is Status.MISMATCH and report.first_divergence == "blocks.1", report.reason


def test_target_adapter_options() -> None:
    from conformance.targets import TargetError, adapter_options, build_target

    assert adapter_options("vit_pytorch:cls?input_hw=16x64") == {"input_hw": (16, 64)}
    assert adapter_options("vit_pytorch:cls?image_size=(16,64)") == {"input_hw": (16, 64)}  # implied
    assert adapter_options("vit_pytorch:cls") == {}
    with pytest.raises(TargetError, match="vit_pytorch option"):
        adapter_options("timm:vit_tiny_patch16_224?input_hw=16x64")
    with pytest.raises(TargetError, match="HxW"):
        adapter_options("vit_pytorch:cls?input_hw=16x")
    pytest.importorskip("vit_pytorch")
    model, _ = build_target("vit_pytorch:cls?image_size=(16,64)&input_hw=16x64&depth=1")  # input_hw is not a kwarg
    from conformance.adapters import detect

    d = detect(model, **adapter_options("vit_pytorch:cls?image_size=(16,64)")).describe()
    assert (d.in_h, d.in_w) == (16, 64)


def test_a_non_square_vit_pytorch_model_without_its_size_is_refused() -> None:
    pytest.importorskip("vit_pytorch")
    from conformance.adapters import Unsupported, detect

    model = _BY_ID["vit_pytorch-non-square"].build()  # 16x32: 2x4 patches, no square fits
    with pytest.raises(Unsupported, match="cannot infer the image size"):
        detect(model).describe()
