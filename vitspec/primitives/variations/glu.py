"""Gated FFNs (GLU family): ``FFN(v) = (act(v Wg + bg) ⊙ (v W1 + b1)) W2 + b2``.

Not in the TorchLean spec (whose FFN is ``relu(v W1 + b1) W2 + b2``). Selected by:

- timm ``VisionTransformer(mlp_layer=SwiGLU)`` (``fc1_g`` = gate, ``fc1_x`` = value, ``act`` = SiLU,
  ``fc2``; ``norm`` only with ``scale_mlp_norm=True``);
- timm ``mlp_layer=GluMlp`` (one ``fc1`` of width ``2F`` chunked in two: with ``gate_last=True``,
  the default, ``x1 * act(x2)`` -- the *second* half is the gate, ``act`` defaults to Sigmoid);
  ``SwiGLUPacked = partial(GluMlp, act_layer=SiLU, gate_last=False)``: ``act(x1) * x2``, the
  *first* half is the gate;
- HF ``Dinov2Config(use_swiglu_ffn=True)`` (``Dinov2SwiGLUFFN``: ``gate_proj`` = gate, ``up_proj`` =
  value, SiLU, ``down_proj``; hidden width ``(int(E·mlp_ratio·2/3) + 7) // 8 * 8``).

Spec form: the value projection keeps the spec's FFN names ``W1 (embed_dim, hidden_dim)`` and
``b1``; the gate projection is a second pair ``Wg (embed_dim, hidden_dim)``, ``bg``; ``hidden_dim``
is the gated width that ``W2 (hidden_dim, embed_dim)`` reads. Adapters split a fused ``fc1`` at
its half according to the library's chunk order (above), so the spec has one layout.

Gate activations: ``silu`` (SwiGLU), ``sigmoid`` (GLU), ``gelu_erf`` / ``gelu_tanh`` (GEGLU).
Backward of ``u = a ⊙ z_v`` with ``a = act(z_g)``::

    dz_v = du ⊙ a;     dz_g = act'(z_g) ⊙ (du ⊙ z_v)
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from ...dims import Float, checked
from ..linear import linear, linear_backward
from .activations import ACTIVATIONS

GateActivation = Literal["silu", "sigmoid", "gelu_erf", "gelu_tanh"]


# -- the gate ------------------------------------------------------------------------
@checked
def glu(
    z_value: Float[Tensor, "*batch tokens hidden_dim"],
    z_gate: Float[Tensor, "*batch tokens hidden_dim"],
    activation: GateActivation = "silu",
) -> Float[Tensor, "*batch tokens hidden_dim"]:
    """``act(z_gate) ⊙ z_value`` (timm ``SwiGLU``: ``self.act(x_gate) * x``)."""
    return ACTIVATIONS[activation][0](z_gate) * z_value


@checked
def glu_backward(
    z_value: Float[Tensor, "*batch tokens hidden_dim"],
    z_gate: Float[Tensor, "*batch tokens hidden_dim"],
    du: Float[Tensor, "*batch tokens hidden_dim"],
    activation: GateActivation = "silu",
) -> tuple[Float[Tensor, "*batch tokens hidden_dim"], Float[Tensor, "*batch tokens hidden_dim"]]:
    """``(dz_value, dz_gate) = (du ⊙ act(z_gate), act'(z_gate) ⊙ (du ⊙ z_value))``."""
    act, act_backward = ACTIVATIONS[activation]
    return du * act(z_gate), act_backward(z_gate, du * z_value)


# -- the whole gated FFN ---------------------------------------------------------------
@checked
def glu_ffn(
    x: Float[Tensor, "*batch tokens embed_dim"],
    W1: Float[Tensor, "embed_dim hidden_dim"],
    b1: Float[Tensor, " hidden_dim"] | None,
    Wg: Float[Tensor, "embed_dim hidden_dim"],
    bg: Float[Tensor, " hidden_dim"] | None,
    W2: Float[Tensor, "hidden_dim embed_dim"],
    b2: Float[Tensor, " embed_dim"] | None,
    activation: GateActivation = "silu",
) -> Float[Tensor, "*batch tokens embed_dim"]:
    """``glu(x W1 + b1, x Wg + bg) W2 + b2``; biases may be ``None`` (timm ``proj_bias=False``)."""
    u = glu(linear(x, W1, b1), linear(x, Wg, bg), activation)
    return linear(u, W2, b2)


@checked
def glu_ffn_backward(
    x: Float[Tensor, "*batch tokens embed_dim"],
    W1: Float[Tensor, "embed_dim hidden_dim"],
    b1: Float[Tensor, " hidden_dim"] | None,
    Wg: Float[Tensor, "embed_dim hidden_dim"],
    bg: Float[Tensor, " hidden_dim"] | None,
    W2: Float[Tensor, "hidden_dim embed_dim"],
    dy: Float[Tensor, "*batch tokens embed_dim"],
    activation: GateActivation = "silu",
) -> tuple[Float[Tensor, "*batch tokens embed_dim"], dict[str, Tensor]]:
    """``(dx, grads)`` with ``grads`` keyed ``dW1 db1 dWg dbg dW2 db2`` (the forward is recomputed).

    Bias gradients are returned whether or not the biases exist; callers keep the ones they own.
    """
    z_v, z_g = linear(x, W1, b1), linear(x, Wg, bg)
    u = glu(z_v, z_g, activation)
    du, dW2, db2 = linear_backward(u, W2, dy)
    dz_v, dz_g = glu_backward(z_v, z_g, du, activation)
    dx_v, dW1, db1 = linear_backward(x, W1, dz_v)
    dx_g, dWg, dbg = linear_backward(x, Wg, dz_g)
    return dx_v + dx_g, {"dW1": dW1, "db1": db1, "dWg": dWg, "dbg": dbg, "dW2": dW2, "db2": db2}
