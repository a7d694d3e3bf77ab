"""Where a worker's time goes, stage by stage, on the ingest benchmark's Taobao workload.

Run from the repo root: ``python -m benchmarks.ingest_profile [--quick] [--py-spy PATH]``.
Writes ``benchmarks/results/ingest_profile.json`` (``ingest_profile_quick.json``).

The records are fetched from the broker once, in the batches a ``BatchProcessor`` would
get, and kept in memory; then each stage runs alone over all of them, so no stage pays
for another and Kafka is out of the picture:

* decode       ``decode_event`` of every record;
* fold         ``Folder.fold_sharded`` of every decoded event (its ops and shard);
* python side  ``BatchProcessor.process`` with a store that keeps the shard batches and
               writes nothing: decode + fold + grouping, the whole Python part;
* pack         msgpack of those shard batches, as ``RedisStore`` sends them;
* apply        ``RedisStore.apply_many`` of the same shard batches into a fresh prefix:
               pack + redis-py + the Lua scripts; Valkey's own time in the scripts is
               read from ``INFO commandstats``;
* process      ``BatchProcessor.process`` with the real store (a fresh prefix), and the
               same with a published model, whose difference is the fold-in;
* cProfile     of ``process`` with the real store, top functions by own time.

CPU stages are the best of 3 passes (the least disturbed by the shared machine); the
stages that write state run once each, on a prefix of their own. The garbage collector
runs as in a worker (``streams.batching.quiet_gc``), with everything this process holds
for the stages (every record, event and folded batch) frozen before each timed stage:
a worker holds one batch, and without the freeze every full collection walked millions
of objects, which charged a stage several times its own cost (the full slice's fold
measured 26.9 µs/event this way against 7 µs in a worker-like loop, session 18).

With ``--py-spy PATH`` (py-spy is not a project dependency: ``pip install py-spy`` into
any environment), one Faust worker also applies the workload under py-spy and its main
thread's samples are sorted into the same stages plus Faust's own machinery.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from aisle.settings import Settings
from aisle.stack import Stack
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import (
    QUICK_ROWS,
    TAOBAO,
    Workload,
    bench_settings,
    machine_info,
    produce,
    tree_state,
    workload,
)
from benchmarks.ingest_probe import AppliedProbe, lua_usage, sources, wait_group, watch
from benchmarks.ingest_readers import build_processor, read_log
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore, ShardBatch
from feature_store.updates import Folder
from models.artifacts import publish_model
from models.train import train_once
from streams.batching import quiet_gc
from streams.events import decode_event
from streams.pipeline import BatchProcessor, Record

PASSES = 3
# What RedisStore sends per (batch, shard): msgpack of [source, window, events].
pack = msgspec.msgpack.Encoder().encode
console = Console(width=None if sys.stdout.isatty() else 150)


class NullPipeline:
    """Takes any command and sends nothing."""

    def __getattr__(self, name: str) -> Callable[..., NullPipeline]:
        return lambda *args, **kwargs: self

    async def execute(self) -> list[Any]:
        return []


class NullClient:
    """Takes any command (the per-batch counters ``process`` writes) and sends nothing."""

    def pipeline(self, transaction: bool = True) -> NullPipeline:
        return NullPipeline()

    def __getattr__(self, name: str) -> Callable[..., Awaitable[None]]:
        async def nothing(*args: Any, **kwargs: Any) -> None:
            return None
        return nothing


class KeepingStore:
    """Stands in for ``RedisStore``: keeps every shard batch, writes nothing (its client
    swallows the per-batch counters ``process`` also writes)."""

    def __init__(self) -> None:
        self.batches: list[list[ShardBatch]] = []
        self.client = NullClient()

    async def apply_many(self, batches: Sequence[ShardBatch]) -> tuple[int, int, int]:
        self.batches.append(list(batches))
        return sum(len(events) for _, _, events in batches), 0, 0


def each(fn: Callable[[Any], Any], items: Sequence[Any]) -> None:
    for item in items:
        fn(item)


def best_of(fn: Callable[[], Any], passes: int = PASSES) -> float:
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


async def abest_of(fn: Callable[[], Awaitable[Any]], passes: int = PASSES) -> float:
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return min(times)


async def fetch_batches(w: Workload) -> list[list[Record]]:
    batches: list[list[Record]] = []

    async def keep(batch: Sequence[Record]) -> None:
        batches.append(list(batch))

    await read_log(w.settings, w.ends, keep)
    return batches


async def python_side(s: Settings, batches: list[list[Record]]) -> tuple[float, KeepingStore]:
    """``process`` without Redis; returns the best time and the last pass's shard batches."""
    keys = Keys(s.features.key_prefix, s.features.shards)
    folder = Folder(keys, s.features, s.model)
    store = KeepingStore()

    async def one_pass() -> None:
        store.batches.clear()
        processor = BatchProcessor(cast(RedisStore, store), folder, None,
                                   respect_rebuild=False)
        for batch in batches:
            await processor.process(batch)

    return await abest_of(one_pass), store


