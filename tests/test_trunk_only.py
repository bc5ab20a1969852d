"""Trunk-only checks (``check(..., scope="trunk")``, ``--trunk-only``): a model whose only inexpressible
part is its head is checked up to the pooled features, and the report says the head was not checked."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conformance import check
from conformance import cli as ccli
from conformance.report import SCHEMA_VERSION, Report, Status
from conformance.zoo import ZOO, run_entry
from vitspec import cli as vcli
from vitspec.errors import ConfigError

pytestmark = pytest.mark.thirdparty
tv = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")

#: torchvision's ViT with ``representation_size``: heads = pre_logits Linear + Tanh + head (inexpressible).
TV_KW = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5)
TV_TARGET = "torchvision:VisionTransformer?" + "&".join(f"{k}={v}" for k, v in TV_KW.items())
PRELOGITS = TV_TARGET + "&representation_size=12"
NOTED = "trunk only: the head was not checked"


def prelogits() -> nn.Module:
    torch.manual_seed(0)
    return tv.VisionTransformer(**TV_KW, representation_size=12)


def tiny_timm() -> nn.Module:
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5
    )


def _shifted_head(m: nn.Module, head: nn.Module) -> nn.Module:
    """A head-only functional mutant: the head's output moved by 0.5 (a forward hook)."""
    head.register_forward_hook(lambda _m, _a, y: y + 0.5)
    return m


# -- full scope: the head makes the model UNSUPPORTED ------------------------------------------
def test_full_scope_is_unsupported_naming_the_prelogits_head() -> None:
    r = check(prelogits(), grads=False)
    assert r.status is Status.UNSUPPORTED and r.exit_code == 3 and r.scope == "full"
    assert "pre_logits + tanh, representation_size" in r.reason
    assert "--trunk-only" in r.reason  # the way out is named
    assert not r.stages and not r.grads


# -- trunk scope: everything up to the pooled features ------------------------------------------
def test_trunk_scope_passes_and_says_the_head_was_not_checked() -> None:
    r = check(prelogits(), scope="trunk")
    assert r.status is Status.PASS and r.exit_code == 0 and r.scope == "trunk", r.reason
    assert NOTED in r.headline()
    names = [s.name for s in r.stages]
    assert names[-3:] == ["final_norm", "pool", "output"] and "head" not in names
    assert all(s.ok for s in r.stages)
    out = r.stage("output")
    assert "model(x) not compared" in out.source and "scope excludes the head" in out.source
    notes = "\n".join(r.notes)
    for p in ("heads.pre_logits.weight", "heads.pre_logits.bias", "heads.head.weight", "heads.head.bias"):
        assert f"not compared: {p}" in notes
    # the trunk's gradients are compared for real (seeded at the pooled features), the head's not at all
    assert all(not g.library_name.startswith("heads.") for g in r.grads)
    trunk = [g for g in r.grads if g.library_name.startswith("encoder.layers.")]
    assert trunk and all(g.ok is True and g.max_abs_err is not None for g in trunk)
    assert any(g.group == "input" and g.ok is True for g in r.grads)


def test_trunk_mutant_is_caught_at_its_block() -> None:
    m = prelogits()
    m.encoder.layers.encoder_layer_1.ln_1.eps = 1e-1  # the rest keep torchvision's 1e-6
    r = check(m, scope="trunk", grads=False)
    assert r.status is Status.MISMATCH and r.exit_code == 1, r.headline()
    assert r.first_divergence == "blocks.1" and r.first_divergence_subop == "blocks.1.norm1"
    assert "(trunk only)" in r.headline() and NOTED not in r.headline()


def test_final_norm_mutant_is_caught_before_the_head() -> None:
    m = prelogits()
    m.encoder.ln.eps = 1e-1
    r = check(m, scope="trunk", grads=False)
    assert r.status is Status.MISMATCH and r.first_divergence == "final_norm", r.headline()


def _shift_timm() -> nn.Module:
    m = tiny_timm()
    return _shifted_head(m, m.head)


def test_head_only_mutant_passes_the_trunk_and_states_the_head_unchecked() -> None:
    full = check(_shift_timm(), grads=False)
    assert full.status is Status.MISMATCH and full.first_divergence == "head"  # the mutant is real
    r = check(_shift_timm(), scope="trunk")
    assert r.status is Status.PASS and NOTED in r.headline(), r.reason
    assert "head" not in [s.name for s in r.stages]
    assert "not compared (the scope excludes the head): head.weight, head.bias" in r.notes


def test_prelogits_head_mutant_still_passes_the_trunk() -> None:
    m = prelogits()
    m.heads.act = nn.ReLU()  # torchvision: Tanh after pre_logits
    r = check(m, scope="trunk", grads=False)
    assert r.status is Status.PASS and NOTED in r.headline()


def test_vanilla_timm_trunk_scope_passes() -> None:
    full = check(tiny_timm())
    r = check(tiny_timm(), scope="trunk")
    assert full.status is Status.PASS and full.scope == "full" and "trunk" not in full.headline()
    assert r.status is Status.PASS and r.scope == "trunk" and NOTED in r.headline(), r.reason
    assert r.description["has_head"] is False
    assert {g.library_name for g in r.grads}.isdisjoint({"head.weight", "head.bias"})
    blocks = [g for g in r.grads if g.library_name.startswith("blocks.")]
    assert blocks and all(g.ok is True for g in blocks)


