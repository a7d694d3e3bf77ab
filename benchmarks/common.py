"""Small helpers every benchmark shares."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                platform.processor())


REPO = Path(__file__).resolve().parents[1]


def shared_data(root: Path = REPO) -> Path:
    """``shared/data`` beside the repository, or beside its parent (a git worktree under
    ``wt/`` sits one level deeper than the main checkout)."""
    for base in (root.parent, root.parent.parent):
        if (base / "shared" / "data").is_dir():
            return base / "shared" / "data"
    return root.parent / "shared" / "data"
