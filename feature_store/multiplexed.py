"""One pipelined connection for the API's hottest read: the customer script.

Every recommendation and every offers answer starts with one ``EVALSHA`` (the customer
read, ``customer.lua``). Through redis-py's asyncio client it cost 160-190 µs of the
API's CPU, most of it around the command rather than in it: a pool lock, observability
hooks, a retry wrapper, a read timeout context and several coroutine layers per call
(a ``PING`` costs ~105 µs that way). Here the command goes out packed by hiredis on one
shared connection and its reply is matched to the caller in order (Redis answers a
connection's commands in the order they came): 81 vs 188 µs for the same script and
reply, 45 vs 105 µs for a ``PING`` (``benchmarks/README.md``, "session 11").

What it keeps from redis-py's behaviour, so callers see no difference:

- Errors are redis-py's: a reply error raises ``ResponseError`` (``NoScriptError`` for
  ``NOSCRIPT``), a connection that fails or drops raises ``ConnectionError`` for every
  command waiting on it, and the next call connects again.
- A caller that gives up (its own timeout, a cancelled request) costs nothing to the
  others: its reply still arrives in its turn and is dropped, so nothing shifts.
- A server that stops answering (frozen, a partition) is noticed: when the oldest
  command has waited ``timeout`` seconds the connection is closed and everything on it
  fails with ``TimeoutError``, as redis-py's ``socket_timeout`` does.

While commands are on their way, those made in one loop turn go out in one write (the
requests whose reads are due together cost one send, and the store one read for all of
them: −14% of Valkey's CPU per recommendation with 16 at once); on an idle connection a
command is written at once, without waiting for the turn to end. The customer read
itself goes as one ``MULTI``/``EXEC`` of the script's commands
(:meth:`Multiplexed.transaction`): the same replies, atomically, at half of Valkey's CPU
(a script's replies pass through Lua's strings and tables).

It is opened from the redis-py client's own settings (host and port or unix socket,
user, password, database), over plain TCP or a unix socket; on a Redis Cluster,
:class:`ClusterMultiplexed` keeps one per primary and routes by redis-py's slot map,
handing a moved slot back to redis-py. With TLS or a credential provider
:func:`pipelined` answers None and callers keep redis-py. It speaks RESP2 whatever the
client speaks (redis-py 8 defaults to RESP3): its callers read flat replies, which is
also what a script returns under either.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    NoScriptError,
    ResponseError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from feature_store.tracking import Invalidations, Tracker

log = logging.getLogger(__name__)
P = TypeVar("P", bound=asyncio.BaseProtocol)


class _Wire(asyncio.Protocol):
    """The connection: replies parsed by hiredis, handed out first in, first out."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        # (future, sent at, replies so far): None for one command, a list for a batch
        # (:meth:`Multiplexed.execute_many`), whose future gets all its replies at once.
        self.waiting: collections.deque[
            tuple[asyncio.Future[Any], float, int, list[Any] | None]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        # Commands packed since this loop turn's write: sent together by flush(), so the
        # requests that reach the store in one turn cost one send, and their replies
        # tend to come back in one read, together.
        self.outbox: list[bytes] = []
        # With key tracking on (feature_store/tracking.py): the subscriber generation
        # this connection's invalidations go to (0: none yet), and whom to tell when
        # the connection is lost (the store forgets what it tracked for it).
        self.tracked = 0
        self.tracker: Tracker | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                future, _, n, batch = self.waiting[0]
                if batch is not None:
                    batch.append(reply)
                    if len(batch) < n:
                        continue
                    reply = batch
                self.waiting.popleft()
                if future.done():  # its caller gave up: the reply is dropped, in order
                    continue
                if batch is None and isinstance(reply, hiredis.ReplyError):
                    future.set_exception(_reply_error(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # not a Redis reply stream
            self.fail(RedisConnectionError(f"unreadable reply: {exc!r}"))

    def flush(self) -> None:
        """Write what :meth:`Multiplexed._send` queued this turn, in one send."""
        out, self.outbox = self.outbox, []
        if not out or self.lost is not None:
            return  # failed meanwhile: fail() already failed everything waiting
        transport = self.transport
        if transport is None or transport.is_closing():
            self.fail(RedisConnectionError("the connection to the store is closed"))
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to the store lost: {exc!r}"
                                       if exc else "the store closed the connection"))

    def fail(self, error: BaseException) -> None:
        """Close, and fail every command still waiting with ``error``."""
        if self.lost is None:
            self.lost = error
            if self.tracked and self.tracker is not None:
                self.tracker.reset()
        if self.transport is not None:
            self.transport.abort()
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)