def test_timm_custom_head_full_is_unsupported_and_trunk_passes() -> None:
    def custom() -> nn.Module:
        m: nn.Module = tiny_timm()
        torch.manual_seed(1)
        m.head = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))  # an MLP head
        return m

    full = check(custom(), grads=False)
    assert full.status is Status.UNSUPPORTED and "head is Sequential" in full.reason and "--trunk-only" in full.reason
    r = check(custom(), scope="trunk")
    assert r.status is Status.PASS and NOTED in r.headline(), r.reason
    notes = "\n".join(r.notes)
    for p in ("head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"):
        assert f"not compared: {p}" in notes
    assert all(g.ok is True for g in r.grads if g.library_name.startswith("blocks."))
    bad = custom()
    bad.blocks[0].norm2.eps = 1e-1
    assert check(bad, scope="trunk", grads=False).first_divergence_subop == "blocks.0.norm2"


@pytest.mark.parametrize(
    "entry",
    [
        "timm-avg-cls-fc-norm",  # the final norm after pooling: the head's input is fc_norm's output
        "timm-map-pool",  # MAP pooling is part of the trunk
        "timm-no-head",  # no head at all
        "hf-dinov2",  # [CLS; mean] pooling: the head's input is 2 * embed_dim wide
        "hf-clip-vision-projection",  # a head without a bias
        "vit_pytorch-cls",
    ],
)
def test_zoo_rows_under_trunk_scope_pass_and_catch_their_perturbation(entry: str) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("vit_pytorch")
    e = dataclasses.replace(next(e for e in ZOO if e.id == entry), scope="trunk")
    r = run_entry(e)
    assert (r.status, r.verdict) == (f"PASS ({NOTED})", "caught"), r


def test_inexpressible_trunk_is_still_unsupported() -> None:
    m = prelogits()
    m.encoder.layers.encoder_layer_0.self_attention.add_zero_attn = True  # an extra all-zero key/value
    r = check(m, scope="trunk", grads=False)
    assert r.status is Status.UNSUPPORTED and r.exit_code == 3
    assert "add_zero_attn" in r.reason and "representation_size" in r.reason and "--trunk-only" not in r.reason


def test_distilled_model_has_no_pooled_vector_for_a_trunk_check() -> None:
    m = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, num_classes=5
    )
    r = check(m, scope="trunk", grads=False)
    assert r.status is Status.UNSUPPORTED and "distilled" in r.reason


def test_bad_scope_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="scope"):
        check(tiny_timm(), scope="head")


# -- the report -------------------------------------------------------------------------------
def test_report_scope_round_trips_and_renders() -> None:
    r = check(prelogits(), scope="trunk", grads=False)
    data = json.loads(r.to_json())
    assert data["scope"] == "trunk" and data["schema"] == SCHEMA_VERSION >= 3
    assert Report.from_json(r.to_json()).to_dict() == r.to_dict()
    md = r.to_markdown()
    assert NOTED in md and "trunk only" in md.split("## Model")[0]
    old = dict(data, schema=2)
    old.pop("scope")
    assert Report.from_dict(old).scope == "full"  # a version-2 report was a full check


# -- the command line -------------------------------------------------------------------------
def _run(capsys: pytest.CaptureFixture[str], argv: list[str], *, vitspec: bool = False) -> tuple[int, str, str]:
    code = vcli.main(["conform", *argv]) if vitspec else ccli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_full_scope_exits_3_and_names_the_way_out(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, [PRELOGITS, "--no-grads"])
    assert code == 3 and out == ""
    assert "representation_size" in err and "--trunk-only" in err and err.count("\n") == 1


@pytest.mark.parametrize("vitspec", [False, True])
def test_cli_trunk_only_passes(capsys: pytest.CaptureFixture[str], vitspec: bool) -> None:
    code, out, _ = _run(capsys, [PRELOGITS, "--trunk-only", "--quiet"], vitspec=vitspec)
    assert code == 0 and out.startswith(f"PASS ({NOTED})"), out


def test_cli_trunk_only_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "trunk_factories.py"
    f.write_text(
        "import torch, torchvision\n"
        "def eps_mutant():\n"
        "    torch.manual_seed(0)\n"
        f"    m = torchvision.models.VisionTransformer(**{TV_KW!r}, representation_size=12)\n"
        "    m.encoder.layers.encoder_layer_1.ln_1.eps = 1e-1\n"
        "    return m\n"
        "def zero_attn():\n"
        "    m = eps_mutant()\n"
        "    m.encoder.layers.encoder_layer_0.self_attention.add_zero_attn = True\n"
        "    return m\n"
    )
    js = tmp_path / "r.json"
    code, out, _ = _run(capsys, [f"{f}:eps_mutant", "--trunk-only", "--no-grads", "--json", str(js)])
    assert code == 1 and "first divergence at blocks.1" in out
    assert json.loads(js.read_text())["scope"] == "trunk"
    code, _, err = _run(capsys, [f"{f}:zero_attn", "--trunk-only", "--no-grads"])
    assert code == 3 and "add_zero_attn" in err
