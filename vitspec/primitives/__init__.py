"""Spec primitives: each module holds one op's forward and its explicit backward side by side.

Conventions:
  - Every function is annotated with the named-dimension DSL (:mod:`vitspec.dims`)
    and decorated with :func:`vitspec.dims.checked`.
  - A leading ``*batch`` is optional everywhere; parameter gradients are summed
    over it (the spec is per image; a batch's gradient is the sum over images).
  - Backward functions take what the forward took plus the output gradient and
    never call autograd: they are plain tensor arithmetic, safe under
    ``torch.no_grad()``/``torch.inference_mode()``.
  - Where ATen has a fused kernel for an op's derivative (LayerNorm, softmax, GELU,
    ReLU) the backward calls it by default and keeps the spelled-out formula as
    ``*_backward_reference``; ``fused_backward(False)`` switches every backward to the
    formulas (see :mod:`._kernels`).
"""

from ._kernels import fused_backward, fused_backward_enabled
from .activations import (
    gelu_erf,
    gelu_erf_backward,
    gelu_erf_backward_reference,
    gelu_tanh,
    gelu_tanh_backward,
    gelu_tanh_backward_reference,
    relu,
    relu_backward,
    relu_backward_reference,
)
from .attention import AttentionCache, mha, mha_backward
from .conv import conv2d, conv2d_backward, patch_linear_ln, patch_linear_ln_backward
from .layernorm import layer_norm, layer_norm_backward, layer_norm_backward_reference, layer_norm_reference
from .linear import head, head_backward, linear, linear_backward
from .pooling import mean_pool, mean_pool_backward, token_select, token_select_backward
from .softmax import softmax, softmax_backward, softmax_backward_reference
from .tokens import (
    cls_prepend,
    cls_prepend_backward,
    grid_to_tokens,
    grid_to_tokens_backward,
    pos_add,
    pos_add_backward,
)

__all__ = [
    "AttentionCache",
    "cls_prepend",
    "cls_prepend_backward",
    "conv2d",
    "conv2d_backward",
    "fused_backward",
    "fused_backward_enabled",
    "gelu_erf",
    "gelu_erf_backward",
    "gelu_erf_backward_reference",
    "gelu_tanh",
    "gelu_tanh_backward",
    "gelu_tanh_backward_reference",
    "grid_to_tokens",
    "grid_to_tokens_backward",
    "head",
    "head_backward",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_backward_reference",
    "layer_norm_reference",
    "linear",
    "linear_backward",
    "mean_pool",
    "mean_pool_backward",
    "mha",
    "mha_backward",
    "patch_linear_ln",
    "patch_linear_ln_backward",
    "pos_add",
    "pos_add_backward",
    "relu",
    "relu_backward",
    "relu_backward_reference",
    "softmax",
    "softmax_backward",
    "softmax_backward_reference",
    "token_select",
    "token_select_backward",
]
