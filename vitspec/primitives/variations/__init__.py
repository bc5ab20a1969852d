"""Variation points of third-party ViTs -- **not part of the TorchLean spec**.

The core primitives (:mod:`vitspec.primitives`) implement TorchLean's ``NN.Spec.Models.Vit`` and
the numerics profiles that only re-parameterise it (norm placement, eps, GELU, biases, pooling).
This subpackage holds the operations that ViTs shipped by timm, HF transformers and vit-pytorch
add on top, kept apart so the spec stays the spec. A model uses them only under a profile that
selects them, and a conformance report lists each one as a deviation from TorchLean.

One module per variation point; each module's docstring names the library options that select it:

=====================  ===================================================================
module                 variation point
=====================  ===================================================================
:mod:`.layer_scale`    LayerScale gains on the residual branches (timm ``init_values``,
                       HF DINOv2 ``layer_scale``)
:mod:`.activations`    QuickGELU (CLIP), SiLU and sigmoid (GLU gates); the activation table
:mod:`.rms_norm`       RMSNorm in place of LayerNorm (timm ``norm_layer=RmsNorm``)
:mod:`.qk_norm`        per-head LayerNorm / RMSNorm on q and k (timm ``qk_norm=True``); the
                       library head split; attention width ``heads*head_dim != embed_dim``
:mod:`.glu`            SwiGLU / GLU / GEGLU FFNs (timm ``SwiGLU``, ``GluMlp``, HF DINOv2)
:mod:`.sincos`         fixed sin-cos position tables, 1-D (TorchLean's own) and 2-D
                       (vit-pytorch ``SimpleViT``, timm)
:mod:`.prefix_tokens`  register and distillation tokens, where ``pos`` lands
                       (timm ``no_embed_class``, ``pos_embed='none'``), the DeiT distilled head
:mod:`.map_pool`       MAP attention pooling (timm ``global_pool='map'``, HF SigLIP head)
=====================  ===================================================================

Conventions are the core's: named-dimension annotations with :func:`vitspec.dims.checked`, an
optional leading ``*batch`` (parameter gradients summed over it), backward functions that never
call autograd, and ``*_backward_reference`` formulas beside every fused derivative kernel.
"""

from .activations import (
    ACTIVATIONS,
    QUICK_GELU_ALPHA,
    quick_gelu,
    quick_gelu_backward,
    quick_gelu_backward_reference,
    sigmoid,
    sigmoid_backward,
    sigmoid_backward_reference,
    silu,
    silu_backward,
    silu_backward_reference,
)
from .glu import GateActivation, glu, glu_backward, glu_ffn, glu_ffn_backward
from .layer_scale import layer_scale, layer_scale_backward
from .map_pool import MAP_KEYS, map_pool, map_pool_backward
from .prefix_tokens import (
    cls_mean_concat,
    cls_mean_concat_backward,
    distilled_head,
    distilled_head_backward,
    prefix_embed,
    prefix_embed_backward,
    prefix_rows,
    prefix_rows_backward,
)
from .qk_norm import (
    QKNorm,
    QKNormCache,
    merge_heads,
    mha_qk_norm,
    mha_qk_norm_backward,
    per_head_norm,
    per_head_norm_backward,
    split_heads,
)
from .rms_norm import rms_norm, rms_norm_backward, rms_norm_backward_reference, rms_norm_reference
from .sincos import (
    fixed_pos_add,
    fixed_pos_add_backward,
    posemb_sincos_2d,
    sincos_2d_timm,
    sinusoidal_positional_encoding,
)

__all__ = [
    "ACTIVATIONS",
    "MAP_KEYS",
    "QUICK_GELU_ALPHA",
    "GateActivation",
    "QKNorm",
    "QKNormCache",
    "cls_mean_concat",
    "cls_mean_concat_backward",
    "distilled_head",
    "distilled_head_backward",
    "fixed_pos_add",
    "fixed_pos_add_backward",
    "glu",
    "glu_backward",
    "glu_ffn",
    "glu_ffn_backward",
    "layer_scale",
    "layer_scale_backward",
    "map_pool",
    "map_pool_backward",
    "merge_heads",
    "mha_qk_norm",
    "mha_qk_norm_backward",
    "per_head_norm",
    "per_head_norm_backward",
    "posemb_sincos_2d",
    "prefix_embed",
    "prefix_embed_backward",
    "prefix_rows",
    "prefix_rows_backward",
    "quick_gelu",
    "quick_gelu_backward",
    "quick_gelu_backward_reference",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_backward_reference",
    "rms_norm_reference",
    "sigmoid",
    "sigmoid_backward",
    "sigmoid_backward_reference",
    "silu",
    "silu_backward",
    "silu_backward_reference",
    "sincos_2d_timm",
    "sinusoidal_positional_encoding",
    "split_heads",
]
