"""Shared test configuration: the ``device`` fixture and the Hypothesis profiles.

``device``
    The torch device string a test should run on, taken from the environment
    variable ``VITSPEC_TEST_DEVICE`` (default ``"cpu"``). A comma-separated list
    (``VITSPEC_TEST_DEVICE=cpu,cuda``) parametrizes the test once per device, so
    the test id says where it ran (``test_x[cpu]``, ``test_x[cuda]``). A CUDA
    device that is requested but absent skips the test with a reason rather than
    passing it silently on the CPU. Use it as ``torch.zeros(3, device=device)``;
    it is a plain ``str`` so it compares and prints naturally.

    ``nox -s "tests(device='cuda')"`` sets the variable for the whole run. A Hypothesis
    test that takes it needs ``suppress_health_check=[HealthCheck.function_scoped_fixture]``
    (safe: the fixture holds no state between examples).

Shape-check switch
    The switch (``vitspec.shape_checks``) is process-global, so an autouse fixture
    restores it after every test: a test that turns checks off and then fails cannot
    leave them off for the tests that follow it on the same worker.

Hypothesis profiles
    ``ci`` (the default): no deadline, because a 2-core machine shared by
    several jobs makes wall-clock deadlines flaky, and derandomized, so a
    failure reproduces on rerun and in CI. ``dev``: random, for exploring
    locally. Pick one with ``HYPOTHESIS_PROFILE=dev``. Each test chooses its own
    ``max_examples``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

from vitspec import shape_checks, shape_checks_enabled

# One torch thread per pytest-xdist worker: the suite runs `-n 2` on 2 cores, and tiny-tensor
# tests run several times slower when each worker also spawns an intra-op thread pool.
torch.set_num_threads(1)

settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CUDA_MISSING = "CUDA requested (VITSPEC_TEST_DEVICE=cuda) but no CUDA device is available"


def _requested_devices() -> list[str]:
    raw = os.environ.get("VITSPEC_TEST_DEVICE", "cpu")
    devices = [d.strip() for d in raw.split(",") if d.strip()]
    return devices or ["cpu"]


def _unavailable_reason(device: str) -> str | None:
    """Why ``device`` cannot be used here, or None when it can."""
    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            return CUDA_MISSING
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            return f"{device} requested (VITSPEC_TEST_DEVICE) but only {torch.cuda.device_count()} CUDA device(s) exist"
    elif kind == "mps" and not torch.backends.mps.is_available():
        return "mps requested (VITSPEC_TEST_DEVICE) but MPS is not available"
    return None


@pytest.fixture(params=_requested_devices())
def device(request: pytest.FixtureRequest) -> str:
    """The device string to run on (see the module docstring); skips when it is unavailable."""
    dev: str = request.param
    reason = _unavailable_reason(dev)
    if reason is not None:
        pytest.skip(reason)
    return dev


@pytest.fixture(autouse=True)
def _restore_shape_checks() -> Iterator[None]:
    before = shape_checks_enabled()
    yield
    shape_checks(before)
