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
differ, in one line (:class:`WeightsError`). Values are cast to the model's dtypes. A Hugging
Face checkpoint whose keys an older transformers version named (as on the hub) is renamed
by transformers' own loader, still strictly.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitspec.errors import VitSpecError

__all__ = ["WRAPPER_KEYS", "Mismatch", "WeightsError", "key_diff", "load_state_dict", "load_weights", "mismatch"]

#: Keys under which training checkpoints commonly keep the model's state dict.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_SHOWN = 5  # keys listed per category before "… and N more"
#: (label, key of transformers' ``output_loading_info``)
_HF_INFO = (("missing", "missing_keys"), ("unexpected", "unexpected_keys"), ("mis-shaped", "mismatched_keys"))


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


#: A key mismatch: category ("missing", "unexpected", "mis-shaped") -> the keys in it.
Mismatch = dict[str, list[str]]


def mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> Mismatch:
    """The keys ``given`` lacks, the keys it has in excess, and the shared keys whose shapes differ."""
    return {
        "missing": [k for k in expected if k not in given],
        "unexpected": [k for k in given if k not in expected],
        "mis-shaped": [
            f"{k} (file {tuple(given[k].shape)}, model {tuple(expected[k].shape)})"
            for k in expected
            if k in given and given[k].shape != expected[k].shape
        ],
    }


def key_diff(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str:
    """One line saying how ``given`` differs from ``expected`` (missing, unexpected, mis-shaped); ``""`` if not."""
    found = mismatch(expected, given)
    return _render(found, _prefix_hint(found["missing"], found["unexpected"]))


def _render(found: Mismatch, note: str = "") -> str:
    parts = [f"{len(keys)} {what}: {_listing(keys)}" for what, keys in found.items() if keys]
    return "; ".join(parts) + (f" ({note})" if note and parts else "")


def _size(found: Mismatch) -> int:
    return sum(len(keys) for keys in found.values())


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
    expected = model.state_dict()
    found = mismatch(expected, sd)
    diff = _render(found, _prefix_hint(found["missing"], found["unexpected"]))
    if diff and _is_hf(model):
        renamed, left = _hf_renamed(model, sd)
        if renamed is not None:
            sd, diff = renamed, ""
        elif left is not None and _size(left) < _size(found):  # the renaming explains part of it
            diff = _render(left, "after transformers' renaming of older key names")
    if diff:
        raise WeightsError(f"{str(path)!r} does not match the model: {diff}")
    model.load_state_dict(sd, strict=True)
    return model


def _is_hf(model: nn.Module) -> bool:
    # Only a model transformers built can be one of its models: never import it for the others.
    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(model, tf.PreTrainedModel)


def _hf_renamed(model: Any, sd: dict[str, Tensor]) -> tuple[dict[str, Tensor] | None, Mismatch | None]:
    """``(state dict, None)`` as transformers' own loader renames ``sd`` when that matches strictly;
    else ``(None, what still differs)``, or ``(None, None)`` when that loader cannot run on it.

    Hub checkpoints keep the key names of the transformers version that saved them
    (``encoder.layer.0.attention.attention.query``); newer versions rename them while loading.
    ``from_pretrained`` on a local folder (config + this file, nothing downloaded) applies that
    renaming and reports what is left over in its loading info.
    """
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    # Quietly: its progress bar and load report would break the CLI's one-line errors.
    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(Path(tmp) / "model.safetensors"))
            model.config.save_pretrained(tmp)
            loaded, info = type(model).from_pretrained(tmp, local_files_only=True, output_loading_info=True)
    except Exception:  # the fallback failing leaves the caller's own key diff, which is clearer
        return None, None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    left = {what: sorted(map(str, info.get(key) or ())) for what, key in _HF_INFO}
    if info.get("error_msgs"):
        return None, None
    if any(left.values()):
        return None, left
    return dict(loaded.state_dict()), None
