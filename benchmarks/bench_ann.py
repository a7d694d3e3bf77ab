"""The ALS pool at catalog scale: the norm-ordered scan against scoring every item.

``python -m benchmarks.bench_ann [--quick] [--rounds 3] [--answers]`` fits ALS with
Aisle's model settings on the Taobao slice's interactions (84,793 items; Online
Retail's 3,656 fit one block and are scored whole), then for 1,000 of its customers'
vectors asks for the 200-item pool, every way once per round, on one core: scoring
every item (``models.pool.exact_pool``, the baseline: numpy's matrix-vector product and
a partition), the norm-ordered scan the API uses (``NormOrder``), and, where faiss is
installed (the ``bench`` extra), faiss's half-precision scan and HNSW graph, which were
measured against it. Reports µs per pool, the share of the exact pool found, the share
of its top 20 found, the share of the catalog the norm order scored, build times and
the event loop's worst stall while the norm order is built in a thread, as the API
builds it. Writes ``results/ann.json``.

``--answers`` adds whole recommendations: the Taobao slice replayed through the worker's
``BatchProcessor`` into an embedded Valkey, a model trained and loaded as the API loads
it, then 500 customers' answers (limit 10) with the norm order and with every item
scored, alternately per round: this process's CPU per answer, and how many of the 10
items the two answers share.
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
from models.matrix import build_interactions
from models.pool import NormOrder, exact_pool

POOL = 200
TOP = 20


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


def build_with_ticker(items: np.ndarray) -> tuple[NormOrder, float]:
    """Build in a thread as the API does; the loop's worst stall meanwhile, in ms."""
    async def go() -> tuple[NormOrder, float]:
        worst = 0.0
        done = False

        async def tick() -> None:
            nonlocal worst
            while not done:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - t - 0.001)

        ticker = asyncio.create_task(tick())
        order = await asyncio.to_thread(NormOrder, items)
        done = True
        await ticker
        return order, worst * 1e3

    return asyncio.run(go())


def faiss_ways(items: np.ndarray) -> tuple[dict[str, Any], dict[str, float]]:
    """faiss's fp16 scan and HNSW graph (inner product), one thread; empty without faiss."""
    try:
        import faiss
    except ImportError:
        return {}, {}
    faiss.omp_set_num_threads(1)
    d = items.shape[1]
    started = time.perf_counter()
    fp16 = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16,
                                      faiss.METRIC_INNER_PRODUCT)
    fp16.train(items)
    fp16.add(items)
    fp16_s = time.perf_counter() - started
    started = time.perf_counter()
    graph = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efSearch = 256
    graph.add(items)
    graph_s = time.perf_counter() - started

    def search(index: Any) -> Any:
        def pool(q: np.ndarray) -> tuple[np.ndarray, None]:
            return index.search(q.reshape(1, -1), POOL)[1][0], None
        return pool

    return ({"faiss fp16 scan": search(fp16), "faiss HNSW, ef_search 256": search(graph)},
            {"faiss fp16 scan": round(fp16_s, 2), "faiss HNSW, ef_search 256": round(graph_s, 2)})


def us_per_query(fn: Any, queries: np.ndarray) -> float:
    started = time.perf_counter()
    for q in queries:
        fn(q)
    return (time.perf_counter() - started) / len(queries) * 1e6


