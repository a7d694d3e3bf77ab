"""Canonical form of stored state, so two stores (or live vs rebuilt) compare exactly.

Numbers are compared to 9 significant digits: Redis keeps HINCRBYFLOAT sums in long
double, Python in double, and the order of float additions in a batch is the same in
both; anything past 9 digits is representation noise, not a difference in state.

>>> canonical_value("k:rfm", {b"orders": b"2", b"monetary": b"10.100000000000001"})
{'monetary': 10.1, 'orders': 2.0}
"""

from __future__ import annotations

import math
from typing import Any

import msgspec


def _num(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.9g}")


def canonical_scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return value.hex()
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return _num(float(value))
    if isinstance(value, str):
        try:
            return _num(float(value))
        except ValueError:
            return value
    if isinstance(value, list | tuple):
        return [canonical_scalar(v) for v in value]
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def canonical_value(key: str, value: Any) -> Any:
    if isinstance(value, set):
        return sorted(_text(v) for v in value)  # members are ids, never numbers
    if isinstance(value, dict):
        return {_text(k): canonical_scalar(v)
                for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list):
        if key.endswith(":hist"):
            return [canonical_scalar(msgspec.json.decode(v)) for v in value]
        return [canonical_scalar(v) for v in value]
    return canonical_scalar(value)
