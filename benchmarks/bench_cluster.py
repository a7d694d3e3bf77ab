"""Redis Cluster overhead: one worker and one API on one Valkey vs on a 3-primary cluster.

Run from the repo root: ``python -m benchmarks.bench_cluster [--quick] [--rounds N]``.
Writes ``benchmarks/results/cluster.json`` (``cluster_quick.json``) and prints a table.

One embedded broker, one single Valkey and one 3-primary Valkey cluster (the same binary,
``aisle.runtime.start_cluster``) run side by side on this machine. A Taobao slice is
produced once; then, alternating which store goes first in each round, one ``aisle
worker`` applies the whole log into each store (its own consumer group and key prefix,
timed from the first applied records to the last, read from the stores' own offset
watermarks, as ``bench_ingest`` does), with the worker's CPU and the store's CPU (all
three nodes summed for the cluster) over the same window. Then a model is trained on each
store's state and one API per store is driven open-loop (``benchmarks/serving_load``) on
related items and recommendations, interleaved, with the API's and the store's CPU per
request. The related-answer cache is off (``serving.related_cache_ttl_s=0``) so every
related request reads the store; with it on, most do not, and there is nothing to compare.

Everything runs on one 2-core machine, so this shows what the cluster *costs* (client
routing, one connection and one round trip per node a pipeline touches, three server
processes) and not what it buys: throughput from more cores and memory from more
machines. ``docs/scaling.md`` does that arithmetic with these costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.table import Table

from aisle.runtime import EmbeddedRuntime, start_broker, start_cluster, start_store
from aisle.settings import Settings
from aisle.stack import Stack
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import TAOBAO, machine_info, produce, tree_state, workload
from benchmarks.ingest_probe import AppliedProbe, CpuMeter, sources, wait_group, watch
from benchmarks.serving_load import LoadGenerator, summary_ms
from feature_store.client import open_redis, primaries_info
from feature_store.keys import Keys
from models.train import train_once

ROWS, QUICK_ROWS = 100_000, 20_000
ROUNDS = 2
# By default well under what one API process answers on a shared 2-core machine, so
# latency is the store's and not a queue's; but at 20 requests/s every request wakes each
# node (and the API) on its own, so the CPU per request is the idle machine's. ``--rates``
# drives it harder, for the store's CPU per read under load (what sizes a cluster).
RATES = {"related": 100.0, "recommendations": 20.0}
SECONDS, QUICK_SECONDS = 20.0, 8.0
console = Console(width=None if sys.stdout.isatty() else 150)


def settings_for(base: Settings, store: dict[str, Any], tag: str) -> Settings:
    """The workload's topics; the store, a consumer group and a key prefix of its own."""
    return base.model_copy(update={
        "redis_url": store["url"], "redis_cluster": store["cluster"],
        "worker": base.worker.model_copy(update={"app_id": f"{base.worker.app_id}-{tag}"}),
        "features": base.features.model_copy(update={"key_prefix": tag}),
        "data_dir": base.data_dir / tag})


async def lua_seconds(s: Settings) -> float:
    """Server seconds inside EVALSHA so far, summed over the store's primaries."""
    client = open_redis(s)
    try:
        infos = await primaries_info(client, "commandstats")
    finally:
        await client.aclose()
    return sum(int(i.get("cmdstat_evalsha", {"usec": 0})["usec"]) for i in infos) / 1e6


async def used_memory(s: Settings) -> int:
    client = open_redis(s)
    try:
        return sum(int(i["used_memory"]) for i in await primaries_info(client, "memory"))
    finally:
        await client.aclose()


async def ingest(s: Settings, store: dict[str, Any], ends: dict[str, int],
                 broker_pid: int) -> dict[str, Any]:
    keys = Keys(s.features.key_prefix, s.features.shards)
    lock = keys.control("rebuild")
    client = open_redis(s)
    await client.set(lock, b"benchmark")  # workers wait until the group is stable
    group = Stack(s)
    try:
        group.add_worker()
        await wait_group(s, 1, 120)
        pid = group.workers[0].proc.pid
        meter = CpuMeter({"worker": pid, "broker": broker_pid,
                          **{f"valkey{n}": p for n, p in enumerate(store["pids"])}})
        lua0 = await lua_seconds(s)
        meter.start()
        await client.delete(lock)
        progress = await watch(AppliedProbe(client, keys, ends), 600)
        used = meter.stop()
        lua = await lua_seconds(s) - lua0
    finally:
        group.stop()
        await client.delete(lock)
        await client.aclose()
    n = progress.total - progress.first_applied
    store_cpu = sum(v for k, v in used.items() if k.startswith("valkey"))
    return {"events": progress.total, "events_per_s": round(progress.events_per_s),
            "worker_cpu_us_per_event": round(used["worker"] / n * 1e6, 1),
            "store_cpu_us_per_event": round(store_cpu / n * 1e6, 1),
            "lua_us_per_event": round(lua / n * 1e6, 1),
            "cpu_s": used, "others_cpu_s": meter.others,
            "window_s": round(progress.done_s - progress.first_s, 3)}


