"""Training the spec with ``torch.optim``: the explicit backward plugged into autograd.

- :class:`SpecViTFunction` is a ``torch.autograd.Function`` whose ``forward`` is the spec
  forward (keeping the cache the explicit backward needs) and whose ``backward`` *is*
  :meth:`vitspec.models.ViTSpec.backward`'s explicit chain: autograd only routes the
  returned gradients to the leaves.
- :class:`SpecViT` is an ``nn.Module`` holding the spec parameters as ``nn.Parameter``s
  under the spec keys (its ``state_dict()`` keys are the spec keys), so any optimizer,
  scheduler or training loop works with it unchanged.

::

    model = SpecViT.from_spec(ViTClsSpec.init(cfg, 3, 32, 32, profile="timm"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
    spec = model.to_spec()                     # back to a ViTClsSpec (a copy)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .config import ViTConfig
from .errors import ConfigError
from .models.vit import MODES, Mode, ViTBase, ViTClsSpec, ViTSpec
from .profiles import Profile

__all__ = ["SpecViT", "SpecViTFunction"]


class SpecViTFunction(torch.autograd.Function):
    """``SpecViTFunction.apply(spec, mode, x, *params) -> logits`` with the explicit backward.

    ``spec`` is a :class:`ViTSpec`/:class:`ViTClsSpec` giving config and profile; ``params`` are
    its tensors in state-dict order (``spec.state_dict().values()``; they may be other tensors of
    the same shapes, e.g. ``nn.Parameter``s). ``mode`` is ``"cache"`` or ``"recompute"`` (see
    :meth:`ViTSpec.backward`). Not twice differentiable.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, spec: ViTBase, mode: Mode, x: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        keys = list(spec.param_shapes())
        if len(params) != len(keys):
            raise ConfigError(
                f"SpecViTFunction: expected {len(keys)} parameter tensors (spec state-dict order), got {len(params)}"
            )
        # A model over exactly these tensors; autograd is off inside Function.forward.
        model = spec.rebind(dict(zip(keys, params, strict=True)))
        logits, cache = model.forward_with_cache(x, mode)
        # save_for_backward gives the in-place-modification check for the inputs; the cache holds
        # intermediates (not inputs or outputs), which may live on ctx directly.
        ctx.save_for_backward(x, *params)
        ctx.model, ctx.keys, ctx.cache = model, keys, cache  # type: ignore[attr-defined]
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        ctx.saved_tensors  # noqa: B018 - raises if an input was modified in place since the forward
        need_x = ctx.needs_input_grad[2]
        grads, grad_x = ctx.model.backward_from_cache(ctx.cache, grad_output.contiguous(), need_grad_x=need_x)
        d = grads.to_dict()
        out = [d[k] if need else None for k, need in zip(ctx.keys, ctx.needs_input_grad[3:], strict=True)]
        return (None, None, grad_x if need_x else None, *out)


class _Holder(nn.Module):
    """A plain container so parameter names nest as the spec keys (``encoder.0.mha.Wq``)."""


class SpecViT(nn.Module):
    """The spec model as an ``nn.Module``; ``forward`` runs :class:`SpecViTFunction` (explicit backward).

    Parameters live under the spec keys (``named_parameters()`` / ``state_dict()`` give
    ``patch_kernel``, ``encoder.0.mha.Wq``, …). ``mode`` picks the backward's memory strategy.
    """

    def __init__(self, spec: ViTBase, *, mode: Mode = "cache") -> None:
        super().__init__()
        if not isinstance(spec, ViTBase):
            raise ConfigError(f"SpecViT needs a ViTSpec or ViTClsSpec, got {type(spec).__name__}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        self.mode: Mode = mode
        self._spec_type = type(spec)
        self.cfg: ViTConfig = spec.cfg
        self.in_c, self.in_h, self.in_w = spec.in_c, spec.in_h, spec.in_w
        self.profile: Profile = spec.profile
        self._keys = list(spec.param_shapes())
        # Metadata only: the spec view is rebuilt over the live parameters at each forward, so
        # .to(), .double(), load_state_dict() and optimizer steps are always seen.
        self._template = spec.rebind({k: torch.empty(0) for k in self._keys})
        for key, t in spec.state_dict().items():
            *path, name = key.split(".")
            owner: nn.Module = self
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, _Holder())
                owner = getattr(owner, part)
            owner.register_parameter(name, nn.Parameter(t.detach().clone()))

    @classmethod
    def from_spec(cls, spec: ViTBase, *, mode: Mode = "cache") -> SpecViT:
        """A module with a copy of ``spec``'s parameters (training it leaves ``spec`` unchanged)."""
        return cls(spec, mode=mode)

    @property
    def variant(self) -> str:
        return self._spec_type.variant

    def spec_params(self) -> list[nn.Parameter]:
        """The parameters in spec state-dict order."""
        return [self.get_parameter(k) for k in self._keys]

    def to_spec(self) -> ViTSpec | ViTClsSpec:
        """A :class:`ViTSpec` / :class:`ViTClsSpec` with a copy of the current parameters."""
        sd = {k: p.detach().clone() for k, p in zip(self._keys, self.spec_params(), strict=True)}
        return self._spec_type(self.cfg, self.in_c, self.in_h, self.in_w, sd, profile=self.profile)  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        """Logits for ``(channels, in_h, in_w)`` or ``(batch, channels, in_h, in_w)``; differentiable via the
        explicit backward."""
        return SpecViTFunction.apply(self._template, self.mode, x, *self.spec_params())

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, profile={self.profile.name!r}, mode={self.mode!r}, "
            f"in=({self.in_c}, {self.in_h}, {self.in_w}), cfg={self.cfg}"
        )
