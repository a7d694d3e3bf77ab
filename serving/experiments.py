"""Experiments on the serving side: which running experiments a request falls in, the
variant's behaviour, the exposure events, and results from the streamed statistics.

Assignment needs no shared state (:mod:`models.assignment`); the definitions are read from
the store (folded from ``experiment.*`` events) and cached for ``serving.cache_ttl_s``.
Another surface (the push feed) calls :meth:`ExperimentRegistry.assign` the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from feature_store.client import cancel_and_wait
from feature_store.keys import Keys
from models import experiment_stats
from models.assignment import bucket, in_layer_range, overlaps, variant_for
from serving.crm import CustomerService
from serving.errors import Conflict, InvalidInput, NotFound, StoreUnavailable
from serving.service import RecommendationService
from streams import events as ev

log = logging.getLogger(__name__)
BLEND_PARAMS = ("blend_als", "blend_copurchase", "blend_coview", "blend_session",
                "blend_resume", "blend_rebuy", "blend_viewed_similar")
SegmentOf = Callable[[], Awaitable[str]]
STORE_TIMEOUT_S = 0.25  # as the recommendation service's reads: answers must not wait


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    variant: str
    layer: str
    surface: str
    params: dict[str, float | bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Definition:
    spec: ev.ExperimentSpec
    created_at: float | None = None
    updated_at: float | None = None
    stopped_at: float | None = None

    def status(self, now: float) -> str:
        s = self.spec
        if self.stopped_at is not None:
            return "stopped"
        if s.ends_at is not None and now >= s.ends_at.timestamp():
            return "ended"
        if s.starts_at is not None and now < s.starts_at.timestamp():
            return "scheduled"
        return "running"

    def summary(self, now: float) -> dict[str, Any]:
        s = self.spec
        return {"id": s.id, "status": self.status(now), "surfaces": list(s.surfaces),
                "layer": s.layer, "layer_range": list(s.layer_range),
                "variants": [{"name": v.name, "weight": v.weight, "params": v.params}
                             for v in s.variants],
                "control": s.control_name, "segments": list(s.segments),
                "primary_metric": s.primary_metric,
                "guardrails": [msgspec.to_builtins(g) for g in s.guardrails],
                "started_at": _iso(s.starts_at.timestamp() if s.starts_at else self.created_at),
                "ends_at": _iso(s.ends_at.timestamp()) if s.ends_at else None,
                "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at),
                "stopped_at": _iso(self.stopped_at), "description": s.description}


def assign_pure(defs: list[Definition], user_id: str, surface: str, now: float,
                segment: str | None = None) -> list[Assignment]:
    """The running experiments of ``surface`` this customer is in, one per layer at most.
    ``segment`` is only consulted for experiments that target segments."""
    out: list[Assignment] = []
    taken: set[str] = set()
    for d in sorted(defs, key=lambda d: (d.spec.layer, d.spec.id)):
        s = d.spec
        if (s.layer in taken or surface not in s.surfaces or d.status(now) != "running"
                or not in_layer_range(s.layer, user_id, *s.layer_range)
                or (s.segments and segment not in s.segments)):
            continue
        weights = [(v.name, v.weight) for v in s.variants]
        name = variant_for(weights, bucket(s.salt or s.id, user_id))
        params = next(v.params for v in s.variants if v.name == name)
        out.append(Assignment(s.id, name, s.layer, surface, dict(params)))
        taken.add(s.layer)
    return out


def _targets_segments(defs: list[Definition], surface: str) -> bool:
    """Whether an experiment on ``surface`` targets segments (its assignment needs the
    customer's segment)."""
    return any(d.spec.segments and surface in d.spec.surfaces for d in defs)


class ExperimentRegistry:
    def __init__(self, client: aioredis.Redis, keys: Keys, ttl_s: float = 2.0) -> None:
        self.client, self.keys, self.ttl = client, keys, ttl_s
        self._defs: dict[str, Definition] = {}
        self._read_at = -1e18
        self._refreshing: asyncio.Task[None] | None = None
        self._services: dict[tuple[Any, ...], Any] = {}

    # ------------------------------------------------------------ definitions
    async def definitions(self, fresh: bool = False) -> dict[str, Definition]:
        """All definitions (cached); the last known ones when the store is away.

        Past the TTL the cached ones are answered while ONE background read refreshes
        them. Before, every request that came during the read made its own: at 1,000
        req/s hundreds of reads every TTL, 3% of the API's CPU in a recommendation's
        profile. Only the first call (nothing known yet) and ``fresh`` ones wait."""
        if fresh:
            await self._refresh(fresh=True)
        elif self.known() is None:  # never read: nothing to answer with yet
            assert self._refreshing is not None
            await asyncio.shield(self._refreshing)
        return self._defs

    def known(self) -> dict[str, Definition] | None:
        """:meth:`definitions` without waiting: the cached ones (past the TTL, one
        background read refreshes them), or None before the first read came back."""
        if time.monotonic() - self._read_at >= self.ttl and self._refreshing is None:
            task = asyncio.create_task(self._refresh(fresh=False), name="experiments-refresh")
            self._refreshing = task
            # Runs also for a task cancelled before its first step (at shutdown).
            task.add_done_callback(lambda t: setattr(self, "_refreshing", None))
        return self._defs if self._read_at >= 0 else None

    async def _refresh(self, fresh: bool) -> None:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                self._defs = await self._read()
        except (RedisError, OSError, TimeoutError) as exc:
            if fresh:
                raise StoreUnavailable(f"experiments not readable: {exc!r}") from None
            # Serve on with what we know; retry after the TTL, not on every request.
            log.warning("experiment definitions not refreshed: %r", exc)
        self._read_at = time.monotonic()

    async def _read(self) -> dict[str, Definition]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.experiment_defs(ev.EXPERIMENTS_KEY))
        pipe.hgetall(self.keys.experiment_times(ev.EXPERIMENTS_KEY))
        raw, times = await pipe.execute()
        t = {k.decode(): float(v) for k, v in times.items()}
        out = {}
        for xid_b, doc in raw.items():
            xid = xid_b.decode()
            try:
                spec = msgspec.json.decode(doc, type=ev.ExperimentSpec)
            except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
                log.warning("stored experiment %s does not decode; skipped", xid)
                continue
            out[xid] = Definition(spec, t.get(f"{xid}|created"), t.get(f"{xid}|updated"),
                                  t.get(f"{xid}|stopped"))
        return out

    # ------------------------------------------------------------ assignment
    async def assign(self, user_id: str, surface: str,
                     segment_of: SegmentOf | None = None) -> list[Assignment]:
        """Running experiments of ``surface`` for this customer (possibly none)."""
        defs = list((await self.definitions()).values())
        if not defs:
            return []
        now = time.time()
        segment = None
        if segment_of is not None and _targets_segments(defs, surface):
            try:
                async with asyncio.timeout(STORE_TIMEOUT_S):
                    segment = await segment_of()
            except (RedisError, OSError, TimeoutError):
                segment = None  # unknown segment: not targeted
        return assign_pure(defs, user_id, surface, now, segment)

    def assign_now(self, user_id: str, surface: str) -> list[Assignment] | None:
        """:meth:`assign`'s answer when it needs no wait: the definitions known (see
        :meth:`known`) and none of ``surface``'s targeting segments, which would need
        the customer's segment; else None. Most requests: no experiment running."""
        defs = self.known()
        if defs is None:
            return None
        if not defs:
            return []
        listed = list(defs.values())
        if _targets_segments(listed, surface):
            return None
        return assign_pure(listed, user_id, surface, time.time(), None)

    def exposures(self, assignments: list[Assignment], user_id: str, request_id: str,
                  items: list[str]) -> list[ev.ExperimentExposed]:
        """One ``experiment.exposed`` per experiment of a served answer. The event id is
        derived from (request id, experiment): a retried send is a duplicate, not a
        second exposure."""
        now = datetime.now(UTC)
        return [ev.ExperimentExposed(
            event_id=f"x-{request_id}-{a.experiment}", occurred_at=now, user_id=user_id,
            source="aisle.api", payload=ev.Exposure(
                request_id=request_id, experiment=a.experiment, variant=a.variant,
                surface=a.surface, items=items[:100]))  # type: ignore[arg-type]
            for a in assignments]

    # ------------------------------------------------------------ behaviour
    def service_for(self, base: RecommendationService, assignments: list[Assignment],
                    ) -> RecommendationService:
        """The recommendation service with the variants' blend weights."""
        blend = {k: v for a in assignments for k, v in a.params.items() if k in BLEND_PARAMS}
        if not blend:
            return base
        key = ("svc", id(base), tuple(sorted(blend.items())))
        svc = self._services.get(key)
        if svc is None:
            settings = base.settings.model_copy(
                update={"serving": base.settings.serving.model_copy(update=blend)})
            svc = RecommendationService(settings, base.reader, base.holder, base.customers,
                                        base.timeout, base.pools)
            self._services[key] = svc
        return svc  # type: ignore[no-any-return]

    def forget(self, user_id: str) -> None:
        """Drop what the variant services derived for a customer (erasure)."""
        for svc in self._services.values():
            if isinstance(svc, RecommendationService):
                svc.forget(user_id)

    async def close(self) -> None:
        """Stop the variant services' background work (the API is stopping)."""
        if self._refreshing is not None:
            await cancel_and_wait(self._refreshing)
        for svc in self._services.values():
            if isinstance(svc, RecommendationService):
                await svc.close()

    def customers_for(self, base: CustomerService, assignments: list[Assignment],
                      ) -> CustomerService:
        """The customer service with the variant's offer policy: discounts scaled, or no
        new offers at all (a holdout). The policy version names the variant."""
        a = next((a for a in assignments
                  if "discount_scale" in a.params or a.params.get("offers_off")), None)
        if a is None:
            return base
        key = ("crm", id(base), a.experiment, a.variant)
        svc = self._services.get(key)
        if svc is None:
            p = base.policy
            scale = float(a.params.get("discount_scale", 1.0))
            rules = tuple(msgspec.structs.replace(r, discount_pct=min(100.0, round(
                r.discount_pct * scale, 1))) for r in p.rules)
            budgets = {k: 0 for k in p.budgets} if a.params.get("offers_off") else p.budgets
            policy = msgspec.structs.replace(p, rules=rules, budgets=budgets,
                                             version=f"{p.version}.{a.experiment}.{a.variant}")
            svc = CustomerService(base.reader, base.keys, base.population, base.rules, policy,
                                  base.cache_size)
            svc._issued = base._issued  # one memory of just-issued offers per process
            svc._derived_cache = base._derived_cache  # profiles do not depend on the policy
            self._services[key] = svc
        return svc  # type: ignore[no-any-return]

    # ------------------------------------------------------------ admin
    async def check_new(self, spec: ev.ExperimentSpec) -> None:
        defs = await self.definitions(fresh=True)
        if spec.id in defs:
            raise Conflict(f"experiment {spec.id!r} exists; update it or pick a new id")
        self._check_layer(spec, defs)

    async def merged_update(self, xid: str, change: dict[str, Any]) -> ev.ExperimentSpec:
        defs = await self.definitions(fresh=True)
        old = defs.get(xid)
        if old is None:
            raise NotFound(f"no experiment {xid!r}")
        if old.stopped_at is not None:
            raise Conflict(f"experiment {xid!r} is stopped; start a new one instead")
        if change.get("id", xid) != xid:
            raise InvalidInput("an experiment's id cannot change")
        doc = {**msgspec.to_builtins(old.spec), **change}
        try:
            spec = msgspec.convert(doc, ev.ExperimentSpec)
        except (msgspec.ValidationError, ValueError) as exc:
            raise InvalidInput(str(exc)) from None
        self._check_layer(spec, defs)
        return spec

    async def require(self, xid: str) -> Definition:
        d = (await self.definitions(fresh=True)).get(xid)
        if d is None:
            raise NotFound(f"no experiment {xid!r}")
        return d

    @staticmethod
    def _check_layer(spec: ev.ExperimentSpec, defs: dict[str, Definition]) -> None:
        now = time.time()
        for other in defs.values():
            o = other.spec
            if (o.id != spec.id and o.layer == spec.layer
                    and other.status(now) not in ("stopped", "ended")
                    and overlaps(o.layer_range, spec.layer_range)):
                raise Conflict(
                    f"layer {spec.layer!r}: range {list(spec.layer_range)} overlaps "
                    f"experiment {o.id!r} {list(o.layer_range)}; experiments of one layer "
                    "must own disjoint ranges (or use another layer)")

    # ------------------------------------------------------------ results
    async def per_day(self, xid: str) -> experiment_stats.PerDay:
        pipe = self.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.hgetall(self.keys.experiment_stats(shard, xid))
        try:
            partials = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"experiment statistics not readable: {exc!r}") from None
        out: experiment_stats.PerDay = {}
        for h in partials:
            experiment_stats.parse_fields(((k.decode(), float(v)) for k, v in h.items()), out)
        return out

    async def results(self, xid: str, with_series: bool = False) -> dict[str, Any]:
        d = await self.require(xid)
        s = d.spec
        per_day = await self.per_day(xid)
        weights = {v.name: v.weight for v in s.variants}
        doc = experiment_stats.results(
            xid, per_day, weights, s.control_name, s.primary_metric,
            [(g.metric, g.max_drop_pct) for g in s.guardrails])
        doc["status"] = d.status(time.time())
        if with_series:
            doc["series"] = experiment_stats.series(per_day, list(weights))
        return doc


def new_event_id(kind: str, xid: str) -> str:
    return f"x{kind}-{xid}-{uuid.uuid4().hex[:12]}"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
