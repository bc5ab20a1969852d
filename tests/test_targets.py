"""Target strings: every kind builds a model (random weights, seeded); bad ones raise TargetError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conformance.adapters import detect
from conformance.targets import DEFAULT_TARGET, TargetError, build_target, parse_target
from vitspec.errors import VitSpecError

pytestmark = pytest.mark.thirdparty


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("target", "cls_name", "adapter"),
    [
        # small models only: the full-size defaults are exercised in test_default_target
        ("timm:vit_tiny_patch16_224?img_size=32&depth=1", "VisionTransformer", "timm"),
        ("torchvision:vit_b_32?image_size=32", "VisionTransformer", "torchvision"),
        ("torchvision:VisionTransformer?image_size=32&patch_size=8&num_layers=1&num_heads=2&hidden_dim=32&mlp_dim=64",
         "VisionTransformer", "torchvision"),
        ("hf:tiny", "ViTForImageClassification", "hf"),
        ("hf:tiny?num_hidden_layers=1&hidden_act=relu", "ViTForImageClassification", "hf"),
        ("vit_pytorch:cls?depth=1", "ViT", "vit_pytorch"),
        ("vit_pytorch:mean?depth=1&dim=64&dim_head=16", "ViT", "vit_pytorch"),
    ],
)  # fmt: skip
def test_each_kind_builds(target: str, cls_name: str, adapter: str) -> None:
    model, name = build_target(target)
    assert type(model).__name__ == cls_name and name == target
    found = detect(model, copy=False)
    assert found.name == adapter
    found.describe()  # every preset is expressible by the spec


def test_overrides_reach_the_constructor() -> None:
    m, _ = build_target("timm:vit_tiny_patch16_224?img_size=32&depth=1&global_pool=avg&class_token=false")
    assert (m.global_pool, m.cls_token, len(m.blocks), m.patch_embed.img_size) == ("avg", None, 1, (32, 32))
    m, _ = build_target("hf:tiny?layer_norm_eps=1e-6&qkv_bias=False")
    assert m.config.layer_norm_eps == 1e-6 and m.config.qkv_bias is False
    assert parse_target("vit_pytorch:cls?pool='mean'&dim=(64)&x=none&y=True&z=abc") == (
        "vit_pytorch",
        "cls",
        {"pool": "mean", "dim": 64, "x": None, "y": True, "z": "abc"},
    )


def test_seeded_builds_are_reproducible() -> None:
    a, _ = build_target("hf:tiny", seed=3)
    b, _ = build_target("hf:tiny", seed=3)
    c, _ = build_target("hf:tiny", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_hf_presets_and_config_json(tmp_path: Path) -> None:
    tf = pytest.importorskip("transformers")
    m, _ = build_target("hf:tiny")
    assert (m.config.hidden_size, m.config.num_hidden_layers) == (64, 2)
    small = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, num_labels=3)  # fmt: skip
    cfg = tmp_path / "config.json"
    tf.ViTConfig(**small).to_json_file(str(cfg))
    m, name = build_target(f"hf:{cfg}")
    assert type(m).__name__ == "ViTForImageClassification" and m.config.num_labels == 3 and name == f"hf:{cfg}"
    data = json.loads(cfg.read_text())
    data["architectures"] = ["ViTModel"]
    cfg2 = tmp_path / "model.json"
    cfg2.write_text(json.dumps(data))
    m, _ = build_target(f"hf:{cfg2}")
    assert type(m).__name__ == "ViTModel"


def test_hf_default_presets() -> None:
    m, _ = build_target("hf:default")
    assert type(m).__name__ == "ViTForImageClassification" and m.config.hidden_size == 768
    m, _ = build_target("hf:model")
    assert type(m).__name__ == "ViTModel" and detect(m).describe().has_head is False


def test_default_target() -> None:
    model, name = build_target(DEFAULT_TARGET)
    assert name == "timm:vit_tiny_patch16_224" and _n_params(model) == 5_717_416
    desc = detect(model).describe()
    assert (desc.cfg.embed_dim, desc.cfg.head_count, desc.cfg.num_layers, desc.in_h) == (192, 3, 12, 224)


FACTORY = """
import torch
from torch import nn

def make():
    return nn.Sequential(nn.Linear(4, 2))

def not_a_module():
    return 42

def boom():
    raise RuntimeError("factory failed")

VALUE = 3
"""


def test_module_factory_from_path_and_dotted_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "my_factory_mod.py"
    f.write_text(FACTORY)
    m, name = build_target(f"{f}:make")
    assert isinstance(m, nn.Sequential) and name == f"{f}:make"
    monkeypatch.syspath_prepend(str(tmp_path))
    m, _ = build_target("my_factory_mod:make")
    assert isinstance(m, nn.Sequential)
    with pytest.raises(TargetError, match=r"returned a int, not a torch\.nn\.Module"):
        build_target(f"{f}:not_a_module")
    with pytest.raises(TargetError, match="has no 'mak'; did you mean make"):
        build_target(f"{f}:mak")
    with pytest.raises(TargetError, match="not callable"):
        build_target(f"{f}:VALUE")
    # The user's own error is named in one line (exit 2 in the CLI) and kept as the cause.
    with pytest.raises(TargetError, match="failed: RuntimeError: factory failed") as info:
        build_target(f"{f}:boom")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_factory_module_import_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("raise ImportError('nope')\n")
    with pytest.raises(TargetError, match=r"importing .*broken\.py.* failed: ImportError: nope"):
        build_target(f"{bad}:make")
    with pytest.raises(TargetError, match="no such file"):
        build_target(f"{tmp_path / 'missing.py'}:make")
    with pytest.raises(TargetError, match="cannot import module 'no_such_module_xyz'"):
        build_target("no_such_module_xyz:make")


@pytest.mark.parametrize(
    ("target", "needles"),
    [
        ("", ["non-empty"]),
        ("resnet50", ["unknown target", "timm:", "<module>:<factory>"]),
        ("timm:", ["nothing after"]),
        ("timm:vit_tiny_patch16", ["unknown timm model", "vit_tiny_patch16_224"]),
        ("timm:vit_tiny_patch16_224?depth", ["not key=value"]),
        ("timm:vit_tiny_patch16_224?bogus=1", ["create_model", "bogus"]),
        ("torchvision:vit_b16", ["unknown torchvision builder", "vit_b_16", "ViT builders"]),
        ("torchvision:vit_b_16?num_layers=2", ["get_model", "num_layers"]),
        ("torchvision:VisionTransformer?image_size=32", ["VisionTransformer(", "missing"]),
        ("hf:huge", ["unknown hf preset", "default, tiny, model"]),
        ("hf:/no/such/config.json", ["does not exist"]),
        ("vit_pytorch:large", ["unknown vit_pytorch preset", "cls, mean"]),
        ("vit_pytorch:cls?bogus=1", ["vit_pytorch.ViT", "bogus"]),
    ],
)
def test_bad_targets_say_what_is_valid(target: str, needles: list[str]) -> None:
    with pytest.raises(TargetError) as err:
        build_target(target)
    assert isinstance(err.value, VitSpecError)
    for n in needles:
        assert n in str(err.value), (n, str(err.value))


def test_bad_hf_config_json(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text("{not json")
    with pytest.raises(TargetError, match="cannot read hf config"):
        build_target(f"hf:{cfg}")
