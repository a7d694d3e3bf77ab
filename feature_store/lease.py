"""Leases: a control key one worker holds while it does a group-wide job.

A plain ``SET NX EX`` lock expires after its TTL whether or not its holder is done, and
a ``DELETE`` in the holder's ``finally`` then removes whatever is there, possibly another
worker's lock taken since. At 50M customers a population refresh or a CPU retrain runs
for hours, far past any fixed TTL. A :class:`Lease` holds a token of its own: it is
renewed while its holder works (:meth:`Lease.kept`) and renewed or released only while
the key still holds that token, so a holder that stalled past its TTL cannot take the
key back from the worker that took it over. One key each: Cluster-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)

# KEYS[1] the lease key; ARGV[1] the holder's token; ARGV[2] seconds, or 0 to release.
_IF_HELD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2])
else redis.call('DEL', KEYS[1]) end
return 1
"""


class Lease:
    def __init__(self, client: Any, key: str, ttl_s: int) -> None:
        self.client, self.key, self.ttl_s = client, key, max(1, int(ttl_s))
        self.token = uuid.uuid4().hex.encode()

    async def acquire(self) -> bool:
        """Take the key if nobody holds it."""
        return bool(await self.client.set(self.key, self.token, nx=True, ex=self.ttl_s))

    async def renew(self, ttl_s: float | None = None) -> bool:
        """Hold it ``ttl_s`` (default: the lease's TTL) from now, if still ours."""
        seconds = max(1, int(self.ttl_s if ttl_s is None else ttl_s))
        return bool(await self.client.eval(_IF_HELD, 1, self.key, self.token, seconds))

    async def release(self) -> bool:
        """Delete the key, if still ours."""
        return bool(await self.client.eval(_IF_HELD, 1, self.key, self.token, 0))

    @contextlib.asynccontextmanager
    async def kept(self) -> AsyncIterator[None]:
        """Renew the lease every third of its TTL while the block runs."""
        async def renew_forever() -> None:
            while True:
                await asyncio.sleep(self.ttl_s / 3)
                try:
                    if not await self.renew():
                        log.warning("lease %s was lost (expired and taken over)", self.key)
                        return
                except Exception as exc:  # the store away a moment: the next try
                    log.warning("lease %s not renewed (%r)", self.key, exc)

        task = asyncio.create_task(renew_forever(), name=f"lease:{self.key}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
