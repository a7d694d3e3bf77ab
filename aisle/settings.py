"""The one settings object. Built from the environment once per process and passed down.

Every variable is ``AISLE_<FIELD>``; nested groups use ``__`` (``AISLE_MODEL__FACTORS=96``).
No broker or store URL means "use the embedded runtime" (see :mod:`aisle.runtime`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TopicSettings(BaseModel):
    model_config = {"extra": "forbid"}

    events: str = "aisle.events"
    catalog: str = "aisle.catalog"
    deadletter: str = "aisle.deadletter"
    # Push-notification candidates for the push system (CloudEvents JSON, key: customer).
    push: str = "push.candidates"
    partitions: int = Field(8, ge=1, le=1024)


class WorkerSettings(BaseModel):
    model_config = {"extra": "forbid"}

    # The Faust app id is also the Kafka consumer group: workers with one id share work.
    app_id: str = "aisle"
    batch_max: int = Field(2000, ge=1)
    batch_within_s: float = Field(0.05, gt=0)
    # Embedded profile: short timeouts so a worker joins its group in seconds, not ~30 s.
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 6.0
    retrain_interval_s: float = Field(3600.0, ge=0, description="0 disables the schedule")
    retrain_min_new_events: int = 1000
    # Between retrains: re-solve the factors of the items touched since the model was
    # trained (models.train.refresh_items_once) once this many events arrived; 0
    # disables. ~3 s of one core on Online Retail (a week's items), a retrain 5-15 s.
    item_refresh_interval_s: float = Field(600.0, ge=0)
    item_refresh_min_new_events: int = 500
    # Population stats (RFM quintiles, churn rhythm, repurchase cycles) and the lifecycle
    # sweep, at least this often; 0 disables the schedule (run `aisle stats` instead).
    population_interval_s: float = Field(300.0, ge=0)
    # The stats come from at most about this many customers, picked by a hash of their
    # id (the lifecycle sweep still reads everyone): bounds a refresh's memory at scale.
    population_sample_max: int = Field(200_000, ge=1)
    # How often workers check whether the stats are due sooner: none published yet, or
    # the log's clock moved a day past them (a replay, a backfill; streams/timers.py).
    population_check_s: float = Field(10.0, gt=0)
    model_poll_s: float = 2.0
    # The consumer hands one agent whole fetched batches instead of Faust's per-message
    # events (streams/batching.py); false restores stock agents with take_events.
    batch_consumer: bool = True
    # A worker freezes its start-up objects out of the garbage collector and collects
    # after this many allocations (Python's default: 700); 0 leaves the GC alone.
    gc_gen0_threshold: int = Field(20_000, ge=0)
    # How long a fetch may wait at the broker for records (with batch_consumer). The
    # embedded broker holds a fetch about this long even when records arrive, so it
    # bounds freshness; lower costs idle fetch round trips.
    fetch_max_wait_ms: int = Field(20, ge=1, le=5000)
    # Send each batch's scripts as soon as it is folded, on one ordered connection,
    # without waiting for the previous batch's replies (streams/ahead.py); false waits,
    # as before (and so does a store redis-py must speak for: TLS, credentials).
    write_ahead: bool = True


class FeatureSettings(BaseModel):
    model_config = {"extra": "forbid"}

    key_prefix: str = "a"
    # State shards (Redis Cluster hash tags). Independent of Kafka partitions.
    shards: int = Field(8, ge=1, le=16384)
    recent_views_max: int = 50
    history_max: int = 200
    session_items_max: int = 20
    # Co-purchase pairs grow as n²: wholesale invoices of hundreds of lines say little
    # about "bought together" and cost most of the ingest time, so baskets are capped.
    basket_items_max: int = 30
    # Past basket_items_max, the first basket_items_max items still pair exactly and
    # each later one pairs with this many others sampled from the whole order (seeded
    # by the event id): big invoices count at a cost of 2·k per extra line, not n.
    # Off (0: lines past the cap are dropped, as before): on Online Retail, k = 5, 10,
    # 20 moved the related hit rate by +0.2, -0.2, -0.9 points (noise or worse) for
    # +25%, +46%, +78% Valkey CPU per event (benchmarks/bench_basket_pairs.py).
    basket_sample_k: int = Field(0, ge=0)
    dedupe_window_s: float = 3 * 86400.0
    trending_half_life_h: float = 72.0
    affinity_half_life_d: float = 30.0
    # An item counts as a consumable (fine to recommend again) when this share of
    # its buyers bought it in two or more orders, unless the catalog says otherwise.
    # Tuned on Online Retail's validation split (benchmarks/tune_quality.py; was 0.25).
    consumable_rebuy_share: float = 0.1
    consumable_min_buyers: int = 5
    # A/B attribution: carts and orders count for an experiment's variant from the
    # customer's first exposure until this long after their latest one.
    attribution_window_h: float = Field(168.0, gt=0)
    # Recent answers per customer whose request_id a click can still be matched to.
    exposure_requests_max: int = Field(100, ge=1, le=10_000)
    # A view of an item an answer showed, within this long after it, without the
    # answer's request_id, counts as that answer's click (the newest such answer).
    click_window_s: float = Field(1800.0, ge=0)


class ModelSettings(BaseModel):
    model_config = {"extra": "forbid"}

    # factors, regularization, iterations, alpha, half-life and the purchase weight won a
    # random search on Online Retail's validation split (benchmarks/tune_quality.py,
    # results/tune_quality.json; were 64, 0.05, 15, 4.0, 120 d, 5.0). Online Retail has
    # no views, carts or favourites, so their weights are not tuned.
    factors: int = Field(96, ge=2, le=1024)
    regularization: float = 0.06
    iterations: int = 20
    alpha: float = 0.54
    half_life_d: float = 30.0
    weight_view: float = 1.0
    weight_favorite: float = 2.0
    weight_cart: float = 3.0
    weight_purchase: float = 10.0
    weight_review_good: float = 2.0
    top_k_similar: int = 50
    seed: int = 42
    keep_versions: int = 2
    # After each published model (retrain or item refresh), re-solve every customer's
    # stored vector against it (models.online.refold_all), so the API does not fold them
    # in at request time. One loop, ~50-230 µs a customer: at millions of customers with
    # the 10-minute item refresh, turn it off or refresh less often (docs/scaling.md).
    refold_customers: bool = True
    # Items bought/viewed by fewer customers are never ALS neighbours (they still get
    # neighbours): keeps the all-pairs similar-items step off the n² path (models/train.py).
    similar_min_support: int = Field(2, ge=1)
    # Item-kNN neighbours (cosine over the training matrix) published per item with the
    # model, for "similar to what you just viewed" (serving/viewed.py); 0 = none.
    knn_neighbours: int = Field(50, ge=0, le=500)
    # Where full retrains run: "gpu" (implicit's CUDA ALS; a process that cannot use one
    # refuses to start), "cpu", or "auto" (the GPU when implicit.gpu.HAS_CUDA). Fold-in
    # and serving stay on the CPU either way.
    device: Literal["cpu", "gpu", "auto"] = "auto"


class ServingSettings(BaseModel):
    model_config = {"extra": "forbid"}

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_limit: int = 100
    max_batch: int = 500
    max_body_bytes: int = 1_000_000
    # Tuned with the model above, through the served path (tune_quality.py stage B;
    # were 1.0, 0.6, 0.3, 0.5).
    blend_als: float = 1.0
    blend_copurchase: float = 2.5
    blend_coview: float = 0.3
    # 2.0 until the viewed-similar search (benchmarks/tune_viewed.py): on Taobao the
    # live co-counts of the latest views crowded the customer's own items out (NDCG).
    blend_session: float = 0.5
    # Win-back items ("you saved this", "you used to buy this"): blend_session's weight
    # until the viewed-similar search lowered that one for the co-counts it was about.
    blend_winback: float = Field(2.0, ge=0)
    # The customer's own items (serving/again.py): recently viewed and not bought
    # ("pick up where you left off"), and bought before ("buy it again"; the
    # non-consumable rule still hides a fridge bought last week). Tuned on both
    # datasets' validation splits (benchmarks/tune_quality.py --stage again; the
    # first guess 1.0, 1.0, 24 h gained +51%, the winner +274% over the source off).
    blend_resume: float = Field(4.0, ge=0)
    blend_rebuy: float = Field(1.0, ge=0)
    # A viewed item's weight halves per this long between its last view and the
    # customer's latest one.
    resume_half_life_h: float = Field(6.0, gt=0)
    # Similar to what you just viewed (serving/viewed.py): the neighbours of the
    # customer's strongest recent items (anchors, weighted like the resume source with
    # their own half-life), from the model's published item-kNN ("knn") or ALS ("als")
    # neighbours; "row" scales each anchor's similarities by its best one.
    # Tuned on both validation splits (benchmarks/tune_viewed.py, round 2; the first
    # guess 1.0, 1 h, 10, 20, knn, cosine gained +1.2%, the winner +3.2% over the source
    # off with blend_session 2.0).
    blend_viewed_similar: float = Field(0.5, ge=0)
    viewed_similar_half_life_h: float = Field(6.0, gt=0)
    viewed_similar_anchors: int = Field(5, ge=1, le=100)
    viewed_similar_neighbours: int = Field(50, ge=1, le=500)
    viewed_similar_source: Literal["knn", "als"] = "knn"
    viewed_similar_norm: Literal["cosine", "row"] = "row"
    cache_ttl_s: float = 2.0
    # Catalog entries (title, price, stock, removed) are kept in the API's memory until
    # the catalog's change feed says the item changed (checked once a second), and at
    # most this long (before, every item in use was re-read every 2-4 s: under cProfile
    # 7% of a recommendation's time). The bound is a backstop for changes the feed
    # cannot tell: a store emptied and refilled by other means than `aisle rebuild`
    # (whose lock the check sees) while its change counters climbed past the API's.
    # 60 s before session 25: an item unseen for a minute was read again on the
    # request's path, and a kept answer with such an item was checked by a store read
    # (bench_serving's recommendations peak, same code back to back: 13,884 req/s with
    # 60 s, 18,287 with 600 s; benchmarks/README.md).
    catalog_max_age_s: float = Field(600.0, gt=0)
    # Related items for anonymous visitors (product pages): the same for everyone and
    # moved by co-purchase counts over thousands of orders, so half a minute old is fresh
    # enough (a stock-out shows within it). A new model version misses the cache at once;
    # a cold item's answer keeps only cache_ttl_s.
    related_cache_ttl_s: float = Field(30.0, ge=0)
    # The weight of ALS neighbours in the related-items endpoint alone (blend_als still
    # weighs them where recommendations use an item's related candidates). On Online
    # Retail's validation split the related hit rate fell as it rose: 0.7907 / 0.950
    # (customers' / guests' next orders) at 0, 0.7873 / 0.946 at 0.25, 0.782 / 0.943 at
    # 0.5, 0.778 / 0.932 at 1.0, the old weight (benchmarks/related_blend.py). At 0 an
    # item with fewer co-purchase partners than asked fills from popular items in its
    # category, as before.
    related_blend_als: float = Field(0.0, ge=0)
    # Per customer, the API keeps what it derived from their stored state (fold-in
    # vector, facts and profile) together with the state it was derived from, and
    # reuses it only while a fresh read returns the same state (same model, same log
    # clock): the customer's next event invalidates it. Entries per process; 0 = off.
    customer_cache_size: int = Field(20_000, ge=0)
    # A customer's recommendations are answered again, not derived again, while a fresh
    # read of their stored state returns the same replies, the model is the same, the
    # answered items' catalog entries are unchanged and the answer is younger than this
    # (what else it drew on, co-counts and trending, moves over thousands of customers'
    # events, as for related_cache_ttl_s). A list filled from popular items alone keeps
    # cache_ttl_s. Kept for customer_cache_size customers. 0 = off.
    recommendations_cache_ttl_s: float = Field(30.0, ge=0)
    # Customers whose last read is kept in the API's memory while the store tracks its
    # keys (CLIENT TRACKING; feature_store/tracking.py): the store tells when any of
    # them changes, and until then an answer skips the read. 0 = read every time.
    # At most tracked_customers_mib of memory, the read and its parse together: Online
    # Retail's wholesale buyers take 39 kB each (a 200-line purchase history is ~25 kB
    # read; charged 44 kB, an upper bound), so 128 MiB keeps ~3,000 of them; a shop's
    # typical customer takes far less.
    tracked_customers: int = Field(20_000, ge=0)
    tracked_customers_mib: int = Field(128, ge=0)
    # From this many items in the model up, the API sorts the items by norm after each
    # model loads and scores, per answer, only those that could enter the ALS pool
    # (models/pool.py): the same pool, 19x faster at Taobao's 84,793 items
    # (benchmarks/bench_ann.py). Smaller catalogs fit one block anyway. 0 = never.
    als_pool_order_min_items: int = Field(8_192, ge=0)
    # Admin operations (erasure, ...) need this key; unset, they are switched off.
    admin_api_key: SecretStr | None = None
    # Origins allowed to call the API from a browser (the widget); none by default.
    cors_origins: list[str] = []
    # Serve the demo storefront (/demo) and the operator's page (/ops) with their JSON;
    # turn off on a public deployment: they list customer ids and pipeline internals.
    pages: bool = True
    # Per-request timeline (serving/timeline.py): when set, the API records each request's
    # stages, its event loop's lag and GC pauses, and writes them here on shutdown. A
    # benchmark's tool (benchmarks/serving_timeline.py); off (None) costs nothing.
    timeline_path: Path | None = None
    # Garbage collector (serving/gc_tuning.py): freeze what survived every this many
    # seconds so full collections stop traversing the model, catalog and caches (at
    # 1,000 req/s: 1.5 s of gen-2 pauses in 15 s, up to 238 ms each, vs 0.2 s and 81 ms
    # frozen every 10 s; benchmarks/README.md); 0 = off. gen0 threshold 0 = Python's (700).
    gc_freeze_s: float = Field(10.0, ge=0)
    gc_gen0_threshold: int = Field(0, ge=0)


class PushSettings(BaseModel):
    """Push-notification candidates: triggers, fatigue caps, quiet hours (docs/push.md).
    Times are on the log's clock, like offers, so a replay behaves like living through it."""

    model_config = {"extra": "forbid"}

    # How often each worker drains due triggers (wall seconds); 0 switches push off.
    drain_interval_s: float = Field(2.0, ge=0)
    # A claimed trigger comes back to the pool if its worker has not decided it by then.
    lease_s: float = Field(30.0, gt=0)
    claim_batch: int = Field(500, ge=1)
    cart_abandon_delay_s: float = Field(3600.0, gt=0)
    # Message lifetimes: after these a held or late candidate is dropped, not sent.
    cart_abandon_ttl_s: float = Field(24 * 3600.0, gt=0)
    winback_ttl_s: float = Field(72 * 3600.0, gt=0)
    # "Your offer ends soon": this long before the offer expires.
    offer_expiry_lead_s: float = Field(6 * 3600.0, gt=0)
    winback_stages: list[str] = ["at_risk", "churned"]
    # Price drop / back in stock: who watches an item (viewed, favourited, carted it within
    # the window; the newest per shard), how large a drop counts, how long the news lasts.
    watch_window_s: float = Field(30 * 86400.0, gt=0)
    watchers_max: int = Field(500, ge=1)
    price_drop_min_pct: float = Field(5.0, gt=0, lt=100)
    item_change_ttl_s: float = Field(48 * 3600.0, gt=0)
    # The customer sweep (replenishment due, tier nudges) runs this often; 0: never.
    sweep_interval_s: float = Field(300.0, ge=0)
    # Remind this long before the predicted run-out; the reminder lives this long.
    replenish_lead_s: float = Field(3 * 86400.0, ge=0)
    replenish_ttl_s: float = Field(4 * 86400.0, gt=0)
    # Nudge customers at most this far (shop currency) from the next member tier.
    tier_gap_max: float = Field(40.0, gt=0)
    tier_nudge_ttl_s: float = Field(48 * 3600.0, gt=0)
    # Customers who never sent consent.updated: may they get pushes? (app permission given)
    default_opt_in: bool = True
    default_timezone: str = "Europe/London"
    # Quiet hours, local time of the customer: [start, end) in whole hours; wraps midnight.
    quiet_start_h: int = Field(21, ge=0, le=23)
    quiet_end_h: int = Field(9, ge=0, le=23)
    max_per_day: int = Field(2, ge=0)
    max_per_week: int = Field(5, ge=0)
    max_per_reason_day: int = Field(1, ge=0)
    max_per_reason_week: int = Field(3, ge=0)
    # The same dedupe key (reason + subject) is not pushed again within this window.
    dedupe_window_s: float = Field(7 * 86400.0, ge=0)
    # Items pushed within this window are not the top web recommendation; 0: no rule.
    web_repeat_window_s: float = Field(86400.0, ge=0)
    # Where the candidates say they come from (CloudEvents ``source``).
    source: str = "aisle/push"

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        from zoneinfo import available_timezones

        if name not in available_timezones():
            raise ValueError(f"unknown time zone {name!r} (want an IANA name)")
        return name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AISLE_", env_nested_delimiter="__", extra="forbid"
    )

    kafka_url: str | None = None
    redis_url: str | None = None
    # Redis Cluster: redis_url names one seed node (redis://host:port) and the client
    # discovers the others, as redis-py's RedisCluster.from_url does. Without a URL,
    # `aisle up` starts an embedded 3-primary cluster instead of one Valkey.
    redis_cluster: bool = False
    data_dir: Path = Path(".aisle")
    log_level: str = "info"
    topics: TopicSettings = TopicSettings()
    worker: WorkerSettings = WorkerSettings()
    features: FeatureSettings = FeatureSettings()
    model: ModelSettings = ModelSettings()
    serving: ServingSettings = ServingSettings()
    push: PushSettings = PushSettings()

    @property
    def bootstrap_servers(self) -> str:
        if not self.kafka_url:
            raise RuntimeError("kafka_url is not resolved; call aisle.runtime.resolve() first")
        return self.kafka_url.removeprefix("kafka://")
