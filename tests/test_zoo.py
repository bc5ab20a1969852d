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
