"""The ALS pool at catalog scale: faiss indexes against numpy scoring every item.

``python -m benchmarks.bench_ann [--quick] [--rounds 3] [--answers]`` fits ALS with Aisle's model
settings on the Taobao slice's interactions (84,793 items; Online Retail's 3,656 stay
under ``serving.als_ann_min_items`` and keep the exact pool), then for 1,000 of its
customers' vectors asks for the 200-item pool, every way alternately per round, on one
core: exactly (``models.ann.exact_pool``, the baseline: numpy's matrix-vector product
over every item and a partition), from the half-precision scan (``fp16``, the default)
and from the HNSW graph at several ``ef_search``. Reports µs per pool, the share of the
exact pool found, the share of the exact top 20 found (what a 10-item answer mostly
draws on), each index's build time and the event loop's worst stall while it builds in
a thread (the API keeps answering meanwhile). Writes ``results/ann.json``.

``--answers`` adds whole recommendations: the Taobao slice replayed through the worker's
``BatchProcessor`` into an embedded Valkey, a model trained and loaded as the API loads
it, then 500 customers' answers (limit 10) with the index and with the exact pool,
alternately per round: this process's CPU per answer, and how many of the 10 items the
two answers share.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from aisle.runtime import start_store
from aisle.settings import Settings
from benchmarks.bench_foldin import write_result
from benchmarks.bench_retrain import als_params
from benchmarks.quality_data import load, touched
from benchmarks.quality_served import StoreSession
from benchmarks.serving_report import machine
from models.als import fit_als
from models.ann import AnnSettings, PoolIndex, exact_pool
from models.matrix import build_interactions

POOL = 200
TOP = 20
EF = (64, 128, 256, 512)


def taobao_factors(quick: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    events = load("taobao")
    rows = ((e.user_id, item, 1.0) for e in events for item in touched(e))
    inter = build_interactions(rows)
    params = als_params(Settings())
    if quick:
        params = params.__class__(**{**params.__dict__, "iterations": 3})
    started = time.perf_counter()
    users, items = fit_als(inter, params)
    info = {"customers": inter.matrix.shape[0], "items": inter.matrix.shape[1],
            "nnz": int(inter.matrix.nnz), "factors": params.factors,
            "iterations": params.iterations, "fit_s": round(time.perf_counter() - started, 1)}
    return np.asarray(users, np.float32), np.ascontiguousarray(items, np.float32), info


def build_with_ticker(items: np.ndarray, ann: AnnSettings) -> tuple[PoolIndex, float]:
    """Build in a thread as the API does; the loop's worst stall meanwhile, in ms."""
    async def go() -> tuple[PoolIndex, float]:
        worst = 0.0
        done = False

        async def tick() -> None:
            nonlocal worst
            while not done:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - t - 0.001)

        ticker = asyncio.create_task(tick())
        index = await asyncio.to_thread(PoolIndex.build, items, ann)
        done = True
        await ticker
        return index, worst * 1e3

    return asyncio.run(go())


def us_per_query(fn: Any, queries: np.ndarray) -> float:
    started = time.perf_counter()
    for q in queries:
        fn(q)
    return (time.perf_counter() - started) / len(queries) * 1e6


def measure(quick: bool, rounds: int) -> dict[str, Any]:
    users, items, data = taobao_factors(quick)
    rng = np.random.default_rng(0)
    queries = users[rng.choice(len(users), 200 if quick else 1000, replace=False)]
    exact = [set(exact_pool(items, q, POOL)[0].tolist()) for q in queries]
    top = [set(np.argsort(-(items @ q), kind="stable")[:TOP].tolist()) for q in queries]
    built = {kind: build_with_ticker(items, AnnSettings(kind=kind, min_items=1))
             for kind in ("fp16", "hnsw")}
    fp16, hnsw = built["fp16"][0], built["hnsw"][0]

    def graph(ef: int) -> Any:
        def search(q: np.ndarray) -> Any:
            return hnsw.search(q, POOL)
        search.ef = ef  # type: ignore[attr-defined]
        return search

    ways: dict[str, Any] = {"exact": lambda q: exact_pool(items, q, POOL),
                            "fp16": lambda q: fp16.search(q, POOL),
                            **{f"hnsw, ef {ef}": graph(ef) for ef in EF}}
    found, times = {}, {name: [] for name in ways}  # type: ignore[var-annotated]
    for name, way in ways.items():
        if hasattr(way, "ef"):
            hnsw._index.hnsw.efSearch = way.ef
        got = [set(way(q)[0].tolist()) for q in queries]
        found[name] = (
            statistics.mean(len(g & e) / max(len(e), 1) for g, e in zip(got, exact, strict=True)),
            statistics.mean(len(g & t) / TOP for g, t in zip(got, top, strict=True)))
    with threadpool_limits(1, "blas"):
        for _ in range(rounds):  # alternated: a noisy minute hits every way
            for name, way in ways.items():
                if hasattr(way, "ef"):
                    hnsw._index.hnsw.efSearch = way.ef
                times[name].append(us_per_query(way, queries))
    base = statistics.median(times["exact"])
    variants = {name: {"us_per_pool": round(statistics.median(ts), 1),
                       "rounds_us": [round(t, 1) for t in ts],
                       "pool_found": round(found[name][0], 4),
                       "top20_found": round(found[name][1], 4),
                       "speedup": round(base / statistics.median(ts), 2)}
                for name, ts in times.items()}
    return {"machine": machine(), "data": data, "queries": len(queries), "pool": POOL,
            "build": {kind: {"s": round(index.build_s, 2), "loop_stall_max_ms": round(stall, 1)}
                      for kind, (index, stall) in built.items()},
            "hnsw": {"m": AnnSettings().m, "ef_construction": AnnSettings().ef_construction},
            "defaults": {"kind": Settings().serving.als_ann_kind,
                         "ef_search": Settings().serving.als_ann_ef_search,
                         "min_items": Settings().serving.als_ann_min_items},
            "variants": variants}


