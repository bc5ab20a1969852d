"""MAP pooling (multihead attention pooling): learned latent queries attend over the tokens.

Not in the TorchLean spec (whose pooling is a mean or token 0). Selected by:

- timm ``VisionTransformer(global_pool='map')`` -> ``AttentionPoolLatent`` (the ``*_siglip_*``
  models, ``vit_*_map*``): ``latent (1, L, E)``, ``q`` Linear, fused ``kv`` Linear (first half K,
  second half V), ``proj``, ``norm`` (the model's ``norm_layer``), ``mlp`` (``Mlp`` with the model's
  ``act_layer``), then ``x + mlp(norm(x))`` and ``pool_type='token'`` (latent 0) or ``'avg'``;
  prefix tokens are dropped before it unless ``pool_include_prefix=True``;
- HF ``SiglipVisionModel`` ``head`` (``SiglipMultiheadAttentionPoolingHead``: ``probe (1, 1, E)``,
  ``torch.nn.MultiheadAttention`` with ``in_proj`` [q; k; v] and ``out_proj`` biases, ``layernorm``
  with ``layer_norm_eps``, ``SiglipMLP`` with ``gelu_pytorch_tanh``, latent 0).

::

    a   = MHA(q from latent, k/v from tokens)            # :func:`.qk_norm.mha_qk_norm`, no qk-norm
    y   = a + FFN(LN(a))          FFN(v) = act(v W1 + b1) W2 + b2
    out = y[0]  ('token')   or   mean over the latents  ('avg')

It reads the tokens of one image and returns one ``(embed_dim,)`` vector, so it replaces the pool
stage; the classifier head after it is the spec's. The backward is the chain above reversed.
(timm's ``AttentionPoolLatent(qk_norm=True)``, ``q_proj=False``, ``latent_dim != embed_dim`` and
its ``pos_embed='abs'`` are options no shipped ViT config sets; they are not covered here.)
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from ...dims import Float, checked
from .._batch import sum_to
from ..layernorm import layer_norm, layer_norm_backward
from ..linear import linear, linear_backward
from ..pooling import mean_pool, mean_pool_backward, token_select, token_select_backward
from .activations import ACTIVATIONS
from .qk_norm import mha_qk_norm, mha_qk_norm_backward

MapPool = Literal["token", "avg"]

#: The MAP head's tensors under their spec names (``map.<name>`` in a state dict), in order.
MAP_KEYS = (
    "latent", "Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo",
    "norm_gamma", "norm_beta", "W1", "b1", "W2", "b2",
)  # fmt: skip


@checked
def map_pool(
    encoded: Float[Tensor, "*batch tokens embed_dim"],
    latent: Float[Tensor, "latents embed_dim"],
    Wq: Float[Tensor, "embed_dim embed_dim"],
    bq: Float[Tensor, " embed_dim"],
    Wk: Float[Tensor, "embed_dim embed_dim"],
    bk: Float[Tensor, " embed_dim"],
    Wv: Float[Tensor, "embed_dim embed_dim"],
    bv: Float[Tensor, " embed_dim"],
    Wo: Float[Tensor, "embed_dim embed_dim"],
    bo: Float[Tensor, " embed_dim"],
    norm_gamma: Float[Tensor, " embed_dim"],
    norm_beta: Float[Tensor, " embed_dim"],
    W1: Float[Tensor, "embed_dim map_hidden"],
    b1: Float[Tensor, " map_hidden"],
    W2: Float[Tensor, "map_hidden embed_dim"],
    b2: Float[Tensor, " embed_dim"],
    *,
    heads: int,
    eps: float,
    activation: str = "gelu_erf",
    pool: MapPool = "token",
) -> Float[Tensor, "*batch embed_dim"]:
    """The pooled vector (see the module docstring)."""
    lat = latent.expand((*encoded.shape[:-2], *latent.shape))
    a, _ = mha_qk_norm(lat, encoded, Wq, Wk, Wv, Wo, bq, bk, bv, bo, heads=heads, qk_norm=None)
    f = linear(ACTIVATIONS[activation][0](linear(layer_norm(a, norm_gamma, norm_beta, eps), W1, b1)), W2, b2)
    y = a + f
    return token_select(y, 0) if pool == "token" else mean_pool(y, 0)


@checked
def map_pool_backward(
    encoded: Float[Tensor, "*batch tokens embed_dim"],
    latent: Float[Tensor, "latents embed_dim"],
    Wq: Float[Tensor, "embed_dim embed_dim"],
    bq: Float[Tensor, " embed_dim"],
    Wk: Float[Tensor, "embed_dim embed_dim"],
    bk: Float[Tensor, " embed_dim"],
    Wv: Float[Tensor, "embed_dim embed_dim"],
    bv: Float[Tensor, " embed_dim"],
    Wo: Float[Tensor, "embed_dim embed_dim"],
    bo: Float[Tensor, " embed_dim"],
    norm_gamma: Float[Tensor, " embed_dim"],
    norm_beta: Float[Tensor, " embed_dim"],
    W1: Float[Tensor, "embed_dim map_hidden"],
    b1: Float[Tensor, " map_hidden"],
    W2: Float[Tensor, "map_hidden embed_dim"],
    b2: Float[Tensor, " embed_dim"],
    d_pooled: Float[Tensor, "*batch embed_dim"],
    *,
    heads: int,
    eps: float,
    activation: str = "gelu_erf",
    pool: MapPool = "token",
) -> tuple[Float[Tensor, "*batch tokens embed_dim"], dict[str, Tensor]]:
    """``(d_encoded, grads)`` with ``grads`` keyed ``d<name>`` for every name of :data:`MAP_KEYS`,
    summed over ``*batch``; the forward is recomputed (the Lean way)."""
    act, act_backward = ACTIVATIONS[activation]
    lat = latent.expand((*encoded.shape[:-2], *latent.shape))
    a, cache = mha_qk_norm(lat, encoded, Wq, Wk, Wv, Wo, bq, bk, bv, bo, heads=heads, qk_norm=None)
    n = layer_norm(a, norm_gamma, norm_beta, eps)
    z = linear(n, W1, b1)
    u = act(z)
    n_lat = latent.shape[0]
    dy = token_select_backward(d_pooled, n_lat, 0) if pool == "token" else mean_pool_backward(d_pooled, n_lat, 0)
    # y = a + FFN(LN(a)): the residual's gradient reaches a twice.
    du, dW2, db2 = linear_backward(u, W2, dy)
    dn, dW1, db1 = linear_backward(n, W1, act_backward(z, du))
    da_ln, dg, dbeta = layer_norm_backward(a, norm_gamma, dn, eps)
    d_lat, d_encoded, g = mha_qk_norm_backward(lat, encoded, Wq, Wk, Wv, Wo, dy + da_ln, cache=cache, qk_norm=None)
    grads = {"dlatent": sum_to(d_lat, 2), **{k: g[k] for k in ("dWq", "dbq", "dWk", "dbk", "dWv", "dbv", "dWo", "dbo")}}
    grads |= {"dnorm_gamma": dg, "dnorm_beta": dbeta, "dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}
    return d_encoded, grads
