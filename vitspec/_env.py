"""Where a run happened, for every recorded figure (benchmarks, the training demo)."""

from __future__ import annotations

import datetime
import os
import platform

import torch

__all__ = ["machine_info"]


def machine_info(threads: int | None = None) -> dict[str, object]:
    """UTC date, platform, CPU count, Python, torch and its thread count, load average, GPU if any."""
    from . import __version__

    info: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "vitspec": __version__,
        # The machine may be shared: the 1-minute load says how busy it was.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
