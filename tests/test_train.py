"""Issue 6 — training a ViTClsSpec through SpecViT (the explicit backward) on sklearn's digits."""

from __future__ import annotations

import pytest

pytest.importorskip("sklearn")

from vitspec.train import TrainConfig, load_digits_tensors, train_digits


def test_digits_split_is_seeded_disjoint_and_standardised() -> None:
    x_tr, y_tr, x_te, y_te = load_digits_tensors(0.25, seed=3)
    assert x_tr.shape[1:] == (1, 8, 8) and x_te.shape[1:] == (1, 8, 8)
    assert len(y_tr) + len(y_te) == 1797 and len(y_te) == 449
    assert abs(float(x_tr.mean())) < 1e-5 and abs(float(x_tr.std()) - 1) < 1e-4
    again = load_digits_tensors(0.25, seed=3)
    assert (again[0] == x_tr).all(), "same seed must give the same split"
    # No test image appears in the training set.
    flat_tr = {tuple(r.tolist()) for r in x_tr.flatten(1)}
    dup = sum(tuple(r.tolist()) in flat_tr for r in x_te.flatten(1))
    assert dup <= 5, f"{dup} test images also in train (sklearn digits has a few exact duplicates)"


def test_two_epochs_learn_something() -> None:
    r = train_digits(TrainConfig(epochs=2), progress=False, log=None)
    assert r.final_loss < 2.0, "loss must drop below log(10)≈2.30 within two epochs"
    assert r.test_accuracy > 0.3, f"two epochs should beat chance (10%) by far, got {r.test_accuracy:.1%}"


@pytest.mark.slow
def test_default_demo_reaches_90_percent() -> None:
    """The issue's claim: ≥ 90 % test accuracy (time is recorded in docs/benchmarks.md, not asserted)."""
    r = train_digits(TrainConfig(), progress=False, log=None)
    assert r.test_accuracy >= 0.90, f"test accuracy {r.test_accuracy:.1%} < 90 %"
