"""The serving benchmark's load generator, run as its own process.

``LoadGenerator`` (used by ``bench_serving``) starts ``python -m benchmarks.serving_load``
and sends it one JSON job per line; the child answers one JSON line per job. Keeping
the generator out of the benchmark's main process keeps its event loop free of the
threads and heap the setup left behind (broker clients, BLAS, the replayed data).

Open loop: request ``i`` is due at ``start + i / rate`` whatever happened to earlier
ones, and its latency runs from that due time to the last byte of the answer, so time
spent waiting for a free connection or behind a slow answer is counted (no coordinated
omission). Closed loop: ``connections`` callers each send their next request as soon as
the previous one is answered, which finds the peak rate.

The event loop is asyncio's own with a ``select()`` selector, not uvloop: uvloop's clock
ticks in whole milliseconds, so its timers fire up to 1 ms early or late, which would
smear a schedule of one request per millisecond; ``select()`` takes microsecond
timeouts. With a few dozen sockets ``select()`` costs nothing over epoll.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import selectors
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from benchmarks.serving_http import Client, make_client

T = TypeVar("T")
UNFINISHED = 0  # status of a request still unanswered when the drain deadline passed
FAILED = -1     # status of a request that raised (refused, reset, timed out)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.0
    >>> percentile([1.0, 2.0, 3.0, 4.0], 99.9)
    4.0
    """
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max of seconds, in milliseconds."""
    ordered = sorted(v for v in values if not math.isnan(v))
    out = {f"p{q:g}": percentile(ordered, q) * 1e3 for q in (50, 90, 99, 99.9)}
    out["max"] = ordered[-1] * 1e3 if ordered else math.nan
    return {k: round(v, 3) for k, v in out.items()}


# ---------------------------------------------------------------- child side
async def _warm(client: Client, paths: list[str], connections: int) -> None:
    """Open a few connections and touch the route before the clock starts."""
    await asyncio.gather(*(client.get(paths[k % len(paths)])
                           for k in range(min(connections, 8))))


async def open_loop(client: Client, paths: list[str], rate: float, seconds: float,
                    drain_s: float, timeline: bool = False) -> dict[str, Any]:
    n = max(1, round(rate * seconds))
    interval = 1.0 / rate
    latency = [math.nan] * n
    status = [UNFINISHED] * n
    late = [math.nan] * n     # due time -> the generator started the request
    waited = [math.nan] * n   # the request's wait for a free connection
    errors: Counter[str] = Counter()
    degraded = 0
    issued = [False] * n
    # With ``timeline``: per request (the generator started it, it reached the socket,
    # first byte, last byte, our task resumed), on perf_counter, which the API's timeline
    # shares (CLOCK_MONOTONIC). started -> sent is the wait for a free connection.
    marks: list[tuple[float, ...]] = [(math.nan,) * 5] * n
    probe = LoopProbe() if timeline else None

    async def one(i: int, due: float) -> None:
        nonlocal degraded
        started = time.perf_counter()
        try:
            sent = await client.get(paths[i % len(paths)])
        except Exception as exc:  # every failure is a data point, not a crash
            errors[type(exc).__name__] += 1
            status[i] = FAILED
        else:
            status[i] = sent.status
            waited[i] = sent.waited
            degraded += sent.degraded
            issued[i] = sent.issued
            if timeline:
                marks[i] = (started, sent.sent_at, sent.first_byte, sent.last_byte,
                            time.perf_counter())
        latency[i] = time.perf_counter() - due
        late[i] = started - due

    tasks: set[asyncio.Task[None]] = set()
    if probe is not None:
        probe.start()
    start = time.perf_counter() + 0.01
    i = 0
    while i < n:
        now = time.perf_counter()
        while i < n and start + i * interval <= now:  # catch up on everything due
            task = asyncio.create_task(one(i, start + i * interval))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < n:
            await asyncio.sleep(start + i * interval - time.perf_counter())
    last_due_sent = time.perf_counter()
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    stopped = time.perf_counter()
    if probe is not None:
        await probe.stop()
    unfinished = [k for k in range(n) if status[k] == UNFINISHED]
    for k in unfinished:  # a lower bound: it had waited this long when we gave up
        latency[k] = stopped - (start + k * interval)
    answered = [latency[k] for k in range(n) if status[k] > 0]
    return {
        "requests": n, "offered_rps": rate,
        # The rate the generator actually started requests at: below the offered rate,
        # the generator (not the server) set the pace.
        "dispatch_rps": round(n / max(last_due_sent - start, interval), 1),
        "answered_rps": round(len(answered) / max(stopped - start, interval), 1),
        "latency_ms": [round(v * 1e3, 3) for v in latency],
        "status": dict(Counter(str(s) for s in status)),
        "errors": dict(errors), "unfinished": len(unfinished), "degraded": degraded,
        "generator_late_ms": summary_ms(late), "pool_wait_ms": summary_ms(waited),
        # Offers: answers that issued a new offer wait for the broker's ack; apart.
        "issued": sum(issued),
        "issued_latency_ms": summary_ms([latency[k] for k in range(n) if issued[k]]),
        "not_issued_latency_ms": summary_ms([latency[k] for k in range(n) if not issued[k]]),
        **({"timeline": {"start": start, "interval": interval,
                         "paths": [paths[k % len(paths)] for k in range(n)],
                         "marks": marks, **probe.dump()}} if probe is not None else {}),
    }


class LoopProbe:
    """The generator's own stalls: a 1 ms ticker's lateness and the GC's pauses."""

    def __init__(self, tick_s: float = 0.001) -> None:
        self.tick_s = tick_s
        self.lag: list[tuple[float, float]] = []
        self.gc: list[tuple[float, float, int, int]] = []
        self._gc_start = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def dump(self) -> dict[str, Any]:
        return {"loop_lag": self.lag, "gc": self.gc}

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_start = now
        else:
            self.gc.append((self._gc_start, now - self._gc_start,
                            info.get("generation", -1), info.get("collected", 0)))

    async def _tick(self) -> None:
        while True:
            due = time.perf_counter() + self.tick_s
            await asyncio.sleep(self.tick_s)
            woke = time.perf_counter()
            self.lag.append((woke, woke - due))


