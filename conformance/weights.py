"""``--weights PATH``: fill a target's model with real weights from a local file, strictly.

Nothing is downloaded: a practitioner who wants a pretrained model fetches the file
themselves and passes it here. Accepted files:

- ``*.safetensors`` (read with :func:`safetensors.torch.load_file`);
- anything else is a torch checkpoint, read with ``torch.load(weights_only=True)`` (no
  pickled code runs). Training checkpoints that wrap the state dict under ``state_dict``,
  ``model`` or ``model_state_dict`` are unwrapped, and a ``module.`` prefix on every key
  (``DataParallel``) is dropped.

Matching is strict, like ``load_state_dict(strict=True)``, but checked first so the error
says everything at once: the missing keys, the unexpected keys, and the keys whose shapes
differ, in one line (:class:`WeightsError`). Values are cast to the model's dtypes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from vitspec.errors import VitSpecError

__all__ = ["WRAPPER_KEYS", "WeightsError", "key_diff", "load_state_dict", "load_weights"]

#: Keys under which training checkpoints commonly keep the model's state dict.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_SHOWN = 5  # keys listed per category before "… and N more"


class WeightsError(VitSpecError):
    """A weights file cannot be read, or its keys/shapes do not match the model's."""


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors stored in ``path`` (see the module doc for formats); :class:`WeightsError` if unreadable."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"weights file {str(p)!r} does not exist (or is not a file)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(p), device="cpu")
        else:
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, foreign pickle, wrong format: all say the same thing to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"cannot read weights {str(p)!r}: {first}") from None
    return _unwrap(raw, p)


def _unwrap(raw: object, p: Path) -> dict[str, Tensor]:
    if isinstance(raw, Mapping):
        for key in WRAPPER_KEYS:
            inner = raw.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                raw = inner
                break
    if not isinstance(raw, Mapping) or not raw:
        raise WeightsError(f"{str(p)!r} holds a {type(raw).__name__}, not a non-empty state dict of tensors")
    bad = [str(k) for k, v in raw.items() if not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(f"{str(p)!r}: entries that are not tensors: {_listing(bad)}")
    sd = {str(k): v for k, v in raw.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" … and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def key_diff(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str:
    """One line saying how ``given`` differs from ``expected`` (missing, unexpected, mis-shaped); ``""`` if not."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shaped = [
        f"{k} (file {tuple(given[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    parts = [
        f"{len(keys)} {what}: {_listing(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped))
        if keys
    ]
    hint = _prefix_hint(missing, unexpected)
    return "; ".join(parts) + (f" ({hint})" if hint and parts else "")


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """Name a prefix that would reconcile the keys: the usual cause is a wrapper (``vit.``, ``backbone.``)."""
    if not missing or len(missing) != len(unexpected):
        return ""
    for longer, shorter, verb in ((unexpected, missing, "have"), (missing, unexpected, "lack")):
        dots = [i for i, c in enumerate(longer[0]) if c == "."]
        for prefix in (longer[0][: i + 1] for i in dots):
            if all(k.startswith(prefix) for k in longer) and {k.removeprefix(prefix) for k in longer} == set(shorter):
                return f"the file's keys {verb} a leading {prefix!r} compared with the model's"
    return ""


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load ``path`` into ``model`` in place (strict, dtype-cast); returns ``model``. :class:`WeightsError` if not."""
    sd = load_state_dict(path)
    diff = key_diff(model.state_dict(), sd)
    if diff:
        raise WeightsError(f"{str(path)!r} does not match the model: {diff}")
    model.load_state_dict(sd, strict=True)
    return model
