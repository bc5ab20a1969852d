"""Train a small ``ViTClsSpec`` on scikit-learn's bundled digits through the explicit backward.

The model is a :class:`vitspec.autograd.SpecViT`, whose ``backward`` *is* the
spec's explicit backward (no autograd through the model), optimised with plain
``torch.optim.AdamW``. The data are the 1,797 8×8 digit images that ship with
scikit-learn (no download). Run ``vitspec train`` or ``python examples/train_digits.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ._env import machine_info
from .config import ViTConfig

__all__ = [
    "MAX_LR",
    "TrainConfig",
    "TrainResult",
    "add_arguments",
    "add_parser",
    "default_threads",
    "load_digits_tensors",
    "run",
    "train_digits",
]

#: Upper bound of ``--threads``: more threads than this only oversubscribes the CPU.
MAX_THREADS = 256
#: Upper bound of ``--lr``: AdamW steps are about ``lr`` per weight, so beyond this the run only diverges.
MAX_LR = 10.0


def default_threads() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity``) less those the load average says are
    busy, at least 1 and at most 8: on a loaded 2-core machine ``--threads 2`` runs ~15x slower than 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cpus - busy, cpus, 8))


@dataclass(frozen=True)
class TrainConfig:
    """Defaults reach >= 90 % test accuracy in well under 2 minutes on 2 CPU cores."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    test_fraction: float = 0.25
    patch: int = 2
    embed_dim: int = 48
    hidden_dim: int = 96
    heads: int = 4
    layers: int = 2
    profile: str = "torchlean"
    threads: int = field(default_factory=default_threads)


@dataclass(frozen=True)
class TrainResult:
    test_accuracy: float
    train_accuracy: float
    final_loss: float
    epochs: int
    seconds: float
    config: TrainConfig

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "config": asdict(self.config)}, indent=2)


