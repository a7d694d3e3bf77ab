"""Where a request's time goes, without HTTP: the API's ``RecommendationService``, in process.

The service is built by the API's own ``create_app`` lifespan against the running
stack's Valkey, so it is wired exactly as the API's is. It is called one request at a
time, measuring per request: wall time (mean and median), this process's CPU time (all
threads: BLAS helper threads included), Valkey's CPU time and the Redis commands sent.
Then the same calls run under cProfile, and once more with numpy's BLAS limited to one
thread, a change the API's CPU time points at. Used by ``bench_serving`` (``--profile``);
the full cProfile listing goes to ``benchmarks/results/<out>_profile.txt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from threadpoolctl import threadpool_info, threadpool_limits

from aisle.settings import Settings
from benchmarks.serving_report import RESULTS
from benchmarks.serving_stack import Loaded
from serving.app import create_app

CALLS = 300
TOP = 20
Call = Callable[[str], Awaitable[Any]]


def profile_service(loaded: Loaded, items: list[str], users: list[str], console: Any,
                    out: str = "serving") -> dict[str, Any]:
    report = io.StringIO()
    result = asyncio.run(_profile(loaded.stack.settings, items[:CALLS], users[:CALLS], report))
    path = RESULTS / f"{out}_profile.txt"
    Path(path).write_text(report.getvalue())
    for name in ("related", "recommendations"):
        r = result[name]
        console.log(f"in process, {name}: {r['wall_ms']:.2f} ms mean, {r['median_ms']:.2f} ms "
                    f"median, {r['cpu_ms']:.2f} ms CPU, Valkey {r['valkey_cpu_ms']:.2f} ms CPU, "
                    f"{sum(r['redis_commands'].values()):.0f} Redis commands per request")
    for variant, runs in result["blas"]["runs"].items():
        console.log(f"in process, BLAS threads {variant}: " + "; ".join(
            f"{name} median {[r['median_ms'] for r in rs]} ms, CPU "
            f"{[r['cpu_ms'] for r in rs]} ms" for name, rs in runs.items()))
    console.log(f"wrote {path}")
    return result


@contextlib.asynccontextmanager
async def _service(settings: Settings) -> AsyncIterator[tuple[aioredis.Redis, dict[str, Call]]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state = app.state.aisle
        service = state.service
        yield state.redis, {"related": lambda i: service.related(i, 10),
                            "recommendations": lambda u: service.recommendations(u, 10, None)}


async def _profile(settings: Settings, items: list[str], users: list[str],
                   report: io.StringIO) -> dict[str, Any]:
    ids = {"related": items, "recommendations": users}
    out: dict[str, Any] = {}
    async with _service(settings) as (client, calls):
        for name, call in calls.items():
            await _warm(call, ids[name])
            out[name] = await _measure(client, call, ids[name])
            out[name]["top_by_own_time"] = await _cprofile(name, call, ids[name], report)
        out["blas"] = await _blas_threads(client, calls, ids)
    return out


async def _warm(call: Call, ids: list[str]) -> None:
    for i in ids[:50]:  # fill the item cache the way a busy API has it filled
        await call(i)


async def _blas_threads(client: aioredis.Redis, calls: dict[str, Call],
                        ids: dict[str, list[str]]) -> dict[str, Any]:
    """As configured vs one thread, in turn, twice: neither gets all the quiet moments."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        v: {n: [] for n in calls} for v in ("as configured", "1")}
    for _ in range(2):
        for variant in runs:
            with threadpool_limits(1 if variant == "1" else None, "blas"):
                for name, call in calls.items():
                    await _warm(call, ids[name])
                    result = await _measure(client, call, ids[name])
                    runs[variant][name].append({k: result[k] for k in
                                                ("median_ms", "wall_ms", "cpu_ms")})
    threads = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
                  default=None)
    return {"threads_as_configured": threads, "runs": runs}


async def _measure(client: aioredis.Redis, call: Call, ids: list[str]) -> dict[str, Any]:
    stats0, cpu0 = await client.info("commandstats"), await client.info("cpu")
    each = []
    own0 = time.process_time()
    for i in ids:
        started = time.perf_counter()
        await call(i)
        each.append(time.perf_counter() - started)
    own = time.process_time() - own0
    stats1, cpu1 = await client.info("commandstats"), await client.info("cpu")
    n = len(ids)
    valkey = sum(cpu1[k] - cpu0[k] for k in ("used_cpu_user", "used_cpu_sys"))
    # Our own INFO calls show up too; they are not the service's.
    commands = {k.removeprefix("cmdstat_"): round((v["calls"] - stats0.get(k, {})
                                                   .get("calls", 0)) / n, 2)
                for k, v in stats1.items() if k != "cmdstat_info"}
    return {"calls": n, "wall_ms": round(sum(each) / n * 1e3, 3),
            # The median call: what a request costs when no neighbour interrupts it.
            "median_ms": round(statistics.median(each) * 1e3, 3),
            "cpu_ms": round(own / n * 1e3, 3), "valkey_cpu_ms": round(valkey / n * 1e3, 3),
            "redis_commands": {k: v for k, v in commands.items() if v > 0}}


async def _cprofile(name: str, call: Call, ids: list[str],
                    report: io.StringIO) -> list[dict[str, Any]]:
    prof = cProfile.Profile()
    prof.enable()
    for i in ids:
        await call(i)
    prof.disable()
    stats = pstats.Stats(prof, stream=report)
    report.write(f"\n===== {name}: {len(ids)} calls, by own time =====\n")
    stats.sort_stats("tottime").print_stats(40)
    report.write(f"\n===== {name}: {len(ids)} calls, by cumulative time =====\n")
    stats.sort_stats("cumulative").print_stats(40)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:TOP]  # type: ignore[attr-defined]
    return [{"function": f"{Path(file).name}:{line}({func})", "calls": nc,
             "own_ms_per_request": round(tt / len(ids) * 1e3, 4),
             "cum_ms_per_request": round(ct / len(ids) * 1e3, 4)}
            for (file, line, func), (_, nc, tt, ct, _) in rows]
