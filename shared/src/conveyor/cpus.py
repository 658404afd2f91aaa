"""How many CPUs this process may use: its CPU affinity, and its container's CPU limit.

`os.cpu_count()` counts the machine's CPUs. In a Kubernetes pod limited to one CPU on a 32-core
node that would start 32 parser processes, each allowed its own memory cap, inside a container
whose memory limit was sized for one or two. The limit is the cgroup's CPU quota (`cpu.max` in
cgroup v2, `cpu.cfs_quota_us` / `cpu.cfs_period_us` in v1), rounded up: 1.5 CPUs give 2.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup may use per period; None when it has no limit (or none is readable)."""
    try:
        limit, period = (root / "cpu.max").read_text().split()[:2]
        return None if limit == "max" else _ratio(int(limit), int(period))
    except (OSError, ValueError):
        pass
    try:
        return _ratio(int((root / "cpu" / "cpu.cfs_quota_us").read_text()),
                      int((root / "cpu" / "cpu.cfs_period_us").read_text()))
    except (OSError, ValueError):
        return None


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None  # v1 says -1 for no limit
