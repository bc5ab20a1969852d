"""``vitspec audit-spec``: is a TorchLean revision's explicit backward the gradient of its own forward?

For each primitive, one encoder layer and the whole model (both variants, head counts 1, 2, 4
and a non-dividing 3, ``mode='cache'`` and ``'recompute'``), the revision's explicit backward
(as vitspec transcribes the Lean) is compared, gradient field by gradient field, in float64,
with autograd through the same revision's forward. A field is consistent when
``max|explicit - autograd| <= RTOL * max(1, max|autograd|)``.

A failing field names the Lean definition responsible: the primitive's own backward, or, for
a field that is only wrong because a gradient flowing into it was (everything upstream of an
attention block in the backward order), the ``MultiHeadAttentionBackward`` it inherits from.

Exit status: 0 consistent, 1 inconsistent, 2 usage error (unknown ``--revision``, unwritable
``--json``). ``docs/spec-audit.md`` shows the result for each revision.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import primitives as P
from .config import ViTConfig
from .models.encoder import LayerOptions, LayerParams, layer_backward, layer_forward
from .models.vit import Mode, ViTClsSpec, ViTSpec
from .primitives.attention import HeadSplit, sdpa_backward_reference, sdpa_reference
from .profiles import revision_profile
from .revisions import DEFAULT_REVISION, SpecRevision, get_revision
from .schema import Variant

__all__ = ["RTOL", "AuditReport", "CaseResult", "FieldResult", "add_arguments", "audit", "run"]

#: Relative tolerance of a float64 comparison (both sides are exact up to rounding).
RTOL = 1e-9
_F64 = torch.float64
_MHA_INPUT_FIELDS = ("dWq", "dWk", "dWv")


@dataclass(frozen=True)
class FieldResult:
    """One gradient field: its error against autograd and, when inconsistent, the Lean definition responsible."""

    field: str
    error: float
    scale: float
    ok: bool
    responsible: str = ""


@dataclass(frozen=True)
class CaseResult:
    """One audited function (a primitive, an encoder layer, or a whole model at one setting)."""

    case: str
    lean_definition: str
    fields: list[FieldResult]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.fields)

    @property
    def worst(self) -> float:
        return max((f.error / max(1.0, f.scale) for f in self.fields), default=0.0)


@dataclass
class AuditReport:
    """Every case of one revision."""

    revision: SpecRevision
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return all(c.ok for c in self.cases)

    def to_json(self) -> dict[str, Any]:
        r = self.revision
        return {
            "revision": r.name,
            "commit": r.commit,
            "repo": r.repo,
            "consistent": self.consistent,
            "rtol": RTOL,
            "cases": [
                {
                    "case": c.case,
                    "lean_definition": c.lean_definition,
                    "ok": c.ok,
                    "fields": [asdict(f) for f in c.fields],
                }
                for c in self.cases
            ],
        }

    def to_text(self) -> str:
        """The summary table and the table of inconsistent fields (Markdown)."""
        r = self.revision
        bad = [(c, f) for c in self.cases for f in c.fields if not f.ok]
        lines = [
            f"spec revision {r.name} ({r.repo}@{r.short}), head split {r.head_split}, LayerNorm eps {r.ln_eps:g}: "
            f"explicit backward vs autograd through the same forward, float64, rtol {RTOL:g}",
            "",
            "| case | Lean definition | fields | worst rel. error | status |",
            "|---|---|---|---|---|",
        ]
        for c in self.cases:
            n_bad = sum(not f.ok for f in c.fields)
            status = "consistent" if c.ok else f"INCONSISTENT ({n_bad}/{len(c.fields)})"
            lines.append(f"| {c.case} | `{c.lean_definition}` | {len(c.fields)} | {c.worst:.2e} | {status} |")
        lines.append("")
        if not bad:
            lines.append(f"CONSISTENT: every gradient field of {len(self.cases)} cases matches autograd.")
            return "\n".join(lines)
        lines += [
            f"INCONSISTENT: {len(bad)} gradient fields in {sum(not c.ok for c in self.cases)} "
            f"of {len(self.cases)} cases.",
            "",
            "| case | gradient field | max abs error | max abs autograd | Lean definition responsible |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {c.case} | `{f.field}` | {f.error:.3e} | {f.scale:.3e} | {f.responsible} |" for c, f in bad]
        return "\n".join(lines)


# -- comparing one function ---------------------------------------------------------------
def _fields(explicit: dict[str, Tensor], auto: dict[str, Tensor]) -> list[tuple[str, float, float, bool]]:
    out = []
    for name, a in auto.items():
        e = explicit[name]
        err, scale = float((e - a).abs().max()), float(a.abs().max())
        out.append((name, err, scale, err <= RTOL * max(1.0, scale)))
    return out


def _vjp_case(
    forward: Callable[..., Tensor],
    backward: Callable[..., dict[str, Tensor]],
    inputs: dict[str, Tensor],
    g: torch.Generator,
) -> list[tuple[str, float, float, bool]]:
    """Explicit ``backward(dy, **inputs)`` (keyed like ``inputs``) vs autograd of ``forward(**inputs)``."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    with torch.enable_grad():
        y = forward(**leaves)
    dy = torch.randn(y.shape, generator=g, dtype=_F64)
    auto = dict(zip(leaves, torch.autograd.grad(y, list(leaves.values()), dy), strict=True))
    with torch.no_grad():
        explicit = backward(dy, **inputs)
    return _fields(explicit, auto)


