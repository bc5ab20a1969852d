"""``--input PATH``: real inputs for :func:`conformance.check` instead of the seeded ``N(0, 1)`` batch.

``PATH`` is one of:

- a saved tensor, ``*.pt`` / ``*.pth`` (``torch.load(weights_only=True)``) or ``*.safetensors``,
  holding one floating ``(B, C, H, W)`` or ``(C, H, W)`` tensor (a dict with exactly one tensor
  is accepted too). It is the model input as it stands: no preprocessing.
- an image file, or a directory of them (sorted by name; one batch entry per image).
  Images are preprocessed the way the model's library prepares its evaluation inputs,
  at the size the model takes:

  =============  =======================================================================
  timm           ``timm.data.resolve_data_config`` on the model (its ``pretrained_cfg``:
                 mean, std, interpolation, crop_pct) + ``timm.data.create_transform``
  hf             ``transformers.ViTImageProcessor`` built locally (no hub): resize to the
                 model's size, rescale to [0, 1], normalize with mean = std = 0.5
  torchvision    without weights there are no ``weights.transforms()``; their ImageNet
                 recipe is reproduced: resize the short side to ``size * 256/224``
                 (bilinear, antialiased), center-crop, normalize with the ImageNet mean/std
  vit_pytorch    the library has no data config: resize to the model's size, to [0, 1]
  other          as vit_pytorch, with a note saying so
  =============  =======================================================================

:func:`load_inputs` returns the batch and a one-line description of what was done, which
the CLI records in the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitspec.errors import VitSpecError

__all__ = [
    "IMAGE_SUFFIXES",
    "TENSOR_SUFFIXES",
    "InputError",
    "image_paths",
    "load_inputs",
    "load_tensor",
    "weights_and_inputs",
]

TENSOR_SUFFIXES = (".pt", ".pth", ".safetensors")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
#: torchvision's ImageNet classification recipe (``ImageClassification`` preset of its ViT weights).
_TV_MEAN, _TV_STD, _TV_RESIZE_RATIO = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 256 / 224
_PIL_MODES = {1: "L", 3: "RGB"}


class InputError(VitSpecError):
    """An ``--input`` path cannot be turned into a model input batch."""


def load_inputs(path: str | os.PathLike[str], model: nn.Module) -> tuple[Tensor, str]:
    """``(batch, how)``: the ``(B, C, H, W)`` float batch from ``path`` for ``model``, and how it was made."""
    from .adapters import detect

    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"input {str(p)!r} does not exist")
    desc = detect(model, copy=False).describe()
    if p.is_file() and p.suffix.lower() in TENSOR_SUFFIXES:
        return load_tensor(p), f"tensor from {p.name} (used as is)"
    images = image_paths(p)
    transform, how = _transform(model, desc.library, desc.input_shape)
    batch = torch.stack([transform(_open(f, desc.in_c)) for f in images]).to(torch.float32)
    return batch, f"{len(images)} image(s) from {p.name}, {how}"


def weights_and_inputs(
    model: nn.Module, weights: str | os.PathLike[str] | None = None, inputs: str | os.PathLike[str] | None = None
) -> tuple[Tensor | None, str]:
    """What ``--weights`` and ``--input`` do: load ``weights`` into ``model`` in place
    (:func:`~conformance.weights.load_weights`), then ``(batch, how)`` from ``inputs``
    (:func:`load_inputs`), or ``(None, "")`` without them."""
    if weights:
        from .weights import load_weights

        load_weights(model, weights)
    return load_inputs(inputs, model) if inputs else (None, "")


def load_tensor(path: str | os.PathLike[str]) -> Tensor:
    """The one floating tensor saved in ``path``, as a ``(B, C, H, W)`` batch."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(p), device="cpu")
        else:
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot read input tensor {str(p)!r}: {first}") from None
    if isinstance(raw, Mapping):
        tensors = [v for v in raw.values() if isinstance(v, Tensor)]
        if len(tensors) != 1:
            raise InputError(f"{str(p)!r} holds {len(tensors)} tensors; save exactly one input tensor")
        raw = tensors[0]
    if not isinstance(raw, Tensor):
        raise InputError(f"{str(p)!r} holds a {type(raw).__name__}, not a tensor")
    if not raw.is_floating_point():
        raise InputError(f"{str(p)!r} is {raw.dtype}: a saved input is used as is, so save the preprocessed floats")
    x = raw.unsqueeze(0) if raw.ndim == 3 else raw
    if x.ndim != 4 or x.shape[0] == 0:
        raise InputError(f"{str(p)!r} has shape {tuple(raw.shape)}; expected (B, C, H, W) or (C, H, W)")
    return x


