"""Regression tests for the hardening issue: every bad input gets a typed error or a documented exit
code with one line, nothing at a destination is clobbered, nothing blows up, and vitspec installs
beside any torch. Each test names the defect it pins down."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import struct
import subprocess
import sys
import threading
import tomllib
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from vitspec import LoadError, MappingError, ViTClsSpec, ViTConfig
from vitspec._fs import UnwritableError, atomic_write_text, check_writable, writes_through
from vitspec.io import MAX_LISTED
from vitspec.models import load

pytest_plugins = ["pytester"]  # the plugin tests run pytest in-process

# Imported before any pytester snapshot of sys.modules: a re-import re-registers torch operators.
with contextlib.suppress(ImportError):
    import timm  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = "timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2&embed_dim=32&num_heads=4&mlp_ratio=2&num_classes=5"

FACTORIES = """
import sys, time
import torch
from timm.models.vision_transformer import VisionTransformer

def _tiny(cls=VisionTransformer):
    torch.manual_seed(0)
    return cls(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=5)

class NoCopy(VisionTransformer):
    def __deepcopy__(self, memo):
        raise TypeError("this model cannot be deep-copied")

def ok():
    return _tiny()

def nocopy():
    return _tiny(NoCopy)

def raises():
    raise RuntimeError("factory exploded")

def exits():
    sys.exit(0)

def hook_exits():
    m = _tiny()
    m.blocks[0].register_forward_hook(lambda *a: sys.exit(0))
    return m

def forward_exits():
    m = _tiny()
    def fwd(x):
        sys.exit(0)
    m.forward = fwd
    return m

def eps_mutant():
    m = _tiny()
    m.blocks[0].norm2.eps = 1e-5
    return m

def slow():
    m = _tiny()
    m.blocks[0].register_forward_hook(lambda *a: time.sleep(120))
    return m
