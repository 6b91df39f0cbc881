"""Resident memory of this process: its peak since a reset, and now (Linux's /proc; elsewhere the lifetime peak)."""

from __future__ import annotations

import resource
from pathlib import Path


def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets the high-water mark to the present)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory in MiB since :func:`reset_peak_rss` (or the process's start)."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory now, in MiB (the peak where the system cannot tell)."""
    now = _status_mb("VmRSS")
    return now if now is not None else peak_rss_mb()