def members(s: Settings, kind: str) -> list[str]:
    async def read() -> list[str]:
        keys = Keys(s.features.key_prefix, s.features.shards)
        client = open_redis(s)
        try:
            pipe = client.pipeline(transaction=False)
            for shard in range(keys.shards):
                pipe.smembers(keys.users(shard) if kind == "users" else keys.items(shard))
            return sorted({m.decode() for part in await pipe.execute() for m in part})
        finally:
            await client.aclose()

    return asyncio.run(read())


def request_paths(s: Settings, rng: random.Random) -> dict[str, list[str]]:
    items = rng.sample(members(s, "items"), 500)
    users = rng.sample(members(s, "users"), 900)
    return {"related": [f"/v1/items/{quote(i, safe='')}/related?limit=10" for i in items],
            "recommendations": [f"/v1/users/{quote(u, safe='')}/recommendations?limit=10"
                                for u in users]}


def serve(api: Stack, store: dict[str, Any], gen: LoadGenerator, paths: list[str],
          rate: float, seconds: float) -> dict[str, Any]:
    assert api.api is not None
    meter = CpuMeter({"api": api.api.proc.pid,
                      **{f"valkey{n}": p for n, p in enumerate(store["pids"])}})
    meter.start()
    out = gen.run(mode="open", url=api.api_url, paths=paths, rate=rate, seconds=seconds,
                  connections=32)
    used = meter.stop()
    ok = sum(v for k, v in out["status"].items() if k == "200")
    store_cpu = sum(v for k, v in used.items() if k.startswith("valkey"))
    lat = sorted(out["latency_ms"])
    return {"requests": out["requests"], "ok": ok, "answered_rps": out["answered_rps"],
            "latency_ms": summary_ms([v / 1e3 for v in lat]),
            "api_cpu_us_per_request": round(used["api"] / max(ok, 1) * 1e6, 1),
            "store_cpu_us_per_request": round(store_cpu / max(ok, 1) * 1e6, 1),
            "degraded": out["degraded"], "others_cpu_s": meter.others}


def wait_model(url: str, version: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz", timeout=2).json().get("model_version") == version:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the API at {url} did not load {version}")


def run(tmp: Path, rows: int, rounds: int, seconds: float, rates: dict[str, float],
        ) -> dict[str, Any]:
    servers = EmbeddedRuntime()
    try:
        broker, kafka_url = start_broker(tmp / "logs")
        servers.processes.append(broker)
        single, single_url = start_store(tmp / "logs")
        servers.processes.append(single)
        nodes, cluster_url = start_cluster(tmp / "logs")
        servers.processes.extend(nodes)
        stores = {"single": {"url": single_url, "cluster": False, "pids": [single.proc.pid]},
                  "cluster": {"url": cluster_url, "cluster": True,
                              "pids": [n.proc.pid for n in nodes]}}
        base = Settings(kafka_url=kafka_url, data_dir=tmp, log_level="warning",
                        worker={"retrain_interval_s": 0},
                        serving={"port": 0, "related_cache_ttl_s": 0})
        w = workload(base, "taobao", f"cl{os.getpid()}")
        asyncio.run(produce(w, TAOBAO, rows))
        ends = sources(w.ends)
        rows_out: list[dict[str, Any]] = []
        for rnd in range(1, rounds + 1):
            order = ["single", "cluster"] if rnd % 2 else ["cluster", "single"]
            for name in order:
                s = settings_for(w.settings, stores[name], f"{name}{rnd}")
                row = {"store": name, "round": rnd,
                       **asyncio.run(ingest(s, stores[name], ends, broker.proc.pid))}
                rows_out.append(row)
                console.print(f"  ingest {name:8} round {rnd}: {row['events_per_s']:>7,} "
                              f"events/s, worker {row['worker_cpu_us_per_event']} µs/event, "
                              f"store {row['store_cpu_us_per_event']} µs/event")
        memory = {name: asyncio.run(used_memory(settings_for(w.settings, st, f"{name}1")))
                  for name, st in stores.items()}
        trained: dict[str, Any] = {}
        serving = serve_both(w.settings, stores, seconds, trained, rates)
        return {"events": w.total, "extra": w.extra, "ingest": rows_out,
                "ingest_summary": summarise(rows_out), "used_memory_bytes": memory,
                "serving": serving, "serving_summary": {
                    f"{e}/{n}": serving_median(serving, e, n)
                    for e in ("related", "recommendations") for n in stores},
                "retrain": trained, "rates": rates, "seconds": seconds,
                "shards": w.settings.features.shards}
    finally:
        servers.stop()


