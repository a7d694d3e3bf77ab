"""The one settings object. Built from the environment once per process and passed down.

Every variable is ``AISLE_<FIELD>``; nested groups use ``__`` (``AISLE_MODEL__FACTORS=96``).
No broker or store URL means "use the embedded runtime" (see :mod:`aisle.runtime`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class TopicSettings(BaseModel):
    model_config = {"extra": "forbid"}

    events: str = "aisle.events"
    catalog: str = "aisle.catalog"
    deadletter: str = "aisle.deadletter"
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
    # Population stats (RFM quintiles, churn rhythm, repurchase cycles) and the lifecycle
    # sweep; 0 disables the schedule (run `aisle stats` instead).
    population_interval_s: float = Field(300.0, ge=0)
    model_poll_s: float = 2.0


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
    dedupe_window_s: float = 3 * 86400.0
    trending_half_life_h: float = 72.0
    affinity_half_life_d: float = 30.0
    # An item counts as a consumable (fine to recommend again) when this share of
    # its buyers bought it in two or more orders, unless the catalog says otherwise.
    # Tuned on Online Retail's validation split (benchmarks/tune_quality.py; was 0.25).
    consumable_rebuy_share: float = 0.1
    consumable_min_buyers: int = 5


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
    # Items bought/viewed by fewer customers are never ALS neighbours (they still get
    # neighbours): keeps the all-pairs similar-items step off the n² path (models/train.py).
    similar_min_support: int = Field(2, ge=1)


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
    blend_session: float = 2.0
    cache_ttl_s: float = 2.0
    # Admin operations (erasure, ...) need this key; unset, they are switched off.
    admin_api_key: SecretStr | None = None
    # Origins allowed to call the API from a browser (the widget); none by default.
    cors_origins: list[str] = []


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AISLE_", env_nested_delimiter="__", extra="forbid"
    )

    kafka_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".aisle")
    log_level: str = "info"
    topics: TopicSettings = TopicSettings()
    worker: WorkerSettings = WorkerSettings()
    features: FeatureSettings = FeatureSettings()
    model: ModelSettings = ModelSettings()
    serving: ServingSettings = ServingSettings()

    @property
    def bootstrap_servers(self) -> str:
        if not self.kafka_url:
            raise RuntimeError("kafka_url is not resolved; call aisle.runtime.resolve() first")
        return self.kafka_url.removeprefix("kafka://")