"""


def _tiny_spec(layers: int = 2) -> ViTClsSpec:
    cfg = ViTConfig(4, 4, 4, 0, 16, 32, 2, layers, 10)
    return ViTClsSpec.init(cfg, 3, 16, 16, seed=0)


@pytest.fixture
def factories(tmp_path: Path) -> Path:
    pytest.importorskip("timm")
    p = tmp_path / "hardening_factories.py"
    p.write_text(FACTORIES)
    return p


def _conform(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    from conformance import cli

    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


def _sub(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **kw.pop("env", {})}
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=kw.pop("cwd", ROOT), **kw)


# == Files: writers =============================================================================
def _read_fifo(path: Path, box: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as f:
            box.append(f.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_fifo_is_written_through_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    box: list[bytes] = []
    t = _read_fifo(fifo, box)
    atomic_write_text(fifo, "through the pipe\n")
    t.join(10)
    assert box == [b"through the pipe\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"


def test_symlink_to_a_device_is_written_through(tmp_path: Path) -> None:
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    atomic_write_text(link, "discarded")
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert writes_through("/dev/stdout") and writes_through("-")


def test_symlink_target_is_replaced_atomically_and_the_link_kept(tmp_path: Path) -> None:
    target = tmp_path / "real" / "report.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temp file left


def test_dash_writes_to_stdout(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    atomic_write_text("-", '{"a": 1}\n')
    assert capfd.readouterr().out == '{"a": 1}\n'
    assert not (Path.cwd() / "-").exists()


@pytest.mark.parametrize("kind", ["dir", "under_a_file", "too_long", "empty"])
def test_unwritable_destinations_are_refused_before_work(tmp_path: Path, kind: str) -> None:
    (tmp_path / "f").write_text("x")
    path = {
        "dir": str(tmp_path),
        "under_a_file": str(tmp_path / "f" / "out.json"),
        "too_long": str(tmp_path / ("n" * 5000)),
        "empty": "",
    }[kind]
    with pytest.raises(UnwritableError) as info:
        check_writable(path, "--json")
    assert str(info.value).startswith("--json") and "\n" not in str(info.value) and len(str(info.value)) < 400


def test_conform_refuses_an_unwritable_report_before_building(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import conformance.targets

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("the target must not be built")

    monkeypatch.setattr(conformance.targets, "build_target", never)
    (tmp_path / "f").write_text("x")
    for opt in ("--json", "--markdown", "--plot"):
        code, _, err = _conform(capsys, [TINY, opt, str(tmp_path / "f" / "r")])
        assert code == 2 and _one_line_error(err) and "not a directory" in err


def test_train_and_attention_map_refuse_an_unwritable_output(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from vitspec import cli

    (tmp_path / "f").write_text("x")
    bad = str(tmp_path / "f" / "x")
    assert cli.main(["train", "--json", bad]) == 2
    assert cli.main(["attention-map", "-o", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.count("not a directory") == 2


def test_conform_json_dash_is_pure_json_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    code, out, err = _conform(capsys, [TINY, "--no-grads", "--json", "-"])
    assert code == 0
    assert json.loads(out)["status"] == "PASS" and err.startswith("PASS")
    assert not (Path.cwd() / "-").exists()


def test_conform_json_through_a_fifo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("timm")
    fifo = tmp_path / "report.pipe"
    os.mkfifo(fifo)
    box: list[bytes] = []
    t = _read_fifo(fifo, box)
    code, _, _ = _conform(capsys, [TINY, "--no-grads", "--quiet", "--json", str(fifo)])
    t.join(10)
    assert code == 0 and json.loads(box[0])["status"] == "PASS" and stat.S_ISFIFO(os.lstat(fifo).st_mode)


# == Load =======================================================================================
def _craft(path: Path, **meta_changes: str) -> Path:
    """A small valid spec file, then its metadata edited (tensors unchanged)."""
    from safetensors.torch import load_file, save_file

    m = _tiny_spec()
    m.save(path)
    from vitspec.io import read_metadata

    md = {**read_metadata(path), **meta_changes}
    save_file(load_file(str(path)), str(path), metadata=md)
    return path


@pytest.mark.parametrize("num_layers", [100_000, 1_000_000])
def test_huge_num_layers_in_metadata_is_refused_cheaply(tmp_path: Path, num_layers: int) -> None:
    p = tmp_path / "m.safetensors"
    m = _tiny_spec()
    m.save(p)
    from vitspec.io import read_metadata

    cfg = json.loads(read_metadata(p)["config"]) | {"num_layers": num_layers}
    _craft(p, config=json.dumps(cfg))
    assert p.stat().st_size < 64_000
    tracemalloc.start()
    try:
        with pytest.raises(LoadError, match=f"num_layers={num_layers}") as info:
            load(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(str(info.value)) < 2_000 and peak < 20_000_000


def test_error_lists_are_a_screenful(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from vitspec.io import read_metadata

    p = tmp_path / "m.safetensors"
    m = _tiny_spec(layers=2)
    m.save(p)
    md = read_metadata(p)
    bad = {k: torch.zeros(1) for k in m.state_dict()}  # every tensor mis-shaped
    save_file(bad, str(p), metadata=md)
    with pytest.raises(LoadError) as info:
        load(p)
    text = str(info.value)
    assert text.count("\n") == MAX_LISTED + 1 and text.rstrip().endswith("more")


@pytest.mark.parametrize("eps", ["1" + "0" * 400, "Infinity", "-Infinity", "NaN", "1e400", "0", "2.0"])
def test_non_finite_or_out_of_range_ln_eps_is_a_load_error(tmp_path: Path, eps: str) -> None:
    p = tmp_path / "m.safetensors"
    _tiny_spec().save(p)
    from vitspec.io import read_metadata

    prof = read_metadata(p)["profile"]
    prof = json.dumps(json.loads(prof)).replace('"ln_eps": 1e-06', f'"ln_eps": {eps}')
    assert eps in prof
    _craft(p, profile=prof)
    with pytest.raises(LoadError, match="ln_eps"):
        load(p)


@pytest.mark.parametrize("make_bad", ["meta", "sparse"])
def test_load_state_dict_validates_everything_before_the_first_copy(make_bad: str) -> None:
    m = _tiny_spec()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = {k: v + 1 for k, v in m.state_dict().items()}
    last = list(sd)[-1]
    sd[last] = torch.empty(sd[last].shape, device="meta") if make_bad == "meta" else sd[last].to_sparse()
    with pytest.raises(MappingError, match=last):
        m.load_state_dict(sd)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "a tensor was overwritten"


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` without root's power to read anything (the test machine runs as root)."""
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        kwargs["user"] = 65534
    try:
        return subprocess.run(
            [PY, "-c", code], capture_output=True, text=True, timeout=120, cwd="/", env={**os.environ}, **kwargs
        )
    except PermissionError:
        pytest.skip("the unprivileged user cannot run this interpreter")