async def apply_only(client: aioredis.Redis, s: Settings, shard_batches: list[list[ShardBatch]],
                     ) -> tuple[float, float]:
    """Wall and Valkey-side Lua seconds of writing the kept shard batches once."""
    store = RedisStore(client, Keys(s.features.key_prefix, s.features.shards),
                       s.features.dedupe_window_s)
    _, lua0 = await lua_usage(client)
    held()
    started = time.perf_counter()
    for batches in shard_batches:
        await store.apply_many(batches)
    wall = time.perf_counter() - started
    _, lua1 = await lua_usage(client)
    return wall, lua1 - lua0


async def process_real(client: aioredis.Redis, s: Settings, batches: list[list[Record]],
                       profile: cProfile.Profile | None = None) -> tuple[float, float, int]:
    """Wall and Lua seconds of ``process`` with the real store (and model, if published),
    and how many customer vectors it re-solved."""
    processor = await build_processor(s, client)
    _, lua0 = await lua_usage(client)
    held()
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    for batch in batches:
        await processor.process(batch)
    if profile is not None:
        profile.disable()
    wall = time.perf_counter() - started
    _, lua1 = await lua_usage(client)
    await processor.close()
    return wall, lua1 - lua0, processor.counters.total.folded_users


def held() -> None:
    """Freeze what the process holds now (the stages' inputs and outputs so far), so the
    timed stage's collections see only what it allocates, as a worker's do."""
    gc.collect()
    gc.freeze()


def top_functions(profile: cProfile.Profile, n: int = 20) -> list[dict[str, Any]]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (file, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": f"{Path(file).name}:{line}({name})", "calls": calls,
                     "own_s": round(tottime, 4), "cumulative_s": round(cumtime, 4)})
    return sorted(rows, key=lambda r: -r["own_s"])[:n]


async def stages(w: Workload, client: aioredis.Redis) -> dict[str, Any]:
    batches = await fetch_batches(w)
    records = [r for batch in batches for r in batch]
    values = [r.value or b"" for r in records]
    s = w.variant("p0")
    folder = Folder(Keys(s.features.key_prefix, s.features.shards), s.features, s.model)
    events = [decode_event(v) for v in values]
    quiet_gc(s.worker.gc_gen0_threshold)  # the worker's settings; freezes the above
    out: dict[str, float] = {
        # Each result dropped at once, as a worker drops a batch once it is written.
        "decode": best_of(lambda: each(decode_event, values)),
        "fold": best_of(lambda: each(folder.fold_sharded, events)),  # as a worker folds
    }
    out["python_side"], kept = await python_side(s, batches)
    window = s.features.dedupe_window_s
    out["pack"] = best_of(lambda: [pack([source, window, evs]) for shard_batches in kept.batches
                                   for _, source, evs in shard_batches])
    out["apply"], out["apply_lua_server"] = await apply_only(client, w.variant("p1"),
                                                            kept.batches)
    out["process"], out["process_lua_server"], _ = await process_real(
        client, w.variant("p2"), batches)
    art = await train_once(w.variant("p2"), client)
    for prefix in ("p3", "p5"):
        await publish_model(client, w.variant(prefix).features.key_prefix, art)
    out["process_with_model"], out["process_with_model_lua_server"], folded = (
        await process_real(client, w.variant("p3"), batches))
    plain, with_model = cProfile.Profile(), cProfile.Profile()
    out["process_under_cprofile"], _, _ = await process_real(client, w.variant("p4"), batches,
                                                             plain)
    out["process_with_model_under_cprofile"], _, _ = await process_real(
        client, w.variant("p5"), batches, with_model)
    foldin_s = out["process_with_model"] - out["process"]
    return {"records": len(records), "batches": len(batches),
            "ops": sum(len(folder.fold(e)) for e in events),
            "lua_calls": sum(len(b) for b in kept.batches),
            "folded_users": folded, "model_items": len(art.item_ids),
            "foldin_us_per_folded_user": round(foldin_s / max(folded, 1) * 1e6, 1),
            "seconds": {k: round(v, 4) for k, v in out.items()},
            "us_per_event": {k: round(v / len(records) * 1e6, 2) for k, v in out.items()},
            "cprofile_top": top_functions(plain),
            "cprofile_top_with_model": top_functions(with_model)}


# ------------------------------------------------------------------ py-spy on a worker

