"""Soak: steady ingest and steady serving at the same time, for minutes, watching for drift.

Run from the repo root: ``python -m benchmarks.bench_soak [--minutes 10] [--event-rate 500]
[--request-rate 200]``. Writes ``benchmarks/results/soak.json`` and ``soak.png``.

Starts the stack on Online Retail and trains (``serving_stack``), then for ``--minutes``
holds two loads together:

* events: Taobao behaviours, re-stamped with fresh ids and the current time so every one
  is new to the store, produced with ``EventProducer`` in small batches on a fixed
  schedule from a thread of this process;
* requests: open loop from the separate generator process (``serving_load``), related
  items, recommendations and offers mixed 50/40/10 over real item and customer ids, run
  as back-to-back windows so each window has its own percentiles and error counts.

After each window it samples how many events were produced and applied, the worker
group's lag, the RSS of the worker, the API and Valkey, Valkey's ``used_memory`` and the
CPU each process (and everything else on the machine) used. A soak passes when these
stay flat: latency, lag and memory that climb with time are what it is looking for.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import queue
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import redis
from rich.console import Console
from rich.table import Table

from aisle.datasets import open_dataset
from aisle.settings import Settings
from benchmarks.serving_cpu import _machine_s, _process_s
from benchmarks.serving_load import LoadGenerator, summary_ms
from benchmarks.serving_report import RESULTS, machine, write_json
from benchmarks.serving_stack import DATA, Loaded, item_ids, loaded_stack, user_ids
from feature_store.keys import Keys
from feature_store.redis_store import queue_applied, sum_applied
from streams.events import AnyEvent
from streams.lag import group_lag, wait_caught_up
from streams.topics import EventProducer

EVENTS = (Path(__file__).resolve().parents[2]
          / "shared" / "data" / "taobao_userbehavior" / "userbehavior_sample.csv.gz")
MIX = {"related": 0.5, "recommendations": 0.4, "offers": 0.1}
SEED = 11
TICK_S = 0.1          # the producer sends one batch per tick
CATCH_UP_S = 120.0    # after the soak: how long we wait for the worker to drain its lag
NOTES = {
    "latency": "open loop, ms from each request's due time to the end of its answer "
               "(serving_load); each window is one generator job, so between windows "
               "there is a gap of a few ms (drain of the last answers, reconnect)",
    "errors": "failed (refused, reset, timed out) + unfinished after the window's drain; "
              "non_200 counted apart; degraded: 200s answered without the store",
    "events": "produced = acknowledged by the broker; applied = the worker's 'applied' "
              "counter in Valkey (new events folded in; duplicates not counted); "
              "lag = group_lag summed over the events and catalog topics",
    "rss": "VmRSS from /proc/<pid>/status of the worker, API, Valkey and broker processes, "
           "MiB; the embedded broker (Tansu, memory storage) holds the whole log in memory",
    "cpu": "share of the whole machine per process over each window, from /proc; "
           "others = the machine's busy time outside the benchmark's processes "
           "(neighbours such as a test suite, and the kernel)",
}


def applied_now(client: redis.Redis, keys: Keys) -> int:
    pipe = client.pipeline(transaction=False)
    queue_applied(pipe, keys)
    return sum_applied(pipe.execute())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_soak",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--event-rate", type=float, default=500.0, help="events/s into Kafka")
    p.add_argument("--request-rate", type=float, default=200.0, help="requests/s, open loop")
    p.add_argument("--window", type=float, default=10.0, help="seconds per sample")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--limit-rows", type=int, default=100_000, help="Online Retail rows")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--events", type=Path, default=EVENTS)
    p.add_argument("--out", default="soak", help="result file stem in benchmarks/results")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.event_rate <= 0 or args.request_rate <= 0:
        p.error("--minutes, --event-rate and --request-rate must be positive")
    return args


# ---------------------------------------------------------------- events
def fresh_events(path: Path, run_id: str) -> Iterator[AnyEvent]:
    """The file's events over and over, each with a new id and the current time."""
    n = 0
    while True:
        events, _ = open_dataset(path)
        empty = True
        for event in events:
            empty = False
            n += 1
            yield msgspec.structs.replace(event, event_id=f"soak-{run_id}-{n}",
                                          occurred_at=datetime.now(UTC), source="soak")
        if empty:
            raise ValueError(f"{path} holds no events")


