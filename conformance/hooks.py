"""What ``conformance`` adds to ``vitspec``, declared as entry points in ``pyproject.toml``
(``vitspec`` imports nothing from ``conformance`` by name; see :mod:`vitspec.plugins`):

- :data:`COMMAND` (group ``vitspec.commands``): ``vitspec conform``, the same arguments, ``run``
  and exit codes as ``python -m conformance`` (:mod:`conformance.cli`);
- :func:`spec_model_for_target` (group ``vitspec.target_models``): the spec model that computes
  what a third-party ViT computes, for ``vitspec attention-map --target``.

This module stays light (the adapters are imported when a target is built), because every
``vitspec`` invocation loads it to list its commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitspec.cli import Command

if TYPE_CHECKING:
    from vitspec.models import ViTBase

__all__ = ["COMMAND", "spec_model_for_target"]

COMMAND = Command(
    "conform",
    "check a third-party ViT against the spec (== python -m conformance)",
    "conformance.cli",
    "Check a third-party ViT against TorchLean's ViT spec, stage by stage and gradient by gradient. "
    "Exit status: 0 conformant, 1 not conformant, 2 usage error / unknown target, 3 a model the spec "
    "cannot express (UNSUPPORTED), 4 --timeout reached.",
)


def spec_model_for_target(target: str, *, seed: int = 0) -> tuple[ViTBase, str]:
    """``(spec model, name)``: the target built with random weights (:func:`conformance.targets.build_target`),
    described by its adapter, and its parameters mapped onto a float64 ``ViTSpec`` / ``ViTClsSpec``
    under the library's profile. Raises the adapters' ``Unsupported`` / the targets' ``TargetError``."""
    from vitspec.models import ViTClsSpec, ViTSpec

    from .adapters import detect
    from .targets import build_target

    lib_model, name = build_target(target, seed=seed)
    adapter = detect(lib_model.eval())
    d = adapter.describe()
    cls = ViTClsSpec if d.variant == "cls" else ViTSpec
    sd = adapter.to_spec({k: v.detach().double() for k, v in lib_model.named_parameters()})
    return cls.from_state_dict(d.cfg, d.in_c, d.in_h, d.in_w, sd, profile=d.profile), name
