"""Saving and loading spec models (safetensors + metadata; no pickle)."""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vitspec
from vitspec import PROFILES, LoadError, ViTConfig
from vitspec import io as vio
from vitspec.models import ViTClsSpec, ViTSpec
from vitspec.models import load as load_model

TINY = ViTConfig(2, 2, 2, 0, 8, 12, 2, 2, 3)
CHW = (2, 4, 6)


def same(a: ViTSpec | ViTClsSpec, b: ViTSpec | ViTClsSpec) -> None:
    assert type(a) is type(b)
    assert (a.cfg, a.in_c, a.in_h, a.in_w, a.profile, a.dtype) == (b.cfg, b.in_c, b.in_h, b.in_w, b.profile, b.dtype)
    assert list(a.state_dict()) == list(b.state_dict())
    for k, t in a.state_dict().items():
        assert torch.equal(t.cpu(), b.state_dict()[k].cpu()), k


@pytest.mark.parametrize(
    ("cls", "profile", "dtype"),
    [
        (ViTSpec, PROFILES["torchlean"], torch.float32),
        (ViTClsSpec, PROFILES["timm"], torch.float64),
        (ViTClsSpec, PROFILES["vit_pytorch"].replace(pooling="mean_all", ln_eps=3e-5), torch.float32),
        (ViTSpec, PROFILES["d2l"].replace(pooling="mean"), torch.bfloat16),
    ],
    ids=["mean-torchlean-f32", "cls-timm-f64", "cls-custom-f32", "mean-d2l-bf16"],
)
def test_round_trip(tmp_path: Path, cls: type[ViTSpec], profile: vitspec.Profile, dtype: torch.dtype) -> None:
    m = cls.init(TINY, *CHW, seed=5, dtype=dtype, profile=profile)
    path = tmp_path / "m.safetensors"
    m.save(path)
    same(cls.load(path), m)
    same(load_model(path), m)  # type: ignore[arg-type]
    md = vio.read_metadata(path)
    assert md["format"] == "vitspec" and md["format_version"] == "1" and md["variant"] == m.variant
    assert json.loads(md["config"]) == dataclasses.asdict(TINY)
    assert json.loads(md["profile"]) == dataclasses.asdict(profile)
    assert (md["in_c"], md["in_h"], md["in_w"]) == ("2", "4", "6")
    assert md["dtype"] == str(dtype).removeprefix("torch.")


def test_load_to_device(tmp_path: Path, device: str) -> None:
    m = ViTClsSpec.init(TINY, *CHW, profile="hf", device=device)
    m.save(tmp_path / "m.safetensors")
    n = ViTClsSpec.load(tmp_path / "m.safetensors", device=device)
    assert n.device.type == torch.device(device).type
    same(n, m)


