"""A deliberately non-conformant ViT: a small timm model with one LayerNorm epsilon changed.

``make_model()`` builds a 4-block timm ``VisionTransformer`` (64x64 images, 8x8 patches,
width 64, 4 heads, 10 classes) and sets block 1's ``norm2.eps`` to 1e-5. Every other
LayerNorm keeps timm's 1e-6, and the adapter reads the profile's epsilon from block 0, so
the check expects 1e-6 everywhere, and block 1 is the first stage to diverge::

    vitspec conform examples/mutant_vit.py:make_model          # exit 1: MISMATCH at blocks.1 (norm2)
    vitspec conform examples/mutant_vit.py:make_original       # exit 0: the same model, unmodified
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer


def make_original() -> VisionTransformer:
    """The unmodified small timm ViT (seeded, random weights)."""
    torch.manual_seed(0)
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4, num_classes=10)


def make_model() -> VisionTransformer:
    """The mutant: block 1's ``norm2`` uses eps 1e-5 instead of timm's (and the spec's) 1e-6."""
    model = make_original()
    model.blocks[1].norm2.eps = 1e-5
    return model