def test_unreadable_file_keeps_its_real_cause() -> None:
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="vitspec-perm-", dir="/tmp"))  # traversable by the unprivileged user
    try:
        d.chmod(0o755)
        p = d / "m.safetensors"
        _tiny_spec().save(p)
        p.chmod(0o000)
        r = _as_nobody(
            f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom vitspec.models import load\n"
            f"try:\n    load({str(p)!r})\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
        )
    finally:
        shutil.rmtree(d)
    if "ModuleNotFoundError" in r.stdout + r.stderr:
        pytest.skip("the unprivileged user cannot import the environment's packages")
    assert r.stdout.startswith("PermissionError") and "Permission denied" in r.stdout, r.stdout + r.stderr


def test_permission_error_passes_through_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    import vitspec.io

    p = tmp_path / "m.safetensors"
    _tiny_spec().save(p)

    def denied(path: Any, *a: Any, **k: Any) -> Any:
        if os.fspath(path) == str(p):
            raise PermissionError(13, "Permission denied", str(p))
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(vitspec.io, "open", denied, raising=False)
    with pytest.raises(PermissionError, match="Permission denied"):
        load(p)


# == Bounded resources ==========================================================================
def _png_header(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims ``w x h`` (the pixels are never there: a decoder would have to allocate)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_attention_map_refuses_a_huge_image_before_decoding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("PIL")
    from vitspec import cli

    big = _png_header(tmp_path / "big.png", 15000, 15000)
    tracemalloc.start()
    try:
        code = cli.main(["attention-map", "--image", str(big), "-o", str(tmp_path / "a.png")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 2 and "225,000,000 pixels" in err and "--max-pixels" in err and _one_line_error(err)
    assert peak < 200_000_000 and not (tmp_path / "a.png").exists()


def test_max_pixels_is_configurable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    from vitspec import cli

    img = tmp_path / "small.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(img)
    out = tmp_path / "a.png"
    assert cli.main(["attention-map", "--image", str(img), "--max-pixels", "399", "-o", str(out)]) == 2
    assert "400 pixels" in capsys.readouterr().err
    assert cli.main(["attention-map", "--image", str(img), "--max-pixels", "400", "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_huge_batch_is_refused_by_the_memory_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    code, _, err = _conform(capsys, [TINY, "--batch", "1000000000000"])
    assert code == 2 and _one_line_error(err) and "would need about" in err and "--batch" in err


def test_memory_estimate_is_within_a_small_factor_of_a_real_check() -> None:
    from conformance.budget import estimate_check_bytes
    from vitspec import preset

    est = estimate_check_bytes(preset("vit_base_patch16"), 3, 224, 224, batch=2)
    # The float64 ViT-B/16 check measured 5.2 GB peak RSS (torch + libraries included).
    assert 0.5e9 < est.bytes < 20e9
    assert estimate_check_bytes(preset("vit_base_patch16"), 3, 224, 224, batch=10**12).bytes > 1e18


# == Exit codes and tracebacks ==================================================================
def test_empty_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from vitspec import cli

    for argv in ([""], ["   "]):
        code, out, err = _conform(capsys, argv)
        assert code == 2 and _one_line_error(err) and out == ""
    assert cli.main(["conform", ""]) == 2


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("raises", "RuntimeError: factory exploded"),
        ("exits", "sys.exit(0)"),
        ("hook_exits", "sys.exit(0)"),
        ("forward_exits", "sys.exit(0)"),
    ],
)
def test_factory_and_model_failures_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], factories: Path, factory: str, needle: str
) -> None:
    code, out, err = _conform(capsys, [f"{factories}:{factory}", "--no-grads"])
    assert code == 2, out + err
    assert needle in err and _one_line_error(err)


def test_a_model_that_cannot_be_deep_copied(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    # The CLI checks the model it built in place, so no copy is needed there.
    code, out, err = _conform(capsys, [f"{factories}:nocopy", "--no-grads"])
    assert code == 0 and out.startswith("PASS"), out + err
    # check() copies by default: the refusal is a status with the cause and the way out, never an exception.
    import importlib.util

    from conformance import check

    spec = importlib.util.spec_from_file_location("hardening_factories", factories)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = check(mod.nocopy(), grads=False)
    assert r.status == "UNSUPPORTED" and "cannot be deep-copied" in r.reason and "consume=True" in r.reason
    assert check(mod.nocopy(), grads=False, consume=True).ok


def test_module_level_sys_exit_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    mod = tmp_path / "exits_on_import.py"
    mod.write_text("import sys\nsys.exit(0)\n")
    code, _, err = _conform(capsys, [f"{mod}:make"])
    assert code == 2 and "sys.exit(0)" in err and _one_line_error(err)


@pytest.mark.parametrize(
    "target",
    [
        "timm:vit_tiny_patch16_224?num_heads=0",
        "timm:vit_tiny_patch16_224?act_layer=nosuch",
        "hf:tiny?hidden_act=nosuch",
    ],
)
def test_bad_library_overrides_exit_2(capsys: pytest.CaptureFixture[str], target: str) -> None:
    pytest.importorskip(target.split(":")[0].replace("hf", "transformers"))
    code, _, err = _conform(capsys, [target, "--no-grads"])
    assert code == 2 and _one_line_error(err), err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    code, _, err = _conform(capsys, [f"{factories}:raises", "--debug"])
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error:")


def test_timeout_ends_a_hanging_check_with_exit_4(capsys: pytest.CaptureFixture[str], factories: Path) -> None:
    import time

    t0 = time.monotonic()
    code, _, err = _conform(capsys, [f"{factories}:slow", "--timeout", "2", "--no-grads"])
    assert code == 4 and err.startswith("TIMEOUT:") and _one_line_error(err)
    assert time.monotonic() - t0 < 60


def test_train_lr_1e308_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from vitspec import cli

    assert cli.main(["train", "--lr", "1e308"]) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and _one_line_error(err)


def test_non_utf8_target_file_name_with_json(tmp_path: Path, factories: Path) -> None:
    name = os.fsencode(tmp_path) + b"/fac\xff\xfe.py"
    os.rename(factories, name)
    target = os.fsdecode(name) + ":ok"
    r = _sub([PY, "-m", "conformance", target, "--no-grads", "--quiet", "--json", str(tmp_path / "r.json")])
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "PASS"


def test_ascii_only_stdout_on_a_mismatch_headline(factories: Path) -> None:
    r = _sub(
        [PY, "-m", "conformance", f"{factories}:eps_mutant", "--no-grads", "--quiet"],
        env={"PYTHONIOENCODING": "ascii", "LC_ALL": "C"},
    )
    assert r.returncode == 1 and r.stdout.startswith("MISMATCH") and "Traceback" not in r.stderr


def test_5000_character_path_under_python_m_conformance() -> None:
    target = "/tmp/" + "a" * 5000 + ".py:make"
    r = _sub([PY, "-m", "conformance", target])
    assert r.returncode == 2 and _one_line_error(r.stderr) and len(r.stderr) < 600


def test_check_inside_inference_mode_is_not_a_crash() -> None:
    timm = pytest.importorskip("timm")
    from conformance import Status, check

    torch.manual_seed(0)
    m = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=4
    )
    with torch.inference_mode():
        r = check(m)
    assert r.status is Status.PASS, r.reason


def test_meta_device_model_gets_a_status_not_an_exception() -> None:
    timm = pytest.importorskip("timm")
    from conformance import Status, check

    with torch.device("meta"):
        m = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=4
        )
    r = check(m)
    assert r.status is not Status.PASS and r.reason