async def closed_loop(client: Client, paths: list[str], seconds: float, warmup_s: float,
                      connections: int) -> dict[str, Any]:
    measure_from = time.perf_counter() + warmup_s
    end = measure_from + seconds
    latency: list[float] = []
    status: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    degraded = 0

    async def caller(k: int) -> None:
        nonlocal degraded
        while (asked := time.perf_counter()) < end:
            bad = False
            try:
                sent = await client.get(paths[k % len(paths)])
                code, bad = str(sent.status), sent.degraded
            except Exception as exc:
                errors[type(exc).__name__] += 1
                code = str(FAILED)
            done = time.perf_counter()
            if measure_from <= done < end:
                latency.append(done - asked)
                status[code] += 1
                degraded += bad
            k += connections

    await asyncio.gather(*(caller(k) for k in range(connections)))
    return {"rps": round(sum(status.values()) / seconds, 1), "connections": connections,
            "latency_ms_summary": summary_ms(latency), "status": dict(status),
            "errors": dict(errors), "degraded": degraded}


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    client = make_client(job.get("client", "raw"), job["url"], job["connections"])
    try:
        await _warm(client, job["paths"], job["connections"])
        if job["mode"] == "open":
            return await open_loop(client, job["paths"], job["rate"], job["seconds"],
                                   job.get("drain_s", 5.0), job.get("timeline", False))
        return await closed_loop(client, job["paths"], job["seconds"],
                                 job.get("warmup_s", 1.0), job["connections"])
    finally:
        await client.close()


def run_in_select_loop(make: Callable[[], Awaitable[T]]) -> T:
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        return loop.run_until_complete(make())  # type: ignore[arg-type]
    finally:
        loop.close()


def child_main() -> None:
    for line in sys.stdin:
        job = json.loads(line)
        if job["mode"] == "quit":
            return
        try:
            result = run_in_select_loop(lambda job=job: run_job(job))
        except Exception as exc:  # report it to the parent; the next job may be fine
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------- parent side
class LoadGenerator:
    """The generator process; ``run(job)`` blocks until the child answers."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serving_load"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1)

    def run(self, **job: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited with {self.proc.poll()}")
        result: dict[str, Any] = json.loads(line)
        if "failed" in result:
            raise RuntimeError(f"load generator job failed: {result['failed']}")
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"mode": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    child_main()
