"""The serving timeline: the API's recorder and the benchmark's split of each latency."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from benchmarks.serving_timeline import STAGES, split
from serving import timeline as tl
from serving.gc_tuning import freeze_survivors, set_gen0_threshold


def test_awaits_are_booked_to_the_request_task_only() -> None:
    async def slow() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    timed = tl._timed(tl.REDIS, slow)

    async def scenario() -> tuple[list[float], list[float]]:
        mine = [0.0, 0.0, 0.0, 0.0]
        token = tl._CURRENT.set((asyncio.current_task(), mine))
        try:
            assert await timed() == "ok"
            # A task started during the request inherits its context; its awaits are
            # not the request's.
            await asyncio.create_task(timed())
        finally:
            tl._CURRENT.reset(token)
        outside = [0.0, 0.0, 0.0, 0.0]
        await timed()  # no request: nothing to book, still works
        return mine, outside

    mine, outside = asyncio.run(scenario())
    assert mine[tl.REDIS + 2] == 1 and mine[tl.REDIS] >= 0.01
    assert mine[tl.KAFKA + 2] == 0 and outside == [0.0] * 4


def test_middleware_records_each_request_and_the_dump(tmp_path: Path) -> None:
    path = tmp_path / "tl.json"
    timeline = tl.Timeline(path)

    async def hello(request: object) -> PlainTextResponse:
        gc.collect()  # one GC pause to record
        return PlainTextResponse("hi", status_code=201)

    app = Starlette(routes=[Route("/hello/{x}", hello)])
    wrapped = tl.TimelineMiddleware(app, timeline)
    async def scenario() -> None:
        timeline.start()
        await asyncio.sleep(0.02)  # a few ticks of the lag probe
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/hello/a b", "raw_path":
                 b"/hello/a%20b", "query_string": b"", "headers": [], "root_path": "",
                 "scheme": "http", "server": ("t", 80), "http_version": "1.1"}
        await wrapped(scope, receive, send)
        assert sent[0]["status"] == 201
        await timeline.stop()

    asyncio.run(scenario())
    data = json.loads(path.read_text())
    assert data["loop_lag"] and all(len(s) == 2 for s in data["loop_lag"])
    assert data["heap_at_stop"]["tracked_objects"] > 0
    [req] = timeline.requests
    name, called, started, ended, status, *awaits = req
    assert (name, status) == ("/hello/a b", 201)
    assert called <= started <= ended and awaits == [0.0, 0.0, 0, 0]
    assert timeline.gc and timeline.gc[-1][2] == 2  # the full collection above
    # stop() put the patched methods back
    import redis.asyncio as aioredis

    assert not hasattr(aioredis.Redis.execute_command, "__aisle_timed__")


def test_split_stages_add_up_to_the_latency() -> None:
    start, interval = 100.0, 0.001
    # started, sent, first byte, last byte, resumed
    gen = {"start": start, "interval": interval, "paths": ["/v1/x%20y?limit=3", "/v1/z"],
           "marks": [[100.0002, 100.0010, 100.0050, 100.0051, 100.0052],
                     [math.nan] * 5]}
    # path, called, response start, end, status, redis_s, kafka_s, redis_n, kafka_n
    api = [["/v1/x y", 100.0015, 100.0045, 100.0046, 200, 0.001, 0.0005, 2, 1]]
    first, unmatched = split(gen, api)
    assert sum(first[s] for s in STAGES) == pytest.approx(first["latency"], abs=1e-9)
    assert first["handler_other"] == pytest.approx(0.0030 - 0.0015, abs=1e-9)
    assert first["pool_wait"] == pytest.approx(0.0008, abs=1e-9)
    assert "to_handler" not in unmatched


def test_gen0_threshold_zero_leaves_python_default() -> None:
    before = gc.get_threshold()
    set_gen0_threshold(0)
    assert gc.get_threshold() == before
    try:
        set_gen0_threshold(5000)
        assert gc.get_threshold() == (5000, *before[1:])
    finally:
        gc.set_threshold(*before)


def test_freeze_survivors_freezes_and_gives_back_on_shutdown() -> None:
    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(freeze_survivors(0.01))
        await asyncio.sleep(0.05)
        frozen = gc.get_freeze_count()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return frozen, gc.get_freeze_count()

    gc.unfreeze()
    during, after = asyncio.run(scenario())
    assert during > 0 and after == 0
