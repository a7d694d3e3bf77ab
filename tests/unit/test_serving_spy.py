"""The load profiler's aggregation of py-spy's collapsed stacks (no py-spy needed)."""

from __future__ import annotations

from benchmarks.serving_spy import aggregate, frame_name

RAW = """\
run (asyncio/runners.py:118);handle (serving/routes.py:160);_read (serving/experiments.py:126) 3
run (asyncio/runners.py:118);handle (serving/routes.py:161);_recs (serving/service.py:308) 6
run (asyncio/runners.py:118);walk (serving/tree.py:5);walk (serving/tree.py:9) 1
run (asyncio/runners.py:119) 10
not a sample line
"""


def test_shares_of_own_and_inclusive_time_merge_lines_and_count_recursion_once() -> None:
    got = aggregate(RAW)
    assert got["samples"] == 20
    own = dict(got["self"])
    assert own["run (asyncio/runners.py)"] == 0.5  # lines 118 and 119 are one function
    assert own["_recs (serving/service.py)"] == 0.3
    assert own["_read (serving/experiments.py)"] == 0.15
    inclusive = dict(got["inclusive"])
    assert inclusive["run (asyncio/runners.py)"] == 1.0
    assert inclusive["handle (serving/routes.py)"] == 0.45
    assert inclusive["walk (serving/tree.py)"] == 0.05  # recursive: once per sample
    assert [f for f, _ in got["self"]][0] == "run (asyncio/runners.py)"  # largest first


def test_frame_names_drop_site_packages_and_the_interpreter_prefix() -> None:
    assert frame_name("send (/x/.venv/lib/python3.11/site-packages/uvicorn/h.py:512)") == \
        "send (uvicorn/h.py)"
    assert frame_name("run (/root/.pyenv/versions/3.11.7/lib/python3.11/asyncio/runners.py:118)") \
        == "run (asyncio/runners.py)"
    assert frame_name("<module>") == "<module>"
    assert aggregate("")["samples"] == 0


def test_only_aisles_own_frames_count_as_ours() -> None:
    from benchmarks.serving_spy import ours

    assert ours("_recommendations (serving/service.py)")
    assert ours("customer (feature_store/reader.py)")
    assert not ours("main (aisle/cli.py)")
    assert not ours("send (uvicorn/protocols/http/httptools_impl.py)")