@dataclass
class Producer:
    """Sends ``rate`` events/s in one batch per tick until ``total`` or ``stop``."""

    settings: Settings
    path: Path
    rate: float
    total: int
    stop: threading.Event = field(default_factory=threading.Event)
    produced: int = 0                      # acknowledged by the broker
    ack_ms: list[float] = field(default_factory=list)  # per batch, send -> all acked
    behind_max: int = 0                    # most events ever due but not yet sent
    error: str | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except Exception as exc:  # reported with the results, not lost in a thread
            self.error = f"{type(exc).__name__}: {exc}"

    async def _produce(self) -> None:
        source = fresh_events(self.path, uuid.uuid4().hex[:8])
        async with EventProducer(self.settings) as producer:
            start = time.monotonic()
            tick = 0
            while self.produced < self.total and not self.stop.is_set():
                due = min(self.total, int(self.rate * (time.monotonic() - start)))
                self.behind_max = max(self.behind_max, due - self.produced)
                batch = [next(source) for _ in range(due - self.produced)]
                if batch:
                    sent = time.perf_counter()
                    self.produced += await producer.send_events(batch)
                    self.ack_ms.append((time.perf_counter() - sent) * 1e3)
                tick += 1
                await asyncio.sleep(max(0.0, start + tick * TICK_S - time.monotonic()))


# ---------------------------------------------------------------- requests
def request_mix(items: list[str], users: list[str], n: int, rng: random.Random,
                ) -> tuple[list[str], list[str]]:
    """``n`` paths drawn by :data:`MIX`, and the endpoint of each."""
    endpoints = rng.choices(list(MIX), weights=list(MIX.values()), k=n)
    paths = []
    for endpoint in endpoints:
        if endpoint == "related":
            paths.append(f"/v1/items/{quote(rng.choice(items), safe='')}/related?limit=10")
        else:
            user = quote(rng.choice(users), safe="")
            paths.append(f"/v1/users/{user}/{endpoint}" + ("?limit=10"
                         if endpoint == "recommendations" else ""))
    return paths, endpoints


@dataclass
class Window:
    raw: dict[str, Any]
    endpoints: list[str]
    started: float
    ended: float


def request_windows(gen: LoadGenerator, api_url: str, items: list[str], users: list[str],
                    args: argparse.Namespace, out: queue.Queue[Window | Exception],
                    stop: threading.Event) -> None:
    """Back-to-back open-loop windows until the soak's time is up (runs in a thread)."""
    rng = random.Random(SEED)
    n = max(1, round(args.request_rate * args.window))
    try:
        for _ in range(max(1, round(args.minutes * 60 / args.window))):
            if stop.is_set():
                break
            paths, endpoints = request_mix(items, users, n, rng)
            started = time.monotonic()
            raw = gen.run(mode="open", url=api_url, paths=paths, rate=args.request_rate,
                          seconds=args.window, connections=args.connections, drain_s=5.0)
            out.put(Window(raw, endpoints, started, time.monotonic()))
    except Exception as exc:
        out.put(exc)
    finally:
        out.put(StopIteration())  # type: ignore[arg-type]


# ---------------------------------------------------------------- samples
def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


class Sampler:
    """Reads the store, the broker and /proc; each ``sample()`` covers the time since the
    last one."""

    def __init__(self, loaded: Loaded, gen: LoadGenerator) -> None:
        stack = loaded.stack
        self.settings = stack.settings
        self.keys = Keys(self.settings.features.key_prefix, self.settings.features.shards)
        self.client = redis.Redis.from_url(self.settings.redis_url or "")
        managed = [*stack.embedded.processes, *stack.workers, *([stack.api] if stack.api else [])]
        self.pids = {**{m.name: m.proc.pid for m in managed}, "generator": gen.proc.pid,
                     "bench": os.getpid()}
        # The embedded broker keeps its log in memory, so it grows with every event too.
        self.rss_of = {"worker": self.pids.get("worker-0"), "api": self.pids.get("api"),
                       "valkey": self.pids.get("valkey"), "broker": self.pids.get("broker")}
        self._cpu = self._cpu_now()

    def close(self) -> None:
        self.client.close()

    def _cpu_now(self) -> tuple[dict[str, float | None], tuple[float, float]]:
        return {n: _process_s(p) for n, p in self.pids.items()}, _machine_s()

    def cpu_since_last(self) -> dict[str, Any]:
        (before, (busy0, total0)), now = self._cpu, self._cpu_now()
        self._cpu = now
        after, (busy1, total1) = now
        span = total1 - total0
        if span <= 0:
            return {}
        used = {n: after[n] - b for n, b in before.items()           # type: ignore[operator]
                if b is not None and after[n] is not None}
        shares = {n: round(v / span, 3) for n, v in used.items()}
        shares["others"] = round(max(0.0, busy1 - busy0 - sum(used.values())) / span, 3)
        shares["machine_busy"] = round((busy1 - busy0) / span, 3)
        return shares

    def sample(self) -> dict[str, Any]:
        lag = asyncio.run(group_lag(self.settings))
        info = self.client.info("memory")
        return {
            "applied": applied_now(self.client, self.keys),
            "lag": sum(lag.values()),
            "used_memory_mib": round(int(info["used_memory"]) / 2**20, 1),
            "rss_mib": {n: rss_mib(p) if p else None for n, p in self.rss_of.items()},
            "cpu_share": self.cpu_since_last(),
        }


