"""The API's pipelined connection for the customer read (feature_store/multiplexed.py),
against the real store: the same replies as redis-py, each caller its own reply however
many share the connection or give up, and the failures redis-py would raise."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from feature_store.keys import Keys
from feature_store.multiplexed import ClusterMultiplexed, Multiplexed, pipelined
from feature_store.reader import (
    CUSTOMER_KEYS,
    CUSTOMER_SCRIPT,
    FeatureReader,
    _scored,
    customer_commands,
)

pytestmark = pytest.mark.integration

# A reply that comes late, on demand, without holding up the server: BLPOP on a key
# nobody pushes to blocks this connection (and the replies queued behind it) only.
def late(fast: Multiplexed, seconds: float) -> Awaitable[Any]:
    return fast.execute("BLPOP", f"mx:never:{uuid.uuid4().hex}", seconds)


def run(redis_url: str, scenario: Callable[[aioredis.Redis, Multiplexed], Awaitable[None]],
        **options: Any) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        fast = Multiplexed.of(client)
        assert fast is not None
        for name, value in options.items():
            setattr(fast, name, value)
        try:
            await scenario(client, fast)
        finally:
            await fast.close()
            await client.aclose()
    asyncio.run(go())


def test_the_customer_read_is_the_same_over_either_connection(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, fast: Multiplexed) -> None:
        keys = Keys(f"mx{uuid.uuid4().hex[:6]}", 4)
        user = "u1"
        k = lambda s: keys.user(user, s)  # noqa: E731
        await client.zadd(k("views"), {"i1": 10.0, "i2": 12.5})
        await client.hset(k("cart"), mapping={"i3": 2})
        await client.hset(k("bought"), mapping={"i4": 1, "i5": 3})
        await client.zadd(k("ia"), {"i4": 1.25, "i5": 2.5, "i1": 0.5})
        await client.hset(k("rfm"), mapping={"last_seen": 1.3e9, "orders": 2})
        await client.rpush(k("hist"), '["O1","i4",2.0,1,1300000000.0]',
                           '["O2","i5",1300000100.0,3,7.5,"soap"]')
        await client.zadd(k("fav"), {"i2": 1.0, "i5": 2.0})
        await client.zadd(k("cat"), {"soap": 7.5})
        await client.hset(k("spend"), mapping={"2011-01": 7.5})
        await client.hset(k("src"), mapping={"web": 2})
        await client.hset(k("pushitems"), mapping={"i2": 1.2e9})
        plain = FeatureReader(client, keys)
        over_fast = FeatureReader(client, keys, fast=fast)
        for who in (user, "nobody"):
            a, b = await plain.customer(who), await over_fast.customer(who)
            assert a == b
            # The state alone (a personalised related answer): the same both ways too.
            assert await plain.user(who) == await over_fast.user(who) == a.state
            # The facts alone (the population sweep reads every customer's).
            assert await plain.facts(who) == await over_fast.facts(who)
        assert (await over_fast.customer(user)).state.bought == {"i4": 1, "i5": 3}
        # An offers answer's read: the same, less what offers never look at.
        full, narrow = await over_fast.customer(user), \
            await over_fast.customer(user, offers_only=True)
        assert full.state.views and full.state.cart and full.state.interactions
        assert full.pushed and full.facts_raw[1]
        assert (narrow.facts_raw, narrow.offers_raw) == (full.facts_raw, full.offers_raw)
        assert dataclasses.replace(full.state, views=[], cart={}, interactions=[],
                                   vector=None) == narrow.state
        assert narrow.pushed == {}
        # The server lost its scripts (restarted, flushed): loaded again, answered.
        await client.script_flush()
        assert await over_fast.customer(user) == await plain.customer(user)
        user_keys = [keys.user(user, s) for s in CUSTOMER_KEYS]
        await client.script_flush()
        script = plain._customer_script
        assert await fast.evalsha(script.sha, CUSTOMER_SCRIPT, user_keys, [20]) == \
            await fast.transaction(customer_commands(user_keys, 20))
    run(redis_url, scenario)


def test_the_transaction_reads_what_the_customer_script_reads(redis_url: str) -> None:
    """The pipelined connection reads a customer as one MULTI/EXEC of customer.lua's
    commands (cheaper for Valkey): reply for reply what the script returns, every one
    of its keys filled, empty, or holding the wrong type."""
    async def scenario(client: aioredis.Redis, fast: Multiplexed) -> None:
        keys = Keys(f"mx{uuid.uuid4().hex[:6]}", 4)
        full, empty = [keys.user("u1", s) for s in CUSTOMER_KEYS], \
            [keys.user("u2", s) for s in CUSTOMER_KEYS]
        k = dict(zip(CUSTOMER_KEYS, full, strict=True))
        await client.zadd(k["views"], {f"v{n}": 100.0 + n / 3 for n in range(30)})
        for name in ("cart", "bought", "dislikes", "neg", "rfm", "spend", "src", "offers",
                     "ostate", "pushitems"):
            await client.hset(k[name], mapping={f"{name}{n}": f"{n / 7!r}" for n in range(5)})
        await client.zadd(k["ia"], {f"i{n}": n * 0.1 - 1 for n in range(40)})
        await client.set(k["vec"], b"\x00\x01binary")
        await client.rpush(k["hist"], *[f'["O{n}","i{n}",2.0,1,1.3e9]' for n in range(8)])
        await client.zadd(k["fav"], {f"f{n}": n for n in range(60)})
        await client.zadd(k["cat"], {f"c{n}": n / 3 for n in range(12)})
        script = client.register_script(CUSTOMER_SCRIPT)
        for who in (full, empty):
            for views in (1, 20, 0):
                got = await fast.transaction(customer_commands(who, views))
                assert got == await script(keys=who, args=[views])
        await client.set(k["cart"], "not a hash")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await fast.transaction(customer_commands(full, 20))
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await script(keys=full, args=[20])
        with pytest.raises(ResponseError):  # refused when queued: nothing run
            await fast.transaction([("GET", k["vec"]), ("NOSUCHCOMMAND", k["vec"])])
        assert await fast.execute("GET", k["vec"]) == b"\x00\x01binary"  # still in step
    run(redis_url, scenario)


def test_concurrent_callers_each_get_their_own_reply(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, fast: Multiplexed) -> None:
        tag = uuid.uuid4().hex[:6]
        await client.mset({f"mx:{tag}:{n}": f"v{n}" for n in range(300)})
        got = await asyncio.gather(*(fast.execute("GET", f"mx:{tag}:{n}") for n in range(300)))
        assert got == [f"v{n}".encode() for n in range(300)]
        assert fast.connects == 1  # one connection for all of them
        assert await fast.execute("GET", f"mx:{tag}:none") is None
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await fast.execute("HGETALL", f"mx:{tag}:1")
        assert await fast.execute("PING") == b"PONG"  # an error reply shifted nothing
    run(redis_url, scenario)


def test_a_batch_answers_as_a_redis_py_pipeline_and_keeps_the_connection_in_step(
        redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, fast: Multiplexed) -> None:
        tag = uuid.uuid4().hex[:6]
        await client.zadd(f"mx:{tag}:z", {"a": 1.5, "b": 2.5, "c": 0.25})
        await client.set(f"mx:{tag}:s", "v")
        commands = [("ZREVRANGE", f"mx:{tag}:z", 0, 1, "WITHSCORES"),
                    ("ZREVRANGE", f"mx:{tag}:none", 0, 1, "WITHSCORES"),
                    ("GET", f"mx:{tag}:s"), ("GET", f"mx:{tag}:none")]
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        mine, theirs = await fast.execute_many(commands), await pipe.execute()
        # Flat WITHSCORES on RESP2, pairs on redis-py's default RESP3: read alike.
        assert [_scored(r) for r in mine[:2]] == [_scored(r) for r in theirs[:2]]
        assert _scored(mine[0]) == [(b"b", 2.5), (b"a", 1.5)]
        assert mine[2:] == theirs[2:] == [b"v", None]
        assert await fast.execute_many([]) == []
        # A batch of one is a list of one (a Cluster batch often leaves one command on
        # a node: the worker's fold-in crashed on exactly that).
        assert await fast.execute_many([("GET", f"mx:{tag}:s")]) == [b"v"]
        assert await fast.execute_many([("ZREVRANGE", f"mx:{tag}:none", 0, 1)]) == [[]]
        # Batches and single commands from many callers at once, each its own replies.
        got = await asyncio.gather(*(
            fast.execute_many([("ECHO", f"{n}a"), ("ECHO", f"{n}b")]) if n % 2
            else fast.execute("ECHO", f"{n}") for n in range(40)))
        assert got == [[f"{n}a".encode(), f"{n}b".encode()] if n % 2 else f"{n}".encode()
                       for n in range(40)]
        with pytest.raises(ResponseError, match="WRONGTYPE"):  # the first error, raised
            await fast.execute_many([("ECHO", "x"), ("HGETALL", f"mx:{tag}:s"),
                                     ("ECHO", "y")])
        # A batch whose caller gave up: its replies are dropped, the next ones are right.
        slow = asyncio.ensure_future(fast.execute_many([("ECHO", "1"), (
            "BLPOP", f"mx:never:{tag}", 0.2), ("ECHO", "2")]))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow, 0.05)
        assert await fast.execute("ECHO", "after") == b"after"
        assert fast.connects == 1
    run(redis_url, scenario)


def test_a_caller_that_gives_up_shifts_nobody_elses_reply(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, fast: Multiplexed) -> None:
        slow = asyncio.ensure_future(late(fast, 0.2))
        others = [asyncio.ensure_future(fast.execute("ECHO", f"e{n}")) for n in range(5)]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow, 0.05)  # gave up while its reply was on its way
        assert await asyncio.gather(*others) == [f"e{n}".encode() for n in range(5)]
        assert await fast.execute("ECHO", "after") == b"after"
        assert fast.connects == 1
    run(redis_url, scenario)


def test_a_dropped_connection_fails_its_callers_and_the_next_call_reconnects(
        redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, fast: Multiplexed) -> None:
        own = await fast.execute("CLIENT", "ID")
        waiting = asyncio.ensure_future(late(fast, 5))
        await asyncio.sleep(0.02)
        await client.execute_command("CLIENT", "KILL", "ID", own)
        with pytest.raises(RedisConnectionError):
            await waiting
        assert await fast.execute("ECHO", "back") == b"back"
        assert fast.connects == 2
    run(redis_url, scenario)


def test_a_server_that_stops_answering_times_out_and_is_reconnected(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis, fast: Multiplexed) -> None:
        # No timeout of the caller's own: the connection's watchdog ends the wait.
        with pytest.raises(RedisTimeoutError):
            await late(fast, 0.6)
        assert await fast.execute("ECHO", "again") == b"again"
        assert fast.connects == 2
    run(redis_url, scenario, timeout=0.2)


def test_user_password_and_database_come_from_the_redis_py_client(redis_url: str) -> None:
    async def go() -> None:
        admin = aioredis.Redis.from_url(redis_url)
        user, password = f"mx{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
        await admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"],
                                keys=["*"], commands=["+@all"])
        host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
        try:
            client = aioredis.Redis.from_url(f"redis://{user}:{password}@{host_port}/3")
            await client.set("mx:db3", "three")
            fast = Multiplexed.of(client)
            assert fast is not None and fast.db == 3 and fast.username == user
            assert await fast.execute("GET", "mx:db3") == b"three"
            await fast.close()
            wrong = Multiplexed.of(
                aioredis.Redis.from_url(f"redis://{user}:nope@{host_port}/3"))
            assert wrong is not None
            with pytest.raises(RedisConnectionError, match="AUTH"):
                await wrong.execute("GET", "mx:db3")
            await wrong.close()
            await client.delete("mx:db3")
            await client.aclose()
        finally:
            await admin.acl_deluser(user)
            await admin.aclose()
    asyncio.run(go())


def test_no_server_is_a_connection_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fast = Multiplexed(host="127.0.0.1", port=port)
    with pytest.raises(RedisConnectionError):
        asyncio.run(fast.execute("PING"))


def test_it_stands_aside_for_clients_it_cannot_speak_for() -> None:
    assert Multiplexed.of(aioredis.Redis.from_url("rediss://localhost:6379")) is None
    assert Multiplexed.of(aioredis.RedisCluster(host="localhost", port=6379)) is None
    assert pipelined(aioredis.Redis.from_url("rediss://localhost:6379")) is None
    assert isinstance(pipelined(aioredis.RedisCluster(host="localhost", port=6379)),
                      ClusterMultiplexed)  # routing by slot: tests/integration/test_cluster.py
    assert pipelined(aioredis.RedisCluster(host="localhost", port=6379, ssl=True)) is None
    unix = Multiplexed.of(aioredis.Redis.from_url("unix:///tmp/valkey.sock?db=2"))
    assert unix is not None and unix.path == "/tmp/valkey.sock" and unix.db == 2


def test_under_overload_every_answer_is_its_callers_own(redis_url: str) -> None:
    """An overloaded API: the loop stalls past the watchdog while replies wait unread, a
    command that gets no reply makes the watchdog close the connection under everyone
    else's, callers give up at random, single commands, batches and transactions
    interleave.
    Whatever fails, every answer that comes back is the caller's own (another
    customer's replies would be another customer's data)."""
    async def scenario(client: aioredis.Redis, fast: Multiplexed) -> None:
        rng = random.Random(11)
        answered = failed = 0

        async def one(n: int) -> None:
            nonlocal answered, failed
            kind = n % 3
            if kind == 0:
                call, want = fast.execute("ECHO", f"s{n}"), f"s{n}".encode()
            elif kind == 1:
                call = fast.execute_many([("ECHO", f"b{n}.{k}") for k in range(5)])
                want = [f"b{n}.{k}".encode() for k in range(5)]
            else:
                call = fast.transaction([("ECHO", f"t{n}.{k}") for k in range(18)])
                want = [f"t{n}.{k}".encode() for k in range(18)]
            try:
                got = await asyncio.wait_for(call, rng.choice([0.001, 0.01, 0.05, 5.0]))
            except (TimeoutError, RedisTimeoutError, RedisConnectionError):
                failed += 1
                return
            assert got == want
            answered += 1

        async def stuck() -> None:  # a reply that does not come: the watchdog's case
            with pytest.raises((RedisTimeoutError, RedisConnectionError)):
                await late(fast, 0.5)

        for wave in range(30):
            calls = [asyncio.ensure_future(one(wave * 100 + n)) for n in range(50)]
            if wave % 5 == 0:  # everything behind it on the connection waits with it
                calls.append(asyncio.ensure_future(stuck()))
            calls += [asyncio.ensure_future(one(wave * 100 + n)) for n in range(50, 100)]
            for _ in range(3):  # each call's task, then wait_for's: sent, replies on the way
                await asyncio.sleep(0)
            if wave % 3 == 0:  # the loop busy with other requests' CPU, past the watchdog
                time.sleep(0.15)
            await asyncio.gather(*calls)
        assert answered > 1000 and failed > 0  # both paths were taken
        assert fast.connects > 1  # and the watchdog closed the connection at least once
        assert await fast.execute("ECHO", "after") == b"after"
    run(redis_url, scenario, timeout=0.1)
