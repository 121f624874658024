"""How many CPU cores this process may use, containers included."""

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota.

    A pod limited to 2 CPUs on a 64-core node sees all 64 in its affinity; threads sized
    to that would fight over its 2 CPUs' worth of time, so the quota wins where one is set.
    """
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores  # no cgroup v2 CPU controller visible: the affinity is the limit
    if quota == "max":
        return cores
    try:
        allowed = math.ceil(int(quota) / int(period))
    except (ValueError, ZeroDivisionError):
        return cores
    return max(1, min(cores, allowed))
