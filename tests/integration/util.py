"""Helpers for tests that wait on a real pipeline."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

T = TypeVar("T")
BASE = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def eventually(check: Callable[[], T], timeout: float = 30.0, every: float = 0.1) -> T:
    """Poll until ``check()`` is truthy; fail with its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout}s; last value: {last!r}")


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def event(type_: str, payload: dict[str, Any], user_id: str | None, minutes: float = 0,
          **extra: Any) -> dict[str, Any]:
    """An event document as a shop would POST it."""
    doc = {"type": type_, "event_id": uuid.uuid4().hex, "user_id": user_id,
           "occurred_at": (BASE + timedelta(minutes=minutes)).isoformat(),
           "source": "test", "payload": payload, **extra}
    return {k: v for k, v in doc.items() if v is not None}


def catalog(item_id: str, title: str, minutes: float = -60, **fields: Any) -> dict[str, Any]:
    return event("catalog.item_upserted", {"item_id": item_id, "title": title, **fields},
                 None, minutes)
