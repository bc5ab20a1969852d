"""What ``conformance`` adds to ``vitspec``, declared as entry points in ``pyproject.toml``
(``vitspec`` imports nothing from ``conformance`` by name; see :mod:`vitspec.plugins`):

- :data:`COMMAND` (group ``vitspec.commands``): ``vitspec conform``, the same arguments, ``run``
  and exit codes as ``python -m conformance`` (:mod:`conformance.cli`); :data:`DIFF_COMMAND` and
  :data:`CONVERT_COMMAND`: ``vitspec diff`` (:mod:`conformance.diff_command`) and ``vitspec convert``
  (:mod:`conformance.conversion`);
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

__all__ = ["COMMAND", "CONVERT_COMMAND", "DIFF_COMMAND", "spec_model_for_target"]

COMMAND = Command(
    "conform",
    "check a third-party ViT against the spec (== python -m conformance)",
    "conformance.cli",
    "Check a third-party ViT against TorchLean's ViT spec, stage by stage and gradient by gradient. "
    "Exit status: 0 conformant, 1 not conformant, 2 usage error / unknown target, 3 a model the spec "
    "cannot express (UNSUPPORTED), 4 --timeout reached.",
)
DIFF_COMMAND = Command(
    "diff",
    "do two ViTs (any libraries) compute the same function? weights, stages, gradients, through the spec",
    "conformance.diff_command",
    "Compare two ViTs through the spec: parameter agreement per spec key, then stage by stage and gradient by "
    "gradient on the same seeded input, A vs B and each vs the spec, with the first point where they part and why "
    "(weights or a variation point). Exit status: 0 same function, 1 not, 2 usage error, 3 unsupported model.",
)
CONVERT_COMMAND = Command(
    "convert",
    "rebuild a ViT in another library (timm, hf, torchvision, vit_pytorch) through the spec, verified",
    "conformance.conversion",
    "Build the target library's model for the same architecture, fill it bit for bit from the spec bundle, and "
    "verify with diff before writing (-o OUT.safetensors). Exit status: 0 converted, 1 the result does not "
    "compute the same function, 2 usage error, 3 the target library cannot express a variation point (named).",
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