_MULTI, _EXEC = hiredis.pack_command(("MULTI",)), hiredis.pack_command(("EXEC",))
_CACHING = hiredis.pack_command(("CLIENT", "CACHING", "yes"))


def _reply_error(message: str) -> ResponseError:
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class Multiplexed:
    """Commands from any number of callers on one connection, pipelined."""

    def __init__(self, *, host: str = "localhost", port: int = 6379, path: str | None = None,
                 username: str | None = None, password: str | None = None, db: int = 0,
                 timeout: float = 1.0, connect_timeout: float = 1.0,
                 tracker: Tracker | None = None) -> None:
        self.host, self.port, self.path = host, port, path
        self.username, self.password, self.db = username, password, db
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._wire: _Wire | None = None
        self._connecting: asyncio.Task[_Wire] | None = None
        self._watch: asyncio.TimerHandle | None = None
        self.connects = 0  # connections opened so far (tests, metrics)
        # Key tracking for :meth:`tracked_transaction` (feature_store/tracking.py).
        self.tracker = tracker
        self._invalidations = (Invalidations(tracker, self._open, self._auth())
                               if tracker is not None else None)
        self._registering: asyncio.Task[None] | None = None
        self._track_after = 0.0  # monotonic time before which no set-up is tried

    @classmethod
    def of(cls, client: Any, tracker: Tracker | None = None) -> Multiplexed | None:
        """A twin of redis-py ``client``'s connection settings; None where this cannot
        speak for it (a Cluster, TLS, a connection class it does not know)."""
        if not isinstance(client, aioredis.Redis):
            return None
        pool = client.connection_pool
        kw = pool.connection_kwargs
        unix = issubclass(pool.connection_class, aioredis.UnixDomainSocketConnection)
        if not unix and (issubclass(pool.connection_class, aioredis.SSLConnection)
                         or not issubclass(pool.connection_class, aioredis.Connection)):
            return None
        if kw.get("credential_provider") is not None:
            return None
        return cls(host=kw.get("host", "localhost"), port=int(kw.get("port", 6379)),
                   path=kw.get("path") if unix else None, username=kw.get("username"),
                   password=kw.get("password"), db=int(kw.get("db", 0) or 0),
                   timeout=float(kw.get("socket_timeout") or 1.0),
                   connect_timeout=float(kw.get("socket_connect_timeout") or 1.0),
                   tracker=tracker)

    async def execute(self, *args: Any) -> Any:
        """One command's reply, as redis-py's client returns it without a response
        callback (bytes, ints, lists; ``None`` for nil)."""
        return await self._send(await self._live(), hiredis.pack_command(args))

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands``, sent in one write, as a pipeline without a
        transaction: what redis-py's ``pipeline(transaction=False).execute()`` returns
        for commands without response callbacks. A reply error raises the first one,
        once every reply is in (the connection stays in step)."""
        if not commands:
            return []
        wire = await self._live()
        packed = b"".join([hiredis.pack_command(c) for c in commands])
        replies: list[Any] = await self._send(wire, packed, len(commands), listed=True)
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise _reply_error(str(reply))
        return replies

    async def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands`` run as one ``MULTI``/``EXEC`` transaction: read
        together, nothing written between them, as a read-only script reads, at less
        than half of Valkey's CPU for the same replies (a script's replies go through
        Lua's strings and tables). Raises the first error among them: one refused when
        queued (the transaction is then discarded) or one that failed in ``EXEC``."""
        return (await self._transaction(await self._live(), commands, False))[0]

    async def tracked_transaction(self, commands: list[tuple[Any, ...]],
                                  ) -> tuple[list[Any], bool]:
        """:meth:`transaction`, and whether the store tracks its keys for this process:
        True when the tracker will be told if any of them changes (or told to reset).
        Where the tracking is not set up yet (a new connection, a new subscriber) it
        is set up in the background and this read goes untracked."""
        wire = await self._live()
        inv = self._invalidations
        tracked = inv is not None and inv.live and wire.tracked == inv.generation
        if (inv is not None and not tracked and self._registering is None
                and time.monotonic() >= self._track_after):
            self._registering = asyncio.create_task(self._track(wire, inv))
        replies, refused = await self._transaction(wire, commands, tracked)
        if refused:  # the store no longer tracks this connection: what it kept
            wire.tracked = 0  # cannot be trusted, and tracking is set up again
            if wire.tracker is not None:
                wire.tracker.reset()
        return replies, tracked and not refused

    async def _track(self, wire: _Wire, inv: Invalidations) -> None:
        """Redirect ``wire``'s invalidations to a live subscriber (opened if needed), in
        OPTIN mode: only reads after ``CLIENT CACHING yes`` are tracked."""
        try:
            client_id, generation = await inv.open()
            if wire.lost is None:
                await self._send(wire, hiredis.pack_command(
                    ("CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "OPTIN")))
                if inv.generation == generation:
                    wire.tracked, wire.tracker = generation, inv.tracker
        except ResponseError as exc:  # not Redis 6+ or Valkey, or CLIENT not allowed
            log.warning("the store does not track keys (%s); every read goes to it", exc)
            self._invalidations = None
            inv.close()
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError,
                TimeoutError) as exc:
            log.info("key tracking not set up yet: %r", exc)
            self._track_after = time.monotonic() + 1.0  # a read a second from now tries again
        finally:
            self._registering = None

    async def _transaction(self, wire: _Wire, commands: list[tuple[Any, ...]],
                           tracked: bool) -> tuple[list[Any], bool]:
        """The transaction's replies, and whether its ``CLIENT CACHING`` was refused."""
        parts = [_MULTI, *[hiredis.pack_command(c) for c in commands], _EXEC]
        if tracked:
            parts.insert(0, _CACHING)
        replies: list[Any] = await self._send(wire, b"".join(parts),
                                              len(commands) + 2 + tracked)
        # CLIENT CACHING refused (tracking off): the transaction ran all the same.
        refused = tracked and isinstance(replies[0], hiredis.ReplyError)
        if tracked:
            replies = replies[1:]
        done = replies[-1]
        # The usual case checked by C loops: OK, one QUEUED per command, no error in EXEC.
        if (replies.count(b"QUEUED") == len(commands) and isinstance(done, list)
                and hiredis.ReplyError not in map(type, done)):
            return done, refused
        for reply in (*replies, *(done if isinstance(done, list) else ())):
            if isinstance(reply, hiredis.ReplyError):
                raise _reply_error(str(reply))
        raise ResponseError(f"transaction not run: {done!r}")  # nil: aborted (a WATCH)

    def submit_many(self, commands: list[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        """Send ``commands`` now and return the future of their replies, reply errors
        included as ``hiredis.ReplyError`` values (not raised). On a live connection
        they are written, or queued for this turn's write, before this returns, so
        batches submitted one after another run in that order on the server, each
        without waiting for the previous one's replies (the worker's writes ahead).
        Without a live connection, one is made first; a lost connection fails the
        future with ``ConnectionError``."""
        if not commands:  # nothing to wait for (a batch of replies needs one at least)
            done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        packed = b"".join([hiredis.pack_command(c) for c in commands])
        wire = self._wire
        if wire is None or wire.lost is not None or wire.transport is None \
                or wire.transport.is_closing():
            return asyncio.ensure_future(self._submit_later(packed, len(commands)))
        return self._send(wire, packed, len(commands), listed=True)

    async def _submit_later(self, packed: bytes, n: int) -> list[Any]:
        return await self._send(await self._live(), packed, n, listed=True)  # type: ignore[no-any-return]

    def _send(self, wire: _Wire, packed: bytes, n: int = 1,
              listed: bool = False) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if wire.transport is None or wire.transport.is_closing():
            raise RedisConnectionError("the connection to the store is closed")
        # With nothing on its way, written now; else queued for this turn's write
        # (flush), as more commands are likely to come in the same turn. Commands keep
        # their order either way, and a reply cannot come before its future is queued
        # (it is read by this loop, after this returns).
        if wire.outbox:
            wire.outbox.append(packed)
        elif wire.waiting:
            wire.outbox.append(packed)
            loop.call_soon(wire.flush)
        else:
            wire.transport.write(packed)
        future = loop.create_future()
        wire.waiting.append((future, time.monotonic(), n, [] if listed or n > 1 else None))
        if self._watch is None:
            self._watch = loop.call_later(self.timeout, self._check)
        return future

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """``EVALSHA``; the script is loaded and the call repeated once if the server
        does not have it (restarted, flushed), as redis-py's ``Script`` does."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute("SCRIPT", "LOAD", script)
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    def _check(self) -> None:
        """The watchdog: a command unanswered for ``timeout`` closes the connection."""
        self._watch = None
        wire = self._wire
        if wire is None or not wire.waiting:
            return
        waited = time.monotonic() - wire.waiting[0][1]
        if waited >= self.timeout:
            wire.fail(RedisTimeoutError(f"no reply from the store in {self.timeout} s"))
            return
        self._watch = asyncio.get_running_loop().call_later(self.timeout - waited,
                                                            self._check)

    async def _live(self) -> _Wire:
        """The connection, (re)made first if there is none or it was lost."""
        wire = self._wire
        if wire is None or wire.lost is not None:
            wire = await self._connected()
        return wire

    async def _connected(self) -> _Wire:
        # Callers arriving while a connection is being made share it.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._connecting is task:
                self._connecting = None

    async def _open(self, protocol: Callable[[], P]) -> tuple[asyncio.BaseTransport, P]:
        """A connection to the store speaking ``protocol``."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.path is not None:
                    return await loop.create_unix_connection(protocol, self.path)
                return await loop.create_connection(protocol, self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to the store: {exc!r}") from exc

    def _auth(self) -> list[tuple[Any, ...]]:
        if self.password is None:
            return []
        return [("AUTH", *((self.username,) if self.username else ()), self.password)]

    async def _connect(self) -> _Wire:
        _, wire = await self._open(_Wire)
        self.connects += 1
        handshake = self._auth()
        if self.db:
            handshake.append(("SELECT", self.db))
        # Written before anyone else can write: the server takes them first.
        sent = [self._send(wire, hiredis.pack_command(command)) for command in handshake]
        self._wire = wire
        for command, future in zip(handshake, sent, strict=True):
            try:
                await future
            except BaseException as exc:  # a wrong password, no such database; cancelled
                wire.fail(RedisConnectionError(f"{command[0]} failed: {exc!r}"))
                for other in sent:  # failed with the connection: nobody else awaits them
                    if other.done() and not other.cancelled():
                        other.exception()
                if isinstance(exc, Exception):
                    raise RedisConnectionError(f"{command[0]} failed: {exc}") from exc
                raise
        return wire

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        if self._registering is not None:
            self._registering.cancel()
            with contextlib.suppress(BaseException):
                await self._registering
        if self._wire is not None:
            self._wire.fail(RedisConnectionError("closed"))
            self._wire = None
        if self._invalidations is not None:
            self._invalidations.close()


class Rerouted(Exception):
    """A Cluster's slot moved (MOVED/ASK) or is not known here yet: the caller asks
    redis-py's cluster client instead, which follows the redirection and refreshes its
    slot map, which the next call here then reads."""


class ClusterMultiplexed:
    """:class:`Multiplexed` on a Redis Cluster: one pipelined connection per primary,
    each command sent to the node its key's slot maps to in redis-py's slot map.

    A customer read is one command on one node (its keys share the customer's hash
    tag); a batch of co-count reads spans the shards' nodes, so it goes out as one batch
    per node, at once, and comes back in the order asked. A redirection (MOVED, ASK: a
    slot being moved) or an unknown slot raises :class:`Rerouted` for the caller to
    repeat the read through redis-py."""

    def __init__(self, client: aioredis.RedisCluster, timeout: float = 1.0,
                 connect_timeout: float = 1.0, tracker: Tracker | None = None) -> None:
        self.client = client
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.tracker = tracker  # each node tracks its own keys
        self._nodes: dict[tuple[str, int], Multiplexed] = {}
        self.rerouted = 0  # reads handed back to redis-py (tests, diagnosis)

    @classmethod
    def of(cls, client: Any, tracker: Tracker | None = None) -> ClusterMultiplexed | None:
        if not isinstance(client, aioredis.RedisCluster):
            return None
        kw = client.get_connection_kwargs()
        if (kw.get("credential_provider") is not None
                or issubclass(kw.get("connection_class", aioredis.Connection),
                              aioredis.SSLConnection)):
            return None
        return cls(client, float(kw.get("socket_timeout") or 1.0),
                   float(kw.get("socket_connect_timeout") or 1.0), tracker)

    def _node(self, key: str) -> Multiplexed:
        try:
            node = self.client.get_node_from_key(key)
        except Exception as exc:  # no slot map yet (nothing asked so far), a slot gap
            self.rerouted += 1
            raise Rerouted(str(exc)) from exc
        if node is None:
            self.rerouted += 1
            raise Rerouted(f"no node for {key!r}")
        mux = self._nodes.get((node.host, node.port))
        if mux is None:
            kw = self.client.get_connection_kwargs()
            mux = Multiplexed(host=node.host, port=node.port, username=kw.get("username"),
                              password=kw.get("password"), timeout=self.timeout,
                              connect_timeout=self.connect_timeout, tracker=self.tracker)
            self._nodes[(node.host, node.port)] = mux
        return mux

    @contextlib.contextmanager
    def _rerouting(self) -> Iterator[None]:
        """A redirection (a slot moving) raised as :class:`Rerouted`."""
        try:
            yield
        except ResponseError as exc:
            if _redirected(exc):
                self.rerouted += 1
                raise Rerouted(str(exc)) from exc
            raise

    async def transaction(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """:meth:`Multiplexed.transaction` on the node of the first command's key; every
        key must be in its slot (one customer's keys share a hash tag)."""
        with self._rerouting():
            return await self._node(commands[0][1]).transaction(commands)

    async def tracked_transaction(self, commands: list[tuple[Any, ...]],
                                  ) -> tuple[list[Any], bool]:
        """:meth:`Multiplexed.tracked_transaction` on the node of the first key."""
        with self._rerouting():
            return await self._node(commands[0][1]).tracked_transaction(commands)

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """``commands`` whose key is their second element (as ``ZREVRANGE key ...``)."""
        by_node: dict[int, tuple[Multiplexed, list[int]]] = {}
        for at, command in enumerate(commands):
            mux = self._node(command[1])
            by_node.setdefault(id(mux), (mux, []))[1].append(at)
        groups = list(by_node.values())
        with self._rerouting():
            replies = await asyncio.gather(*(mux.execute_many([commands[i] for i in ats])
                                             for mux, ats in groups))
        out: list[Any] = [None] * len(commands)
        for (_, ats), got in zip(groups, replies, strict=True):
            for i, reply in zip(ats, got, strict=True):
                out[i] = reply
        return out

    def submit_many(self, commands: list[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        """:meth:`Multiplexed.submit_many` on each command's node (its key is its second
        element), sent to every node before this returns; the replies come back in the
        order asked, a node's lost connection as an exception object in its commands'
        places. Raises :class:`Rerouted` when a key's node is not known here."""
        by_node: dict[int, tuple[Multiplexed, list[int]]] = {}
        for at, command in enumerate(commands):
            mux = self._node(command[1])
            by_node.setdefault(id(mux), (mux, []))[1].append(at)
        groups = list(by_node.values())
        sent = [mux.submit_many([commands[i] for i in ats]) for mux, ats in groups]
        return asyncio.ensure_future(self._in_order(len(commands), groups, sent))

    @staticmethod
    async def _in_order(n: int, groups: list[tuple[Multiplexed, list[int]]],
                        sent: list[asyncio.Future[list[Any]]]) -> list[Any]:
        """The replies in the order asked; a node's failure (a lost connection) is the
        reply of each of its commands, as an exception object."""
        out: list[Any] = [None] * n
        for (_, ats), got in zip(groups, await asyncio.gather(*sent, return_exceptions=True),
                                 strict=True):
            for k, i in enumerate(ats):
                out[i] = got if isinstance(got, BaseException) else got[k]
        return out

    async def close(self) -> None:
        for mux in self._nodes.values():
            await mux.close()
        self._nodes.clear()


def _redirected(exc: ResponseError) -> bool:
    return str(exc).startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"))


def pipelined(client: Any, tracker: Tracker | None = None,
              ) -> Multiplexed | ClusterMultiplexed | None:
    """The pipelined connection(s) for ``client``'s store, or None where redis-py must
    speak for it (TLS, a credential provider). With ``tracker``, customer reads can be
    tracked (:meth:`Multiplexed.tracked_transaction`)."""
    return Multiplexed.of(client, tracker) or ClusterMultiplexed.of(client, tracker)