def window_row(n: int, w: Window, sample: dict[str, Any], produced: int, prev: dict[str, Any],
               t0: float) -> dict[str, Any]:
    raw = w.raw
    status = {int(k): v for k, v in raw["status"].items()}
    span = w.ended - prev["at"]
    return {
        "window": n, "t_s": round(w.ended - t0, 1),
        "requests": raw["requests"], "answered_rps": raw["answered_rps"],
        "dispatch_rps": raw["dispatch_rps"],
        "latency_ms": summary_ms([v / 1e3 for v in raw["latency_ms"]]),
        "errors": status.get(-1, 0) + raw["unfinished"], "error_kinds": raw["errors"],
        "non_200": sum(v for k, v in status.items() if k > 0 and k != 200),
        "status": raw["status"],
        "degraded": raw["degraded"],
        "events_produced": produced - prev["produced"],
        "events_applied": sample["applied"] - prev["applied"],
        "produce_eps": round((produced - prev["produced"]) / span, 1),
        "apply_eps": round((sample["applied"] - prev["applied"]) / span, 1),
        **sample,
    }


# ---------------------------------------------------------------- the soak
def soak(loaded: Loaded, gen: LoadGenerator, args: argparse.Namespace,
         console: Console) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = random.Random(SEED)
    items = item_ids(loaded, rng)
    users = [u for u in user_ids(loaded, rng) if not u.startswith("bench-new-")]
    warm_paths, _ = request_mix(items, users, 500, rng)
    gen.run(mode="closed", url=loaded.api_url, paths=warm_paths, seconds=2.0, warmup_s=0.0,
            connections=4)
    sampler = Sampler(loaded, gen)
    seconds = args.minutes * 60
    producer = Producer(loaded.stack.settings, args.events, args.event_rate,
                        total=round(args.event_rate * seconds))
    windows: queue.Queue[Window | Exception] = queue.Queue()
    stop = threading.Event()
    threads = [threading.Thread(target=producer.run, name="soak-producer", daemon=True),
               threading.Thread(target=request_windows, name="soak-requests", daemon=True,
                                args=(gen, loaded.api_url, items, users, args, windows, stop))]
    start_sample = sampler.sample()
    t0 = time.monotonic()
    prev = {"at": t0, "produced": 0, "applied": start_sample["applied"]}
    rows: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {e: [] for e in MIX}
    try:
        for thread in threads:
            thread.start()
        while True:
            got = windows.get(timeout=args.window + 60)
            if isinstance(got, StopIteration):
                break
            if isinstance(got, Exception):
                raise got
            produced = producer.produced
            row = window_row(len(rows), got, sampler.sample(), produced, prev, t0)
            prev = {"at": got.ended, "produced": produced, "applied": row["applied"]}
            # The generator asks for paths[i % len(paths)], and each window has one path
            # per request: latency i belongs to endpoints[i].
            for endpoint, ms in zip(got.endpoints, got.raw["latency_ms"], strict=True):
                latencies[endpoint].append(ms)
            rows.append(row)
            log_row(console, row)
    finally:
        stop.set()
        producer.stop.set()
        for thread in threads:
            thread.join(timeout=30)
    elapsed = time.monotonic() - t0
    end_sample = sampler.sample()
    caught_up_s = None
    try:
        caught_up_s = round(asyncio.run(wait_caught_up(loaded.stack.settings,
                                                       timeout=CATCH_UP_S)), 1)
    except TimeoutError:
        console.log(f"the worker did not catch up within {CATCH_UP_S:.0f}s of the soak's end")
    after_sample = sampler.sample()
    sampler.close()
    summary = summarise(rows, latencies, producer, start_sample, end_sample, after_sample,
                        caught_up_s, elapsed, args, sampler.pids)
    return summary, rows