CATEGORIES = (  # first match wins; matched against the whole stack, leaf last
    ("waiting (epoll: Redis replies, fetches)", lambda leaf, s: "select (selectors.py" in leaf),
    ("decode", lambda leaf, s: "decode_event" in s),
    ("fold", lambda leaf, s: "Folder." in s or "Keys." in s),
    ("fold-in", lambda leaf, s: "UserVectorUpdater" in s),
    ("redis-py + pack", lambda leaf, s: "BatchProcessor.process" in s),
    ("Record list (streams/app.py)", lambda leaf, s: "run_batches" in s and "listcomp" in s),
    ("aiokafka", lambda leaf, s: "aiokafka/" in s),
    ("Faust/mode + asyncio scheduling", lambda leaf, s: True),
)


def categorise(raw: Path) -> dict[str, dict[str, float]]:
    """Share of each thread's samples per category (py-spy ``--format raw`` lines)."""
    per: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        thread = "main" if "MainThread" in frames[0] else frames[0].split(":")[-1].strip()
        name = next(n for n, match in CATEGORIES if match(frames[-1], stack))
        per[thread][name] += int(count)
    return {t: {n: round(c / sum(cnt.values()), 4) for n, c in cnt.most_common()}
            for t, cnt in per.items()}


async def spy_on_worker(w: Workload, client: aioredis.Redis, py_spy: str,
                        out_dir: Path) -> dict[str, Any]:
    s = w.variant("spy")
    keys = Keys(s.features.key_prefix, s.features.shards)
    lock = keys.control("rebuild")
    await client.set(lock, b"profile")
    group = Stack(s)
    raw = out_dir / "worker.raw"
    try:
        group.add_worker()
        await wait_group(s, 1, 120)
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(group.workers[0].proc.pid), "--format", "raw",
             "--threads", "--idle", "--rate", "200", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await asyncio.sleep(1.0)  # py-spy attached
            await client.delete(lock)
            progress = await watch(AppliedProbe(client, keys, sources(w.ends)), 900)
        finally:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has and exits
            spy.wait(60)
    finally:
        group.stop()
        await client.delete(lock)
    return {"events_per_s_under_py_spy": round(progress.events_per_s),
            "sample_share": categorise(raw)}


# ------------------------------------------------------------------ run and report

async def run(stack: Stack, quick: bool, py_spy: str | None, tmp: Path) -> dict[str, Any]:
    client = aioredis.Redis.from_url(stack.settings.redis_url or "", decode_responses=False)
    try:
        w = workload(stack.settings, "taobao", time.strftime("p%H%M%S"))
        await produce(w, TAOBAO, QUICK_ROWS if quick else None)
        result = {"workload": w.extra, "stages": await stages(w, client)}
        if py_spy:
            result["faust_worker_py_spy"] = await spy_on_worker(w, client, py_spy, tmp)
    finally:
        await client.aclose()
    return result


def report(result: dict[str, Any]) -> None:
    st = result["stages"]
    table = Table(title=f"pipeline stages, {st['records']:,} records in {st['batches']} "
                        f"batches, {st['ops']:,} ops, {st['lua_calls']:,} Lua calls")
    table.add_column("stage")
    table.add_column("s", justify="right")
    table.add_column("µs/event", justify="right")
    for name, secs in st["seconds"].items():
        table.add_row(name, f"{secs:.3f}", f"{st['us_per_event'][name]:.1f}")
    console.print(table)
    console.print(f"fold-in: {st['folded_users']:,} customer vectors re-solved against "
                  f"{st['model_items']:,} items, {st['foldin_us_per_folded_user']:.0f} µs each")
    for key, title in (("cprofile_top", "cProfile of process(), by own time"),
                       ("cprofile_top_with_model", "the same with a model (fold-in)")):
        top = Table(title=title)
        for col in ("function", "calls", "own s", "cumulative s"):
            top.add_column(col, justify="left" if col == "function" else "right")
        for r in st[key][:15]:
            top.add_row(r["function"], f"{r['calls']:,}", f"{r['own_s']:.3f}",
                        f"{r['cumulative_s']:.3f}")
        console.print(top)
    if spy := result.get("faust_worker_py_spy"):
        console.print(f"Faust worker under py-spy: {spy['events_per_s_under_py_spy']:,} events/s")
        for thread, shares in spy["sample_share"].items():
            console.print(f"  thread {thread}: " + ", ".join(
                f"{name} {share:.0%}" for name, share in shares.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} Taobao rows")
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy binary: also sample a worker")
    args = parser.parse_args()
    tree = tree_state()
    tmp = Path(tempfile.mkdtemp(prefix="aisle-bench-profile-"))
    stack = Stack.start(bench_settings(tmp), workers=0, api=False)
    try:
        result = asyncio.run(run(stack, args.quick, args.py_spy, tmp))
    except BaseException:
        console.print(f"[red]failed; the logs are kept in {tmp}[/red]")
        raise
    finally:
        stack.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    result = {"benchmark": "ingest_profile", "machine": machine_info(tree), "quick": args.quick,
              **result}
    report(result)
    name = "ingest_profile_quick.json" if args.quick else "ingest_profile.json"
    console.print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
