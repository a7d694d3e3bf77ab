"""Push candidates on the Taobao slice: how many, for what, and what the rules hold back.

Run from the repo root: ``python -m benchmarks.bench_push [--limit ROWS] [--window-min M]
[--delays-min 60 10]`` (one replay per cart-abandonment delay, side by side).
Writes ``benchmarks/results/push.json`` and prints a table.

The slice is lived through in event time: every ``--window-min`` minutes of data (15)
its events are applied with ``BatchProcessor`` (the worker's write path, on an embedded
Valkey), then the push drain runs on the log's clock until nothing is due; its
``push.decided`` events are applied the same way, as the worker would fold them from the
log. A loopback producer stands in for Kafka (candidates and decisions are kept in
memory), so the figures are the rules' and not the broker's.

Taobao has views, carts, favourites and orders but no prices, consent, offers or
lifecycle changes, and spans 2.2 hours, so cart abandonment is the only trigger it
exercises (the customer sweep for replenishment and tier nudges does not run here). Its customers
are in China: ``default_timezone`` is Asia/Shanghai for the run. Reported: candidates
per hour of data time by reason, the share of decided triggers each rule suppressed,
and, as the baseline for cost, the wall seconds of applying the events next to the wall
seconds of draining (same process, same run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from aisle.datasets import open_dataset
from aisle.runtime import start_store
from aisle.settings import PushSettings, Settings
from benchmarks.common import cpu_model
from feature_store.keys import Keys
from feature_store.redis_store import RedisStore
from feature_store.updates import Folder
from push.candidate import decode_candidate
from push.drain import PushDrainer
from streams.events import AnyEvent, Event, encode_event
from streams.pipeline import BatchProcessor, Record

ROOT = Path(__file__).resolve().parents[1]
TAOBAO = next(p / "shared/data/taobao_userbehavior/userbehavior_sample.csv.gz"
              for p in ROOT.parents if (p / "shared/data").is_dir())
RESULTS = ROOT / "benchmarks" / "results"


class Loopback:
    """The calls the drain makes on a producer, kept in memory."""

    def __init__(self) -> None:
        self.candidates: list[bytes] = []
        self.events: list[Event] = []

    async def partitions(self, topic: str) -> int:
        return 8

    async def send_to(self, topic: str, value: bytes, key: bytes, partition: int) -> int:
        self.candidates.append(value)
        return len(self.candidates) - 1

    async def send_events(self, events: list[Event]) -> int:
        self.events += events
        return len(events)


class LoopbackDrainer(PushDrainer):
    """No broker to ask for end offsets: the in-flight notes record 0 (they are only
    read when a worker died mid-send, which does not happen here)."""

    async def _end_offsets(self, topic: str, partitions: set[int]) -> dict[int, int]:
        return dict.fromkeys(partitions, 0)


class Replay:
    def __init__(self, processor: BatchProcessor) -> None:
        self.processor = processor
        self.offset = 0
        self.apply_s = 0.0

    async def apply(self, events: list[Any]) -> None:
        records = []
        for e in events:
            records.append(Record("bench.events", 0, self.offset, e.routing_key.encode(),
                                  encode_event(e)))
            self.offset += 1
        started = time.perf_counter()
        await self.processor.process(records)
        self.apply_s += time.perf_counter() - started


async def run(limit: int | None, window_s: float, delay_s: float) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="bench-push-"))
    store_proc, url = start_store(log_dir)
    push = PushSettings(default_timezone="Asia/Shanghai", claim_batch=2000,
                        cart_abandon_delay_s=delay_s)
    settings = Settings(redis_url=url, kafka_url="kafka://unused:9092", push=push,
                        features={"key_prefix": f"bp{uuid.uuid4().hex[:6]}", "shards": 8})
    client = aioredis.Redis.from_url(url)
    try:
        keys = Keys(settings.features.key_prefix, settings.features.shards)
        loop = Loopback()
        processor = BatchProcessor(RedisStore(client, keys, settings.features.dedupe_window_s),
                                   Folder(keys, settings.features, settings.model, push),
                                   None, respect_rebuild=False)
        replay = Replay(processor)
        drainer = LoopbackDrainer(settings, client, loop)  # type: ignore[arg-type]
        events, stats = open_dataset(TAOBAO, limit_rows=limit)
        drain_s, passes, window_end = 0.0, 0, None
        chunk: list[AnyEvent] = []
        first_ts = last_ts = 0.0
        for e in events:
            if window_end is None:
                window_end, first_ts = e.ts + window_s, e.ts
            if e.ts >= window_end and chunk:
                await replay.apply(chunk)
                chunk = []
                drain_s, passes = await _drain(drainer, loop, replay, drain_s, passes)
                window_end = e.ts + window_s
            chunk.append(e)
            last_ts = e.ts
        await replay.apply(chunk)
        drain_s, passes = await _drain(drainer, loop, replay, drain_s, passes)
        counts: Counter[str] = Counter()
        for shard in range(keys.shards):
            for name, n in (await client.hgetall(keys.push_stats(shard))).items():
                counts[name.decode()] += int(float(n))
        pending = sum([await client.zcard(keys.push_due(s)) for s in range(keys.shards)])
        return _report(loop, counts, pending, replay, drain_s, passes, first_ts, last_ts,
                       sum(stats.events.values()), push, stats.events)
    finally:
        await client.aclose()
        store_proc.stop()


async def _drain(drainer: PushDrainer, loop: Loopback, replay: Replay, drain_s: float,
                 passes: int) -> tuple[float, int]:
    """Drain until nothing is due on the log's clock; fold each pass's decisions."""
    while True:
        started = time.perf_counter()
        result = await drainer.drain()
        drain_s += time.perf_counter() - started
        passes += 1
        decided, loop.events = loop.events, []
        if decided:
            await replay.apply(decided)
        if not result.claimed:
            return drain_s, passes


def _report(loop: Loopback, counts: Counter[str], pending: int, replay: Replay,
            drain_s: float, passes: int, first_ts: float, last_ts: float, events: int,
            push: PushSettings, by_type: dict[str, int]) -> dict[str, Any]:
    cands = [decode_candidate(v) for v in loop.candidates]
    hours = max((last_ts - first_ts) / 3600, 1e-9)
    per_hour: dict[str, Counter[str]] = {}
    by_hour_of_day: Counter[int] = Counter()
    for c in cands:
        t = datetime.fromisoformat(c.time.replace("Z", "+00:00"))
        per_hour.setdefault(c.data.reason, Counter())[t.strftime("%Y-%m-%dT%H")] += 1
        by_hour_of_day[(t.hour + 8) % 24] += 1  # Shanghai
    decided = sum(n for k, n in counts.items() if not k.startswith("held:"))
    dropped = {k.split(":", 1)[1]: n for k, n in counts.items() if k.startswith("dropped:")}
    return {
        "benchmark": "push", "dataset": str(TAOBAO.name), "events": events,
        "events_by_type": by_type,
        "data_hours": round(hours, 1),
        "settings": push.model_dump(),
        "candidates": len(cands),
        "candidates_per_hour": {r: round(sum(h.values()) / hours, 2)
                                for r, h in per_hour.items()},
        "peak_hour": {r: max(h.values()) for r, h in per_hour.items()},
        "candidates_by_local_hour": dict(sorted(by_hour_of_day.items())),
        "per_hour_series": {r: dict(sorted(h.items())) for r, h in per_hour.items()},
        "decided_triggers": decided,
        "held_for_quiet_hours": sum(n for k, n in counts.items() if k.startswith("held:")),
        "suppressed_share": {rule: round(n / decided, 4) for rule, n in
                             sorted(dropped.items(), key=lambda kv: -kv[1])},
        "emitted_share": round(len(cands) / decided, 4) if decided else 0.0,
        "still_scheduled": pending,
        "apply_s": round(replay.apply_s, 2), "drain_s": round(drain_s, 2),
        "drain_passes": passes,
        "drain_ms_per_decision": round(1000 * drain_s / max(decided, 1), 3),
        "apply_us_per_event": round(1e6 * replay.apply_s / max(replay.offset, 1), 1),
        "machine": {"cpu": cpu_model(), "python": platform.python_version()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None, help="Taobao rows (default: all)")
    ap.add_argument("--window-min", type=float, default=15.0)
    ap.add_argument("--delays-min", type=float, nargs="+", default=[60.0, 10.0],
                    help="cart-abandonment delays to compare (one replay each)")
    args = ap.parse_args()
    reports = []
    for delay in args.delays_min:
        report = asyncio.run(run(args.limit, args.window_min * 60, delay * 60))
        print(f"\n--- cart abandonment after {delay:g} min")
        _print(report)
        reports.append(report)
    RESULTS.mkdir(exist_ok=True)
    name = "push.json" if args.limit is None else "push_quick.json"
    (RESULTS / name).write_text(json.dumps({"runs": reports}, indent=1) + "\n")
    print(f"written: {RESULTS / name}  ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)")


def _print(report: dict[str, Any]) -> None:
    print(f"{report['events']:,} events over {report['data_hours']} h of data time; "
          f"{report['candidates']:,} candidates, {report['decided_triggers']:,} triggers decided")
    print(f"{'reason':<16}{'per hour':>10}{'peak hour':>11}")
    for r, n in report["candidates_per_hour"].items():
        print(f"{r:<16}{n:>10}{report['peak_hour'][r]:>11}")
    print("suppressed (share of decided triggers):")
    for rule, share in report["suppressed_share"].items():
        print(f"  {rule:<22}{100 * share:6.1f} %")
    print(f"emitted {100 * report['emitted_share']:.1f} %, held for quiet hours "
          f"{report['held_for_quiet_hours']:,} times")
    print(f"cost: applying the events {report['apply_s']} s "
          f"({report['apply_us_per_event']} µs/event) vs draining {report['drain_s']} s "
          f"({report['drain_ms_per_decision']} ms/decision, {report['drain_passes']} passes)")


if __name__ == "__main__":
    main()
