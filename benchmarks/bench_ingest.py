"""Ingest throughput: events per second from the log into the feature store, five ways.

Run from the repo root: ``python -m benchmarks.bench_ingest [--quick] [--retail]
[--rounds N]``. Writes ``benchmarks/results/ingest.json`` (``ingest_quick.json``) and
prints a table.

The Taobao UserBehavior slice (195k events: views, carts, favourites, one-line orders
and a catalog entry per item) is produced once into fresh topics of an embedded broker
(8 partitions each); then, in the same run against the same broker and Valkey, every
variant reads those topics from the first offset, with a consumer group and a key
prefix of its own:

  a  baseline: a raw aiokafka consumer that fetches and msgspec-decodes every record
     and does nothing else;
  b  one ``aisle worker`` (Faust) with every feature update, no model published;
  c  the same with a published model, so every batch also folds the touched
     customers into the model (trained once with ``train_once`` on b's state);
  d  ``BatchProcessor`` driven by a plain aiokafka consumer in this process (what
     ``aisle rebuild`` does): b's work without Faust;
  e  two workers in one group (the partitions split between them);
  s  one worker with stock Faust agents (``worker.batch_consumer=false``: per-message
     events through ``take_events``), the way b ran before ``streams/batching.py``;
  w  b with ``worker.write_ahead=false``: each batch is sent only once the previous
     one has answered, the way b ran before ``streams/ahead.py``; v is c so (neither is
     in the default set: ``--variants bwcv`` compares them).

The machine has 2 cores and is shared, so the baseline runs before every variant and
after the last, a variant's ratio is to the mean of the two baselines around it, the
variants run in ``--rounds`` rounds (3; medians reported, every round kept in the JSON),
and each window records the CPU seconds the rest of the machine used ("others": other
tenants), so a slow round can be told from a slow variant. A variant's state is
deleted once it is measured, so each one meets a keyspace of about the same size.

Workers are timed without their start-up. The benchmark holds the variant's rebuild
lock (workers check it before each batch and wait, see
``BatchProcessor.wait_while_rebuilding``), starts the workers, waits until their group
is Stable with every member, and releases the lock. Throughput is counted from the first
sighting of applied records to the moment all are applied, both read from the store's
own offset watermarks (see ``benchmarks/ingest_probe.py``); the records of the first
sighting are left out of the count. Start-up (spawn → group stable) is reported apart.
CPU seconds of the workers, Valkey and the broker, and Valkey's server time inside the
Lua scripts (``INFO commandstats``), cover the same window.

``--retail`` also runs a, b and d on Online Retail (27k events, orders of up to a few
hundred lines: few events, many writes each). ``--quick`` replays 20k Taobao rows.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka import TopicPartition
from rich.console import Console
from rich.table import Table

from aisle.replay import replay_file
from aisle.runtime import allocator_of
from aisle.settings import Settings
from aisle.stack import Stack
from benchmarks.bench_foldin import ROOT, machine, write_result
from benchmarks.common import SHARED_DATA
from benchmarks.ingest_memory import breakdown
from benchmarks.ingest_probe import (
    AppliedProbe,
    CpuMeter,
    lua_usage,
    sources,
    used_memory,
    wait_group,
    watch,
)
from benchmarks.ingest_readers import ReadTiming, decode_only, pipeline_in_process
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore
from models.artifacts import ModelArtifact, publish_model
from models.train import train_once
from streams.lag import end_offsets
from streams.topics import ensure_topics

DATA = SHARED_DATA
TAOBAO = DATA / "taobao_userbehavior" / "userbehavior_sample.csv.gz"
RETAIL = DATA / "online_retail" / "online_retail.csv.gz"
QUICK_ROWS = 20_000
ROUNDS = 3
RUN_TIMEOUT_S = 900.0
JOIN_TIMEOUT_S = 120.0
CODE_PATHS = ("aisle", "streams", "feature_store", "models")

LABELS = {
    "a": "aiokafka fetch + decode",
    "b": "1 Faust worker",
    "c": "1 worker + model fold-in",
    "d": "BatchProcessor, no Faust",
    "e": "2 workers, one group",
    "s": "1 worker, stock Faust agents",
    "w": "b, writes wait for replies",
    "v": "c, writes wait for replies",
}

# Wide enough for the tables when the output goes to a file.
console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass
class Workload:
    """One dataset in topics of its own, and everything measured on it."""

    name: str
    settings: Settings
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    baselines: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    model: ModelArtifact | None = None

    @property
    def total(self) -> int:
        return sum(self.ends.values())

    def variant(self, code: str) -> Settings:
        """Same topics; a consumer group, key prefix and data dir of its own."""
        s = self.settings
        name = f"{s.worker.app_id}-{code}"
        return s.model_copy(update={
            "worker": s.worker.model_copy(update={"app_id": name}),
            "features": s.features.model_copy(update={"key_prefix": name}),
            "data_dir": s.data_dir / code,
        })


@dataclass
class Bench:
    client: aioredis.Redis
    servers: dict[str, int]

    def server_pids(self, *names: str) -> dict[str, int]:
        return {name: self.servers[name] for name in names}


def workload(base: Settings, name: str, tag: str) -> Workload:
    topics = base.topics.model_copy(update={
        "events": f"bench.{tag}.{name}.events", "catalog": f"bench.{tag}.{name}.catalog",
        "deadletter": f"bench.{tag}.{name}.dlq"})
    settings = base.model_copy(update={
        "topics": topics,
        "worker": base.worker.model_copy(update={"app_id": f"bench-{tag}-{name}"}),
        "data_dir": base.data_dir / name})
    return Workload(name, settings)


async def produce(w: Workload, path: Path, limit_rows: int | None) -> None:
    await ensure_topics(w.settings)
    started = time.perf_counter()
    stats = await replay_file(w.settings, path, limit_rows=limit_rows)
    produce_s = time.perf_counter() - started
    w.ends = await end_offsets(w.settings, [w.settings.topics.events, w.settings.topics.catalog])
    if w.total != stats.events_emitted:
        raise RuntimeError(f"{w.name}: produced {stats.events_emitted} events but the "
                           f"topics end at {w.total} records")
    w.extra.update(dataset=path.name, rows_read=stats.rows_read, events=w.total,
                   events_by_type=dict(sorted(stats.events.items())),
                   produce_s=round(produce_s, 2),
                   partitions=w.settings.topics.partitions)
    console.print(f"[bold]{w.name}[/bold]: produced {w.total:,} events in {produce_s:.1f}s")


# ------------------------------------------------------------------ the variants

async def baseline(bench: Bench, w: Workload, warm_up: bool = False) -> dict[str, Any]:
    meter = CpuMeter({"this process": os.getpid(), **bench.server_pids("broker")})
    meter.start()
    timing = await decode_only(w.settings, w.ends)
    meter.stop()
    row = _reader_row("a", timing, meter)
    if warm_up:
        console.print(f"  a  {row['events_per_s']:>9,.0f} events/s (warm-up, not counted)")
        return row
    w.baselines.append(row)
    console.print(f"  a  {row['events_per_s']:>9,.0f} events/s")
    return row


async def in_process(bench: Bench, w: Workload, rnd: int) -> dict[str, Any]:
    s = w.variant(f"d{rnd}")
    meter = CpuMeter({"this process": os.getpid(), **bench.server_pids("valkey", "broker")})
    lua_before = await lua_usage(bench.client)
    meter.start()
    timing, processor = await pipeline_in_process(s, w.ends)
    meter.stop()
    row = _reader_row("d", timing, meter)
    row.update(_lua_delta(lua_before, await lua_usage(bench.client)))
    total = processor.counters.total
    row["applied"] = total.applied
    if total.applied != w.total:
        raise RuntimeError(f"d applied {total.applied} of {w.total} events")
    return row


def _reader_row(code: str, timing: ReadTiming, meter: CpuMeter) -> dict[str, Any]:
    window = timing.done_s - timing.started_s
    return {"variant": code, "label": LABELS[code], "events": timing.records,
            "events_per_s": round(timing.events_per_s), "steady_s": round(timing.steady_s, 3),
            "first_batch_records": timing.first_batch,
            "startup_s": round(timing.first_s - timing.started_s, 3),
            "cpu_s": meter.used, "others_cpu_s": meter.others,
            "main_thread_shares": meter.shares,
            "cpu_window_s": round(window, 3)}


async def workers(bench: Bench, w: Workload, code: str, rnd: int, count: int,
                  model: ModelArtifact | None = None) -> dict[str, Any]:
    s = w.variant(f"{code}{rnd}")
    if code in "swv":
        s = s.model_copy(update={"worker": s.worker.model_copy(
            update={"batch_consumer": False} if code == "s" else {"write_ahead": False})})
    keys = Keys(s.features.key_prefix, s.features.shards)
    lock = keys.control("rebuild")
    await bench.client.set(lock, b"benchmark")
    if model is not None:
        await publish_model(bench.client, s.features.key_prefix, model)
    group = Stack(s)
    try:
        spawned = time.perf_counter()
        for _ in range(count):
            group.add_worker()
        ready = await wait_group(s, count, JOIN_TIMEOUT_S)
        pids = {p.name: p.proc.pid for p in group.workers}
        meter = CpuMeter({**pids, **bench.server_pids("valkey", "broker"),
                          "this process (poller)": os.getpid()})
        lua_before = await lua_usage(bench.client)
        meter.start()
        released = time.perf_counter()
        await bench.client.delete(lock)
        progress = await watch(AppliedProbe(bench.client, keys, sources(w.ends)),
                               RUN_TIMEOUT_S, _all_alive(group))
        meter.stop()
        lua = _lua_delta(lua_before, await lua_usage(bench.client))
    finally:
        group.stop()
        await bench.client.delete(lock)
    return {"variant": code, "label": LABELS[code], "events": progress.total,
            "events_per_s": round(progress.events_per_s),
            "steady_s": round(progress.steady_s, 3),
            "first_sighting_records": progress.first_applied,
            "startup_s": round(ready - spawned, 3),
            "release_to_first_s": round(progress.first_s - released, 3),
            "cpu_s": meter.used, "others_cpu_s": meter.others,
            "main_thread_shares": meter.shares,
            "cpu_window_s": round(progress.done_s - released, 3), **lua}


def _all_alive(group: Stack) -> Callable[[], None]:
    def check() -> None:
        for p in group.workers:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode}; see {p.log_path}")

    return check


def _lua_delta(before: tuple[int, float], after: tuple[int, float]) -> dict[str, Any]:
    return {"lua_calls": after[0] - before[0], "lua_server_s": round(after[1] - before[1], 3)}


# ------------------------------------------------------------------ the run

async def run_workload(bench: Bench, w: Workload, codes: str, rounds: int) -> None:
    """Rounds of every variant, each between two baselines; memory after the first b,
    and the model for c trained once, on the first b's state."""
    await baseline(bench, w, warm_up=True)  # the broker's first read of a topic is slower
    await baseline(bench, w)
    for rnd in range(1, rounds + 1):
        for code in codes:
            row = await _variant(bench, w, code, rnd)
            after = await baseline(bench, w)
            around = statistics.fmean([w.baselines[-2]["events_per_s"], after["events_per_s"]])
            row.update(round=rnd, baseline_events_per_s=round(around),
                       ratio_to_baseline=round(row["events_per_s"] / around, 4))
            w.rows.append(row)
            if code != "b" or rnd > 1:  # b1's state is still to be measured and trained on
                await wipe(bench.client, w.variant(f"{code}{rnd}"))
            console.print(f"  {code}  {row['events_per_s']:>9,.0f} events/s "
                          f"({row['ratio_to_baseline']:.3f}x baseline), round {rnd}")
    w.extra["summary"] = summarise(w.rows)
    pairs = [(b["events_per_s"], e["events_per_s"]) for b in w.rows for e in w.rows
             if b["variant"] == "b" and e["variant"] == "e" and b["round"] == e["round"]]
    if pairs:
        w.extra["two_workers_over_one"] = round(statistics.median(e / b for b, e in pairs), 3)


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: medians over the rounds, and the spread."""
    out: dict[str, dict[str, Any]] = {}
    for code in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == code]
        rates = [r["events_per_s"] for r in mine]
        cpu: dict[str, list[float]] = {}
        for r in mine:
            for name, secs in r["cpu_s"].items():
                cpu.setdefault(name, []).append(secs)
        out[code] = {
            "label": LABELS[code], "rounds": len(mine),
            "events_per_s_median": round(statistics.median(rates)),
            "events_per_s_min": min(rates), "events_per_s_max": max(rates),
            "ratio_to_baseline_median": round(
                statistics.median(r["ratio_to_baseline"] for r in mine), 4),
            "startup_s_median": round(statistics.median(r["startup_s"] for r in mine), 2),
            "steady_s_median": round(statistics.median(r["steady_s"] for r in mine), 2),
            "cpu_s_median": {n: round(statistics.median(v), 2) for n, v in cpu.items()},
            # CPU per event moves far less with the neighbours' load than wall time does.
            "cpu_us_per_event_median": {
                n: round(statistics.median(v) / mine[0]["events"] * 1e6, 1)
                for n, v in cpu.items()},
            "others_cpu_s_median": round(statistics.median(r["others_cpu_s"] for r in mine), 2),
            "lua_server_s_median": round(
                statistics.median(r.get("lua_server_s", 0.0) for r in mine), 2),
            # Main threads' wall time: on a core / waiting for one / blocked (ingest_probe).
            "main_thread_shares_median": {
                n: {part: round(statistics.median(r["main_thread_shares"][n][part]
                                                  for r in mine), 3)
                    for part in ("on_cpu", "runqueue", "blocked")}
                for n in mine[0].get("main_thread_shares", {})},
        }
    return out


async def _variant(bench: Bench, w: Workload, code: str, rnd: int) -> dict[str, Any]:
    steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "b": lambda: _with_memory(bench, w, rnd),
        "c": lambda: _with_model(bench, w, rnd),
        "d": lambda: in_process(bench, w, rnd),
        "e": lambda: workers(bench, w, "e", rnd, 2),
        "s": lambda: workers(bench, w, "s", rnd, 1),
        "w": lambda: workers(bench, w, "w", rnd, 1),
        "v": lambda: _with_model(bench, w, rnd, "v"),
    }
    return await steps[code]()


async def _with_memory(bench: Bench, w: Workload, rnd: int) -> dict[str, Any]:
    if rnd > 1:
        return await workers(bench, w, "b", rnd, 1)
    before = await used_memory(bench.client)
    row = await workers(bench, w, "b", rnd, 1)
    delta = await used_memory(bench.client) - before
    s = w.variant(f"b{rnd}")
    w.extra["memory_after_b"] = await breakdown(
        bench.client, Keys(s.features.key_prefix, s.features.shards), delta)
    return row


async def _with_model(bench: Bench, w: Workload, rnd: int, code: str = "c",
                      ) -> dict[str, Any]:
    if w.model is None:
        started = time.perf_counter()
        w.model = await train_once(w.variant("b1"), bench.client)
        w.extra["model_for_c"] = {**w.model.stats, "factors": w.model.item_factors.shape[1],
                                  "train_once_s": round(time.perf_counter() - started, 2)}
        await wipe(bench.client, w.variant("b1"))
    row = await workers(bench, w, code, rnd, 1, model=w.model)
    row["customers_with_vector"], row["customers"] = await _vectors(
        bench.client, w.variant(f"{code}{rnd}"))
    return row


async def wipe(client: aioredis.Redis, s: Settings) -> None:
    """Drop a variant's state once measured, so every variant meets a keyspace of about
    the same size (a growing one would tax the later ones)."""
    keys = Keys(s.features.key_prefix, s.features.shards)
    await RedisStore(client, keys, s.features.dedupe_window_s).wipe()


async def _vectors(client: aioredis.Redis, s: Settings) -> tuple[int, int]:
    """How many of the prefix's customers have a fold-in vector (all should)."""
    keys = Keys(s.features.key_prefix, s.features.shards)
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.smembers(keys.users(shard))
    users = [u.decode() for found in await pipe.execute() for u in found]
    pipe = client.pipeline(transaction=False)
    for uid in users:
        pipe.exists(keys.user(uid, "vec"))
    return sum(await pipe.execute()), len(users)


