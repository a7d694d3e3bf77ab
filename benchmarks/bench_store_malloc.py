"""Valkey's CPU per event applying the same folded batches with glibc's malloc and with
jemalloc preloaded, side by side in one run.

Run from the repo root: ``python -m benchmarks.bench_store_malloc [--quick] [--runs N]``.
Writes ``benchmarks/results/store_malloc.json`` (``store_malloc_quick.json``).

The Taobao slice is folded once in this process (``Folder.fold``, grouped by shard in
batches of ``worker.batch_max`` events, as a worker's ``BatchProcessor`` groups them);
then two embedded Valkeys started the same way (``aisle.runtime.start_store``), one with
``AISLE_STORE_JEMALLOC=off`` and one with jemalloc, each apply all of those batches with
``RedisStore.apply_many`` (the same Lua script and op wire format as a worker), in turn,
``--runs`` times each, alternating, each run into a flushed server. Measured per run:
the server process's CPU seconds (``/proc``) and its own ``INFO commandstats`` time in
the script, per event applied. The client side (msgpack, redis-py) is the same for both
and not counted. No broker and no worker: only the store's side of ingest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from aisle.datasets import open_dataset
from aisle.runtime import ManagedProcess, allocator_of, jemalloc_path, start_store
from aisle.settings import Settings
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import TAOBAO, machine_info, tree_state
from benchmarks.ingest_probe import cpu_seconds, lua_usage, machine_busy_seconds
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore, ShardBatch
from feature_store.updates import Folder

console = Console()
QUICK_ROWS = 40_000
RUNS = 3
SOURCE = "bench/0"


def folded_batches(settings: Settings, rows: int | None) -> tuple[list[list[ShardBatch]], int]:
    keys = Keys(settings.features.key_prefix, settings.features.shards)
    folder = Folder(keys, settings.features, settings.model)
    events, _ = open_dataset(TAOBAO, rows)
    out: list[list[ShardBatch]] = []
    count = 0

    def chunks() -> Iterator[list[Any]]:
        chunk: list[Any] = []
        for event in events:
            chunk.append(event)
            if len(chunk) == settings.worker.batch_max:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    for chunk in chunks():
        grouped: dict[int, list[Any]] = {}
        for event in chunk:
            grouped.setdefault(folder.shard(event), []).append(
                (event.event_id, count, event.ts, folder.fold(event)))
            count += 1
        out.append([(shard, SOURCE, batch) for shard, batch in grouped.items()])
    return out, count


class ScriptStore(RedisStore):
    """``RedisStore`` running another script text (same wire format, same keys)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, window: float, script: str):
        super().__init__(client, keys, window)
        self.script = script

    async def script_sha(self) -> str:
        if self._sha is None:
            self._sha = str(await self.client.script_load(self.script))
        return self._sha


