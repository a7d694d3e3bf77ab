"""CPU time of the benchmark's processes, and of everything else on the machine.

On a shared two-core machine a latency spike may be the API's doing or a neighbour's.
Reading ``/proc`` before and after each measurement says which: the API's CPU time per
answered request, what Valkey, the worker and the generator used alongside, and how much
of the machine processes outside the benchmark took. Linux only; elsewhere it is empty.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # utime and stime are fields 14 and 15 of stat(5); after the ")" they are 12 and 13.
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_idle(pid: int, busy_below: float = 0.05, window_s: float = 0.5,
              limit_s: float = 60.0) -> float:
    """Seconds until process ``pid`` used under ``busy_below`` of a core over one
    ``window_s`` (at most ``limit_s``): a server the generator overloaded still works
    through the requests the generator gave up on, and the next measurement must not
    pay for them. Without ``/proc``, one window."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = _process_s(pid)
        time.sleep(window_s)
        after = _process_s(pid)
        if before is None or after is None or (after - before) / window_s < busy_below:
            break
    return round(time.monotonic() - started, 2)


def _machine_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return (total - idle) / TICK, total / TICK


def measured(pids: dict[str, int], run: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    """Run ``run()`` and return its result with the CPU seconds each process used."""
    before = {name: _process_s(pid) for name, pid in pids.items()}
    busy0, total0 = _machine_s()
    result = run()
    busy1, total1 = _machine_s()
    used = {}
    for name, pid in pids.items():
        start, end = before[name], _process_s(pid)
        if start is not None and end is not None:
            used[name] = round(end - start, 2)
    cpu: dict[str, Any] = {"process_s": used}
    if total1 > total0:
        # Whatever the machine did beyond our processes: neighbours, the kernel's own work.
        cpu["others_share"] = round(max(0.0, busy1 - busy0 - sum(used.values()))
                                    / (total1 - total0), 3)
        cpu["machine_busy_share"] = round((busy1 - busy0) / (total1 - total0), 3)
    return result, cpu
