"""TorchLean revisions as data, their profiles, the spec audit, and the graph-free explicit backward."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from vitspec import ConfigError, ViTConfig
from vitspec.audit import audit
from vitspec.cli import main
from vitspec.formulas import patch_out_dim
from vitspec.models.vit import ViTClsSpec, ViTSpec
from vitspec.profiles import PROFILES, deviations, get_profile
from vitspec.revisions import DEFAULT_REVISION, REVISIONS, get_revision

DOCS = Path(__file__).resolve().parents[1] / "docs"
CFG = ViTConfig(
    patch_h=2, patch_w=2, stride=2, padding=0, embed_dim=8, hidden_dim=6, head_count=2, num_layers=2, num_classes=3
)


def test_the_two_revisions_record_what_the_lean_says() -> None:
    old, new = REVISIONS["411682f"], REVISIONS["b2a2184"]
    assert (old.head_split, old.ln_eps, old.patch_out) == ("direct_reshape", 1e-6, "nat_formula")
    assert (new.head_split, new.ln_eps, new.patch_out) == ("reshape_swap", 1e-6, "sliding_window")
    assert old.lean_backward and new.lean_backward
    assert not old.backward_is_vjp and new.backward_is_vjp
    for r in (old, new):
        assert re.fullmatch(r"[0-9a-f]{40}", r.commit) and r.commit.startswith(r.name)
        for name in ("head_split", "ln_eps", "patch_out", "lean_backward", "norm_placement", "activation"):
            c = r.citations[name]
            assert c.file.startswith("NN/") and c.definition and c.commit == r.commit, (r.name, name)


@pytest.mark.parametrize("name", ["411682f", "torchlean@411682f", "411682f6c3d9", "b2a2184", "torchlean"])
def test_get_revision_accepts_short_full_and_profile_names(name: str) -> None:
    r = get_revision(name)
    assert r.name == (DEFAULT_REVISION if name == "torchlean" else name.removeprefix("torchlean@")[:7])


def test_unknown_revision_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        get_revision("0f84531")
    assert "411682f" in str(e.value) and "b2a2184" in str(e.value)


def test_revision_profiles_are_registered_and_torchlean_is_the_alias() -> None:
    old, new, alias = (get_profile(n) for n in ("torchlean@411682f", "torchlean@b2a2184", "torchlean"))
    assert (old.head_split, old.revision, old.ln_eps) == ("direct_reshape", "411682f", 1e-6)
    assert (new.head_split, new.revision) == ("reshape_swap", "b2a2184")
    assert alias.revision == DEFAULT_REVISION == "b2a2184"
    assert {f: getattr(alias, f) for f in ("head_split", "ln_eps", "lean_backward")} == {
        f: getattr(new, f) for f in ("head_split", "ln_eps", "lean_backward")
    }
    # Library profiles keep the usual split.
    assert all(p.head_split == "reshape_swap" for n, p in PROFILES.items() if n != "torchlean@411682f")


def test_init_accepts_revision_profiles() -> None:
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    logits = {
        p: ViTClsSpec.init(CFG, 3, 6, 6, dtype=torch.float64, profile=p).forward(x)
        for p in ("torchlean", "torchlean@b2a2184", "torchlean@411682f")
    }
    assert torch.equal(logits["torchlean"], logits["torchlean@b2a2184"])
    assert float((logits["torchlean"] - logits["torchlean@411682f"]).abs().max()) > 1e-3  # H = 2


def test_deviations_are_relative_to_the_chosen_revision() -> None:
    assert deviations("torchlean") == [] and deviations("torchlean@b2a2184") == []
    assert deviations("torchlean@411682f") == ["head split: direct_reshape (spec: reshape_swap)"]
    assert deviations("torchlean@411682f", against="411682f") == []
    assert deviations("torchlean", against="torchlean@411682f") == ["head split: reshape_swap (spec: direct_reshape)"]
    timm_old = deviations("timm", variant="cls", against="411682f")
    assert "head split: reshape_swap (spec: direct_reshape)" in timm_old
    assert "head split: reshape_swap (spec: direct_reshape)" not in deviations("timm", variant="cls")
    with pytest.raises(ConfigError):
        deviations("timm", against="nope")


def test_patch_out_formula_per_revision() -> None:
    # Well-formed geometry: both formulas agree.
    assert patch_out_dim(8, 3, 2, 1, "nat_formula") == patch_out_dim(8, 3, 2, 1, "sliding_window") == 4
    # Degenerate: Nat arithmetic gives 1 (411682f), Shape.slidingWindowOutDim gives 0 (b2a2184).
    for args in ((2, 5, 1, 0), (8, 3, 0, 0), (8, 0, 1, 0)):
        assert patch_out_dim(*args, "nat_formula") == 1 or args[1] == 0
        assert patch_out_dim(*args, "sliding_window") == 0
    with pytest.raises(ConfigError):
        patch_out_dim(8, 3, 2, 1, "other")  # type: ignore[arg-type]


def test_audit_411682f_names_the_mha_fields_and_the_lean_definition() -> None:
    report = audit("411682f")
    assert not report.consistent
    bad = {(c.case, f.field): f for c in report.cases for f in c.fields if not f.ok}
    mha_cases = {c for c, _ in bad if c.startswith("mha (")}
    assert mha_cases and all("H=1" not in c for c in mha_cases)
    for fld in ("dWq", "dWk", "dWv", "dx"):
        hits = [f for (c, name), f in bad.items() if c.startswith("mha (E=8, H=2") and name == fld]
        assert hits and "MultiHeadAttentionBackward" in hits[0].responsible, fld
    assert not any(name == "dWo" for c, name in bad if c.startswith("mha ("))  # dWo is downstream of the split
    model = [f for (c, _), f in bad.items() if c.startswith("ViTClsSpec (H=2")]
    assert any(f.field == "d_patch_kernel" and "inherited" in f.responsible for f in model)
    assert all(c.ok for c in report.cases if "H=1" in c.case)
    assert all(c.ok for c in report.cases if not c.case.startswith(("mha", "encoder layer", "ViT")))


def test_audit_later_revision_is_consistent() -> None:
    report = audit("b2a2184")
    assert report.consistent, report.to_text()
    assert len(report.cases) >= 20 and all(f.error <= 1e-9 * max(1.0, f.scale) for c in report.cases for f in c.fields)


def test_audit_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit.json"
    assert main(["audit-spec", "--revision", "411682f", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "INCONSISTENT" in text and "`dWq`" in text and "MultiHeadAttentionBackward" in text
    data = json.loads(out.read_text())
    assert data["revision"] == "411682f" and data["consistent"] is False
    assert main(["audit-spec", "--revision", "b2a2184"]) == 0
    assert "CONSISTENT" in capsys.readouterr().out
    assert main(["audit-spec", "--revision", "nope"]) == 2
    assert "unknown spec revision" in capsys.readouterr().err


def _mask_numbers(text: str) -> str:
    # The errors of consistent fields are rounding noise that differs between BLAS builds.
    return re.sub(r"\d\.\d+e[+-]\d+", "#", text)


def test_spec_audit_doc_shows_the_current_table() -> None:
    doc = _mask_numbers((DOCS / "spec-audit.md").read_text())
    for rev in ("411682f", "b2a2184"):
        want = _mask_numbers(audit(rev).to_text())
        assert want in doc, f"docs/spec-audit.md is stale for {rev}: paste `vitspec audit-spec --revision {rev}`"


@pytest.mark.parametrize("cls", [ViTSpec, ViTClsSpec])
@pytest.mark.parametrize("mode", ["cache", "recompute"])
def test_explicit_backward_builds_no_graph(cls: type, mode: str) -> None:
    m = cls.init(CFG, 3, 6, 6, dtype=torch.float64)
    sd = {k: t.clone().requires_grad_() for k, t in m.state_dict().items()}
    m2 = cls.from_state_dict(CFG, 3, 6, 6, sd)
    x = torch.randn(3, 6, 6, dtype=torch.float64, requires_grad=True)
    grads, gx = m2.backward(x, torch.ones(3, dtype=torch.float64), mode=mode)
    assert gx is not None and gx.grad_fn is None and not gx.requires_grad
    assert all(t.grad_fn is None and not t.requires_grad for t in grads.to_dict().values())
    # Opting in records the graph, so the explicit backward itself can be differentiated.
    g2, _ = m2.backward(x, torch.ones(3, dtype=torch.float64), mode=mode, differentiable=True)
    assert g2.d_head_W.grad_fn is not None or g2.d_patch_kernel.grad_fn is not None


def test_a_saved_411682f_model_loads_with_its_revision(tmp_path: Path) -> None:
    m = ViTClsSpec.init(CFG, 3, 6, 6, dtype=torch.float64, profile="torchlean@411682f")
    m.save(tmp_path / "m.safetensors")
    back = ViTClsSpec.load(tmp_path / "m.safetensors")
    assert (back.profile.head_split, back.profile.revision) == ("direct_reshape", "411682f")
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    assert torch.equal(back.forward(x), m.forward(x))