def measure(quick: bool, rounds: int) -> dict[str, Any]:
    users, items, data = taobao_factors(quick)
    rng = np.random.default_rng(0)
    queries = users[rng.choice(len(users), 200 if quick else 1000, replace=False)]
    exact = [exact_pool(items, q, POOL) for q in queries]
    top = [set(np.argsort(-(items @ q), kind="stable")[:TOP].tolist()) for q in queries]
    order, stall_ms = build_with_ticker(items)
    others, built_s = faiss_ways(items)
    ways: dict[str, Any] = {"every item (numpy)": lambda q: exact_pool(items, q, POOL),
                            "norm order (Aisle)": lambda q: order.pool(q, POOL), **others}
    found: dict[str, tuple[float, float]] = {}
    scanned = []
    for name, way in ways.items():
        got = [set(way(q)[0].tolist()) for q in queries]
        found[name] = (
            statistics.mean(len(g & set(e[0].tolist())) / max(len(e[0]), 1)
                            for g, e in zip(got, exact, strict=True)),
            statistics.mean(len(g & t) / TOP for g, t in zip(got, top, strict=True)))
    identical = 0
    for q, (rows, scores) in zip(queries, exact, strict=True):
        mine = order.pool(q, POOL)
        scanned.append(order.last_scored / len(items))
        identical += bool(np.array_equal(mine[0], rows) and np.allclose(mine[1], scores))
    times: dict[str, list[float]] = {name: [] for name in ways}
    with threadpool_limits(1, "blas"):
        for _ in range(rounds):  # alternated: a noisy minute hits every way
            for name, way in ways.items():
                times[name].append(us_per_query(way, queries))
    base = statistics.median(times["every item (numpy)"])
    variants = {name: {"us_per_pool": round(statistics.median(ts), 1),
                       "rounds_us": [round(t, 1) for t in ts],
                       "pool_found": round(found[name][0], 4),
                       "top20_found": round(found[name][1], 4),
                       "speedup": round(base / statistics.median(ts), 2)}
                for name, ts in times.items()}
    return {"machine": machine(), "data": data, "queries": len(queries), "pool": POOL,
            "norm_order": {"build_s": round(order.build_s, 3),
                           "loop_stall_max_ms": round(stall_ms, 1),
                           "share_scored_median": round(statistics.median(scanned), 4),
                           "share_scored_p90": round(float(np.quantile(scanned, 0.9)), 4),
                           "identical_pools": identical,
                           "min_items_default": Settings().serving.als_pool_order_min_items},
            "faiss_build_s": built_s, "variants": variants}


def report(result: dict[str, Any]) -> None:
    d, o = result["data"], result["norm_order"]
    table = Table(title=f"ALS pool of {result['pool']} at {d['items']:,} items × "
                        f"{d['factors']} factors, {result['queries']} customers, one core. "
                        f"Norm order: built in {o['build_s'] * 1e3:.0f} ms in a thread (loop "
                        f"stall ≤ {o['loop_stall_max_ms']} ms), scored a median "
                        f"{o['share_scored_median']:.1%} of the items (p90 "
                        f"{o['share_scored_p90']:.1%}), identical pools "
                        f"{o['identical_pools']}/{result['queries']}", title_justify="left")
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
        await session.train()  # loads it and waits for the norm order, as a settled API
        art = session.holder.current
        order = art.norm_order if art is not None else None
        if art is None or order is None:
            raise RuntimeError("no norm order: is the catalog under als_pool_order_min_items?")
        service = await session.service()
        users = sorted({e.user_id for e in events if e.user_id})
        users = [users[i] for i in np.random.default_rng(1).choice(len(users), n, replace=False)]
        lists: dict[str, list[list[str]]] = {"norm order": [], "every item": []}
        cpu: dict[str, list[float]] = {"norm order": [], "every item": []}
        for r in range(rounds + 1):  # round 0 warms the caches and is not counted
            for way in ("norm order", "every item"):
                art.norm_order = order if way == "norm order" else None
                started = time.process_time()
                got = [[s.item_id for s in (await service.recommendations(u, 10, None)).items]
                       for u in users]
                if r:
                    cpu[way].append((time.process_time() - started) / n * 1e6)
                else:
                    lists[way] = got
        art.norm_order = order
        shared = [len(set(a) & set(b)) / max(len(b), 1)
                  for a, b in zip(lists["norm order"], lists["every item"], strict=True)]
        return {"replay_s": round(replay_s, 1), "customers": n, "model_items": len(art.item_ids),
                "cpu_us_per_answer": {k: [round(v) for v in vs] for k, vs in cpu.items()},
                "median_cpu_us": {k: round(statistics.median(vs)) for k, vs in cpu.items()},
                "items_shared_with_exact": round(statistics.mean(shared), 4),
                "answers_identical": round(statistics.mean(
                    a == b for a, b in zip(lists["norm order"], lists["every item"],
                                           strict=True)), 4)}
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
                   help="also whole recommendations, both ways (replays Taobao: minutes)")
    args = p.parse_args(argv)
    result = measure(args.quick, args.rounds)
    report(result)
    if args.answers:
        result["answers"] = answers(args.rounds)
        a = result["answers"]
        Console().print(f"whole answers at {a['model_items']:,} items, {a['customers']} "
                        f"customers: CPU µs per answer, norm order "
                        f"{a['cpu_us_per_answer']['norm order']}, every item "
                        f"{a['cpu_us_per_answer']['every item']}; items shared with the "
                        f"exact answer {a['items_shared_with_exact']:.3f}, identical answers "
                        f"{a['answers_identical']:.3f}")
    print(f"wrote {write_result('ann_quick.json' if args.quick else 'ann.json', result)}")


if __name__ == "__main__":
    main()
