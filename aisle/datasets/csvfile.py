"""Dataset files as rows of text: plain or gzip CSV, read lazily, never all in memory."""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO

GZIP_MAGIC = b"\x1f\x8b"


def open_text(path: Path) -> IO[str]:
    """``path`` as UTF-8 text (a leading BOM dropped), gunzipped if it starts like gzip."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == GZIP_MAGIC
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def csv_rows(path: Path) -> Iterator[list[str]]:
    """Every CSV row of ``path`` (header included); the file closes when iteration ends."""
    with open_text(path) as text:
        yield from csv.reader(text)


def first_line(path: Path) -> str:
    """The first line of ``path``, for telling datasets apart ('' for an empty file)."""
    with open_text(path) as text:
        return text.readline().strip()
