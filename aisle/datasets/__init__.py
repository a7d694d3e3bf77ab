"""Dataset files → a time-ordered stream of :mod:`streams.events` events, for ``aisle replay``::

    events, stats = open_dataset(path, limit_rows=None)
    for event in events:   # stats fill in as the events are consumed
        ...

Which adapter reads a file is decided by its first line (the CSV header), not its name:
Online Retail needs its header; Taobao's header is optional (the original has none).
Every adapter gives deterministic event ids, so replaying a file twice sends the same ids
and the stores' idempotence makes the second replay a no-op.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from aisle.datasets import online_retail, taobao
from aisle.datasets.csvfile import first_line
from aisle.datasets.stats import ReplayStats
from streams.events import AnyEvent

__all__ = ["DATASETS", "ReplayStats", "detect_dataset", "open_dataset"]

Reader = Callable[[Path, ReplayStats, int | None], Iterator[AnyEvent]]

# name -> (what its first line looks like, reader)
DATASETS: Final[dict[str, tuple[re.Pattern[str], Reader]]] = {
    online_retail.NAME: (re.compile("^" + r"\s*,\s*".join(online_retail.COLUMNS) + "$"),
                         online_retail.read_events),
    taobao.NAME: (re.compile("^(?:" + ",".join(taobao.COLUMNS)
                             + r"|\d+,\d+,\d+,(?:pv|cart|fav|buy),\d+)$"),
                  taobao.read_events),
}


def detect_dataset(path: Path) -> str:
    """The name of the dataset ``path`` holds, from its first line; ``ValueError`` if none."""
    line = first_line(path)
    for name, (first, _) in DATASETS.items():
        if first.match(line):
            return name
    raise ValueError(
        f"{path.name}: unknown dataset (first line {line[:120]!r}). Supported, as CSV or "
        f"CSV.gz: {online_retail.NAME} (UCI Online Retail, header "
        f"{','.join(online_retail.COLUMNS)}) and {taobao.NAME} (Taobao UserBehavior, "
        f"columns {','.join(taobao.COLUMNS)}, header optional)")


def open_dataset(path: Path, limit_rows: int | None = None
                 ) -> tuple[Iterator[AnyEvent], ReplayStats]:
    """The events of ``path`` in time order, and the stats they fill in as consumed.

    ``limit_rows`` stops after that many data rows (header not counted).
    """
    if limit_rows is not None and limit_rows < 0:
        raise ValueError(f"limit_rows must be >= 0, got {limit_rows}")
    name = detect_dataset(path)
    stats = ReplayStats(dataset=name)
    _, read = DATASETS[name]
    return read(path, stats, limit_rows), stats
