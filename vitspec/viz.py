"""Attention pictures: last-layer CLS attention and attention rollout over an input image.

Works for any spec model with a CLS token, and so for any third-party ViT the
conformance adapters can map (the spec run under the library's profile computes
the library's attention). Attention probabilities are recomputed from the
captured layer inputs with the spec's own primitives, so the picture shows the
spec's numbers, not a hook's.

Rollout (Abnar & Zuidema, 2020): average heads, add the identity for the residual
path, renormalise rows, multiply through the layers; row 0 (CLS) over the patch
columns is the map.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

from .errors import ConfigError, VitSpecError
from .primitives import layer_norm, softmax

__all__ = [
    "MAX_IMAGE_PIXELS",
    "add_arguments",
    "add_parser",
    "attention_maps",
    "attention_probs",
    "run",
    "save_attention_png",
    "spec_model_for_target",
]


def attention_probs(model: object, x: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the attention probabilities ``(heads, tokens, tokens)`` for one image ``x`` (C, H, W)."""
    sd = model.state_dict()  # type: ignore[attr-defined]
    prof = model.profile  # type: ignore[attr-defined]
    heads = model.cfg.head_count  # type: ignore[attr-defined]
    capture: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        model.forward(x, capture=capture)  # type: ignore[attr-defined]
        out = []
        for i in range(model.cfg.num_layers):  # type: ignore[attr-defined]
            h = capture["pos_embed"] if i == 0 else capture[f"blocks.{i - 1}"]
            p = f"encoder.{i}."
            if prof.norm_placement == "pre":
                h = layer_norm(h, sd[p + "norm1_gamma"], sd[p + "norm1_beta"], prof.ln_eps)
            q = h @ sd[p + "mha.Wq"] + (sd[p + "mha.bq"] if prof.qkv_bias else 0)
            k = h @ sd[p + "mha.Wk"] + (sd[p + "mha.bk"] if prof.qkv_bias else 0)
            q = q.unflatten(-1, (heads, -1)).transpose(0, 1)
            k = k.unflatten(-1, (heads, -1)).transpose(0, 1)
            out.append(softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5))
    return out


def attention_maps(model: object, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cls_last, rollout)``, each ``(out_h, out_w)``: what the CLS token attends to among patches."""
    if getattr(model, "variant", None) != "cls":
        raise ConfigError("attention maps need a model with a CLS token (ViTClsSpec / a CLS-token ViT)")
    probs = attention_probs(model, x)
    oh, ow = model.dims["out_h"], model.dims["out_w"]  # type: ignore[attr-defined]
    if not probs:
        raise ConfigError("the model has no encoder layers, so there is no attention to draw")
    cls_last = probs[-1].mean(0)[0, 1:].reshape(oh, ow)
    t = probs[0].shape[-1]
    roll = torch.eye(t, dtype=probs[0].dtype, device=probs[0].device)
    for p in probs:
        a = p.mean(0) + torch.eye(t, dtype=p.dtype, device=p.device)
        roll = (a / a.sum(-1, keepdim=True)) @ roll
    return cls_last, roll[0, 1:].reshape(oh, ow)


def save_attention_png(
    image: torch.Tensor, cls_last: torch.Tensor, rollout: torch.Tensor, path: str, title: str
) -> None:
    """Three panels (input, last-layer CLS attention, rollout) overlaid on the image; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._fs import atomic_write_bytes

    img = image.detach().double().cpu()
    img = (img - img.min()) / (img.max() - img.min() + 1e-12)
    rgb = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()
    cmap = None if img.shape[0] == 3 else "gray"
    h, w = img.shape[-2:]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    axes[0].imshow(rgb, cmap=cmap)
    axes[0].set_title("input")
    for ax, m, name in ((axes[1], cls_last, "CLS attention, last layer"), (axes[2], rollout, "attention rollout")):
        ax.imshow(rgb, cmap=cmap)
        im = ax.imshow(
            m.detach().double().cpu().numpy(), cmap="inferno", alpha=0.6, extent=(0, w, h, 0), interpolation="nearest"
        )
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(name)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


#: Default ``--max-pixels``: 50 megapixels (an 8K photo is 33 MP); decoding one takes ~150 MB.
MAX_IMAGE_PIXELS = 50_000_000