def load_digits_tensors(
    test_fraction: float = 0.25, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` with images as ``(N, 1, 8, 8)`` scaled to [0, 1].

    The split is a seeded permutation, stratification-free (the classes are balanced).
    """
    from sklearn.datasets import load_digits  # optional dependency, imported late on purpose

    d = load_digits()
    x = torch.tensor(d.images, dtype=dtype).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_test = round(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    # Standardise with training statistics only, so the test set stays unseen.
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def train_digits(
    tc: TrainConfig = TrainConfig(), *, progress: bool = True, log: Callable[[str], None] | None = print
) -> TrainResult:
    """Train and evaluate; returns accuracies, the last epoch's mean loss and wall time."""
    from .autograd import SpecViT
    from .models import ViTClsSpec

    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    x_tr, y_tr, x_te, y_te = load_digits_tensors(tc.test_fraction, tc.seed)
    cfg = ViTConfig(tc.patch, tc.patch, tc.patch, 0, tc.embed_dim, tc.hidden_dim, tc.heads, tc.layers, 10)
    spec = ViTClsSpec.init(cfg, 1, 8, 8, seed=tc.seed, profile=tc.profile)
    model = SpecViT.from_spec(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=tc.lr, total_steps=tc.epochs * ((len(y_tr) + tc.batch_size - 1) // tc.batch_size)
    )
    g = torch.Generator().manual_seed(tc.seed + 1)
    start = time.perf_counter()
    bar = _progress(progress, tc.epochs)
    loss_mean = float("nan")
    try:
        for epoch in range(tc.epochs):
            perm = torch.randperm(len(y_tr), generator=g)
            total, n = 0.0, 0
            for i in range(0, len(perm), tc.batch_size):
                idx = perm[i : i + tc.batch_size]
                loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()  # runs SpecViTFunction.backward, i.e. the explicit spec backward
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                n += len(idx)
            loss_mean = total / n
            if not math.isfinite(loss_mean):
                from .errors import VitSpecError

                raise VitSpecError(f"training diverged: the loss is {loss_mean} in epoch {epoch + 1}; lower --lr")
            if bar is not None:
                bar.update(epoch, loss_mean)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    result = TrainResult(_accuracy(model, x_te, y_te), _accuracy(model, x_tr, y_tr), loss_mean, tc.epochs, seconds, tc)
    if log is not None:
        log(
            f"test accuracy {result.test_accuracy:.1%} (train {result.train_accuracy:.1%}), "
            f"final loss {loss_mean:.4f}, {seconds:.1f}s for {tc.epochs} epochs"
        )
    return result


class _Bar:
    """A rich progress bar (when rich is installed); on a non-terminal rich prints only its final state."""

    def __init__(self, epochs: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(
            TextColumn("epoch {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._t = self._p.add_task("train", total=epochs, loss="-")
        self._p.start()

    def update(self, epoch: int, loss: float) -> None:
        self._p.update(self._t, completed=epoch + 1, loss=f"{loss:.4f}")

    def close(self) -> None:
        self._p.stop()


def _progress(enabled: bool, epochs: int) -> _Bar | None:
    if not enabled:
        return None
    try:
        return _Bar(epochs)
    except ImportError:
        return None


def _lr(text: str) -> float:
    from .argtypes import positive_float

    v = positive_float(text)
    if v > MAX_LR:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_LR:g}, got {text}")
    return v


def _threads(text: str) -> int:
    from .argtypes import positive_int

    v = positive_int(text)
    if v > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {v}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``vitspec train`` arguments (the ``vitspec.cli`` registry calls this)."""
    from .argtypes import output_path, positive_int, seed_int
    from .profiles import PROFILES

    d = TrainConfig()
    p.add_argument(
        "--epochs", type=positive_int, default=d.epochs, metavar="N", help=f"passes over the data (default {d.epochs})"
    )
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, metavar="N", help=f"default {d.batch_size}")
    p.add_argument("--lr", type=_lr, default=d.lr, help=f"peak learning rate, at most {MAX_LR:g} (default {d.lr})")
    p.add_argument("--seed", type=seed_int, default=d.seed, metavar="N", help="seed for init, split and shuffling")
    p.add_argument(
        "--profile",
        default=d.profile,
        choices=tuple(PROFILES),
        help="numerics profile (default torchlean: post-norm, ReLU)",
    )
    p.add_argument(
        "--threads",
        type=_threads,
        default=d.threads,
        metavar="N",
        help=f"torch CPU threads (default: the idle CPUs this process may use, now {d.threads})",
    )
    p.add_argument(
        "--json", metavar="PATH", type=output_path, help="write the result as JSON ('-' = stdout); nothing by default"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``vitspec train`` on an argparse sub-parser set (``func=run``); the CLI uses :func:`add_arguments`."""
    p = sub.add_parser(
        "train",
        help="train a small ViTClsSpec on sklearn's digits with the explicit backward",
        description=__doc__,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``vitspec train``; bad values raise :class:`~vitspec.errors.VitSpecError` (exit 2 in the CLI)."""
    import importlib.util

    from ._fs import atomic_write_text, check_writable
    from .errors import VitSpecError
    from .profiles import get_profile

    if importlib.util.find_spec("sklearn") is None:  # before any work: the data come from scikit-learn
        raise VitSpecError("vitspec train needs scikit-learn (its digits data): pip install 'vitspec[cli]'")

    for name in ("epochs", "batch_size", "threads"):
        if getattr(args, name) <= 0:
            raise VitSpecError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not 0 < args.lr <= MAX_LR:
        raise VitSpecError(f"--lr must be in (0, {MAX_LR:g}], got {args.lr}")
    get_profile(args.profile)  # ConfigError naming the valid profiles
    if args.json:
        check_writable(args.json, "--json")  # refused now, not after training
    tc = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        profile=args.profile,
        threads=args.threads,
    )
    to_stdout = args.json == "-"
    log = (lambda line: print(line, file=sys.stderr)) if to_stdout else print
    result = train_digits(tc, progress=not (args.quiet or to_stdout), log=log)
    if args.json:
        payload = {**json.loads(result.to_json()), "machine": machine_info(tc.threads)}
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
    return 0


_run = run  # the name ``add_parser`` used to register
