"""TorchLean revisions as data: what ``NN.Spec.Models.Vit`` computes at each commit vitspec implements.

The Lean spec changed between public revisions, in ways that change the function for the same
parameters (the head split) or its degenerate cases (the patch-output formula). A
:class:`SpecRevision` is a frozen record of one revision's ViT semantics; every field cites the
Lean file, definition and commit it was read from (:attr:`SpecRevision.citations`).

Established by reading the Lean at every commit the public repositories offer
(``lean-dojo/TorchLean``; mirrors ``NicolasRouquette/TorchLean``, ``wadkisson/TorchLean``,
``nktkt/gondolin``): ``docs/name-map.md`` lists the commits read and what could not be
established. :mod:`vitspec.profiles` builds the profiles ``torchlean@411682f`` and
``torchlean@b2a2184`` from these records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from .errors import ConfigError
from .schema import HeadSplit, PatchOut

__all__ = ["DEFAULT_REVISION", "REVISIONS", "LeanCitation", "SpecRevision", "get_revision"]


@dataclass(frozen=True)
class LeanCitation:
    """Where a fact was read: ``repo`` at ``commit`` (40 hex digits), ``file``, ``definition``."""

    file: str
    definition: str
    commit: str
    repo: str

    def __str__(self) -> str:
        return f"{self.file} `{self.definition}` ({self.repo}@{self.commit[:7]})"


@dataclass(frozen=True)
class SpecRevision:
    """One TorchLean revision's ViT semantics.

    Fields:
      - ``head_split``: Lean ``splitHeadsSpec``. ``direct_reshape``: a row-major
        ``reshapeSpec (n, H·hd) → (H, n, hd)``; ``reshape_swap``: reshape to ``(n, H, hd)``, then
        swap the first two axes (the usual split).
      - ``ln_eps``: the default ``epsilon`` of Lean ``layerNorm`` / ``layerNormBackward`` for
        ``Float`` (the encoder layers pass none, so the default applies).
      - ``patch_out``: Lean ``ViTPatchOutH`` / ``ViTPatchOutW``. ``nat_formula``:
        ``(in + 2p - k) / s + 1`` in ``Nat`` (1 for the degenerate cases);
        ``sliding_window``: ``Shape.slidingWindowOutDim`` (0 when ``k = 0``, ``s = 0`` or
        ``in + 2p < k``). Well-formed configs give the same value under both.
      - ``lean_backward``: vitspec's explicit backward for this revision is the Lean's
        ``MultiHeadAttentionBackward`` as written, with ``splitHeadsSpec`` used as the adjoint of
        ``combineHeadsSpec`` and vice versa (the same text at every revision read).
      - ``backward_is_vjp`` (derived): whether that backward is the gradient of the forward.
        True only when the split and ``combineHeadsSpec`` are inverse permutations, i.e. for
        ``reshape_swap``.
      - ``norm_placement``, ``activation``, ``attention_biases``, ``encoder_layers``: unchanged
        between the revisions recorded here, cited all the same.
    """

    name: str
    commit: str
    repo: str
    date: str
    head_split: HeadSplit
    ln_eps: float
    patch_out: PatchOut
    lean_backward: bool
    norm_placement: Literal["post"] = "post"
    activation: Literal["relu"] = "relu"
    attention_biases: bool = False
    encoder_layers: Literal["list"] = "list"
    citations: Mapping[str, LeanCitation] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def backward_is_vjp(self) -> bool:
        return self.head_split == "reshape_swap"

    @property
    def short(self) -> str:
        return self.commit[:7]

    def cite(self, field_name: str) -> str:
        """The citation of one semantic field, as text."""
        return str(self.citations[field_name])


_DOJO = "lean-dojo/TorchLean"
_ROUQ = "NicolasRouquette/TorchLean"
_C411 = "411682f6c3d913e5cdbc27d4546b3ab7ac0e3e9c"
_CB2A = "b2a21841e226c1e8ff95f8a965d3ad20a38a9e52"
_CC2B = "c2be276a4de4bf1802cfdf6f565d440fc19b9547"  # splitHeadsSpec becomes reshape-then-swap
_C852 = "852c9c62f6611139fafad1d2a7f284bcc62d5dce"  # ViTPatchOutH becomes slidingWindowOutDim
_ATT = "NN/Spec/Layers/Attention.lean"
_TRF = "NN/Spec/Models/Transformer.lean"
_VIT = "NN/Spec/Models/Vit.lean"


def _citations(
    commit: str, repo: str, *, head_split: tuple[str, str], ln_eps: tuple[str, str], patch_out: tuple[str, str]
) -> Mapping[str, LeanCitation]:
    """One revision's citations at ``repo@commit``. The three facts that differ between the revisions
    recorded here come as ``(file, definition)``; the others read the same at every one of them."""

    def at(file: str, definition: str) -> LeanCitation:
        return LeanCitation(file, definition, commit, repo)

    return MappingProxyType(
        {
            "head_split": at(*head_split),
            "combine": at(_ATT, "combineHeadsSpec (swapFirstTwoSpec, then reshapeSpec)"),
            "ln_eps": at(*ln_eps),
            "patch_out": at(*patch_out),
            "lean_backward": at(
                _ATT,
                "MultiHeadAttentionBackward (grad_attentionHeads := splitHeadsSpec grad_concat; "
                "grad_Q := combineHeadsSpec grad_QHeads)",
            ),
            "norm_placement": at(_TRF, "TransformerEncoderLayer.forward (layerNorm (x + attn), post-norm)"),
            "activation": at(_TRF, "FeedForward.forward (reluSpec)"),
            "attention_biases": at(_ATT, "structure MultiHeadAttention (Wq Wk Wv Wo, no bias terms)"),
            "encoder_layers": at(_TRF, "structure TransformerEncoder (layers : List ...)"),
        }
    )


#: ``ln_eps``'s definition: the same text at both revisions; only the files holding it moved.
_LN_EPS_DEF = "layerNorm (epsilon := Numbers.epsilon); instance Numbers Float (epsilon := 1e-6)"

R_411682F = SpecRevision(
    name="411682f",
    commit=_C411,
    repo=_DOJO,
    date="(lean-dojo/TorchLean; identical files at NicolasRouquette/TorchLean fd2c196, 2026-05-10)",
    head_split="direct_reshape",
    ln_eps=1e-6,
    patch_out="nat_formula",
    lean_backward=True,
    citations=_citations(
        _C411,
        _DOJO,
        head_split=(_ATT, "splitHeadsSpec (reshapeSpec x size_eq)"),
        ln_eps=("NN/Spec/Layers/Normalization.lean + NN/Spec/Core/Context.lean", _LN_EPS_DEF),
        patch_out=(_VIT, "ViTPatchOutH / ViTPatchOutW ((in + 2*padding - patch) / stride + 1)"),
    ),
    notes=(
        "The explicit backward (Lean MultiHeadAttentionBackward) is not the gradient of the forward for "
        "head_count >= 2: with the direct-reshape split, splitHeadsSpec and combineHeadsSpec are not "
        "each other's adjoints. `vitspec audit-spec --revision 411682f` shows where.",
    ),
)

R_B2A2184 = SpecRevision(
    name="b2a2184",
    commit=_CB2A,
    repo=_ROUQ,
    date="2026-08-04 (newest commit of NicolasRouquette/TorchLean's public history)",
    head_split="reshape_swap",
    ln_eps=1e-6,
    patch_out="sliding_window",
    lean_backward=True,
    citations=_citations(
        _CB2A,
        _ROUQ,
        head_split=(_ATT, "splitHeadsSpec (Tensor.swapFirstTwoSpec (reshapeSpec x size_eq)); since c2be276"),
        ln_eps=("NN/Spec/Layers/Normalization/Core.lean + NN/Core/Numeric.lean", _LN_EPS_DEF),
        patch_out=(
            _VIT + " + NN/Spec/Core/Shape.lean",
            "ViTPatchOutH := Shape.slidingWindowOutDim (0 for kernel = 0, stride = 0 or padded < kernel); "
            "since 852c9c6",
        ),
    ),
    notes=(
        f"splitHeadsSpec changed to reshape-then-swap at {_ROUQ}@{_CC2B[:7]} (2026-07-21); "
        f"ViTPatchOutH/W became Shape.slidingWindowOutDim at {_ROUQ}@{_C852[:7]} (2026-07-13).",
        "lean-dojo/TorchLean 0f84531 / 4ec1f62 (LayerNorm default TorchLean.normalizationEpsilon = 1e-5, "
        "reshape-then-swap split) could not be established as a ViT revision: Vit.lean and Transformer.lean "
        "are not public at those commits, so whether the encoder passes its own epsilon is unknown.",
    ),
)

#: Every revision vitspec implements, by short commit.
REVISIONS: dict[str, SpecRevision] = {r.name: r for r in (R_411682F, R_B2A2184)}

#: The revision the plain profile name ``torchlean`` stands for (``docs/name-map.md`` says why).
DEFAULT_REVISION = "b2a2184"


def get_revision(name: str | SpecRevision) -> SpecRevision:
    """A revision by short or full commit, ``torchlean@<commit>`` or the alias ``torchlean``.

    Unknown names raise :class:`~vitspec.errors.ConfigError` listing the valid ones.
    """
    if isinstance(name, SpecRevision):
        return name
    key = name.removeprefix("torchlean@") if isinstance(name, str) else name
    if key == "torchlean":
        key = DEFAULT_REVISION
    if isinstance(key, str):
        for r in REVISIONS.values():
            if len(key) >= 7 and r.commit.startswith(key.lower()):
                return r
    valid = ", ".join([*REVISIONS, *(f"torchlean@{r}" for r in REVISIONS), "torchlean"])
    raise ConfigError(f"unknown spec revision {name!r}; valid revisions: {valid}")
