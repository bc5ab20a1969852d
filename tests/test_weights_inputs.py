"""``--weights`` and ``--input``: real weights from local files and real inputs, on every library's target.

Checkpoints and images are made by the tests themselves (tmp_path), from tiny configurations.
Expected pixel values are computed here from the libraries' documented recipes (a uniform
image stays uniform through resize and crop, so each channel is ``(v/255 - mean) / std``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from conformance import check
from conformance.cli import main
from conformance.inputs import InputError, load_inputs
from conformance.targets import TargetError, build_target
from conformance.weights import WeightsError, key_diff, load_state_dict, load_weights
from vitspec.errors import ConfigError

pytestmark = pytest.mark.thirdparty

PIL = pytest.importorskip("PIL.Image")
safetensors_torch = pytest.importorskip("safetensors.torch")

TINY = {
    "timm": "timm:vit_tiny_patch16_224?img_size=32&depth=1",
    "torchvision": (
        "torchvision:VisionTransformer?image_size=32&patch_size=8&num_layers=1&num_heads=2&hidden_dim=32&mlp_dim=64"
    ),
    "hf": "hf:tiny?num_hidden_layers=1",
    "vit_pytorch": "vit_pytorch:cls?depth=1",
}
#: (mean, std) each library's preprocessing normalizes with, per its documentation; None = no normalization.
NORMALIZATION = {
    "timm": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # vit_tiny_patch16_224's pretrained_cfg (augreg)
    "torchvision": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
    "hf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # ViTImageProcessor's defaults
    "vit_pytorch": None,
}
COLOR = (200, 30, 90)


def _image(path: Path, color: tuple[int, int, int] = COLOR, size: tuple[int, int] = (50, 70)) -> Path:
    PIL.new("RGB", size, color).save(path)
    return path


def _equal_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


# -- weights --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("library", list(TINY))
def test_weights_file_fills_every_library(library: str, suffix: str, tmp_path: Path) -> None:
    source, _ = build_target(TINY[library], seed=1)
    path = _save(source.state_dict(), tmp_path / f"w{suffix}")
    model, _ = build_target(TINY[library], seed=2)
    assert not _equal_state(model, source)  # the seeds really give different weights
    load_weights(model, path)
    assert _equal_state(model, source)


@pytest.mark.parametrize("library", list(TINY))
def test_cli_runs_with_weights_and_image_on_every_library(library: str, tmp_path: Path) -> None:
    source, _ = build_target(TINY[library], seed=1)
    weights = _save(source.state_dict(), tmp_path / "w.safetensors")
    image = _image(tmp_path / "cat.png")
    out = tmp_path / "r.json"
    code = main([TINY[library], "--weights", str(weights), "--input", str(image), "--json", str(out), "-q"])
    assert code == 0
    desc = json.loads(out.read_text())["description"]
    assert desc["weights"] == str(weights) and desc["batch"] == 1
    assert desc["input"].startswith("1 image(s) from cat.png")


def test_cli_really_uses_the_weights(tmp_path: Path) -> None:
    # A NaN written into the file must reach the model: the check then reports NONFINITE (exit 1).
    source, _ = build_target(TINY["timm"], seed=1)
    sd = source.state_dict()
    sd["head.bias"] = torch.full_like(sd["head.bias"], float("nan"))
    path = _save(sd, tmp_path / "nan.pt")
    out = tmp_path / "r.json"
    assert main([TINY["timm"], "--weights", str(path), "--json", str(out), "-q", "--no-grads"]) == 1
    assert json.loads(out.read_text())["status"] == "NONFINITE"


def test_training_checkpoints_are_unwrapped(tmp_path: Path) -> None:
    source, _ = build_target(TINY["hf"], seed=1)
    wrapped = {"epoch": torch.tensor(3), "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    model, _ = build_target(TINY["hf"], seed=2)
    load_weights(model, tmp_path / "ckpt.pth")
    assert _equal_state(model, source)


def _legacy_hf_key(key: str) -> str:
    """The name transformers 4 (and the hub's ViT checkpoints) give a ViT parameter; identity there."""
    key = re.sub(r"^vit\.layers\.", "vit.encoder.layer.", key)
    renames = (
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
        ("attention.o_proj", "attention.output.dense"),
        ("mlp.fc1", "intermediate.dense"),
        ("mlp.fc2", "output.dense"),
    )
    for new, old in renames:
        key = key.replace(new, old)
    return key


def test_hf_checkpoint_with_older_key_names_loads(tmp_path: Path) -> None:
    source, _ = build_target(TINY["hf"], seed=1)
    legacy = {_legacy_hf_key(k): v for k, v in source.state_dict().items()}
    path = _save(legacy, tmp_path / "model.safetensors")
    model, _ = build_target(TINY["hf"], seed=2)
    load_weights(model, path)
    assert _equal_state(model, source)


def test_hf_renaming_stays_strict(tmp_path: Path) -> None:
    source, _ = build_target(TINY["hf"], seed=1)
    legacy = {_legacy_hf_key(k): v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    path = _save(legacy, tmp_path / "model.safetensors")
    model, _ = build_target(TINY["hf"], seed=2)
    with pytest.raises(WeightsError) as info:
        load_weights(model, path)
    msg = str(info.value)
    assert "2 missing: classifier.bias, classifier.weight" in msg and "\n" not in msg
    assert "unexpected" not in msg  # the renaming explained every other key


def test_key_mismatch_lists_missing_unexpected_and_misshaped(tmp_path: Path) -> None:
    model, _ = build_target(TINY["timm"], seed=0)
    sd = dict(model.state_dict())
    del sd["cls_token"]
    sd["extra.weight"] = torch.zeros(2)
    sd["head.weight"] = torch.zeros(5, 192)
    path = _save(sd, tmp_path / "bad.pt")
    with pytest.raises(WeightsError) as info:
        load_weights(model, path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "1 missing: cls_token" in msg and "1 unexpected: extra.weight" in msg
    assert "1 mis-shaped: head.weight (file (5, 192), model (1000, 192))" in msg


def test_key_diff_names_a_wrapper_prefix() -> None:
    expected = {"a.w": torch.zeros(1), "b.w": torch.zeros(1)}
    given = {"vit.a.w": torch.zeros(1), "vit.b.w": torch.zeros(1)}
    assert "have a leading 'vit.'" in key_diff(expected, given)
    assert "lack a leading 'vit.'" in key_diff(given, expected)
    assert key_diff(expected, dict(expected)) == ""


def test_long_key_lists_are_shortened() -> None:
    expected = {f"k{i}": torch.zeros(1) for i in range(9)}
    assert key_diff(expected, {"other": torch.zeros(1)}).startswith("9 missing: k0, k1, k2, k3, k4 … and 4 more")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.write_bytes(b"not a checkpoint"), p)[1], "cannot read weights"),
        (lambda p: (torch.save([torch.zeros(1)], p), p)[1], "holds a list, not a non-empty state dict"),
        (lambda p: (torch.save({"w": 3}, p), p)[1], "entries that are not tensors: w"),
    ],
)
def test_bad_weight_files_exit_2_with_one_line(make, fragment: str, tmp_path: Path, capsys) -> None:
    path = make(tmp_path / "w.pt")
    assert main([TINY["timm"], "--weights", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_cli_key_mismatch_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    other, _ = build_target(TINY["hf"], seed=0)  # an HF checkpoint given to a timm target
    path = _save(other.state_dict(), tmp_path / "hf.safetensors")
    assert main([TINY["timm"], "--weights", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match the model" in err and "missing" in err


def test_foreign_checkpoint_on_an_hf_target_is_one_line_too(tmp_path: Path, capfd) -> None:
    # The renaming fallback runs transformers' loader, which must print nothing of its own.
    other, _ = build_target(TINY["timm"], seed=0)
    path = _save(other.state_dict(), tmp_path / "timm.safetensors")
    assert main([TINY["hf"], "--weights", str(path), "-q"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "does not match the model" in err


def test_load_state_dict_refuses_pickled_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # would run on a plain torch.load
            return (print, ("pwned",))

    torch.save({"w": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_state_dict(tmp_path / "evil.pt")


@pytest.mark.parametrize(
    "target",
    [
        "timm:vit_tiny_patch16_224?pretrained=true",
        "torchvision:vit_b_16?weights=DEFAULT",
        "hf:tiny?pretrained=True",
    ],
)
def test_pretrained_is_refused_pointing_to_weights(target: str, capsys) -> None:
    with pytest.raises(TargetError, match=r"never performs.*--weights PATH"):
        build_target(target)
    assert main([target, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--weights" in err


def test_explicit_pretrained_false_is_the_default() -> None:
    a, _ = build_target(TINY["timm"] + "&pretrained=false", seed=0)
    b, _ = build_target(TINY["timm"], seed=0)
    assert _equal_state(a, b)


# -- inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("library", list(TINY))
def test_images_are_preprocessed_as_the_library_does(library: str, tmp_path: Path) -> None:
    model, _ = build_target(TINY[library], seed=0)
    x, how = load_inputs(_image(tmp_path / "u.png"), model)
    side = 64 if library == "vit_pytorch" else 32
    assert x.shape == (1, 3, side, side) and x.dtype == torch.float32
    norm = NORMALIZATION[library]
    for c, v in enumerate(COLOR):
        want = v / 255 if norm is None else (v / 255 - norm[0][c]) / norm[1][c]
        torch.testing.assert_close(x[0, c], torch.full((side, side), want), atol=2e-3, rtol=0)
    assert how


def test_directory_gives_one_entry_per_image_in_name_order(tmp_path: Path) -> None:
    model, _ = build_target(TINY["vit_pytorch"], seed=0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    _image(folder / "b.jpg", (255, 255, 255))
    _image(folder / "a.png", (0, 0, 0))
    (folder / "notes.txt").write_text("not an image")
    x, how = load_inputs(folder, model)
    assert x.shape[0] == 2 and "2 image(s)" in how
    assert float(x[0].max()) < 0.01 and float(x[1].min()) > 0.99  # a.png (black) first


def test_saved_tensors_are_used_as_is(tmp_path: Path) -> None:
    model, _ = build_target(TINY["timm"], seed=0)
    x = torch.randn(3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    safetensors_torch.save_file({"pixel_values": torch.randn(2, 3, 32, 32)}, str(tmp_path / "x.safetensors"))
    got, _ = load_inputs(tmp_path / "x.pt", model)
    assert torch.equal(got, x.unsqueeze(0))
    got, _ = load_inputs(tmp_path / "x.safetensors", model)
    assert got.shape == (2, 3, 32, 32)


def test_check_runs_on_the_given_inputs() -> None:
    model, _ = build_target(TINY["timm"], seed=0)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    report = check(model, inputs=x, grads=False)
    assert report.ok and report.description["batch"] == 3
    assert len(seen) == 1 and torch.equal(seen[0], x)


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (torch.zeros(2, 3, 16, 16), "but the model takes (B, 3, 32, 32)"),
        (torch.zeros(3, 32, 32), "(B, C, H, W) tensor"),
        (torch.zeros(0, 3, 32, 32), "(B, C, H, W) tensor with B >= 1"),
        (torch.full((1, 3, 32, 32), float("nan")), "finite floating-point"),
    ],
)
def test_check_rejects_bad_inputs(x: torch.Tensor, fragment: str) -> None:
    model, _ = build_target(TINY["timm"], seed=0)
    with pytest.raises(ConfigError) as info:
        check(model, inputs=x)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d / "missing.png", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "holds no images"),
        (lambda d: ((d / "a.txt").write_text("x"), d / "a.txt")[1], "neither a saved tensor nor an image"),
        (lambda d: ((d / "a.png").write_bytes(b"garbage"), d / "a.png")[1], "cannot read image"),
        (lambda d: (torch.save(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), d / "u.pt"), d / "u.pt")[1],
         "save the preprocessed floats"),
        (lambda d: (torch.save(torch.zeros(2, 3, 16, 16), d / "s.pt"), d / "s.pt")[1], "the model takes"),
    ],
)  # fmt: skip
def test_bad_inputs_exit_2_with_one_line(make, fragment: str, tmp_path: Path, capsys) -> None:
    path = make(tmp_path)
    assert main([TINY["timm"], "--input", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_input_error_is_a_typed_error(tmp_path: Path) -> None:
    model, _ = build_target(TINY["timm"], seed=0)
    with pytest.raises(InputError):
        load_inputs(tmp_path / "nothing.png", model)


# -- the pytest suite: --vit-weights and --vit-input ----------------------------------------------
SUITE = str(Path(__file__).resolve().parents[1] / "conformance" / "suite")


@pytest.fixture(scope="module", autouse=True)
def _imported_before_pytester() -> None:
    # pytester's in-process runs drop the modules first imported inside them, and a later run that
    # imports them again mixes two copies of one class (jaxtyping then rejects the spec's own caches):
    # one check out here imports everything a check needs, once.
    check(build_target(TINY["timm"], seed=0)[0])


def test_suite_checks_the_given_weights_and_inputs(pytester: pytest.Pytester, tmp_path: Path) -> None:
    source, _ = build_target(TINY["timm"], seed=1)
    sd = source.state_dict()
    weights = _save(sd, tmp_path / "w.safetensors")
    images = tmp_path / "imgs"
    images.mkdir()
    for i, color in enumerate([(10, 20, 30), (200, 100, 0), (5, 250, 90)]):
        _image(images / f"{i}.png", color)
    out = tmp_path / "r.json"
    args = [f"--vit-target={TINY['timm']}", f"--vit-weights={weights}", f"--vit-input={images}", f"--vit-json={out}"]
    res = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider", *args)
    assert res.ret == 0, res.stdout.str()
    desc = json.loads(out.read_text())["description"]
    assert desc["weights"] == str(weights) and desc["batch"] == 3 and desc["input"].startswith("3 image(s) from imgs")


def test_suite_really_uses_the_weights(pytester: pytest.Pytester, tmp_path: Path) -> None:
    # A NaN written into the file must reach the model: the suite then fails on non-finite values.
    source, _ = build_target(TINY["timm"], seed=1)
    sd = source.state_dict()
    sd["head.bias"] = torch.full_like(sd["head.bias"], float("nan"))
    nan = _save(sd, tmp_path / "nan.pt")
    res = pytester.runpytest_inprocess(
        SUITE, "-p", "no:cacheprovider", f"--vit-target={TINY['timm']}", f"--vit-weights={nan}"
    )
    assert res.ret == 1 and "non-finite" in res.stdout.str()


@pytest.mark.parametrize("opt", ["--vit-weights", "--vit-input"])
def test_suite_refuses_a_missing_path_at_startup(opt: str, pytester: pytest.Pytester, tmp_path: Path) -> None:
    res = pytester.runpytest_inprocess(
        SUITE, "-p", "no:cacheprovider", f"--vit-target={TINY['timm']}", f"{opt}={tmp_path / 'nope'}"
    )
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*{opt}: no such file or directory: *nope"])


def test_suite_reports_weights_that_do_not_fit(pytester: pytest.Pytester, tmp_path: Path) -> None:
    other, _ = build_target(TINY["timm"].replace("depth=1", "depth=2"), seed=1)
    bad = _save(other.state_dict(), tmp_path / "tv.safetensors")
    res = pytester.runpytest_inprocess(
        SUITE, "-p", "no:cacheprovider", f"--vit-target={TINY['timm']}", f"--vit-weights={bad}"
    )
    assert res.ret == 1
    res.stdout.fnmatch_lines(["--vit-* options: *tv.safetensors' does not match the model: 12 unexpected: blocks.1.*"])


def test_suite_checks_a_file_vitspec_convert_wrote(pytester: pytest.Pytester, tmp_path: Path) -> None:
    from conformance.conversion import conversion, save_converted

    source, _ = build_target(TINY["timm"], seed=1)
    path = tmp_path / "as_hf.safetensors"
    save_converted(conversion(source, to="hf"), path)
    out = tmp_path / "r.json"
    res = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider", f"--vit-target={path}", f"--vit-json={out}")
    assert res.ret == 0, res.stdout.str()
    assert json.loads(out.read_text())["description"]["library"] == "hf"