def _load_image(path: str, in_c: int, in_h: int, in_w: int, max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """The image at ``path`` as ``(in_c, in_h, in_w)``, standardised; its size is checked from the
    header (PIL reads only that on ``open``) before any pixel is decoded."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise VitSpecError(f"--image {path!r}: no such file")
    if in_c not in (1, 3):
        raise VitSpecError(f"--image: the model takes {in_c} channels; images give 1 (grey) or 3 (RGB)")
    bomb_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit (max_pixels) applies, with a message naming the flag
    try:
        with Image.open(p) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise VitSpecError(
                    f"--image {path!r}: {w}x{h} = {w * h:,} pixels is above --max-pixels {max_pixels:,}; "
                    "shrink it or raise the limit"
                )
            arr = np.asarray(im.convert("RGB"), dtype=np.float64)
    except VitSpecError:
        raise
    except Exception as e:  # PIL raises many types for a bad file (UnidentifiedImageError, OSError, ...)
        raise VitSpecError(f"--image {path!r}: cannot read it as an image ({type(e).__name__}: {e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    t = torch.from_numpy(arr).permute(2, 0, 1)
    if in_c == 1:
        t = t.mean(0, keepdim=True)
    t = F.interpolate(t[None], size=(in_h, in_w), mode="bilinear", align_corners=False)[0]
    return (t - t.mean()) / (t.std() + 1e-12)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``vitspec attention-map`` arguments (the ``vitspec.cli`` registry calls this)."""
    from .argtypes import output_path, positive_int, seed_int

    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="PATH", help="a spec model saved with m.save(PATH) (.safetensors)")
    src.add_argument("--target", metavar="TARGET", help="a third-party ViT, as for `vitspec conform` (random init)")
    p.add_argument("--image", metavar="PATH", help="PNG/JPEG input (default: a seeded random image)")
    p.add_argument("--seed", type=seed_int, default=0, metavar="N", help="seed for the default image and model init")
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=MAX_IMAGE_PIXELS,
        metavar="N",
        help=f"refuse an --image with more pixels than this, before decoding it (default {MAX_IMAGE_PIXELS:,})",
    )
    p.add_argument(
        "-o",
        "--output",
        type=output_path,
        default="attention.png",
        help="PNG to write ('-' = stdout; default attention.png)",
    )


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``vitspec attention-map`` on an argparse sub-parser set (``func=run``); the CLI uses
    :func:`add_arguments`."""
    p = sub.add_parser(
        "attention-map",
        help="write a PNG of a ViT's CLS attention (last layer) and attention rollout over an image",
        description=__doc__,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def spec_model_for_target(target: str, *, seed: int = 0) -> tuple[object, str]:
    """``(spec model, name)`` for a third-party ViT target (random init), from the package that maps
    third-party ViTs onto the spec: the ``vitspec.target_models`` entry point (:mod:`vitspec.plugins`;
    ``conformance`` provides it), so ``vitspec`` itself imports no adapter code."""
    from .plugins import TARGET_MODELS_GROUP, load_group

    hooks, problems = load_group(TARGET_MODELS_GROUP)
    if not hooks:
        why = "; ".join(f"{k}: {v}" for k, v in problems.items()) or "none is installed"
        raise VitSpecError(
            f"--target needs a package that maps third-party ViTs onto the spec (entry-point group "
            f"{TARGET_MODELS_GROUP!r}, e.g. conformance): {why}"
        )
    build = hooks[min(hooks)]  # one is expected; the first by name when there are several
    return build(target, seed=seed)  # type: ignore[operator]


def _model_from_args(args: argparse.Namespace) -> tuple[object, str]:
    if args.model:
        from .models import load

        if not Path(args.model).is_file():
            raise VitSpecError(f"--model {args.model!r}: no such file")
        return load(args.model), Path(args.model).name
    if args.target:
        return spec_model_for_target(args.target, seed=args.seed)
    from .config import ViTConfig
    from .models import ViTClsSpec

    cfg = ViTConfig(8, 8, 8, 0, 64, 128, 4, 4, 10)
    return ViTClsSpec.init(cfg, 3, 64, 64, seed=args.seed, dtype=torch.float64), "ViTClsSpec (random init)"


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``vitspec attention-map``; bad input raises :class:`~vitspec.errors.VitSpecError`
    (or ``OSError``), which the CLI turns into one line and exit code 2."""
    import importlib.util

    from ._fs import check_writable

    if importlib.util.find_spec("matplotlib") is None:  # before any work
        raise VitSpecError("vitspec attention-map needs matplotlib: pip install 'vitspec[cli]'")
    check_writable(args.output, "--output")  # also when run() is called without the parser's checks
    if args.image and not Path(args.image).is_file():
        raise VitSpecError(f"--image {args.image!r}: no such file")
    model, name = _model_from_args(args)
    in_c, in_h, in_w = model.in_c, model.in_h, model.in_w  # type: ignore[attr-defined]
    dtype = next(iter(model.state_dict().values())).dtype  # type: ignore[attr-defined]
    if args.image:
        x = _load_image(args.image, in_c, in_h, in_w, getattr(args, "max_pixels", MAX_IMAGE_PIXELS))
    else:
        x = torch.randn(in_c, in_h, in_w, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    x = x.to(dtype)
    cls_last, rollout = attention_maps(model, x)
    save_attention_png(x, cls_last, rollout, args.output, f"{name}: attention")
    if args.output != "-":
        print(f"wrote {args.output}")
    return 0


_run = run  # the name ``add_parser`` used to register