def image_paths(path: Path) -> list[Path]:
    """``[path]`` for an image file, else the images in the directory ``path`` sorted by name."""
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            kinds = ", ".join((*TENSOR_SUFFIXES, *IMAGE_SUFFIXES))
            raise InputError(f"{str(path)!r} is neither a saved tensor nor an image ({kinds})")
        return [path]
    found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise InputError(f"directory {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def _open(path: Path, channels: int) -> Any:
    from PIL import Image, UnidentifiedImageError

    if channels not in _PIL_MODES:
        raise InputError(f"the model takes {channels} channels; images can feed 1 (grayscale) or 3 (RGB)")
    try:
        with Image.open(path) as im:
            return im.convert(_PIL_MODES[channels])
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"cannot read image {str(path)!r}: {e}") from None


# -- per-library preprocessing -------------------------------------------------------------
Transform = Callable[[Any], Tensor]


def _transform(model: nn.Module, library: str, shape: tuple[int, int, int]) -> tuple[Transform, str]:
    """The evaluation preprocessing of ``library`` at the model's input ``shape``, and its description."""
    builders: dict[str, Callable[[nn.Module, tuple[int, int, int]], tuple[Transform, str]]] = {
        "timm": _timm,
        "hf": _hf,
        "torchvision": _torchvision,
    }
    if library in builders:
        return builders[library](model, shape)
    fn, how = _resize_to_tensor(shape)
    if library != "vit_pytorch":
        how += f" ({library} has no known data config)"
    return fn, how


def _timm(model: nn.Module, shape: tuple[int, int, int]) -> tuple[Transform, str]:
    from timm.data import create_transform, resolve_data_config

    # The model's own size wins over its pretrained_cfg's (an img_size override changes only the former).
    cfg = resolve_data_config({"input_size": shape}, model=model)
    how = (
        f"timm data config (crop_pct {cfg['crop_pct']}, {cfg['interpolation']}, "
        f"mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])})"
    )
    return create_transform(**cfg), how


def _hf(model: nn.Module, shape: tuple[int, int, int]) -> tuple[Transform, str]:
    from transformers import ViTImageProcessor

    _, h, w = shape
    proc = ViTImageProcessor(size={"height": h, "width": w})

    def apply(image: Any) -> Tensor:
        return proc(images=image, return_tensors="pt")["pixel_values"][0]

    return apply, f"ViTImageProcessor (resize {h}x{w}, mean {proc.image_mean}, std {proc.image_std})"


def _torchvision(model: nn.Module, shape: tuple[int, int, int]) -> tuple[Transform, str]:
    from torchvision import transforms as T

    _, h, w = shape
    resize = round(min(h, w) * _TV_RESIZE_RATIO)
    fn = T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop((h, w)),
            T.ToTensor(),
            T.Normalize(_TV_MEAN, _TV_STD),
        ]
    )
    return fn, f"torchvision ImageNet recipe (resize {resize}, center-crop {h}x{w}, ImageNet mean/std)"


def _resize_to_tensor(shape: tuple[int, int, int]) -> tuple[Transform, str]:
    from torchvision import transforms as T

    _, h, w = shape
    return T.Compose([T.Resize((h, w)), T.ToTensor()]), f"resize to {h}x{w}, scaled to [0, 1]"