def serve_both(base: Settings, stores: dict[str, Any], seconds: float,
               trained: dict[str, Any], rates: dict[str, float]) -> list[dict[str, Any]]:
    """Train on each store's state (``trained`` gets the retrain's stats), then serve."""
    apis: dict[str, Stack] = {}
    out: list[dict[str, Any]] = []
    try:
        paths: dict[str, dict[str, list[str]]] = {}
        for name, store in stores.items():
            s = settings_for(base, store, f"{name}1")
            art = asyncio.run(train_once(s))
            version, trained[name] = art.version, art.stats
            apis[name] = Stack(s)
            apis[name].start_api()
            wait_model(apis[name].api_url or "", version)
            paths[name] = request_paths(s, random.Random(7))
        with LoadGenerator() as gen:
            for endpoint in ("related", "recommendations"):
                for name in ("single", "cluster", "cluster", "single"):  # ABBA
                    row = {"store": name, "endpoint": endpoint,
                           **serve(apis[name], stores[name], gen, paths[name][endpoint],
                                   rates[endpoint], seconds)}
                    out.append(row)
                    console.print(f"  serve {endpoint:15} {name:8}: p50 "
                                  f"{row['latency_ms']['p50']} ms, p99 "
                                  f"{row['latency_ms']['p99']} ms, API "
                                  f"{row['api_cpu_us_per_request']} µs/req, store "
                                  f"{row['store_cpu_us_per_request']} µs/req")
    finally:
        for api in apis.values():
            api.stop()
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in ("single", "cluster"):
        mine = [r for r in rows if r["store"] == name]
        out[name] = {k: round(statistics.median(r[k] for r in mine), 1) for k in (
            "events_per_s", "worker_cpu_us_per_event", "store_cpu_us_per_event",
            "lua_us_per_event")}
    return out


def serving_median(rows: list[dict[str, Any]], endpoint: str, store: str) -> dict[str, float]:
    mine = [r for r in rows if r["endpoint"] == endpoint and r["store"] == store]
    return {"p50_ms": statistics.median(r["latency_ms"]["p50"] for r in mine),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in mine),
            "api_cpu_us_per_request": statistics.median(r["api_cpu_us_per_request"] for r in mine),
            "store_cpu_us_per_request": statistics.median(
                r["store_cpu_us_per_request"] for r in mine)}


def report(result: dict[str, Any]) -> None:
    table = Table(title="ingest, one worker (medians over rounds)")
    for col in ("store", "events/s", "worker µs/event", "store µs/event", "Lua µs/event"):
        table.add_column(col)
    for name, row in result["ingest_summary"].items():
        table.add_row(name, f"{row['events_per_s']:,.0f}", str(row["worker_cpu_us_per_event"]),
                      str(row["store_cpu_us_per_event"]), str(row["lua_us_per_event"]))
    console.print(table)
    rates = result["rates"]
    table = Table(title=f"serving, open loop (related {rates['related']:g} req/s, "
                  f"recommendations {rates['recommendations']:g} req/s; medians of 2 runs)")
    for col in ("endpoint", "store", "p50 ms", "p99 ms", "API µs/req", "store µs/req"):
        table.add_column(col)
    for endpoint in ("related", "recommendations"):
        for name in ("single", "cluster"):
            row = serving_median(result["serving"], endpoint, name)
            table.add_row(endpoint, name, f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}",
                          f"{row['api_cpu_us_per_request']:.0f}",
                          f"{row['store_cpu_us_per_request']:.0f}")
    console.print(table)
    for name, stats in result["retrain"].items():
        console.print(f"retrain on {name}: read {stats.get('read_s')} s, total "
                      f"{stats.get('total_s')} s ({stats.get('users')} customers)")
    console.print(f"used_memory (all primaries): {result['used_memory_bytes']}")


def parse_rates(text: str) -> dict[str, float]:
    rates = dict(RATES)
    for part in text.split(","):
        endpoint, _, rate = part.partition("=")
        if endpoint not in RATES or not rate:
            raise argparse.ArgumentTypeError(f"expected related=N,recommendations=N: {text!r}")
        rates[endpoint] = float(rate)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} Taobao rows")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--rates", type=parse_rates, default=RATES,
                        help="open-loop rates, e.g. related=500,recommendations=250 (the "
                        "store's CPU per read under load: each node's wake-ups are shared)")
    parser.add_argument("--out", default=None, help="result name (default cluster[_quick])")
    args = parser.parse_args()
    tree = tree_state()
    tmp = Path(tempfile.mkdtemp(prefix="aisle-bench-cluster-"))
    try:
        result = run(tmp, QUICK_ROWS if args.quick else ROWS,
                     args.rounds or (1 if args.quick else ROUNDS),
                     QUICK_SECONDS if args.quick else SECONDS, args.rates)
    except BaseException:
        console.print(f"[red]failed; the logs are kept in {tmp}[/red]")
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    result = {"benchmark": "cluster", "machine": machine_info(tree), "quick": args.quick,
              "method": __doc__.split("\n\n", 2)[2].strip(), **result}
    report(result)
    name = f"{args.out or ('cluster_quick' if args.quick else 'cluster')}.json"
    console.print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