def summarise(rows: list[dict[str, Any]], latencies: dict[str, list[float]],
              producer: Producer, start: dict[str, Any], end: dict[str, Any],
              after: dict[str, Any], caught_up_s: float | None, elapsed: float,
              args: argparse.Namespace, pids: dict[str, int]) -> dict[str, Any]:
    all_ms = [v for vs in latencies.values() for v in vs]
    answered = sum(r["requests"] - r["errors"] for r in rows)  # got an HTTP answer
    growth = {n: _delta(start["rss_mib"].get(n), end["rss_mib"].get(n)) for n in start["rss_mib"]}
    cpu_avg = {}
    for row in rows:
        for n, v in row["cpu_share"].items():
            cpu_avg[n] = cpu_avg.get(n, 0.0) + v / len(rows)
    ack = sorted(producer.ack_ms)
    return {
        "seconds": round(elapsed, 1), "windows": len(rows),
        "events": {
            "offered_eps": args.event_rate, "produced": producer.produced,
            "produced_eps": round(producer.produced / elapsed, 1),
            "applied": end["applied"] - start["applied"],
            "applied_eps": round((end["applied"] - start["applied"]) / elapsed, 1),
            "producer_behind_max": producer.behind_max, "producer_error": producer.error,
            "batch_ack_ms": {"p50": _q(ack, 0.5), "p99": _q(ack, 0.99),
                             "max": round(ack[-1], 1) if ack else None},
        },
        "requests": {
            "offered_rps": args.request_rate, "sent": sum(r["requests"] for r in rows),
            "answered": answered, "answered_rps": round(answered / elapsed, 1),
            "latency_ms": summary_ms([v / 1e3 for v in all_ms]),
            "by_endpoint_ms": {e: {"requests": len(vs), **summary_ms([v / 1e3 for v in vs])}
                               for e, vs in latencies.items()},
            "errors": sum(r["errors"] for r in rows),
            "non_200": sum(r["non_200"] for r in rows),
            "degraded": sum(r["degraded"] for r in rows),
            "window_p99_ms": {"min": min((r["latency_ms"]["p99"] for r in rows), default=None),
                              "max": max((r["latency_ms"]["p99"] for r in rows), default=None)},
        },
        "lag": {"at_start": start["lag"], "at_end": end["lag"],
                "max": max((r["lag"] for r in rows), default=None),
                "caught_up_after_s": caught_up_s, "after_catch_up": after["lag"]},
        "memory": {"rss_mib": {"start": start["rss_mib"], "end": end["rss_mib"],
                               "growth": growth},
                   "used_memory_mib": {"start": start["used_memory_mib"],
                                       "end": end["used_memory_mib"],
                                       "growth": _delta(start["used_memory_mib"],
                                                        end["used_memory_mib"])}},
        "cpu_share_mean": {n: round(v, 3) for n, v in cpu_avg.items()},
        "pids": pids,
    }


def _q(ordered: list[float], q: float) -> float | None:
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None


def _delta(a: float | None, b: float | None) -> float | None:
    return round(b - a, 1) if a is not None and b is not None else None


# ---------------------------------------------------------------- output
def log_row(console: Console, r: dict[str, Any]) -> None:
    rss = r["rss_mib"]
    console.log(f"t={r['t_s']:>5.0f}s p50 {r['latency_ms']['p50']:.1f} p99 "
                f"{r['latency_ms']['p99']:.1f} ms, {r['answered_rps']:.0f} req/s, err "
                f"{r['errors']}/{r['non_200']}, events {r['produce_eps']:.0f}/s produced "
                f"{r['apply_eps']:.0f}/s applied, lag {r['lag']}, RSS worker {rss['worker']} "
                f"api {rss['api']} valkey {rss['valkey']} broker {rss['broker']} MiB, used "
                f"{r['used_memory_mib']} MiB,"
                f" others {r['cpu_share'].get('others', math.nan):.0%}")