def _rand(g: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return torch.randn(shape, generator=g, dtype=_F64) * scale


def _mha_blame(r: SpecRevision) -> str:
    """``MultiHeadAttentionBackward`` uses split/combine as each other's adjoints (``docs/spec-audit.md``)."""
    return f"`MultiHeadAttentionBackward` @{r.short}: `splitHeadsSpec`/`combineHeadsSpec` used as each other's adjoints"


def _primitive_case(name: str, lean: str, rows: list[tuple[str, float, float, bool]], blame: str) -> CaseResult:
    return CaseResult(name, lean, [FieldResult(f, e, s, ok, "" if ok else blame) for f, e, s, ok in rows])


# -- the primitives ---------------------------------------------------------------------
def _primitive_cases(r: SpecRevision, g: torch.Generator) -> list[CaseResult]:
    eps, split, lean_bw = r.ln_eps, r.head_split, r.lean_backward
    cases: list[CaseResult] = []

    def add(
        name: str, lean: str, fwd: Callable[..., Tensor], bwd: Callable[..., dict[str, Tensor]], **inputs: Tensor
    ) -> None:
        cases.append(_primitive_case(name, lean, _vjp_case(fwd, bwd, inputs, g), f"`{lean}` (its own backward)"))

    def lin_bw(dy: Tensor, x: Tensor, w: Tensor, b: Tensor) -> dict[str, Tensor]:
        return dict(zip(("x", "w", "b"), P.linear_backward(x, w, dy), strict=True))

    add("linear", "linearBackwardSpec", P.linear, lin_bw, x=_rand(g, 2, 3, 4), w=_rand(g, 4, 5), b=_rand(g, 5))

    def head_bw(dy: Tensor, pooled: Tensor, w: Tensor, b: Tensor) -> dict[str, Tensor]:
        return dict(zip(("pooled", "w", "b"), P.head_backward(pooled, w, dy), strict=True))

    add("head", "linearBackwardSpec", P.head, head_bw, pooled=_rand(g, 2, 4), w=_rand(g, 3, 4), b=_rand(g, 3))

    def ln_fwd(x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        return P.layer_norm(x, gamma, beta, eps)

    def ln_bw(dy: Tensor, x: Tensor, gamma: Tensor, beta: Tensor) -> dict[str, Tensor]:
        return dict(zip(("x", "gamma", "beta"), P.layer_norm_backward(x, gamma, dy, eps), strict=True))

    add(
        "layer_norm",
        "layerNormBackward",
        ln_fwd,
        ln_bw,
        x=_rand(g, 2, 3, 6),
        gamma=1 + _rand(g, 6, scale=0.1),
        beta=_rand(g, 6),
    )
    # Away from 0 so the kink of ReLU is not sampled.
    relu_x = _rand(g, 3, 5).abs().add_(0.1) * torch.where(_rand(g, 3, 5) > 0, 1.0, -1.0).to(_F64)
    add("relu", "FeedForward.backward (ReLU mask)", P.relu, lambda dy, x: {"x": P.relu_backward(x, dy)}, x=relu_x)
    add(
        "softmax",
        "softmaxBackwardFromWeightsSpec",
        P.softmax,
        lambda dy, scores: {"scores": P.softmax_backward(P.softmax(scores), dy)},
        scores=_rand(g, 2, 3, 4),
    )

    def conv_fwd(x: Tensor, kernel: Tensor, bias: Tensor) -> Tensor:
        return P.conv2d(x, kernel, bias, 2, 1)

    def conv_bw(dy: Tensor, x: Tensor, kernel: Tensor, bias: Tensor) -> dict[str, Tensor]:
        dk, db, dx = P.conv2d_backward(x, kernel, dy, 2, 1)
        assert dx is not None  # need_dx defaults to True
        return {"x": dx, "kernel": dk, "bias": db}

    add(
        "conv2d (stride 2 != patch 3, padding 1)",
        "conv2dBackwardSpec",
        conv_fwd,
        conv_bw,
        x=_rand(g, 2, 2, 7, 6),
        kernel=_rand(g, 4, 2, 3, 3),
        bias=_rand(g, 4),
    )
    add(
        "grid_to_tokens",
        "ViTSpec.backward (swapFirstTwoSpec, reshapeSpec)",
        P.grid_to_tokens,
        lambda dy, grid: {"grid": P.grid_to_tokens_backward(dy, 3, 2)},
        grid=_rand(g, 2, 4, 3, 2),
    )

    def pos_bw(dy: Tensor, tokens: Tensor, pos: Tensor) -> dict[str, Tensor]:
        d_pos, d_tok = P.pos_add_backward(dy)
        return {"tokens": d_tok, "pos": d_pos}

    add("pos_add", "addPositionalEncodingBackwardSpec", P.pos_add, pos_bw, tokens=_rand(g, 2, 5, 4), pos=_rand(g, 5, 4))

    def cls_bw(dy: Tensor, patch_tokens: Tensor, cls_token: Tensor) -> dict[str, Tensor]:
        d_tok, d_cls = P.cls_prepend_backward(dy)
        return {"patch_tokens": d_tok, "cls_token": d_cls}

    add(
        "cls_prepend",
        "ViTClsSpec.backward (CLS token)",
        P.cls_prepend,
        cls_bw,
        patch_tokens=_rand(g, 2, 5, 4),
        cls_token=_rand(g, 4),
    )
    add(
        "mean_pool",
        "ViTSpec.backward (mean-pool backward)",
        P.mean_pool,
        lambda dy, encoded: {"encoded": P.mean_pool_backward(dy, 5)},
        encoded=_rand(g, 2, 5, 4),
    )
    add(
        "token_select",
        "ViTClsSpec.backward (CLS pooling backward)",
        P.token_select,
        lambda dy, encoded: {"encoded": P.token_select_backward(dy, 5)},
        encoded=_rand(g, 2, 5, 4),
    )

    def sdpa_bw(dy: Tensor, q: Tensor, k: Tensor, v: Tensor) -> dict[str, Tensor]:
        return dict(zip("qkv", sdpa_backward_reference(q, k, v, dy), strict=True))

    add(
        "scaled dot-product attention",
        "scaledDotProductAttentionBackward",
        sdpa_reference,
        sdpa_bw,
        q=_rand(g, 5, 3),
        k=_rand(g, 5, 3),
        v=_rand(g, 5, 3),
    )
    for e, heads in ((8, 1), (8, 2), (7, 3), (8, 4)):
        cases.append(_mha_case(r, e, heads, split, lean_bw, g))
    for e, heads in ((8, 2), (8, 3)):
        cases.append(_layer_case(r, e, heads, g))
    return cases


def _mha_case(r: SpecRevision, e: int, heads: int, split: HeadSplit, lean_bw: bool, g: torch.Generator) -> CaseResult:
    a = heads * (e // heads)
    names = {"x": "dx", "wq": "dWq", "wk": "dWk", "wv": "dWv", "wo": "dWo"}

    def fwd(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor) -> Tensor:
        return P.mha(x, wq, wk, wv, wo, heads=heads, head_split=split)[0]

    def bwd(dy: Tensor, x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor) -> dict[str, Tensor]:
        dx, gr = P.mha_backward(x, wq, wk, wv, wo, dy, heads=heads, head_split=split, lean_backward=lean_bw)
        return {"x": dx, "wq": gr["dWq"], "wk": gr["dWk"], "wv": gr["dWv"], "wo": gr["dWo"]}

    s = e**-0.5
    inputs = {"x": _rand(g, 2, 5, e), "wq": _rand(g, e, a, scale=s), "wk": _rand(g, e, a, scale=s)}
    inputs |= {"wv": _rand(g, e, a, scale=s), "wo": _rand(g, a, e, scale=a**-0.5)}
    rows = [(names[f], err, sc, ok) for f, err, sc, ok in _vjp_case(fwd, bwd, inputs, g)]
    divides = "" if e % heads == 0 else ", heads do not divide embed_dim"
    return _primitive_case(f"mha (E={e}, H={heads}{divides})", "MultiHeadAttentionBackward", rows, _mha_blame(r))


def _layer_case(r: SpecRevision, e: int, heads: int, g: torch.Generator) -> CaseResult:
    a, f = heads * (e // heads), 2 * e
    opts = LayerOptions(heads, "post", "relu", r.ln_eps, r.head_split, r.lean_backward)
    shapes = {
        "Wq": (e, a),
        "Wk": (e, a),
        "Wv": (e, a),
        "Wo": (a, e),
        "W1": (e, f),
        "b1": (f,),
        "W2": (f, e),
        "b2": (e,),
    }
    shapes |= {k: (e,) for k in ("norm1_gamma", "norm1_beta", "norm2_gamma", "norm2_beta")}
    inputs = {"x": _rand(g, 2, 5, e)} | {
        k: _rand(g, *s, scale=s[0] ** -0.5) + (1.0 if "gamma" in k else 0.0) for k, s in shapes.items()
    }

    def fwd(x: Tensor, **p: Tensor) -> Tensor:
        return layer_forward(x, LayerParams(**p), opts)[0]

    def bwd(dy: Tensor, x: Tensor, **p: Tensor) -> dict[str, Tensor]:
        dx, lg = layer_backward(x, LayerParams(**p), opts, dy)
        out = {"x": dx} | {k: getattr(lg.mha, "d" + k) for k in ("Wq", "Wk", "Wv", "Wo")}
        out |= {k: getattr(lg.ffn, "d" + k) for k in ("W1", "b1", "W2", "b2")}
        return out | {k: getattr(lg, "d_" + k) for k in ("norm1_gamma", "norm1_beta", "norm2_gamma", "norm2_beta")}

    rows = _vjp_case(fwd, bwd, inputs, g)
    named = [("dx" if n == "x" else _layer_field(n), err, sc, ok) for n, err, sc, ok in rows]
    # In a post-norm layer the backward reaches the MHA last: only its own fields and dx can inherit.
    return _primitive_case(
        f"encoder layer (E={e}, H={heads})", "TransformerEncoderLayer.backward", named, _mha_blame(r)
    )


def _layer_field(key: str) -> str:
    if key in ("Wq", "Wk", "Wv", "Wo"):
        return f"mha.d{key}"
    if key in ("W1", "b1", "W2", "b2"):
        return f"ffn.d{key}"
    return f"d_{key}"


# -- the whole model -------------------------------------------------------------------
_KEY_FIELD = re.compile(r"^encoder\.(\d+)\.(.+)$")
_TOP_LEAN = {
    "patch_kernel": "conv2dBackwardSpec",
    "patch_bias": "conv2dBackwardSpec",
    "d_input": "conv2dBackwardSpec",
    "pos": "addPositionalEncodingBackwardSpec",
    "cls_token": "ViTClsSpec.backward (CLS token)",
    "head_W": "linearBackwardSpec",
    "head_b": "linearBackwardSpec",
}


def _model_field(key: str) -> str:
    """A spec state-dict key as the Lean ``ViTGrads`` field: ``encoder.0.mha.Wq`` -> ``d_encoder[0].mha.dWq``."""
    if key == "d_input":
        return key
    m = _KEY_FIELD.match(key)
    if not m:
        return "d_" + key.replace("cls_token", "clsToken")
    i, rest = m.groups()
    if rest.startswith(("mha.", "ffn.")):
        sub, name = rest.split(".", 1)
        return f"d_encoder[{i}].{sub}.d{name}"
    return f"d_encoder[{i}].d_{rest}"


def _model_blame(r: SpecRevision, key: str, first_bad_layer: int | None) -> str:
    """The Lean definition responsible for an inconsistent model field."""
    m = _KEY_FIELD.match(key)
    if m and m.group(2) in ("mha.Wq", "mha.Wk", "mha.Wv"):
        return _mha_blame(r)
    if first_bad_layer is not None and (m is None or int(m.group(1)) < first_bad_layer) and not key.startswith("head_"):
        return f"inherited from `MultiHeadAttentionBackward` of encoder layer {first_bad_layer}"
    if m:
        return "`TransformerEncoderLayer.backward` (unexplained)"
    return f"`{_TOP_LEAN.get(key, 'ViTSpec.backward')}` (unexplained)"


def _model_case(
    r: SpecRevision,
    variant: Variant,
    heads: int,
    mode: Mode,
    g: torch.Generator,
) -> CaseResult:
    e = 8
    cfg = ViTConfig(
        patch_h=3,
        patch_w=2,
        stride=2,
        padding=1,
        embed_dim=e,
        hidden_dim=10,
        head_count=heads,
        num_layers=2,
        num_classes=3,
    )
    cls = ViTClsSpec if variant == "cls" else ViTSpec
    model = cls.init(
        cfg, 2, 7, 6, seed=int(torch.randint(0, 2**31 - 1, (1,), generator=g)), dtype=_F64, profile=revision_profile(r)
    )
    x = _rand(g, 2, 2, 7, 6)
    cot = _rand(g, 2, cfg.num_classes)
    leaves = {k: t.detach().clone().requires_grad_() for k, t in model.state_dict().items()}
    x_leaf = x.clone().requires_grad_()
    with torch.enable_grad():
        logits = cls.from_state_dict(cfg, 2, 7, 6, leaves, profile=model.profile).forward(x_leaf)
    auto_list = torch.autograd.grad(logits, [*leaves.values(), x_leaf], cot)
    auto = dict(zip([*leaves, "d_input"], auto_list, strict=True))
    grads, grad_x = model.backward(x, cot, mode=mode)
    assert grad_x is not None
    explicit = grads.to_dict() | {"d_input": grad_x}
    rows = _fields(explicit, auto)
    bad_layers = [
        int(m.group(1))
        for k, _, _, ok in rows
        if not ok and (m := _KEY_FIELD.match(k)) and m.group(2) in ("mha.Wq", "mha.Wk", "mha.Wv")
    ]
    first_bad = max(bad_layers) if bad_layers else None  # the first one the backward reaches
    fields = [
        FieldResult(_model_field(k), err, sc, ok, "" if ok else _model_blame(r, k, first_bad))
        for k, err, sc, ok in rows
    ]
    divides = "" if e % heads == 0 else ", heads do not divide embed_dim"
    name = f"{cls.__name__} (H={heads}{divides}, mode={mode})"
    return CaseResult(name, f"{cls.__name__}.backward", fields)


def audit(revision: str | SpecRevision = DEFAULT_REVISION, *, seed: int = 0) -> AuditReport:
    """Audit one revision (see the module doc); deterministic for a ``seed``."""
    r = get_revision(revision)
    g = torch.Generator().manual_seed(seed)
    report = AuditReport(r, _primitive_cases(r, g))
    for variant in ("mean", "cls"):
        for heads in (1, 2, 3):
            for mode in ("cache", "recompute"):
                report.cases.append(_model_case(r, variant, heads, mode, g))  # type: ignore[arg-type]
    return report


# -- the command --------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``vitspec audit-spec`` arguments (the ``vitspec.cli`` registry calls this)."""
    from .argtypes import output_path

    p.add_argument(
        "--revision",
        default=DEFAULT_REVISION,
        metavar="R",
        help=f"TorchLean revision: 411682f, b2a2184, torchlean@<commit> or torchlean (default: {DEFAULT_REVISION})",
    )
    p.add_argument(
        "--json", type=output_path, metavar="PATH", help="also write the full result as JSON ('-' for stdout)"
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``vitspec audit-spec``: print the tables; 0 consistent, 1 not."""
    from ._fs import atomic_write_text, check_writable

    r = get_revision(args.revision)  # ConfigError (exit 2) before any work
    if args.json and args.json != "-":
        check_writable(args.json, "--json")
    report = audit(r)
    print(report.to_text())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.consistent else 1
