"""A training run's peak memory: the CUDA allocator's peak on a GPU, the process's peak resident
set (Linux ``VmHWM``) on CPU. Both are reset when a run starts, so that a process that trains
several runs one after another (Ray's reused actors) measures each run on its own."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: from now on, `peak_memory_mb` measures from the current use."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # "5" resets the peak resident set size (Linux >= 4.0, proc(5)); elsewhere, or where it is
    # not allowed, the peak is the process's since it started
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """The peak since `reset_peak_memory`, in MB (10^6 bytes)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e6
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # kB on Linux
