"""``aisle demo``: the newcomer's first run, end to end on real data.

Starts the embedded runtime, a worker and the API; replays Online Retail; trains; then
asks the running API for related products and recommendations for real customers and
prints them with titles and reasons.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from aisle.replay import replay_file
from aisle.settings import Settings
from aisle.stack import Stack
from models.train import train_once
from streams.lag import wait_caught_up

DEFAULT_DATA = (Path(__file__).resolve().parents[2]
                / "shared/data/online_retail/online_retail.csv.gz")


def run_demo(settings: Settings, exit_after: bool, limit_rows: int | None, data: Path | None,
             console: Console) -> int:
    started = time.monotonic()
    path = data or DEFAULT_DATA
    if not path.exists():
        console.print(f"[red]dataset not found: {path}[/red] (pass --data PATH)")
        return 2
    console.print("[bold]starting broker, store, worker and API…[/bold]")
    stack = Stack.start(settings)
    stack.record()
    try:
        _run(stack, path, limit_rows, console, started)
        console.print(f"\nAPI running at [bold]{stack.api_url}[/bold] "
                      f"(docs {stack.api_url}/docs); Ctrl-C stops everything.")
        console.print(f"Storefront demo: [bold]{stack.api_url}/demo[/bold]   "
                      f"operator's page: [bold]{stack.api_url}/ops[/bold]")
        if not exit_after:
            from aisle.cli import _wait_for_signal

            _wait_for_signal()
    finally:
        stack.stop()
    return 0


def _run(stack: Stack, path: Path, limit_rows: int | None, console: Console,
         started: float) -> None:
    s = stack.settings
    t0 = time.monotonic()
    stats = asyncio.run(replay_file(s, path, limit_rows=limit_rows, console=console))
    console.print(stats.summary())
    t1 = time.monotonic()
    lag_s = asyncio.run(wait_caught_up(s, timeout=600))
    t2 = time.monotonic()
    art = asyncio.run(train_once(s))
    t3 = time.monotonic()
    console.print(f"replay {t1 - t0:.1f}s, workers caught up {lag_s:.1f}s later, "
                  f"training {t3 - t2:.1f}s ({art.stats})")
    api = httpx.Client(base_url=stack.api_url or "", timeout=10)
    _wait_model(api, art.version)
    customers = _top_customers(stack)
    for uid in customers[:3]:
        body = api.get(f"/v1/users/{uid}/recommendations", params={"limit": 5}).json()
        _table(console, f"Recommended for customer {uid}", body)
    first = time.monotonic() - started
    for item in [it for it in _top_items(api)][:2]:
        body = api.get(f"/v1/items/{item}/related", params={"limit": 5}).json()
        _table(console, f"Related to {item}", body)
    console.print(f"\n[green]first recommendation printed {first:.1f}s after start[/green]")


def _wait_model(api: httpx.Client, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get("/readyz").json().get("model_version") == version:
            return
        time.sleep(0.2)


def _top_customers(stack: Stack) -> list[str]:
    from feature_store.client import open_redis_sync
    from feature_store.keys import Keys

    r = open_redis_sync(stack.settings)
    keys = Keys(stack.settings.features.key_prefix, stack.settings.features.shards)
    counts: list[tuple[float, str]] = []
    for shard in range(keys.shards):
        for raw in list(r.smembers(keys.users(shard)))[:300]:
            uid = raw.decode()
            n = r.hget(keys.user(uid, "rfm"), "orders")
            counts.append((float(n or 0), uid))
    r.close()
    counts.sort(reverse=True)
    # Not the very largest accounts (wholesalers buying everything): customers with a
    # handful of orders read more like a shop's typical customer.
    typical = [uid for n, uid in counts if 5 <= n <= 30]
    return typical[:3] or [uid for _, uid in counts[:3]]


def _top_items(api: httpx.Client) -> list[str]:
    body = api.get("/v1/users/nobody-yet/recommendations", params={"limit": 3}).json()
    return [it["item_id"] for it in body["items"]]


def _table(console: Console, title: str, body: dict[str, object]) -> None:
    table = Table(title=f"{title}  (model {body.get('model_version')}, "
                        f"request {body.get('request_id')})", title_justify="left")
    table.add_column("item")
    table.add_column("title")
    table.add_column("score", justify="right")
    table.add_column("why")
    for it in body.get("items", []):  # type: ignore[union-attr]
        table.add_row(it["item_id"], it.get("title") or "", f"{it['score']:.3f}", it["reason"])
    console.print(table)
