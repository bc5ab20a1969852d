"""``vitspec train`` and ``vitspec attention-map`` end to end, and every subcommand under random argument vectors.

``tests/test_cli.py`` covers ``conform`` / ``python -m conformance`` (reports, exit codes 0/1/2, its
usage errors) and the registry itself; this file covers the two other subcommands and a Hypothesis
sweep over all of them: whatever the arguments, the exit code is 0, 1 or 2 and stderr never holds a
traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitspec import ConfigError, ViTClsSpec, ViTConfig, ViTSpec
from vitspec import cli as vcli
from vitspec.errors import Violation

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

PNG = b"\x89PNG\r\n\x1a\n"
TINY_CFG = ViTConfig(4, 4, 4, 0, 16, 32, 4, 2, 5)


def _main(argv: list[str]) -> tuple[int, str, str]:
    """``vitspec.cli.main(argv)`` in this process, with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()  # `train --threads` sets the process-wide count
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = vcli.main(argv)
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def _write_png(path: Path, h: int = 20, w: int = 30, rgb: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(0)
    arr = torch.rand((h, w, 3) if rgb else (h, w), generator=g).numpy()
    plt.imsave(path, arr, cmap=None if rgb else "gray")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A saved CLS model, a saved mean-pool model, a PNG, a non-image file and an output folder."""
    d = tmp_path_factory.mktemp("cli_files")
    cls_model = d / "cls.safetensors"
    ViTClsSpec.init(TINY_CFG, 3, 12, 8, seed=1).save(cls_model)
    mean_model = d / "mean.safetensors"
    ViTSpec.init(TINY_CFG, 3, 12, 8, seed=1).save(mean_model)
    garbage = d / "garbage.bin"
    garbage.write_bytes(b"not a model, not an image\n" * 4)
    out = d / "out"
    out.mkdir()
    return {
        "cls": cls_model,
        "mean": mean_model,
        "png": _write_png(d / "in.png"),
        "gray_png": _write_png(d / "gray.png", rgb=False),
        "garbage": garbage,
        "out": out,
    }


# -- vitspec train ---------------------------------------------------------------------------------
def test_train_one_epoch_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "train.json"
    code, stdout, err = _main(["train", "--epochs", "1", "--quiet", "--threads", "1", "--json", str(out)])
    assert code == 0, err
    assert stdout.startswith("test accuracy ") and err == ""
    data = json.loads(out.read_text())
    assert 0.0 <= data["test_accuracy"] <= 1.0 and 0.0 <= data["train_accuracy"] <= 1.0
    assert data["epochs"] == 1 and data["config"]["epochs"] == 1 and data["seconds"] > 0
    assert data["machine"]["cpu_count"] >= 1 and data["machine"]["torch"] == torch.__version__


def test_train_help() -> None:
    code, out, _ = _main(["train", "--help"])
    assert code == 0
    for opt in ("--epochs", "--batch-size", "--lr", "--seed", "--profile", "--threads", "--json", "--quiet"):
        assert opt in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--epochs", "0"], "argument --epochs: must be > 0, got 0"),
        (["--batch-size", "-4"], "argument --batch-size: must be > 0"),
        (["--lr", "0"], "argument --lr: must be a finite number > 0"),
        (["--lr", "nan"], "argument --lr: must be a finite number > 0"),
        (["--lr", "x"], "expected a positive number"),
        (["--threads", "0"], "argument --threads: must be > 0"),
        (["--threads", "100000"], "must be at most 256"),
        (["--seed", "-1"], "argument --seed: must be between 0 and 2**63 - 1"),
        (["--seed", str(2**64)], "argument --seed: must be between 0 and 2**63 - 1"),
        (["--profile", "nope"], "invalid choice: 'nope'"),
        (["extra"], "unrecognized arguments: extra"),
    ],
)
def test_train_bad_arguments_exit_2(argv: list[str], needle: str) -> None:
    code, _, err = _main(["train", *argv])
    assert code == 2 and needle in err and "Traceback" not in err


def test_train_json_to_a_directory_exits_2_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vitspec.train

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("training must not start")

    monkeypatch.setattr(vitspec.train, "train_digits", never)
    code, _, err = _main(["train", "--json", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1 and f"--json: {tmp_path}: is a directory" in err


def test_train_without_sklearn_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # `from sklearn.datasets import ...` fails
    code, _, err = _main(["train", "--epochs", "1", "--quiet", "--threads", "1"])
    assert code == 2 and err.startswith("vitspec train: error: an optional library is missing:")
    assert err.count("\n") == 1


def test_multi_line_errors_become_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import vitspec.train

    def bad(*_a: object, **_k: object) -> None:
        raise ConfigError([Violation("patch_h", "patchH_ne0", "patch_h != 0", "0"), Violation("x", "y", "z", "w")])

    monkeypatch.setattr(vitspec.train, "train_digits", bad)
    code, _, err = _main(["train", "--quiet"])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("vitspec train: error: 2 well-formedness conditions violated: - patch_h: needs")


def test_keyboard_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import vitspec.train

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(vitspec.train, "train_digits", interrupted)
    assert _main(["train", "--quiet"])[0] == 130


# -- vitspec attention-map ---------------------------------------------------------------------------
def test_attention_map_default_random_model(tmp_path: Path) -> None:
    out = tmp_path / "maps" / "a.png"
    code, stdout, err = _main(["attention-map", "-o", str(out)])
    assert code == 0, err
    assert stdout == f"wrote {out}\n" and out.read_bytes()[:8] == PNG


def test_attention_map_saved_model(tmp_path: Path, files: dict[str, Path]) -> None:
    out = tmp_path / "a.png"
    code, _, err = _main(["attention-map", "--model", str(files["cls"]), "--seed", "3", "-o", str(out)])
    assert code == 0, err
    assert out.read_bytes()[:8] == PNG


@pytest.mark.parametrize("key", ["png", "gray_png"])
def test_attention_map_with_an_image(tmp_path: Path, files: dict[str, Path], key: str) -> None:
    out = tmp_path / "a.png"
    code, _, err = _main(["attention-map", "--model", str(files["cls"]), "--image", str(files[key]), "-o", str(out)])
    assert code == 0, err
    assert out.read_bytes()[:8] == PNG


@pytest.mark.thirdparty
def test_attention_map_third_party_target(tmp_path: Path, files: dict[str, Path]) -> None:
    pytest.importorskip("vit_pytorch")
    out = tmp_path / "a.png"
    code, _, err = _main(["attention-map", "--target", "vit_pytorch:cls", "--image", str(files["png"]), "-o", str(out)])
    assert code == 0, err
    assert out.read_bytes()[:8] == PNG


def test_attention_map_help() -> None:
    code, out, _ = _main(["attention-map", "--help"])
    assert code == 0
    for opt in ("--model", "--target", "--image", "--seed", "--output"):
        assert opt in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "{mean}"], "need a model with a CLS token"),
        (["--model", "{garbage}"], "cannot read the safetensors file"),
        (["--model", "/no/such/model.safetensors"], "--model '/no/such/model.safetensors': no such file"),
        (["--model", "{cls}", "--image", "/no/such.png"], "--image '/no/such.png': no such file"),
        (["--model", "{cls}", "--image", "{garbage}"], "cannot read it as an image"),
        (["--model", "{cls}", "-o", "{out}"], "is a directory"),
        (["--target", "timm:nope"], "unknown timm model 'nope'"),
        (["--target", "torchvision:"], "nothing after 'torchvision:'"),
        (["--target", "hf:/no/such.json"], "hf config '/no/such.json' does not exist"),
        (["--target", "x:y"], "cannot import module 'x'"),
        (["--target", "no-colon"], "unknown target 'no-colon'"),
    ],
)
def test_attention_map_bad_input_is_one_line_exit_2(
    argv: list[str], needle: str, files: dict[str, Path], tmp_path: Path
) -> None:
    if any(a.startswith(("timm:", "torchvision:", "hf:")) for a in argv):
        pytest.importorskip(argv[1].split(":")[0].replace("hf", "transformers"))
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "never.png")]
    code, out, err = _main(["attention-map", *argv])
    assert code == 2, out + err
    assert err.startswith("vitspec attention-map: error: ") and err.count("\n") == 1, err
    assert needle in err
    assert not (tmp_path / "never.png").exists()


def test_attention_map_model_and_target_are_exclusive(files: dict[str, Path]) -> None:
    code, _, err = _main(["attention-map", "--model", str(files["cls"]), "--target", "vit_pytorch:cls"])
    assert code == 2 and "not allowed with argument" in err


# -- every subcommand, random argument vectors -----------------------------------------------------
BOGUS_TARGETS = (
    "timm:nope",
    "torchvision:",
    "hf:/no/such.json",
    "x:y",
    "no-colon",
    ":",
    "timm:",
    "vit_pytorch:nope",
    "timm:vit_tiny_patch16_224?bad",
    "/no/such/file.py:make",
    "hf:nope",
    "torchvision:nope",
)
MISSING = ("/no/such/file", "no_such_model.safetensors", "/no/such/dir/x.png")
NUMBERS = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "1", "2", "-1", "-0", "nan", "inf", "-inf", "1e-3", "0x10", "", " ", "1_000"]),
)
# argv strings cannot hold NUL; no ':' either, so random text never names a `module:factory` to import.
TEXT = st.text(max_size=8).filter(lambda s: "\x00" not in s and ":" not in s)

OPTIONS = {
    "train": ("--epochs", "--batch-size", "--lr", "--seed", "--profile", "--threads", "--json", "--quiet", "--bogus"),
    "attention-map": ("--model", "--target", "--image", "--seed", "-o", "--output", "--bogus"),
    "conform": (
        "--device",
        "--dtype",
        "--batch",
        "--seed",
        "--no-grads",
        "--json",
        "--markdown",
        "--plot",
        "--quiet",
        "--bogus",
    ),
    "": ("--version", "--bogus", "-x"),
}


@pytest.fixture(scope="module")
def small_digits() -> tuple[torch.Tensor, ...]:
    """A 64/32-image slice of the real digits, so random `train` vectors finish in a moment."""
    import vitspec.train

    x_tr, y_tr, x_te, y_te = vitspec.train.load_digits_tensors(0.25, 0)
    return x_tr[:64], y_tr[:64], x_te[:32], y_te[:32]


@st.composite
def argument_vectors(draw: st.DrawFn, files: dict[str, str]) -> list[str]:
    command = draw(st.sampled_from(sorted(OPTIONS)))
    paths = st.sampled_from([*MISSING, *(v for k, v in files.items() if not k.endswith("_out"))])
    targets = st.sampled_from([*BOGUS_TARGETS, "vit_pytorch:cls", "vit_pytorch:mean"])  # small real ones too
    words = st.sampled_from(["torchlean", "timm", "lucidrains", "nope", "cuda", "cpu", "tpu", "float16", "int8"])
    anything = st.one_of(NUMBERS, TEXT, paths, targets, words)
    own = {  # values that make sense for an option (half the time), so runs get past argparse
        "--model": paths,
        "--image": paths,
        "--target": targets,
        "--profile": words,
        "--device": words,
        "--dtype": words,
    }
    argv = [command] if command else []
    if command == "conform":  # always a bogus target first: no real check ever starts
        argv.append(draw(targets.filter(lambda t: t in BOGUS_TARGETS)))
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 9))
        opt = draw(st.sampled_from(OPTIONS[command]))
        if kind == 0:  # a stray positional
            argv.append(draw(anything))
        elif kind <= 2:  # an option alone (a flag, or one missing its value)
            argv.append(opt)
        else:
            pool = own.get(opt, NUMBERS)
            argv += [opt, draw(st.one_of(pool, anything) if draw(st.booleans()) else pool)]
    # Last occurrence wins: keep runs short, quiet, single-threaded, and writing only under tmp.
    if command == "train":
        argv += ["--epochs", draw(st.sampled_from(["1", "2"])), "--threads", "1", "--quiet"]
        argv += ["--json", files["json_out"]]
    if command == "attention-map":
        argv += ["-o", files["png_out"]]
    return argv


def test_random_argument_vectors_never_traceback(
    files: dict[str, Path], small_digits: tuple[torch.Tensor, ...]
) -> None:
    # Without timm / torchvision / transformers / vit-pytorch the targets fail with TargetError: exit 2 still.
    named = {k: str(v) for k, v in files.items()}
    named["json_out"] = str(files["out"] / "train.json")
    named["png_out"] = str(files["out"] / "map.png")

    @settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(argv=argument_vectors(named))
    def check(argv: list[str]) -> None:
        code, out, err = _main(argv)
        assert code in (0, 1, 2), (argv, code, err)
        assert "Traceback" not in err + out, (argv, err)
        if code == 2 and argv and argv[0] in OPTIONS and argv[0] and "--help" not in argv:
            errors = [ln for ln in err.splitlines() if "error:" in ln]
            assert len(errors) == 1, (argv, err)

    import vitspec.train

    with pytest.MonkeyPatch.context() as mp:  # only this test trains on the small slice
        mp.setattr(vitspec.train, "load_digits_tensors", lambda *a, **k: small_digits)
        check()
