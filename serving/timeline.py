"""A per-request timeline of the API process, for finding where a slow answer waited.

Off unless ``serving.timeline_path`` is set (the serving benchmark's
``benchmarks/serving_timeline.py`` sets it); when off nothing here is imported into the
request path. When on, the process records, on ``time.perf_counter()`` (CLOCK_MONOTONIC
on Linux, so comparable with the load generator's clock in another process):

- per request: when the ASGI app was called (uvicorn had parsed it and its task ran),
  when the response started and ended, and how long the handler's own task spent
  awaiting Redis and the Kafka producer (so the rest is Python on the loop, or the
  loop being busy with other tasks while this one was ready);
- the event loop's lag: how late a 1 ms ticker wakes up;
- garbage-collector pauses (``gc.callbacks``) with their generation.

Everything is kept in memory and written as one JSON file when the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import gc
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

# The request being timed, and the task that owns it: awaits in other tasks (a background
# refresh started during the request inherits the context) are not the request's.
_CURRENT: contextvars.ContextVar[tuple[asyncio.Task[Any] | None, list[float]] | None] = \
    contextvars.ContextVar("aisle_timeline", default=None)
REDIS, KAFKA = 0, 1  # slots of the per-request await accumulator (+2: counts)


def _timed(slot: int, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        current = _CURRENT.get()
        if current is None or current[0] is not asyncio.current_task():
            return await fn(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            current[1][slot] += time.perf_counter() - t0
            current[1][slot + 2] += 1
    wrapper.__aisle_timed__ = fn  # type: ignore[attr-defined]
    return wrapper


def _patch(owner: type, name: str, slot: int) -> Callable[[], None]:
    original = owner.__dict__[name]
    setattr(owner, name, _timed(slot, original))
    return lambda: setattr(owner, name, original)


class Timeline:
    def __init__(self, path: Path, tick_s: float = 0.001) -> None:
        self.path = path
        self.tick_s = tick_s
        # (path, called, response_start, end, status, redis_s, kafka_s, redis_n, kafka_n)
        self.requests: list[tuple[Any, ...]] = []
        self.lag: list[tuple[float, float]] = []         # (woke, late_s)
        # (start, pause_s, generation, collected, cpu_s): a pause's wall time includes
        # time the OS ran other processes; cpu_s is the collector's own work.
        self.gc: list[tuple[float, float, int, int, float]] = []
        self._gc_start = self._gc_cpu = 0.0
        self._ticker: asyncio.Task[None] | None = None
        self._unpatch: list[Callable[[], None]] = []

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.client import Pipeline

        from streams.topics import EventProducer

        self._unpatch = [_patch(aioredis.Redis, "execute_command", REDIS),
                         _patch(Pipeline, "execute", REDIS),
                         _patch(EventProducer, "send_events", KAFKA)]
        gc.callbacks.append(self._on_gc)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        for undo in self._unpatch:
            undo()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(
            {"clock": "perf_counter", "tick_s": self.tick_s, "requests": self.requests,
             "loop_lag": self.lag, "gc": self.gc,
             "heap_at_stop": {"tracked_objects": len(gc.get_objects()),
                              "frozen_objects": gc.get_freeze_count(),
                              "threshold": gc.get_threshold()}}))

    # ------------------------------------------------------------ recorders
    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        cpu = time.thread_time()
        if phase == "start":
            self._gc_start, self._gc_cpu = now, cpu
        else:
            self.gc.append((self._gc_start, now - self._gc_start, info.get("generation", -1),
                            info.get("collected", 0), cpu - self._gc_cpu))

    async def _tick(self) -> None:
        loop_sleep = asyncio.sleep
        while True:
            due = time.perf_counter() + self.tick_s
            await loop_sleep(self.tick_s)
            woke = time.perf_counter()
            self.lag.append((woke, woke - due))

    def middleware(self, app: ASGIApp) -> ASGIApp:
        async def timed(scope: Scope, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            called = time.perf_counter()
            marks = [0.0, 0.0, 0.0, 0.0]
            head = [0.0, 0.0, 0]  # response start, end, status

            async def timed_send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    head[0] = time.perf_counter()
                    head[2] = message["status"]
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    head[1] = time.perf_counter()

            token = _CURRENT.set((asyncio.current_task(), marks))
            try:
                await app(scope, receive, timed_send)
            finally:
                _CURRENT.reset(token)
                self.requests.append((scope["path"], called, head[0], head[1] or
                                      time.perf_counter(), head[2], *marks))
        return timed


class TimelineMiddleware:
    """Starlette ``Middleware(TimelineMiddleware, timeline=...)`` form of ``middleware``."""

    def __init__(self, app: ASGIApp, timeline: Timeline) -> None:
        self._call = timeline.middleware(app)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self._call(scope, receive, send)
