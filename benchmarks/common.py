"""Small helpers every benchmark shares."""

from __future__ import annotations

import platform
from pathlib import Path

# The real data sets live in shared/ beside the repo (further up for a git worktree).
SHARED_DATA = next((p / "shared" / "data" for p in Path(__file__).resolve().parents[1:]
                    if (p / "shared" / "data").is_dir()),
                   Path(__file__).resolve().parents[2] / "shared" / "data")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                platform.processor())

