"""What the ingest benchmark watches: applied offsets, the consumer group, CPU and Redis.

Worker progress is read from the store itself, not from the worker: each shard's
``{a:s}:wm`` hash holds the highest offset it applied per ``topic/partition``, and a
worker applies a partition's records in offset order, so ``max over shards + 1`` is the
number of that partition's records applied. Summed over partitions and compared with
the true end offsets, that is exact up to one pipeline in flight (a poll can land
between two shards' scripts of one batch), which is milliseconds, unlike the group's
committed offsets (Faust commits every ~2.8 s).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from aisle.settings import Settings
from feature_store.keys import Keys

POLL_S = 0.02


def sources(ends: dict[TopicPartition, int]) -> dict[str, int]:
    """End offsets keyed the way the watermarks are: ``topic/partition``."""
    return {f"{tp.topic}/{tp.partition}": end for tp, end in ends.items()}


class AppliedProbe:
    """Counts the records of the log that a key prefix's state has applied."""

    def __init__(self, client: aioredis.Redis, keys: Keys, ends: dict[str, int]) -> None:
        self.client = client
        self.keys = keys
        self.ends = ends
        self.total = sum(ends.values())

    async def applied(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.hgetall(self.keys.watermarks(shard))
        highest: dict[str, int] = {}
        for marks in await pipe.execute():
            for source, offset in marks.items():
                name = source.decode()
                highest[name] = max(highest.get(name, -1), int(offset))
        return sum(min(highest.get(src, -1) + 1, end) for src, end in self.ends.items())


@dataclass
class Progress:
    """When the first records showed up as applied, how many, and when all were."""

    first_s: float
    first_applied: int
    done_s: float
    total: int

    @property
    def steady_s(self) -> float:
        return self.done_s - self.first_s

    @property
    def events_per_s(self) -> float:
        # The records applied at the first sighting are not in the window: their
        # batch finished at an unknown moment between two polls.
        return (self.total - self.first_applied) / max(self.steady_s, 1e-9)


async def watch(probe: AppliedProbe, timeout: float,
                check: Callable[[], None] | None = None) -> Progress:
    """Poll until every record is applied; times are ``time.perf_counter()``.

    ``check`` runs before each poll and raises to give up (a worker died)."""
    deadline = time.perf_counter() + timeout
    first: tuple[float, int] | None = None
    while True:
        if check is not None:
            check()
        applied = await probe.applied()
        now = time.perf_counter()
        if first is None and applied > 0:
            first = (now, applied)
        if applied >= probe.total and first is not None:
            return Progress(first[0], first[1], now, probe.total)
        if now > deadline:
            raise TimeoutError(f"{applied}/{probe.total} records applied after {timeout:.0f}s")
        await asyncio.sleep(POLL_S)


async def wait_group(settings: Settings, members: int, timeout: float,
                     stable_for: float = 2.0) -> float:
    """Wait until the worker group is ``Stable`` with ``members`` members for
    ``stable_for`` seconds in a row (a second worker joining makes it rebalance once
    more); returns the moment it first was, as ``time.perf_counter()``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    deadline = time.perf_counter() + timeout
    since: float | None = None
    try:
        while True:
            state, count = await _group_state(admin, settings.worker.app_id)
            now = time.perf_counter()
            if state == "Stable" and count == members:
                since = since or now
                if now - since >= stable_for:
                    return since
            else:
                since = None
            if now > deadline:
                raise TimeoutError(f"group {settings.worker.app_id} is {state} with {count} "
                                   f"members, not Stable with {members}, after {timeout:.0f}s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def _group_state(admin: AIOKafkaAdminClient, group: str) -> tuple[str, int]:
    response = (await admin.describe_consumer_groups([group]))[0]
    # DescribeGroups v2 rows: (error_code, group, state, protocol_type, protocol, members)
    _, _, state, _, _, members = response.groups[0]
    return str(state), len(members)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the parenthesised command name; utime and stime are 14th and 15th.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (``/proc/stat``), steal
    included: on a shared machine that is time we wanted and did not get."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def main_thread_sched(pid: int) -> tuple[float, float]:
    """Seconds a process's main thread has run on a CPU and waited, runnable, for one
    (``/proc/<pid>/schedstat``: the scheduler's own accounting, in ns)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on_cpu, waiting, _ = f.read().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


class CpuMeter:
    """CPU seconds of named processes between ``start()`` and ``stop()``, and of
    everything else on the machine (``others``: other tenants of a shared box).

    ``shares`` splits each main thread's wall time in the window three ways: running on
    a core, runnable but waiting for a core (the machine is busy: on a shared box, the
    other tenants), and neither (blocked: waiting for a reply from Valkey or the broker,
    or idle). For a worker, the last is what overlap can win back; the second is not."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._sched: dict[str, tuple[float, float]] = {}
        self._machine = 0.0
        self._wall = 0.0
        self.used: dict[str, float] = {}
        self.others = 0.0
        self.shares: dict[str, dict[str, float]] = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._sched = {name: main_thread_sched(pid) for name, pid in self.pids.items()}
        self._machine = machine_busy_seconds()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        machine = machine_busy_seconds() - self._machine
        self.used = {name: round(cpu_seconds(pid) - self._start[name], 3)
                     for name, pid in self.pids.items()}
        self.others = round(max(0.0, machine - sum(self.used.values())), 3)
        self.shares = {}
        for name, pid in self.pids.items():
            on_cpu, waiting = main_thread_sched(pid)
            run = (on_cpu - self._sched[name][0]) / wall if wall > 0 else 0.0
            queued = (waiting - self._sched[name][1]) / wall if wall > 0 else 0.0
            self.shares[name] = {"on_cpu": round(run, 3), "runqueue": round(queued, 3),
                                 "blocked": round(max(0.0, 1 - run - queued), 3)}
        return self.used


async def lua_usage(client: aioredis.Redis) -> tuple[int, float]:
    """Calls and server-side seconds of every EVALSHA so far (``INFO commandstats``);
    the time of the commands a script runs is inside its own."""
    stats: dict[str, Any] = await client.info("commandstats")
    row = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(row["calls"]), int(row["usec"]) / 1e6


async def used_memory(client: aioredis.Redis) -> int:
    info: dict[str, Any] = await client.info("memory")
    return int(info["used_memory"])
