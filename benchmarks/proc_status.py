"""Reading this process's memory figures from /proc (Linux), shared by the benchmarks."""

from __future__ import annotations


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB, e.g. ``VmRSS`` or ``VmHWM`` (the peak RSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")