async def run(stack: Stack, quick: bool, retail: bool, rounds: int,
              codes: str = "bcdes") -> dict[str, Any]:
    base = stack.settings
    client = aioredis.Redis.from_url(base.redis_url or "", decode_responses=False)
    pids = {p.name: p.proc.pid for p in stack.embedded.processes}
    bench = Bench(client, {"valkey": pids["valkey"], "broker": pids["broker"]})
    tag = time.strftime("%H%M%S")
    plan = [(workload(base, "taobao", tag), TAOBAO, QUICK_ROWS if quick else None, codes)]
    if retail and not quick:
        plan.append((workload(base, "online_retail", tag), RETAIL, None, "bd"))
    out: dict[str, Any] = {}
    try:
        for w, path, limit, codes in plan:
            await produce(w, path, limit)
            await run_workload(bench, w, codes, rounds)
            out[w.name] = {**w.extra, "variants": w.rows, "baselines": w.baselines}
    finally:
        await client.aclose()
    return out


# ------------------------------------------------------------------ report

def report(workloads: dict[str, Any]) -> None:
    for name, w in workloads.items():
        rounds = max(r["round"] for r in w["variants"])
        table = Table(title=f"ingest: {name}, {w['events']:,} events, {w['partitions']} "
                            f"partitions per topic; medians of {rounds} round(s)",
                      title_justify="left")
        for col in ("", "variant", "events/s", "(min–max)", "× base", "start-up s",
                    "steady s", "CPU µs/event: ours", "Valkey", "others' CPU s", "Lua s"):
            table.add_column(col, justify="left" if col in ("", "variant") else "right")
        for code, v in w["summary"].items():
            per_event = v["cpu_us_per_event_median"]
            ours = sum(x for k, x in per_event.items()  # the poller is not the pipeline
                       if k.startswith(("worker", "this process")) and "poller" not in k)
            table.add_row(code, v["label"], f"{v['events_per_s_median']:,}",
                          f"{v['events_per_s_min']:,}–{v['events_per_s_max']:,}",
                          f"{v['ratio_to_baseline_median']:.3f}", f"{v['startup_s_median']:.2f}",
                          f"{v['steady_s_median']:.2f}", f"{ours:.1f}",
                          f"{per_event.get('valkey', 0):.1f}", f"{v['others_cpu_s_median']:.1f}",
                          f"{v['lua_server_s_median']:.2f}")
        console.print(table)
        for code, v in w["summary"].items():
            shares = v.get("main_thread_shares_median", {})
            parts = [f"{n} {sh['on_cpu']:.0%}/{sh['runqueue']:.0%}/{sh['blocked']:.0%}"
                     for n, sh in shares.items() if "poller" not in n]
            if parts:
                console.print(f"  {code} main threads, on a core/waiting for one/blocked: "
                              + ", ".join(parts))
        base = [b["events_per_s"] for b in w["baselines"]]
        console.print(f"baseline a, before each variant and after the last (events/s): "
                      f"{', '.join(f'{b:,}' for b in base)}")
        if "two_workers_over_one" in w:
            console.print(f"two workers / one worker (median of rounds): "
                          f"{w['two_workers_over_one']:.2f}")
        if mem := w.get("memory_after_b"):
            console.print(
                f"Redis after b: +{mem['used_memory_delta_bytes'] / 2**20:.1f} MiB for "
                f"{mem['customers']:,} customers and {mem['catalog_items']:,} items = "
                f"{mem['naive_bytes_per_customer']:,} B per customer all-in; measured keys: "
                f"{mem['bytes_per_customer_keys']:,} B per customer, "
                f"{mem['bytes_per_item_keys']:,} B per item, per-shard keys "
                f"{mem['per_shard_keys_bytes'] / 2**20:.1f} MiB, unaccounted "
                f"{mem['unaccounted_share']:.1%}")
        if model := w.get("model_for_c"):
            console.print(f"model for c (train_once on b's state): {model}")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()


