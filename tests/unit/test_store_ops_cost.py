"""The op-cost diagnostic (benchmarks/store_ops_cost.py) skips exactly the opcodes it is
asked to, and refuses names store.lua does not define."""

from __future__ import annotations

import pytest

from benchmarks.store_ops_cost import FAMILIES, opcodes, skipping, summarize
from feature_store.redis_store import SCRIPT
from feature_store.updates import __doc__ as OPCODE_DOC


def test_every_opcode_of_the_script_is_found_and_documented() -> None:
    found = opcodes(SCRIPT)
    assert {"zlog", "zmax", "session", "catalog", "xview", "basketk"} <= set(found)
    assert len(found) == len(set(found))
    for op in found:  # the fold's opcode table names each one
        assert f"``{op}" in (OPCODE_DOC or "") or f"/{op}" in (OPCODE_DOC or ""), op


def test_skipping_returns_early_from_the_named_opcodes_only() -> None:
    script = skipping(SCRIPT, ["zlog", "hmax"])
    assert "OPS.zlog = function(o) do return end" in script
    assert "OPS.hmax = function(o) do return end" in script
    assert "OPS.hmin = function(o)\n" in script  # untouched
    assert script.count("do return end") == 2
    assert skipping(SCRIPT, []) == SCRIPT


def test_an_unknown_opcode_is_an_error() -> None:
    with pytest.raises(ValueError, match="no opcode zlg"):
        skipping(SCRIPT, ["zlog", "zlg"])
    for family in FAMILIES:  # the defaults all exist
        skipping(SCRIPT, family.split(","))


def test_a_cost_is_the_median_of_per_round_differences() -> None:
    rows = [{"run": r, "variant": v, "valkey_us_per_event": x} for r, v, x in [
        (1, "script", 50.0), (1, "no zlog", 44.0),
        (2, "script", 60.0), (2, "no zlog", 53.0),   # a slower round: both sides slower
        (3, "script", 52.0), (3, "no zlog", 47.0)]]
    s = summarize(rows, ["script", "no zlog"])
    assert s["script"]["cost_us_per_event"] is None
    assert s["no zlog"]["cost_us_per_event"] == 6.0  # median of 6, 7, 5
    assert s["no zlog"]["valkey_us_per_event"] == 47.0
    assert (s["script"]["min"], s["script"]["max"]) == (50.0, 60.0)