def test_variant_mismatch(tmp_path: Path) -> None:
    ViTClsSpec.init(TINY, *CHW).save(tmp_path / "cls.safetensors")
    ViTSpec.init(TINY, *CHW).save(tmp_path / "mean.safetensors")
    with pytest.raises(LoadError, match=r"holds a ViTClsSpec \(variant 'cls'\), not a ViTSpec; use ViTClsSpec.load"):
        ViTSpec.load(tmp_path / "cls.safetensors")
    with pytest.raises(LoadError, match="holds a ViTSpec"):
        ViTClsSpec.load(tmp_path / "mean.safetensors")
    assert isinstance(load_model(tmp_path / "cls.safetensors"), ViTClsSpec)
    assert type(load_model(tmp_path / "mean.safetensors")) is ViTSpec


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        ViTSpec.load("/nonexistent/model.safetensors")


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated in the tensor data
        lambda b: b[:20],  # truncated in the header
        lambda b: b"",  # empty
        lambda b: b"\x00" * 64,  # garbage header length
        lambda b: b[:8] + b"{not json" + b[17:],  # corrupt header
        lambda b: pickle.dumps({"a": 1}),  # a pickle is not a safetensors file
    ],
    ids=["truncated-data", "truncated-header", "empty", "zeros", "corrupt-header", "pickle"],
)
def test_corrupt_files_raise_load_error(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    path = tmp_path / "m.safetensors"
    ViTSpec.init(TINY, *CHW).save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(LoadError):
        ViTSpec.load(path)
    assert issubclass(LoadError, ValueError)


def _tamper(
    tmp_path: Path,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
    metadata: Callable[[dict[str, str]], None] | None = None,
) -> Path:
    """Write a model, then rewrite its tensors and/or metadata with safetensors directly."""
    src = tmp_path / "src.safetensors"
    ViTClsSpec.init(TINY, *CHW, profile="timm").save(src)
    t = load_file(src)
    md = vio.read_metadata(src)
    if tensors:
        tensors(t)
    if metadata:
        metadata(md)
    out = tmp_path / "tampered.safetensors"
    save_file(t, out, metadata=md)
    return out


@pytest.mark.parametrize(
    ("tensors", "pattern"),
    [
        (lambda t: t.pop("encoder.1.mha.bq"), r"missing key 'encoder.1.mha.bq' \(expected shape \(8,\), dtype"),
        (lambda t: t.update(extra=torch.zeros(2)), "unexpected key 'extra'"),
        (lambda t: t.update(pos=torch.zeros(6, 8)), r"key 'pos': expected shape \(7, 8\), got \(6, 8\)"),
        (lambda t: t.update(head_b=t["head_b"].double()), "key 'head_b': expected dtype float32, got float64"),
        (lambda t: t.update(head_b=torch.zeros(3, dtype=torch.int64)), "key 'head_b': expected dtype float32, got I64"),
    ],
    ids=["missing", "unexpected", "shape", "dtype", "int-dtype"],
)
def test_bad_tensors_raise_load_error_naming_the_key(tmp_path: Path, tensors: Callable, pattern: str) -> None:
    with pytest.raises(LoadError, match=pattern):
        ViTClsSpec.load(_tamper(tmp_path, tensors=tensors))


def test_all_tensor_problems_are_listed_together(tmp_path: Path) -> None:
    def damage(t: dict[str, torch.Tensor]) -> None:
        del t["pos"]
        t["x"] = torch.zeros(1)
        t["head_W"] = torch.zeros(1, 1)

    with pytest.raises(LoadError) as ei:
        ViTClsSpec.load(_tamper(tmp_path, tensors=damage))
    msg = str(ei.value)
    assert "missing key 'pos'" in msg and "unexpected key 'x'" in msg and "key 'head_W'" in msg


def _set(key: str, value: str) -> Callable[[dict[str, str]], None]:
    return lambda md: md.__setitem__(key, value)


def _cfg_json(**changes: object) -> str:
    return json.dumps({**dataclasses.asdict(TINY), **changes})


@pytest.mark.parametrize(
    ("metadata", "pattern"),
    [
        (_set("format", "other"), "'format' must be 'vitspec'"),
        (_set("format_version", "99"), "'format_version' must be 1, got '99'"),
        (lambda md: md.pop("profile"), "missing 'profile'"),
        (_set("variant", "both"), "'variant' must be 'mean' or 'cls'"),
        (_set("in_h", "four"), "'in_h' must be an integer"),
        (_set("config", "{oops"), "'config' is not valid JSON"),
        (_set("config", "[1, 2]"), "'config' must be a JSON object"),
        (_set("config", json.dumps({"patch_h": 2})), "'config' fields do not match ViTConfig: missing"),
        (_set("config", _cfg_json(embed_dim=-1)), "'config' is invalid"),
        (_set("config", _cfg_json(bogus=1)), r"unknown \['bogus'\]"),
        (_set("profile", json.dumps({**dataclasses.asdict(PROFILES["timm"]), "activation": "swish"})), "invalid"),
        (_set("profile", json.dumps({**dataclasses.asdict(PROFILES["timm"]), "qkv_bias": "yes"})), "wrong type"),
        (_set("dtype", "float8"), "'dtype' must be one of"),
        (_set("config", _cfg_json(stride=0)), "ill-formed model"),
        (
            _set("in_h", "8"),
            r"key 'pos': expected shape \(13, 8\), got \(7, 8\)",
        ),  # the tensors do not fit the metadata
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None,
)
def test_bad_metadata_raises_load_error(tmp_path: Path, metadata: Callable, pattern: str) -> None:
    with pytest.raises(LoadError, match=pattern):
        ViTClsSpec.load(_tamper(tmp_path, metadata=metadata))


def test_no_pickle_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("pickle used")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "dump"), (pickle, "dumps"), (torch, "load"),
                      (torch, "save")):  # fmt: skip
        monkeypatch.setattr(mod, name, boom)
    m = ViTClsSpec.init(TINY, *CHW, profile="d2l")
    m.save(tmp_path / "m.safetensors")
    same(ViTClsSpec.load(tmp_path / "m.safetensors"), m)
    assert b"vitspec" in (tmp_path / "m.safetensors").read_bytes()[:4096]


def test_saved_file_is_independent_of_the_model(tmp_path: Path) -> None:
    m = ViTSpec.init(TINY, *CHW)
    m.save(tmp_path / "m.safetensors")
    m.state_dict()["pos"].add_(1.0)
    n = ViTSpec.load(tmp_path / "m.safetensors")
    assert not torch.equal(n.state_dict()["pos"], m.state_dict()["pos"])