def tree_state() -> dict[str, Any]:
    """The commit, the tracked files changed since, and a digest of the code measured.

    Others edit this tree while benchmarks run, and a worker imports the code when it
    is spawned, so a result is one version's only if the digest (committed trees of the
    code packages plus their uncommitted changes; tests and docs do not count) is the
    same at the end as at the start.
    """
    trees = _git("rev-parse", *(f"HEAD:{p}" for p in CODE_PATHS))
    diff = subprocess.run(["git", "diff", "HEAD", "--", *CODE_PATHS], cwd=ROOT,
                          capture_output=True, check=False).stdout
    return {"git": _git("rev-parse", "--short", "HEAD") or None,
            "git_modified": _git("diff", "--name-only", "HEAD").split(),
            "code_sha1": hashlib.sha1(trees.encode() + diff).hexdigest()[:12]}


def machine_info(tree_at_start: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine, the date, and the code: as it is now and, when given, whether it
    changed since ``tree_at_start`` was taken."""
    now = tree_state()
    info = {**machine(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **now}
    if tree_at_start is not None:
        changed = tree_at_start["code_sha1"] != now["code_sha1"]
        info["code_changed_during_run"] = changed
        if changed:
            info["tree_at_start"] = tree_at_start
    return info


def bench_settings(data_dir: Path) -> Settings:
    # The scheduled retrain is off so no variant trains in the middle of its window.
    return Settings(data_dir=data_dir, log_level="warning", worker={"retrain_interval_s": 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} Taobao rows")
    parser.add_argument("--retail", action="store_true", help="also Online Retail (a, b, d)")
    parser.add_argument("--variants", default="bcdes", help="which of b, c, d, e, s, v, w to run")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"rounds of every variant (default {ROUNDS}, --quick 1)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    tree = tree_state()
    tmp = Path(tempfile.mkdtemp(prefix="aisle-bench-ingest-"))
    stack = Stack.start(bench_settings(tmp), workers=0, api=False)
    # The embedded Valkey preloads jemalloc when the machine has it (aisle.runtime).
    store_malloc = next(allocator_of(p.proc.pid) for p in stack.embedded.processes
                        if p.name == "valkey")
    console.print(f"embedded Valkey malloc: {store_malloc}")
    try:
        workloads = asyncio.run(run(stack, args.quick, args.retail, rounds,
                                         args.variants))
    except BaseException:
        console.print(f"[red]failed; the logs are kept in {tmp}[/red]")
        raise
    finally:
        stack.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    s = stack.settings
    result = {"benchmark": "ingest", "machine": machine_info(tree), "quick": args.quick,
              "rounds": rounds,
              "settings": {"batch_max": s.worker.batch_max,
                           "batch_within_s": s.worker.batch_within_s,
                           "shards": s.features.shards, "partitions": s.topics.partitions,
                           "factors": s.model.factors},
              "store_malloc": store_malloc,
              "method": __doc__.split("\n\n", 2)[2].strip(),
              "workloads": workloads}
    report(workloads)
    name = "ingest_quick.json" if args.quick else "ingest.json"
    console.print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