def report(result: dict[str, Any]) -> None:
    d, b = result["data"], result["build"]
    table = Table(title=f"ALS pool of {result['pool']} at {d['items']:,} items × "
                        f"{d['factors']} factors, {result['queries']} customers, one core "
                        f"(built in a thread: fp16 {b['fp16']['s']} s, hnsw {b['hnsw']['s']} "
                        f"s; loop stall ≤ {max(v['loop_stall_max_ms'] for v in b.values())} "
                        "ms)", title_justify="left")
    for col in ("pool", "µs per pool (median of rounds)", "speed-up", "exact pool found",
                "exact top 20 found"):
        table.add_column(col)
    for name, v in result["variants"].items():
        table.add_row(name, f"{v['us_per_pool']:.0f}", f"{v['speedup']:.1f}×",
                      f"{v['pool_found']:.3f}", f"{v['top20_found']:.3f}")
    Console().print(table)


async def _answers(settings: Settings, rounds: int, n: int) -> dict[str, Any]:
    session = StoreSession.open(settings)
    try:
        events = load("taobao")
        replay_s = await session.replay(events)
        await session.train()  # loads it and waits for the index, as a settled API
        art = session.holder.current
        index = art.pool_index if art is not None else None
        if index is None:
            raise RuntimeError("no index was built: is the catalog under als_ann_min_items?")
        service = await session.service()
        users = sorted({e.user_id for e in events if e.user_id})
        users = [users[i] for i in np.random.default_rng(1).choice(len(users), n, replace=False)]
        lists: dict[str, list[list[str]]] = {"index": [], "exact": []}
        cpu: dict[str, list[float]] = {"index": [], "exact": []}
        for r in range(rounds + 1):  # round 0 warms the caches and is not counted
            for way in ("index", "exact"):
                art.pool_index = index if way == "index" else None
                started = time.process_time()
                got = [[s.item_id for s in (await service.recommendations(u, 10, None)).items]
                       for u in users]
                if r:
                    cpu[way].append((time.process_time() - started) / n * 1e6)
                else:
                    lists[way] = got
        art.pool_index = index
        shared = [len(set(a) & set(b)) / max(len(b), 1)
                  for a, b in zip(lists["index"], lists["exact"], strict=True)]
        return {"replay_s": round(replay_s, 1), "customers": n, "model_items": len(art.item_ids),
                "cpu_us_per_answer": {k: [round(v) for v in vs] for k, vs in cpu.items()},
                "median_cpu_us": {k: round(statistics.median(vs)) for k, vs in cpu.items()},
                "items_shared_with_exact": round(statistics.mean(shared), 4),
                "answers_identical": round(statistics.mean(
                    a == b for a, b in zip(lists["index"], lists["exact"], strict=True)), 4)}
    finally:
        await session.close()


def answers(rounds: int, n: int = 500) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="aisle-bench-ann-"))
    store, url = start_store(tmp)
    try:
        settings = Settings(redis_url=url, data_dir=tmp, log_level="warning",
                            features={"key_prefix": "ann"})
        with threadpool_limits(1, "blas"):  # as the API runs (serving/app.py)
            return asyncio.run(_answers(settings, rounds, n))
    finally:
        store.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_ann", description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 ALS iterations, 200 customers")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--answers", action="store_true",
                   help="also whole recommendations, index vs exact (replays Taobao: minutes)")
    args = p.parse_args(argv)
    result = measure(args.quick, args.rounds)
    report(result)
    if args.answers:
        result["answers"] = answers(args.rounds)
        a = result["answers"]
        Console().print(f"whole answers at {a['model_items']:,} items, {a['customers']} "
                        f"customers: CPU µs per answer, index {a['cpu_us_per_answer']['index']}"
                        f", exact {a['cpu_us_per_answer']['exact']}; items shared with the "
                        f"exact answer {a['items_shared_with_exact']:.3f}, identical answers "
                        f"{a['answers_identical']:.3f}")
    print(f"wrote {write_result('ann_quick.json' if args.quick else 'ann.json', result)}")


if __name__ == "__main__":
    main()
