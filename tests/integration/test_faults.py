"""Fault injection: workers killed or added mid-stream, the store and the broker taken away
and brought back. After a worker fault the live state must equal a rebuild from the log
(nothing lost, nothing counted twice); while a server is away the API must degrade, not
fail, and everything must work again once the server is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from aisle.replay import replay_file
from aisle.runtime import start_broker, start_store
from aisle.settings import Settings
from aisle.stack import Stack
from benchmarks.ingest_probe import wait_group
from feature_store.client import open_redis_sync
from models.train import train_once
from streams.lag import wait_caught_up
from streams.topics import ensure_topics
from tests.conftest import ONLINE_RETAIL, TAOBAO
from tests.integration.conftest import isolated_settings
from tests.integration.faults_util import (
    BackgroundReplay,
    Server,
    applied_count,
    applied_not_committed,
    committed_offsets,
    describe,
    event_offset,
    keys_of,
    live_equals_rebuild,
    log_lines,
    log_tail,
    restart_worker,
    wait_applied,
    watermarks,
    worker_shares,
)
from tests.integration.util import catalog, event, eventually, uid

pytestmark = pytest.mark.integration


# A dead member holds its partitions until its session times out; shorter timeouts than
# the embedded profile's keep each takeover to a few seconds of test time.
QUICK_TAKEOVER = {"session_timeout_s": 3.0, "heartbeat_interval_s": 0.5,
                  "rebalance_timeout_s": 3.0}


def started(servers: dict[str, str], data_dir: Path, workers: int, api: bool,
            worker: dict[str, float] | None = None, **urls: str) -> Stack:
    settings = isolated_settings(servers, data_dir, **(worker or {})).model_copy(update=urls)
    return Stack.start(settings, workers=workers, api=api)


# ------------------------------------------------------------------ worker crashes

@pytest.fixture(scope="module")
def crash_stack(servers: dict[str, str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = started(servers, tmp_path_factory.mktemp("crash"), workers=1, api=False,
                worker=QUICK_TAKEOVER)
    try:
        yield s
    finally:
        s.stop()


def test_killed_worker_loses_nothing_and_counts_nothing_twice(crash_stack: Stack) -> None:
    """kill -9 the only worker at three moments while it consumes ~9k events; each time
    a new one resumes from the last committed offsets."""
    stack = crash_stack
    replay = BackgroundReplay(stack.settings, [(ONLINE_RETAIL, 20_000), (TAOBAO, 3_000)])
    replay.start()
    redelivered = []
    for threshold in (1_000, 3_500, 6_000):
        victim = stack.workers[0]
        try:
            wait_applied(stack.settings, threshold, timeout=120, replay=replay)
        except AssertionError as exc:
            raise AssertionError(describe(exc, "worker log:", log_tail(victim.log_path))) \
                from None
        victim.proc.kill()
        victim.proc.wait(10)
        # What the dead worker applied but never committed comes back to its successor.
        redelivered.append(applied_not_committed(stack.settings))
        restart_worker(stack, victim)
    replay.finish(timeout=120)
    keys, differ = live_equals_rebuild(stack.settings)
    assert keys > 5_000
    assert not differ, describe(f"{len(differ)} keys differ after the crashes:", differ[:20])
    assert any(redelivered), describe(
        "no kill left applied-but-uncommitted records: redelivery was not exercised",
        redelivered)
    assert stack.workers[0].proc.poll() is None, log_tail(stack.workers[0].log_path)


# ------------------------------------------------------------------ scale out and in

@pytest.fixture(scope="module")
def scale_stack(servers: dict[str, str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = started(servers, tmp_path_factory.mktemp("scale"), workers=1, api=False,
                worker=QUICK_TAKEOVER)
    try:
        yield s
    finally:
        s.stop()


def test_workers_joining_and_leaving_mid_stream_build_the_rebuilt_state(
        scale_stack: Stack) -> None:
    """A second worker joins while the first works through ~9k events (partitions move
    to it mid-stream); later the first is stopped (SIGTERM, killed if it takes over 10 s)
    while events flow, and the second takes over every partition.

    The phases wait for the group rather than for a count of events: a batching worker
    can finish a slice before a newcomer has even joined."""
    stack = scale_stack
    first = stack.workers[0]
    replay = BackgroundReplay(stack.settings, [(ONLINE_RETAIL, 20_000)])
    replay.start()
    wait_applied(stack.settings, 1_000, timeout=120)
    second = stack.add_worker()
    asyncio.run(wait_group(stack.settings, 2, timeout=60, stable_for=0.5))
    replay.finish(timeout=120)
    replay = BackgroundReplay(stack.settings, [(TAOBAO, 3_000)])  # for both workers
    replay.start()
    replay.finish(timeout=120)
    # Rows 3,000-6,000 are new (the first 3,000 again are duplicates to drop).
    replay = BackgroundReplay(stack.settings, [(TAOBAO, 6_000)])
    replay.start()
    wait_applied(stack.settings, applied_count(stack.settings) + 300, timeout=120)
    first.stop()
    stack.workers.remove(first)
    replay.finish(timeout=120)
    keys, differ = live_equals_rebuild(stack.settings)
    assert keys > 5_000
    assert not differ, describe(f"{len(differ)} keys differ after the rebalances:",
                                differ[:20])
    shares = worker_shares(stack.settings)
    assert shares.get(first.proc.pid, 0) > 0 and shares.get(second.proc.pid, 0) > 0, shares
    assert second.proc.poll() is None, log_tail(second.log_path)


# ------------------------------------------------------------------ the store goes away

@dataclass
class Outage:
    """What a fault scenario saw; the tests below assert on it."""

    stack: Stack
    answers: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def ask(self, api: httpx.Client, phase: str, route: str, path: str) -> None:
        try:
            resp = api.get(path)
            answer = (resp.status_code, resp.json())
        except (httpx.HTTPError, ValueError) as exc:  # a hang, a dropped connection, no JSON
            answer = (0, {"error": repr(exc)})
        self.answers.setdefault(f"{phase} {route}", []).append(answer)

    def ask_all(self, api: httpx.Client, phase: str, paths: dict[str, str]) -> None:
        for route, path in paths.items():
            self.ask(api, phase, route, path)


def loaded(api: httpx.Client, version: str) -> bool:
    return bool(api.get("/readyz").json().get("model_version") == version)


def known_customer(settings: Settings) -> str:
    """A customer with interactions: the API gives them a personal answer."""
    k = keys_of(settings)
    client = open_redis_sync(settings)
    try:
        for shard in range(k.shards):
            for raw in sorted(client.smembers(k.users(shard))):
                if client.exists(k.user(raw.decode(), "ia")):
                    return str(raw.decode())
        raise AssertionError("no customer with interactions in the store")
    finally:
        client.close()


def visible(settings: Settings, key: str) -> bool:
    client = open_redis_sync(settings)
    try:
        return bool(client.exists(key))
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="module")
def store_outage(servers: dict[str, str],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    """State and a trained model in a Valkey of our own; then a few seconds with Valkey
    hung (SIGSTOP), during which the worker is stopped mid-batch and replaced; ~10 s with
    Valkey gone; then Valkey back, empty, on the same port."""
    data_dir = tmp_path_factory.mktemp("store-outage")
    valkey = Server(start_store, data_dir / "valkey")
    settings = isolated_settings(servers, data_dir)
    # The API caches aggregates for cache_ttl_s; a short one makes every answer during the
    # outage need the store (a fresh cache may rightly answer without it, undegraded).
    serving = settings.serving.model_copy(update={"cache_ttl_s": 0.1,
                                                  "related_cache_ttl_s": 0.1})
    stack = Stack.start(settings.model_copy(update={"redis_url": valkey.url,
                                                    "serving": serving}),
                        workers=1, api=True)
    outage = Outage(stack)
    try:
        s = stack.settings
        asyncio.run(replay_file(s, ONLINE_RETAIL, limit_rows=10_000))
        asyncio.run(wait_caught_up(s, timeout=60))
        art = asyncio.run(train_once(s))
        anchor = next(item for j, item in enumerate(art.item_ids)
                      if (art.similar_scores[j] > 0).any())
        customer = known_customer(s)
        outage.facts.update(version=art.version, anchor=anchor)
        pages = {"related": f"/v1/items/{anchor}/related",
                 "recommendations": f"/v1/users/{customer}/recommendations"}
        probes = {**pages, "readyz": "/readyz", "healthz": "/healthz"}
        with httpx.Client(base_url=stack.api_url or "", timeout=10) as api:
            eventually(lambda: loaded(api, art.version))
            outage.ask_all(api, "before", pages)
            # An unknown customer gets trending items: the list the API keeps in memory.
            outage.ask(api, "before", "popular", f"/v1/users/{uid()}/recommendations")
            time.sleep(3 * max(serving.cache_ttl_s, serving.related_cache_ttl_s))  # stale now

            valkey.freeze()
            try:
                # An event the worker takes while the store hangs: its batch is in flight
                # when the worker is told to stop.
                stuck = event("product.viewed", {"item_id": anchor}, uid("stuck"),
                              session_id="s-stuck")
                assert api.post("/v1/events", json=stuck).status_code == 202
                for _ in range(2):
                    outage.ask_all(api, "hung", probes)
                stop_mid_batch(stack, outage, stuck)
            finally:
                valkey.thaw()
            outage.facts["stuck"] = stopped_batch_fate(stack.settings, stuck)
            stack.add_worker()  # the worker that lives through the outage below

            valkey.stop()
            during = event("product.viewed", {"item_id": anchor}, uid("during"),
                           session_id="s-during")
            outage.facts["posted_during"] = api.post("/v1/events", json=during).status_code
            outage.facts["during"] = during
            down_until = time.monotonic() + 10
            while time.monotonic() < down_until:
                outage.ask_all(api, "down", probes)
                time.sleep(0.5)
            outage.facts["worker_alive_during"] = stack.workers[0].proc.poll() is None

            valkey.restart()
        yield outage
    finally:
        stack.stop()
        valkey.stop()


def stop_mid_batch(stack: Stack, outage: Outage, stuck: dict[str, Any]) -> None:
    """SIGTERM the worker while the store hangs under its batch (killed after 10 s)."""
    worker = stack.workers[0]
    worker.stop()
    stack.workers.remove(worker)
    outage.facts["stopped_worker"] = (worker.log_path, worker.proc.pid)


def stopped_batch_fate(settings: Settings, stuck: dict[str, Any]) -> dict[str, Any]:
    """Whether the stopped worker committed the stuck event, and whether it applied it."""
    found = asyncio.run(event_offset(settings, stuck["event_id"]))
    assert found is not None, "the accepted event is not in the log"
    tp, offset = found
    source = f"{tp.topic}/{tp.partition}"
    views = keys_of(settings).user(stuck["user_id"], "views")
    return {"source": source, "offset": offset,
            "committed": asyncio.run(committed_offsets(settings)).get(source, -1),
            "applied": visible(settings, views)}


def answers(outage: Outage, phase_route: str) -> list[tuple[int, dict[str, Any]]]:
    got = outage.answers.get(phase_route)
    assert got, phase_route
    return got


@pytest.mark.parametrize("phase", ["hung", "down"])
def test_api_answers_from_memory_while_the_store_is_away(store_outage: Outage,
                                                          phase: str) -> None:
    version = store_outage.facts["version"]
    for route in ("related", "recommendations", "popular"):
        for status, body in answers(store_outage, f"before {route}"):
            assert status == 200 and not body["degraded"], body
    for route in ("related", "recommendations"):
        for status, body in answers(store_outage, f"{phase} {route}"):
            assert status == 200, (route, status, body)
            assert body["degraded"] is True, (route, body)
            assert body["model_version"] == version, (route, body)
            assert body["items"], (route, body)  # the model and last trending list held
    for status, body in answers(store_outage, f"{phase} readyz"):
        assert status == 503, body
        assert body["checks"]["store"].startswith("unavailable"), body
    assert all(status == 200 for status, _ in answers(store_outage, f"{phase} healthz"))


def test_readiness_and_the_worker_come_back_with_the_store(store_outage: Outage) -> None:
    stack = store_outage.stack
    assert store_outage.facts["worker_alive_during"], log_tail(stack.workers[0].log_path)
    with httpx.Client(base_url=stack.api_url or "", timeout=10) as api:
        eventually(lambda: api.get("/readyz").status_code == 200, timeout=30)
        user = uid("after")
        doc = event("product.viewed", {"item_id": store_outage.facts["anchor"]}, user,
                    session_id="s-after")
        assert api.post("/v1/events", json=doc).status_code == 202
    views = keys_of(stack.settings).user(user, "views")
    eventually(lambda: visible(stack.settings, views), timeout=60, every=0.2)
    assert stack.workers[0].proc.poll() is None, log_tail(stack.workers[0].log_path)


def test_an_event_sent_while_the_store_was_away_is_applied_once_it_is_back(
        store_outage: Outage) -> None:
    """The broker took the event; the worker could not write it. It must not be acked
    (committed) until it is applied."""
    stack = store_outage.stack
    during = store_outage.facts["during"]
    assert store_outage.facts["posted_during"] == 202
    asyncio.run(wait_caught_up(stack.settings, timeout=60))
    views = keys_of(stack.settings).user(during["user_id"], "views")
    try:  # (committed means processed: the agent acks a batch after handling it)
        eventually(lambda: visible(stack.settings, views), timeout=3, every=0.2)
    except AssertionError:
        offset = asyncio.run(event_offset(stack.settings, during["event_id"]))
        raise AssertionError(describe(
            f"event {during['event_id']} (at {offset}) was committed by the worker group "
            "but never applied: lost while the store was away; worker log:",
            log_lines(stack.workers[0].log_path, "Crashed|Restarting dead"))) from None


def test_a_worker_stopped_mid_batch_commits_nothing_it_did_not_apply(
        store_outage: Outage) -> None:
    """SIGTERM while a batch waits on the store: whatever the worker commits on its way
    out must be applied, or the next worker never sees it again."""
    fate = store_outage.facts["stuck"]
    log, pid = store_outage.facts["stopped_worker"]
    lost = fate["committed"] > fate["offset"] and not fate["applied"]
    assert not lost, describe(
        f"stopped worker committed {fate['source']} up to {fate['committed']} but never "
        f"applied offset {fate['offset']}: {fate}; its log:",
        log_lines(log, rf"\[{pid}\].*(Signal received|Crashed|Wait for streams|not applied)"))


# ------------------------------------------------------------------ the broker goes away

@pytest.fixture(scope="module")
def broker_outage(servers: dict[str, str],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    """Events applied through a broker of our own; then the broker stopped, events posted
    (refused), the broker started again on the same port (empty: Tansu keeps its log in
    memory) and its topics created again."""
    data_dir = tmp_path_factory.mktemp("broker-outage")
    broker = Server(start_broker, data_dir / "broker")
    stack = started(servers, data_dir, workers=1, api=True, kafka_url=broker.url)
    outage = Outage(stack)
    try:
        regular = uid("regular")
        with httpx.Client(base_url=stack.api_url or "", timeout=10) as api:
            # Several events of one customer: one partition, offsets 0..7 in the old log.
            before = [event("product.viewed", {"item_id": f"old-{n}"}, regular, minutes=n,
                            session_id="s1") for n in range(8)]
            assert api.post("/v1/events", json=before).status_code == 202
            asyncio.run(wait_caught_up(stack.settings, timeout=60))
            outage.facts.update(regular=regular, watermarks_before=watermarks(stack.settings))

            broker.stop()
            doc = event("product.viewed", {"item_id": "x"}, uid("refused"))
            try:
                resp = api.post("/v1/events", json=doc)
                outage.facts["refused"] = (resp.status_code, resp.headers.get("retry-after"),
                                           resp.text[:300])
            except httpx.HTTPError as exc:  # (a hang past 10 s lands here)
                outage.facts["refused"] = (0, None, repr(exc))
            outage.facts["worker_alive_during"] = stack.workers[0].proc.poll() is None

            broker.restart()
            # Another client makes the topics first (Tansu, like Kafka with
            # auto.create.topics.enable, creates a topic a producer or consumer asks
            # for), so ensure_topics finds them there and has nothing to forget: the
            # worker itself must tell the new logs from the old ones.
            asyncio.run(create_topics_elsewhere(stack.settings))
            asyncio.run(ensure_topics(stack.settings))
        yield outage
    finally:
        stack.stop()
        broker.stop()


async def create_topics_elsewhere(settings: Settings) -> None:
    t = settings.topics
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, t.partitions, 1)
                                   for name in (t.events, t.catalog, t.deadletter, t.push)])
    finally:
        await admin.close()


def post_until_answered(api: httpx.Client, doc: dict[str, Any],
                        timeout: float = 30) -> httpx.Response:
    """POST, and again after Retry-After while the API answers 503 (as a shop would)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = api.post("/v1/events", json=doc)
        if resp.status_code != 503 or time.monotonic() > deadline:
            return resp
        time.sleep(float(resp.headers.get("retry-after", "1")))


