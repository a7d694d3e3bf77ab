"""Helpers for the fault-injection tests: servers that can be stopped and started again on
the same port, a replay that runs while the test breaks things, and the numbers that
tell how far the workers got."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from aisle.replay import replay_file
from aisle.runtime import ManagedProcess
from aisle.settings import Settings
from aisle.stack import Stack
from feature_store.client import open_redis_sync
from feature_store.dump import dump_state
from feature_store.keys import Keys
from feature_store.redis_store import queue_applied, sum_applied
from streams.lag import end_offsets, wait_caught_up
from streams.rebuild import rebuild_from_log

Starter = Callable[[Path, int | None], tuple[ManagedProcess, str]]


class Server:
    """An embedded broker or store of our own: stopping it disturbs no other test."""

    def __init__(self, start: Starter, log_dir: Path) -> None:
        self._start = start
        self.log_dir = log_dir
        self.process, self.url = start(log_dir, None)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        """Start it again where clients already look for it (same port, empty state)."""
        self.process, url = self._start(self.log_dir, self.port)
        assert url == self.url

    def freeze(self) -> None:
        """The process stays, its socket stays open, nothing answers: a hung server."""
        self.process.proc.send_signal(signal.SIGSTOP)
        # The signal lands asynchronously; until it does the server still answers.
        status = Path(f"/proc/{self.process.proc.pid}/status")
        deadline = time.monotonic() + 5
        while "T (stopped)" not in status.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)

    def thaw(self) -> None:
        self.process.proc.send_signal(signal.SIGCONT)


class BackgroundReplay(threading.Thread):
    """Replays dataset slices in order, in a thread, while the test injects faults."""

    def __init__(self, settings: Settings, slices: list[tuple[Path, int]]) -> None:
        super().__init__(name="replay", daemon=True)
        self.settings = settings
        self.slices = slices
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for path, rows in self.slices:
                asyncio.run(replay_file(self.settings, path, limit_rows=rows))
        except BaseException as exc:  # handed to the test thread by finish()
            self.error = exc

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"replay still running after {timeout:.0f}s"
        if self.error is not None:
            raise self.error


def keys_of(settings: Settings) -> Keys:
    return Keys(settings.features.key_prefix, settings.features.shards)


def applied_count(settings: Settings) -> int:
    """The group-wide count of applied events (the workers keep it in Redis)."""
    client = open_redis_sync(settings)
    try:
        pipe = client.pipeline(transaction=False)
        queue_applied(pipe, keys_of(settings))
        return sum_applied(pipe.execute())
    finally:
        client.close()


def wait_applied(settings: Settings, at_least: int, timeout: float,
                 replay: BackgroundReplay | None = None) -> int:
    """Wait until the workers have applied ``at_least`` events. On a timeout the message
    says whether the replay feeding them was still producing, and what it raised, so a
    stalled worker can be told from a producer that died."""
    deadline = time.monotonic() + timeout
    while (n := applied_count(settings)) < at_least:
        if time.monotonic() > deadline:
            feeding = "" if replay is None else (
                f"; replay {'still running' if replay.is_alive() else 'finished'}"
                f", error {replay.error!r}")
            raise AssertionError(f"only {n} events applied after {timeout:.0f}s "
                                 f"(waiting for {at_least}){feeding}\n"
                                 + partition_report(settings))
        time.sleep(0.05)
    return n


def watermarks(settings: Settings) -> dict[str, int]:
    """``topic/partition`` → highest offset applied, over all shards."""
    k = keys_of(settings)
    client = open_redis_sync(settings)
    try:
        out: dict[str, int] = {}
        for shard in range(k.shards):
            for source, offset in client.hgetall(k.watermarks(shard)).items():
                name = source.decode()
                out[name] = max(out.get(name, -1), int(float(offset)))
        return out
    finally:
        client.close()


async def committed_offsets(settings: Settings) -> dict[str, int]:
    """``topic/partition`` → the offset the worker group will resume from."""
    topics = [settings.topics.events, settings.topics.catalog]
    tps = list(await end_offsets(settings, topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        got = await admin.list_consumer_group_offsets(settings.worker.app_id, partitions=tps)
    finally:
        await admin.close()
    return {f"{tp.topic}/{tp.partition}": meta.offset for tp, meta in got.items()
            if isinstance(tp, TopicPartition) and meta is not None}


def partition_report(settings: Settings) -> str:
    """Per partition: the log's end (from a fetch), the group's committed offset and the
    highest offset applied in the store. Tells a worker that stopped fetching a partition
    (committed = applied + 1 < end) from one that never got the records (end too low)."""
    topics = [settings.topics.events, settings.topics.catalog]
    ends = asyncio.run(end_offsets(settings, topics))
    committed = asyncio.run(committed_offsets(settings))
    applied = watermarks(settings)
    rows = []
    for tp in sorted(ends, key=lambda t: (t.topic, t.partition)):
        src = f"{tp.topic}/{tp.partition}"
        rows.append(f"  {src}: end {ends[tp]}, committed {committed.get(src)}, "
                    f"applied up to {applied.get(src)}")
    return "partitions:\n" + "\n".join(rows)


def applied_not_committed(settings: Settings) -> dict[str, tuple[int, int]]:
    """Partitions whose records are applied in Redis but not committed to Kafka: the next
    worker gets them again, and only the offset watermark keeps them from counting twice."""
    committed = asyncio.run(committed_offsets(settings))
    return {src: (wm, committed.get(src, -1)) for src, wm in watermarks(settings).items()
            if wm >= max(committed.get(src, -1), 0)}


async def event_offset(settings: Settings, event_id: str) -> tuple[TopicPartition, int] | None:
    """Where the log holds the event with this id (None if it does not)."""
    topics = [settings.topics.events, settings.topics.catalog]
    ends = {tp: end for tp, end in (await end_offsets(settings, topics)).items() if end > 0}
    if not ends:
        return None
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        needle = event_id.encode()
        deadline = time.monotonic() + 20
        while ends and time.monotonic() < deadline:
            for tp, msgs in (await consumer.getmany(*ends, timeout_ms=1000)).items():
                for msg in msgs:
                    if needle in (msg.value or b""):
                        return tp, msg.offset
                if msgs and msgs[-1].offset >= ends[tp] - 1:
                    del ends[tp]
                    consumer.pause(tp)
        return None
    finally:
        await consumer.stop()


def live_equals_rebuild(settings: Settings, timeout: float = 120) -> tuple[int, list[str]]:
    """Wait for the group to catch up, then compare the live state with a rebuild from the
    log. Returns the number of keys and the keys that differ (empty when equal)."""
    asyncio.run(wait_caught_up(settings, timeout=timeout))
    live = asyncio.run(dump_state(settings))
    asyncio.run(rebuild_from_log(settings))
    rebuilt = asyncio.run(dump_state(settings))
    differ = sorted(k for k in live.keys() | rebuilt.keys() if live.get(k) != rebuilt.get(k))
    return len(live), differ


def worker_shares(settings: Settings) -> dict[int, int]:
    """pid → events that worker applied (each worker counts its own share in Redis)."""
    client = open_redis_sync(settings)
    try:
        raw = client.hgetall(keys_of(settings).control("workers"))
    finally:
        client.close()
    return {int(who.decode().rsplit(":", 1)[1]): int(n) for who, n in raw.items()}


def restart_worker(stack: Stack, killed: ManagedProcess) -> ManagedProcess:
    stack.workers.remove(killed)
    return stack.add_worker()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def log_lines(path: Path, pattern: str) -> str:
    """The lines of a log that match ``pattern`` (a regular expression)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(line for line in text.splitlines() if re.search(pattern, line))


def describe(*parts: Any) -> str:
    return "\n".join(str(p) for p in parts)