async def apply_all(url: str, settings: Settings, batches: list[list[ShardBatch]],
                    pid: int, events: int, script: str | None = None) -> dict[str, Any]:
    """Flush the server, apply every batch (with ``script`` instead of store.lua when
    given) and return the server's CPU and script time per event."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushall()
        keys = Keys(settings.features.key_prefix, settings.features.shards)
        window = settings.features.dedupe_window_s
        store = (RedisStore(client, keys, window) if script is None
                 else ScriptStore(client, keys, window, script))
        lua_before = await lua_usage(client)
        cpu_before, machine_before = cpu_seconds(pid), machine_busy_seconds()
        started = time.perf_counter()
        applied = 0
        for batch in batches:
            applied += (await store.apply_many(batch))[0]
        wall = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
        others = machine_busy_seconds() - machine_before - cpu
        lua = await lua_usage(client)
        if applied != events:
            raise RuntimeError(f"applied {applied} of {events} events")
        return {"wall_s": round(wall, 3), "valkey_cpu_s": round(cpu, 3),
                "valkey_us_per_event": round(cpu / events * 1e6, 2),
                "lua_us_per_event": round((lua[1] - lua_before[1]) / events * 1e6, 2),
                "others_and_client_cpu_s": round(max(0.0, others), 3)}
    finally:
        await client.aclose()


def start(kind: str, log_dir: Path) -> tuple[ManagedProcess, str]:
    before = os.environ.get("AISLE_STORE_JEMALLOC")
    if kind == "libc":
        os.environ["AISLE_STORE_JEMALLOC"] = "off"
    try:
        managed, url = start_store(log_dir / kind)
    finally:
        if before is None:
            os.environ.pop("AISLE_STORE_JEMALLOC", None)
        else:
            os.environ["AISLE_STORE_JEMALLOC"] = before
    actual = allocator_of(managed.proc.pid)
    if actual != kind:
        managed.stop()
        raise RuntimeError(f"asked for a {kind} Valkey, got {actual}")
    return managed, url


async def run(rows: int | None, runs: int, log_dir: Path) -> dict[str, Any]:
    settings = Settings(data_dir=log_dir)
    folded_at = time.perf_counter()
    batches, events = folded_batches(settings, rows)
    console.print(f"folded {events:,} events into {len(batches)} batches in "
                  f"{time.perf_counter() - folded_at:.1f}s")
    servers = {kind: start(kind, log_dir) for kind in ("libc", "jemalloc")}
    rows_out: list[dict[str, Any]] = []
    try:
        for rnd in range(1, runs + 1):
            for kind, (managed, url) in servers.items():
                row = await apply_all(url, settings, batches, managed.proc.pid, events)
                row.update(run=rnd, malloc=kind)
                rows_out.append(row)
                console.print(f"  {kind:9s} run {rnd}: Valkey {row['valkey_us_per_event']:.1f} "
                              f"µs/event (script {row['lua_us_per_event']:.1f}), "
                              f"{row['wall_s']:.1f}s")
    finally:
        for managed, _ in servers.values():
            managed.stop()
    summary = {}
    for kind in servers:
        mine = [r for r in rows_out if r["malloc"] == kind]
        summary[kind] = {
            key: round(statistics.median(r[key] for r in mine), 2)
            for key in ("valkey_us_per_event", "lua_us_per_event", "wall_s",
                        "others_and_client_cpu_s")}
        summary[kind]["min_valkey_us_per_event"] = min(r["valkey_us_per_event"] for r in mine)
        summary[kind]["max_valkey_us_per_event"] = max(r["valkey_us_per_event"] for r in mine)
    summary["jemalloc_over_libc_valkey_cpu"] = round(
        summary["jemalloc"]["valkey_us_per_event"] / summary["libc"]["valkey_us_per_event"], 3)
    return {"events": events, "batches": len(batches), "runs": rows_out, "summary": summary,
            "jemalloc": jemalloc_path()}


def report(result: dict[str, Any]) -> None:
    table = Table(title=f"Valkey applying {result['events']:,} folded Taobao events, "
                        f"medians of {len(result['runs']) // 2} runs each",
                  title_justify="left")
    for col in ("malloc", "Valkey CPU µs/event (min–max)", "in the script µs/event", "wall s",
                "others + client CPU s"):
        table.add_column(col, justify="left" if col == "malloc" else "right")
    for kind in ("libc", "jemalloc"):
        s = result["summary"][kind]
        table.add_row(kind, f"{s['valkey_us_per_event']:.1f} ({s['min_valkey_us_per_event']:.1f}"
                            f"–{s['max_valkey_us_per_event']:.1f})",
                      f"{s['lua_us_per_event']:.1f}", f"{s['wall_s']:.1f}",
                      f"{s['others_and_client_cpu_s']:.1f}")
    console.print(table)
    console.print(f"jemalloc / libc, Valkey CPU per event: "
                  f"{result['summary']['jemalloc_over_libc_valkey_cpu']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} Taobao rows")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs per allocator")
    args = parser.parse_args()
    if jemalloc_path() is None:
        console.print("skipped: no libjemalloc.so.2 here to compare with "
                      "(apt-get install libjemalloc2; `make bench` does as root)")
        return
    tree = tree_state()
    with tempfile.TemporaryDirectory(prefix="aisle-bench-malloc-") as tmp:
        result = asyncio.run(run(QUICK_ROWS if args.quick else None, args.runs, Path(tmp)))
    result = {"benchmark": "store_malloc", "machine": machine_info(tree),
              "quick": args.quick, "method": __doc__.split("\n\n", 2)[2].strip(), **result}
    report(result)
    name = "store_malloc_quick.json" if args.quick else "store_malloc.json"
    console.print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