def test_events_are_refused_with_retry_after_while_the_broker_is_down(
        broker_outage: Outage) -> None:
    status, retry_after, text = broker_outage.facts["refused"]
    assert status == 503, (status, text)
    assert retry_after and int(retry_after) > 0, (retry_after, text)
    assert broker_outage.facts["worker_alive_during"]


def test_events_are_accepted_and_consumed_after_the_broker_restarts(
        broker_outage: Outage) -> None:
    stack = broker_outage.stack
    item = uid("item")
    with httpx.Client(base_url=stack.api_url or "", timeout=10) as api:
        resp = post_until_answered(api, catalog(item, "NEW MUG"))
    assert resp.status_code == 202, resp.text
    # The catalog topic held nothing before the outage, so no old watermark applies.
    hash_key = keys_of(stack.settings).item(item)
    try:
        eventually(lambda: visible(stack.settings, hash_key), timeout=60, every=0.5)
    except AssertionError:
        raise AssertionError(describe("the worker did not consume after the broker came back",
                                      log_tail(stack.workers[0].log_path))) from None
    assert stack.workers[0].proc.poll() is None


def test_an_event_after_the_broker_restart_is_not_taken_for_an_old_one(
        broker_outage: Outage) -> None:
    """The restarted (memory) broker numbers the partition from 0 again, while Redis still
    holds the offset watermark of the old log for it."""
    stack, facts = broker_outage.stack, broker_outage.facts
    regular = facts["regular"]
    doc = event("product.viewed", {"item_id": "new-after-restart"}, regular, minutes=60,
                session_id="s2")
    with httpx.Client(base_url=stack.api_url or "", timeout=10) as api:
        resp = post_until_answered(api, doc)
    assert resp.status_code == 202, resp.text
    asyncio.run(wait_caught_up(stack.settings, timeout=60))
    views = keys_of(stack.settings).user(regular, "views")
    client = open_redis_sync(stack.settings)
    try:
        eventually(lambda: client.zscore(views, "new-after-restart") is not None,
                   timeout=3, every=0.2)
    except AssertionError:
        found = asyncio.run(event_offset(stack.settings, doc["event_id"]))
        assert found is not None, "the accepted event is not in the log"
        tp, offset = found
        source = f"{tp.topic}/{tp.partition}"
        old = facts["watermarks_before"].get(source, -1)
        # Say why, when the old log's watermark swallowed the event (the bug this guards).
        assert not (old >= offset and watermarks(stack.settings).get(source, -1) == old), (
            f"committed but skipped: {source} offset {offset} of the new log is at or below "
            f"the watermark {old} left by the old log")
        raise
    finally:
        client.close()
