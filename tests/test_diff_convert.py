"""``compare_models`` / ``vitspec diff`` and ``convert`` / ``vitspec convert`` (docs/diff-convert.md).

Tiny models (2 layers, 32x32 input, patch 8, width 64), float64 where the function is compared.
Expected values are facts about the models, never outputs of the code under test: a query weight
feeds block 0's attention (so that is where a perturbed model parts), a round trip must give back
the very tensors it started from, torchvision has no ``fc_norm``, vit-pytorch's patch embedding has
LayerNorms that timm's lacks.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conformance.adapters.base import Rule
from conformance.conversion import (
    CannotExpress,
    NotAnIndexMapError,
    conversion,
    convert,
    load_converted,
    to_library,
)
from conformance.diff import compare_models
from conformance.targets import build_target
from vitspec import cli as vcli

pytestmark = pytest.mark.thirdparty
pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("torchvision")
safetensors_torch = pytest.importorskip("safetensors.torch")

TIMM = "timm:vit_tiny_patch16_224?depth=2&img_size=32&patch_size=8&embed_dim=64&num_heads=4&num_classes=10"
# The transformers model `convert --to hf` builds for TIMM: same sizes, timm's LayerNorm eps.
HF_FOR_TIMM = (
    "hf:tiny?hidden_size=64&num_hidden_layers=2&num_attention_heads=4&intermediate_size=256"
    "&image_size=32&patch_size=8&num_labels=10&layer_norm_eps=1e-6"
)


def _timm(target: str = TIMM, dtype: torch.dtype = torch.float64) -> nn.Module:
    model, _ = build_target(target, seed=0)
    return model.to(dtype).eval()


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _vitspec(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = vcli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- convert ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("via", ["hf", "torchvision"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_through_another_library_is_bit_exact(via: str, dtype: torch.dtype) -> None:
    src = _timm(dtype=dtype)
    middle = convert(src, to=via, verify=False)
    back = convert(middle, to="timm", verify=False)
    assert type(back) is type(src)
    _assert_same_state(src, back)


#: timm models with variation points beyond TorchLean's, and the transformers class that expresses them.
FAMILIES = [
    (TIMM + "&act_layer=quick_gelu", "ViTForImageClassification"),  # transformers' hidden_act="quick_gelu"
    (TIMM + "&act_layer=silu", "ViTForImageClassification"),
    ("timm:vit_small_patch14_dinov2?depth=2&img_size=28&embed_dim=64&num_heads=4", "Dinov2Model"),  # LayerScale
    (
        "timm:deit_tiny_distilled_patch16_224?depth=2&img_size=32&patch_size=8&embed_dim=64&num_heads=4&num_classes=10",
        "DeiTForImageClassificationWithTeacher",  # distillation token, the mean of two heads
    ),
]


@pytest.mark.parametrize(("target", "hf_class"), FAMILIES)
def test_beyond_the_spec_the_transformers_class_that_expresses_it_round_trips(target: str, hf_class: str) -> None:
    src = _timm(target)
    done = conversion(src, to="hf")
    assert type(done.model).__name__ == hf_class
    assert done.comparison is not None and done.comparison.ok  # verified: the same function, every gradient
    back = convert(done.model, to="timm")
    assert type(back) is type(src)
    _assert_same_state(src, back)


def test_hf_sources_beyond_vit_convert_and_keep_every_tensor_their_class_has() -> None:
    import transformers

    torch.manual_seed(0)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    dino = transformers.Dinov2Model(transformers.Dinov2Config(**small, mlp_ratio=4)).double().eval()
    back = convert(convert(dino, to="timm"), to="hf")
    _assert_same_state(dino, back)  # mask_token included: the state_dict loads into a stock Dinov2Model
    deit = transformers.DeiTForImageClassification(transformers.DeiTConfig(**small, intermediate_size=128))
    deit.config.num_labels = 10
    deit = transformers.DeiTForImageClassification(deit.config).double().eval()  # distillation token, one head
    done = conversion(deit, to="hf")
    assert type(done.model) is transformers.DeiTForImageClassification and done.comparison is not None
    assert done.comparison.ok
    _assert_same_state(deit, done.model)


def test_a_dinov2_head_on_the_class_token_is_refused_by_name() -> None:
    # transformers' DINOv2 classifier reads [CLS; mean of the patch tokens], never the class token alone
    model = _timm("timm:vit_small_patch14_dinov2?depth=1&img_size=28&embed_dim=64&num_heads=4&num_classes=10")
    with pytest.raises(CannotExpress, match=r"pooling: token \(hf: cls_mean_concat\)"):
        convert(model, to="hf")


def test_converted_model_is_the_target_library_and_computes_the_same_function() -> None:
    import transformers

    src = _timm()
    done = conversion(src, to="hf")
    assert isinstance(done.model, transformers.ViTForImageClassification)
    assert done.model.config.layer_norm_eps == 1e-6  # timm's eps, not transformers' 1e-12 default
    assert done.comparison is not None and done.comparison.ok and done.comparison.exit_code == 0
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(done.model(pixel_values=x).logits, src(x), rtol=0, atol=1e-12)


def test_vit_pytorch_converts_to_itself() -> None:
    pytest.importorskip("vit_pytorch")
    src, _ = build_target("vit_pytorch:mean?depth=1", seed=0)
    _assert_same_state(src, convert(src, to="vit_pytorch"))


@pytest.mark.parametrize(
    ("target", "to", "point"),
    [
        (TIMM + "&global_pool=avg", "torchvision", "final_norm: after_pool (torchvision: before_pool)"),
        (TIMM + "&global_pool=avg", "hf", "final_norm: after_pool (hf: before_pool)"),
        ("vit_pytorch:cls?depth=1", "timm", "patch_embed: linear_ln (timm: conv)"),
        (TIMM, "vit_pytorch", "patch_embed: conv (vit_pytorch: linear_ln)"),
        (TIMM + "&act_layer=relu", "torchvision", "activation: relu (torchvision: gelu_erf)"),
    ],
)
def test_a_variation_point_the_target_cannot_express_is_refused_by_name(target: str, to: str, point: str) -> None:
    if target.startswith("vit_pytorch") or to == "vit_pytorch":
        pytest.importorskip("vit_pytorch")
    model, _ = build_target(target, seed=0)
    with pytest.raises(CannotExpress) as e:
        convert(model, to=to)
    assert point in e.value.points
    assert e.value.library == to


def test_refusal_is_exit_3_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _vitspec(["convert", TIMM + "&global_pool=avg", "--to", "torchvision"], capsys)
    assert code == 3
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "final_norm: after_pool" in err and "pooling: mean" in err
    assert out == ""


def test_convert_writes_safetensors_that_rebuild_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vit_hf.safetensors"
    code, stdout, err = _vitspec(["convert", TIMM, "--to", "hf", "-o", str(out)], capsys)
    assert code == 0, err
    assert "SAME FUNCTION" in stdout
    src, _ = build_target(TIMM, seed=0)
    rebuilt = load_converted(out)
    _assert_same_state(convert(src, to="hf", verify=False), rebuilt)


@pytest.mark.parametrize(
    "fn",
    [
        lambda t: (t * 2,),  # arithmetic: the values are not indices any more
        lambda t: (t.double(),),  # a dtype change
        lambda t: (t[:1].expand(t.shape[0]).clone(),),  # broadcast: an element used twice, others dropped
    ],
    ids=["scaled", "cast", "duplicated"],
)
def test_a_rule_that_is_not_an_index_map_is_refused(fn: object) -> None:
    class Fake:
        name = "fake"

        def rules(self) -> list[Rule]:
            return [Rule("w", ("patch_bias",), (4,), fn)]  # type: ignore[arg-type]

    with pytest.raises(NotAnIndexMapError, match="w"):
        to_library(Fake(), {"patch_bias": torch.arange(4.0)})  # type: ignore[arg-type]


# -- diff ----------------------------------------------------------------------------------------------------
def test_converted_model_diffs_as_the_same_function() -> None:
    src = _timm()
    cmp = compare_models(src, convert(src, to="hf", verify=False))
    assert cmp.ok and cmp.exit_code == 0
    assert cmp.first_divergence is None and not cmp.weights and not cmp.variation_points
    assert cmp.a.check is not None and cmp.a.check["status"] == "PASS"
    assert cmp.b.check is not None and cmp.b.check["status"] == "PASS"
    assert {s.name for s in cmp.stages} >= {"patch_embed", "blocks.0.attn", "blocks.1", "head", "output"}
    assert all(s.ok for s in cmp.stages) and all(g.ok for g in cmp.grads)
    assert json.loads(cmp.to_json())["ok"] is True
    assert cmp.headline() in cmp.to_markdown()
    assert "\n" not in repr(cmp) and "ok=True" in repr(cmp)


def test_one_perturbed_tensor_is_named_with_the_first_stage() -> None:
    src = _timm()
    hf = convert(src, to="hf", verify=False)
    with torch.no_grad():
        hf.vit.layers[0].attention.q_proj.weight[0, 0] += 1e-3
    cmp = compare_models(src, hf, against_spec=False)
    assert not cmp.ok and cmp.exit_code == 1
    assert cmp.weights == ["encoder.0.mha.Wq"]
    assert cmp.first_divergence == "blocks.0.attn"  # norm1 before it still agrees
    assert next(s for s in cmp.stages if s.name == "blocks.0.norm1").ok
    assert "encoder.0.mha.Wq" in cmp.why and "blocks.0.attn" in cmp.why


def test_a_differing_variation_point_is_named_with_both_deviation_lists() -> None:
    a = _timm()
    b = copy.deepcopy(a)
    for m in b.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = 1e-2
    cmp = compare_models(a, b, against_spec=False)
    assert not cmp.ok
    assert cmp.weights == []
    assert cmp.variation_points == ["ln_eps: 1e-06 | 0.01"]
    assert cmp.first_divergence == "blocks.0.norm1"
    assert "ln_eps" in cmp.why
    assert not any("LayerNorm eps" in d for d in cmp.a.deviations)
    assert "LayerNorm eps: 0.01 (spec: 1e-06)" in cmp.b.deviations


def test_weights_the_function_ignores_are_noted_not_failed() -> None:
    # Adding a constant to the key bias shifts every score of a query equally: softmax ignores it.
    a = _timm()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.blocks[0].attn.qkv.bias[64:128] += 0.5
    cmp = compare_models(a, b, against_spec=False)
    assert cmp.weights == ["encoder.0.mha.bk"]
    assert cmp.ok
    assert any("encoder.0.mha.bk" in n for n in cmp.notes)


def test_cli_diff_exit_codes_after_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hf.safetensors"
    assert _vitspec(["convert", TIMM, "--to", "hf", "-o", str(out)], capsys)[0] == 0
    report = tmp_path / "diff.json"
    argv = ["diff", TIMM, HF_FOR_TIMM, "--weights-b", str(out), "--no-spec", "--json", str(report)]
    code, stdout, err = _vitspec(argv, capsys)
    assert code == 0, stdout + err
    assert json.loads(report.read_text())["ok"] is True
    sd = safetensors_torch.load_file(str(out))
    sd["vit.layers.1.mlp.fc2.bias"][3] += 1e-3
    bad = tmp_path / "hf_perturbed.safetensors"
    safetensors_torch.save_file(sd, str(bad))
    code, stdout, err = _vitspec(["diff", TIMM, HF_FOR_TIMM, "--weights-b", str(bad), "--no-spec"], capsys)
    assert code == 1
    headline = stdout.splitlines()[0]
    assert "encoder.1.ffn.b2" in headline and "blocks.1.mlp" in headline


def test_a_converted_file_is_a_model_for_diff_and_conform(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The file carries its description: no target needed to rebuild the converted model, any family.
    dino = "timm:vit_small_patch14_dinov2?depth=1&img_size=28&embed_dim=64&num_heads=4"
    out = tmp_path / "dinov2.safetensors"
    assert _vitspec(["convert", dino, "--to", "hf", "-o", str(out)], capsys)[0] == 0
    code, stdout, err = _vitspec(["diff", dino, str(out), "--no-spec", "-q"], capsys)
    assert code == 0 and stdout.startswith("SAME FUNCTION"), stdout + err
    code, stdout, err = _vitspec(["conform", str(out), "-q", "--no-grads"], capsys)
    assert code == 0 and stdout.startswith("PASS: hf:Dinov2Model"), stdout + err
    sd = safetensors_torch.load_file(str(out))
    sd["encoder.layer.0.layer_scale1.lambda1"][5] += 1e-3  # the converted model, one LayerScale entry off
    with safetensors_torch.safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    bad = tmp_path / "dinov2_perturbed.safetensors"
    safetensors_torch.save_file(sd, str(bad), metadata=meta)
    code, stdout, _ = _vitspec(["diff", dino, str(bad), "--no-spec"], capsys)
    assert code == 1 and "blocks.0" in stdout.splitlines()[0]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    tampered = tmp_path / "tampered.bin"  # any file name: a target string never names a file alone
    description = json.loads(meta["vitspec.description"])
    description["profile"] = [1]
    safetensors_torch.save_file(sd, str(tampered), metadata={**meta, "vitspec.description": json.dumps(description)})
    mixed = tmp_path / "mixed.safetensors"
    safetensors_torch.save_file({**sd, "embeddings.cls_token": sd["embeddings.cls_token"].half()}, str(mixed), meta)
    for path, why in ((junk, "cannot read"), (tampered, "not a vitspec description"), (mixed, "dtypes")):
        for argv in (["diff", dino, str(path)], ["conform", str(path)]):
            code, _, err = _vitspec(argv, capsys)
            assert code == 2 and len(err.strip().splitlines()) == 1 and why in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["diff", "timm:nope", TIMM],
        ["diff", TIMM, TIMM, "--weights-a", "/no/such.safetensors"],
        ["convert", TIMM, "--to", "hf", "--no-verify", "--json", "x.json"],
        ["convert", TIMM, "--to", "jax"],
    ],
)
def test_usage_errors_are_exit_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _vitspec(argv, capsys)
    assert code == 2
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if "error" in ln]) == 1


def test_own_inputs_are_used_and_checked() -> None:
    from vitspec.errors import ConfigError

    src = _timm()
    hf = convert(src, to="hf", verify=False)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    cmp = compare_models(src, hf, inputs=x, against_spec=False)
    assert cmp.ok
    assert next(s for s in cmp.stages if s.name == "output").ok
    assert cmp.grads[-1].key == "grad_x"  # the input's gradient, compared last (backward order)
    assert cmp.tolerance["policy"]["batch_rows"] == 3 * (16 + 1)  # batch 3 x (16 patches + class token)
    with pytest.raises(ConfigError, match="A takes"):
        compare_models(src, hf, inputs=torch.rand(2, 3, 16, 16), against_spec=False)


def test_cli_diff_on_a_saved_input_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = tmp_path / "batch.pt"
    torch.save(torch.rand(3, 3, 32, 32), x)
    report = tmp_path / "diff.md"
    argv = ["diff", TIMM, TIMM, "--input", str(x), "--no-spec", "--no-grads", "--markdown", str(report)]
    code, stdout, err = _vitspec(argv, capsys)
    assert code == 0, stdout + err
    text = report.read_text()
    assert "| blocks.1.mlp |" in text and "SAME FUNCTION" in text


def test_a_model_whose_parameters_do_not_map_is_unsupported_as_in_check(capsys: pytest.CaptureFixture[str]) -> None:
    # timm's distilled DeiT without classes has no second head to map: check() says UNSUPPORTED, so do
    # convert and diff (exit 3, one line), not a usage error.
    odd = "timm:deit_tiny_distilled_patch16_224?img_size=32&patch_size=8&depth=1&embed_dim=64&num_heads=4&num_classes=0"
    for argv in (["convert", odd, "--to", "hf"], ["diff", odd, odd]):
        code, _, err = _vitspec(argv, capsys)
        assert code == 3 and err.startswith("UNSUPPORTED") and len(err.strip().splitlines()) == 1, err