def print_tables(console: Console, result: dict[str, Any]) -> None:
    table = Table(title="Soak windows: latency from the due time (ms); events/s; RSS MiB; "
                        "others: machine share used outside the benchmark",
                  title_justify="left")
    for name in ("t s", "req/s", "p50", "p99", "max", "err", "non-200", "produced/s",
                 "applied/s", "lag", "worker", "api", "valkey", "broker", "used_memory",
                 "others"):
        table.add_column(name, justify="right")
    for r in result["windows"]:
        rss = r["rss_mib"]
        table.add_row(f"{r['t_s']:.0f}", f"{r['answered_rps']:.0f}",
                      f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p99']:.1f}",
                      f"{r['latency_ms']['max']:.0f}", str(r["errors"]), str(r["non_200"]),
                      f"{r['produce_eps']:.0f}", f"{r['apply_eps']:.0f}", str(r["lag"]),
                      *(str(rss[n]) for n in ("worker", "api", "valkey", "broker")),
                      str(r["used_memory_mib"]),
                      f"{r['cpu_share'].get('others', math.nan):.0%}")
    console.print(table)
    s = result["summary"]
    ev, rq, mem = s["events"], s["requests"], s["memory"]
    table = Table(title=f"Soak summary over {s['seconds']:.0f} s", title_justify="left")
    table.add_column("measure", justify="left")
    table.add_column("value", justify="left")
    lat = rq["latency_ms"]
    rows = [
        ("events produced", f"{ev['produced']:,} ({ev['produced_eps']:.0f}/s of "
                            f"{ev['offered_eps']:g} offered); batch ack p99 "
                            f"{ev['batch_ack_ms']['p99']} ms"),
        ("events applied", f"{ev['applied']:,} ({ev['applied_eps']:.0f}/s)"),
        ("requests", f"{rq['answered']:,} answered of {rq['sent']:,} "
                     f"({rq['answered_rps']:.0f}/s of {rq['offered_rps']:g} offered)"),
        ("latency ms", f"p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, p99 {lat['p99']:.1f}, "
                       f"p99.9 {lat['p99.9']:.1f}, max {lat['max']:.0f}; window p99 "
                       f"{rq['window_p99_ms']['min']:.1f}..{rq['window_p99_ms']['max']:.1f}"),
        *((f"  {e}", f"{v['requests']:,} requests: p50 {v['p50']:.1f}, p99 {v['p99']:.1f}")
          for e, v in rq["by_endpoint_ms"].items()),
        ("errors / non-200 / degraded", f"{rq['errors']} / {rq['non_200']} / {rq['degraded']}"),
        ("lag", f"start {s['lag']['at_start']}, end {s['lag']['at_end']}, max {s['lag']['max']}"
                f"; caught up {s['lag']['caught_up_after_s']} s after the end"),
        *((f"RSS {n} MiB", f"{mem['rss_mib']['start'][n]} -> {mem['rss_mib']['end'][n]} "
                           f"({mem['rss_mib']['growth'][n]:+})")
          for n in mem["rss_mib"]["start"] if mem["rss_mib"]["growth"][n] is not None),
        ("Valkey used_memory MiB", f"{mem['used_memory_mib']['start']} -> "
                                   f"{mem['used_memory_mib']['end']} "
                                   f"({mem['used_memory_mib']['growth']:+})"),
        ("mean CPU share", ", ".join(f"{n} {v:.0%}" for n, v in s["cpu_share_mean"].items())),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def plot(result: dict[str, Any], name: str) -> Path | None:
    """p50/p99, lag and memory against time: a soak is fine when all three stay flat."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = result["windows"]
    t = [r["t_s"] for r in rows]
    fig, (lat, lag, mem) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for key in ("p50", "p99"):
        lat.plot(t, [r["latency_ms"][key] for r in rows], marker=".", label=key)
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    lat.legend(loc="upper left")
    lag.plot(t, [r["lag"] for r in rows], marker=".", color="tab:red")
    lag.set_ylabel("consumer lag (records)")
    for proc in ("worker", "api", "valkey", "broker"):
        mem.plot(t, [r["rss_mib"][proc] for r in rows], marker=".", label=f"{proc} RSS")
    mem.plot(t, [r["used_memory_mib"] for r in rows], linestyle="--", label="Valkey used_memory")
    mem.set_ylabel("MiB")
    mem.set_xlabel("seconds into the soak")
    mem.legend(loc="upper left", fontsize=8)
    for ax in (lat, lag, mem):
        ax.grid(True, alpha=0.3)
    m, st = result["machine"], result["settings"]
    fig.suptitle(f"Aisle soak: {st['event_rate']:g} events/s + {st['request_rate']:g} req/s "
                 f"({m['cpus']} cpus, {m['git_commit']}, {m['date'][:10]})", fontsize=10)
    fig.tight_layout()
    path = RESULTS / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the stack


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = Console() if sys.stdout.isatty() else Console(width=190)
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "soak", "machine": machine(),
                              "settings": {k: (str(v) if isinstance(v, Path) else v)
                                           for k, v in vars(args).items()}}
    with loaded_stack(args.data, args.limit_rows, console.log) as loaded, \
            LoadGenerator() as gen:
        result["setup"] = loaded.setup
        result["summary"], result["windows"] = soak(loaded, gen, args, console)
    result["notes"] = NOTES
    result["wall_s"] = round(time.monotonic() - started, 1)
    print_tables(console, result)
    console.print(f"wrote {write_json(result, args.out + '.json')}")
    if (png := plot(result, args.out + ".png")) is not None:
        console.print(f"wrote {png}")


if __name__ == "__main__":
    main()