# == pytest plugin ==============================================================================
def test_a_project_with_its_own_conformance_package_runs_pytest(tmp_path: Path) -> None:
    (tmp_path / "conformance").mkdir()
    (tmp_path / "conformance" / "__init__.py").write_text("MINE = True\n")
    (tmp_path / "test_mine.py").write_text("import conformance\n\ndef test_mine():\n    assert conformance.MINE\n")
    r = _sub([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py"], cwd=tmp_path)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr
    r = _sub([PY, "-c", "import vitspec.pytest_plugin, sys; print('conformance' in sys.modules)"], cwd=tmp_path)
    assert r.stdout.strip() == "False"


SUITE = str(ROOT / "conformance" / "suite")


@pytest.mark.parametrize("factory", ["raises", "exits", "hook_exits"])
def test_plugin_factory_failure_is_a_test_failure(pytester: pytest.Pytester, factories: Path, factory: str) -> None:
    res = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider", f"--vit-target={factories}:{factory}")
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.assert_outcomes(failed=1, skipped=2)
    assert "INTERNALERROR" not in res.stdout.str() + res.stderr.str()


def test_plugin_non_utf8_xfails_is_a_usage_error(pytester: pytest.Pytester, tmp_path: Path) -> None:
    xf = tmp_path / "xfails.txt"
    xf.write_bytes(b"test_stage[\xff\xfe]\n")
    res = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider", f"--vit-xfails={xf}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "not a UTF-8 text file" in res.stderr.str() and "INTERNALERROR" not in res.stdout.str()


def test_plugin_unwritable_json_fails_at_startup(pytester: pytest.Pytester, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    res = pytester.runpytest_inprocess(
        SUITE, "-p", "no:cacheprovider", "--vit-target=timm:no_such_vit", f"--vit-json={tmp_path / 'f' / 'r.json'}"
    )
    assert res.ret == pytest.ExitCode.USAGE_ERROR and "--vit-json" in res.stderr.str()


def test_plugin_names_an_xfail_id_that_matches_nothing(pytester: pytest.Pytester, tmp_path: Path) -> None:
    xf = tmp_path / "xfails.txt"
    xf.write_text("test_stage[blocks.99]\n")
    res = pytester.runpytest_inprocess(SUITE, "-p", "no:cacheprovider", f"--vit-xfails={xf}")
    assert "no collected test matches test_stage[blocks.99]" in res.stdout.str()


# == Installing and conventions =================================================================
def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_torch_requirement_admits_newer_releases() -> None:
    from packaging.requirements import Requirement

    deps = {Requirement(d).name: Requirement(d) for d in _pyproject()["project"]["dependencies"]}
    torch_req = deps["torch"]
    assert torch_req.specifier.contains("2.15.0") and torch_req.specifier.contains("2.13.0")
    assert not torch_req.specifier.contains("2.3.0")
    extras = _pyproject()["project"]["optional-dependencies"]["thirdparty"]
    tv = next(Requirement(d) for d in extras if d.startswith("torchvision"))
    assert tv.specifier.contains("0.30.0")


def test_license_typing_marker_classifiers_urls_entry_point() -> None:
    proj = _pyproject()["project"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "vitspec authors" in text
    assert (ROOT / "vitspec" / "py.typed").is_file() and (ROOT / "conformance" / "py.typed").is_file()
    assert "License :: OSI Approved :: MIT License" in proj["classifiers"] and "Typing :: Typed" in proj["classifiers"]
    assert proj["urls"]
    assert proj["entry-points"]["pytest11"]["vitspec_conformance"] == "vitspec.pytest_plugin"


def test_missing_extras_are_named_before_work(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util

    import vitspec.train
    from vitspec import cli

    real = importlib.util.find_spec

    def hide(name: str, *a: Any, **k: Any) -> Any:
        return None if name in ("sklearn", "matplotlib") else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", hide)
    monkeypatch.setattr(vitspec.train, "train_digits", lambda *a, **k: pytest.fail("training started"))
    assert cli.main(["train"]) == 2
    assert cli.main(["attention-map", "-o", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    code, _, err2 = _conform(capsys, ["timm:no_such_vit", "--plot", str(tmp_path / "p.png")])
    assert err.count("pip install 'vitspec[cli]'") == 2 and "scikit-learn" in err and "matplotlib" in err
    assert code == 2 and "vitspec[cli]" in err2 and "unknown timm model" not in err2  # refused before building


def test_version_everywhere_and_python_m_vitspec() -> None:
    for argv in (
        [PY, "-m", "vitspec", "--version"],
        [PY, "-m", "conformance", "--version"],
        [PY, "-m", "conformance.matrix", "--version"],
    ):
        r = _sub(argv)
        assert r.returncode == 0 and "0." in r.stdout, r.stderr


def test_help_is_fast_and_describes_targets() -> None:
    code = (
        "import sys\nfrom vitspec.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    r = _sub([PY, "-c", code])
    assert "TORCH False" in r.stdout and "MODULE:FACTORY" in r.stdout
    r = _sub([PY, "-m", "conformance", "--help"])
    assert "MODULE:FACTORY" in r.stdout and "?" in r.stdout and "3 the spec cannot express" in r.stdout


def test_train_quiet_short_flag_threads_default_and_no_default_json() -> None:
    import argparse

    from vitspec.train import add_arguments, default_threads

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["-q"])
    assert args.quiet and args.json is None  # nothing is written unless asked (no tracked file rewritten)
    n = default_threads()
    assert args.threads == n and 1 <= n <= min(8, len(os.sched_getaffinity(0)))


def test_one_line_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from conformance import matrix
    from vitspec import cli

    (tmp_path / "f").write_text("x")
    assert cli.main(["conform", "--bogus"]) == 2
    assert cli.main(["train", "--epochs", "x"]) == 2
    assert matrix.main(["--out", str(tmp_path / "f")]) == 2  # refused before any model is built
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err and "usage:" not in err


# == Fuzz: crafted files and argument vectors ===================================================

_NUMBERS = st.one_of(
    st.integers(min_value=-3, max_value=40),
    st.sampled_from([0, 10**6, 10**9, 10**30, 2**63, -(10**9)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["16", None, True, [], {}]),
)
_EPS = ["1e400", "Infinity", "NaN", "-1", "0", "1e-300", "1" * 500]
_MD_KEYS = ["in_c", "in_h", "in_w", "variant", "dtype", "format_version"]
_MD_VALUES = ["", "-1", "0", "3", "99999999999", "cls", "mean", "float16", "x" * 300]
_CFG_FIELDS = ["patch_h", "patch_w", "stride", "padding", "embed_dim", "hidden_dim", "head_count", "num_layers"]
_FUZZ_SETTINGS = hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@st.composite
def _crafted(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, Any], bytes | None]:
    """``(metadata, tensor edits, raw bytes to splice)`` applied to a valid tiny file."""
    md_changes: dict[str, str] = {}
    for field in draw(st.lists(st.sampled_from(_CFG_FIELDS), max_size=3, unique=True)):
        md_changes[f"config.{field}"] = json.dumps(draw(_NUMBERS), default=str)
    if draw(st.booleans()):
        md_changes["profile.ln_eps"] = draw(
            st.sampled_from(["1e400", "Infinity", "NaN", "-1", "0", "1e-300", "1" * 500])
        )
    for key in draw(
        st.lists(st.sampled_from(["in_c", "in_h", "in_w", "variant", "dtype", "format_version"]), max_size=2)
    ):
        md_changes[key] = draw(
            st.sampled_from(["", "-1", "0", "3", "99999999999", "cls", "mean", "float16", "x" * 300])
        )
    edits = {
        "drop": draw(st.lists(st.sampled_from(["pos", "head_W", "encoder.1.mha.Wq", "cls_token"]), max_size=2)),
        "extra": draw(st.sampled_from([None, "encoder.7.mha.Wq", "encoder.123456789.x", "bogus"])),
        "reshape": draw(st.sampled_from([None, "pos", "patch_kernel"])),
    }
    splice = draw(st.one_of(st.none(), st.binary(min_size=1, max_size=16)))
    return md_changes, edits, splice


def _write_crafted(path: Path, md_changes: dict[str, str], edits: dict[str, Any], splice: bytes | None) -> None:
    from safetensors.torch import save_file

    from vitspec.io import read_metadata

    m = _tiny_spec()
    m.save(path)
    md = read_metadata(path)
    cfg, prof = json.loads(md["config"]), md["profile"]
    for key, value in md_changes.items():
        if key.startswith("config."):
            cfg[key.removeprefix("config.")] = json.loads(value)
        elif key == "profile.ln_eps":
            prof = prof.replace('"ln_eps": 1e-06', f'"ln_eps": {value}')
        else:
            md[key] = value
    md["config"], md["profile"] = json.dumps(cfg), prof
    tensors = {k: v.clone() for k, v in m.state_dict().items() if k not in edits["drop"]}
    if edits["extra"]:
        tensors[edits["extra"]] = torch.zeros(2)
    if edits["reshape"]:
        tensors[edits["reshape"]] = torch.zeros(3, 1)
    save_file(tensors, str(path), metadata=md)
    if splice is not None:
        data = bytearray(path.read_bytes())
        at = len(splice) * 7 % max(len(data), 1)
        data[at : at + len(splice)] = splice
        path.write_bytes(bytes(data))


@_FUZZ_SETTINGS
@given(case=_crafted())
def test_fuzz_crafted_files_give_a_model_or_a_typed_error(tmp_path: Path, case: Any) -> None:
    p = tmp_path / "fuzz.safetensors"
    _write_crafted(p, *case)
    size = p.stat().st_size
    tracemalloc.start()
    try:
        try:
            model = load(p)
        except (LoadError, OSError) as e:
            assert len(str(e)) < 8_000 and "Traceback" not in str(e)
        else:
            assert model.cfg.num_layers <= 64  # a model came only from a consistent file
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * size + 20_000_000, f"{peak} bytes to check a {size}-byte file"


_VALUES = st.sampled_from(
    ["-1", "0", "1", "2", "1e308", "nan", "inf", "x", "", "-", "99999999999999999999", "a" * 5000, "\udcff.json"]
)


@st.composite
def _argv(draw: st.DrawFn, out: Path) -> list[str]:
    cmd = draw(st.sampled_from(["conform", "train", "attention-map", "bogus", "--version", ""]))
    opts = {
        "conform": ["--batch", "--seed", "--dtype", "--device", "--json", "--markdown", "--plot", "--timeout"],
        "train": ["--epochs", "--batch-size", "--lr", "--seed", "--threads", "--json", "--profile"],
        "attention-map": ["--seed", "--max-pixels", "-o", "--image", "--model"],
    }.get(cmd, ["--help"])
    argv = [cmd] if cmd else []
    if cmd == "conform":
        argv.append(draw(st.sampled_from(["", "timm:no_such_vit", "nope", "hf:", "x:y"])))
    for opt in draw(st.lists(st.sampled_from(opts), max_size=3, unique=True)):
        value = draw(_VALUES)
        if opt in ("--json", "--markdown", "--plot", "-o") and draw(st.booleans()):
            value = str(out / draw(st.sampled_from(["r.json", "sub/r.md", "f/x"])))
        argv += [opt, value]
    return argv


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_cli_argument_vectors(
    data: st.DataObject, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import vitspec.train
    import vitspec.viz
    from vitspec import cli

    # The work itself is not under test here, only the argument handling around it: training and
    # drawing are stubbed, and a conform target is never a buildable one.
    monkeypatch.setattr(vitspec.train, "train_digits", lambda *a, **k: pytest.fail("fuzz must not train"))
    monkeypatch.setattr(vitspec.viz, "save_attention_png", lambda *a, **k: atomic_write_text(a[3], "png"))
    # Default output names (attention.png) land in the test's own directory, never the repo.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "f").write_text("a file, not a directory")
    argv = data.draw(_argv(out))
    code: Any = "no exit"
    try:
        code = cli.main(argv)
    except pytest.fail.Exception:  # a stub was reached: the arguments were all accepted
        code = 0
    _, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        assert err.count("\n") <= 1 or argv[:1] in ([], ["bogus"]), (argv, err)  # top-level help goes to stderr
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers  # no partial write
