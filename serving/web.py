"""The browser side: the drop-in widget script, the demo storefront (/demo), the operator's
page (/ops) and the two JSON answers only those pages need.

The pages are plain HTML/JS/CSS from ``serving/static`` (no build step); they call the
public API like any shop would. ``AISLE_SERVING__PAGES=false`` turns /demo, /ops and their
JSON off on a public deployment (they list customer ids and pipeline internals); the
widget script is always served.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from feature_store.tracking import read_counts
from serving.crm import iso
from serving.errors import InvalidInput, NotFound
from serving.ops import OpsSummary
from serving.routes import _state, json, request_id
from serving.service import answered_counts

STATIC = Path(__file__).resolve().parent / "static"
# The widget is fetched on every product page of a shop: let browsers and CDNs keep it a
# few minutes, so a release reaches everyone within that time.
WIDGET_CACHE = "public, max-age=300"
PAGE_CACHE = "no-cache"
DEMO_SCAN = 300  # customers looked at per shard when listing demo customers


def _pages_on(request: Request) -> None:
    if not _state(request).settings.serving.pages:
        raise NotFound("the demo and operator pages are off (AISLE_SERVING__PAGES=false)")


async def widget(request: Request) -> Response:
    return FileResponse(STATIC / "widget.js", media_type="text/javascript",
                        headers={"Cache-Control": WIDGET_CACHE})


async def demo_page(request: Request) -> Response:
    _pages_on(request)
    return FileResponse(STATIC / "demo.html", media_type="text/html",
                        headers={"Cache-Control": PAGE_CACHE})


async def ops_page(request: Request) -> Response:
    _pages_on(request)
    return FileResponse(STATIC / "ops.html", media_type="text/html",
                        headers={"Cache-Control": PAGE_CACHE})


async def demo_customers(request: Request) -> Response:
    """Some real customers to pick in the demo: a handful of orders each (not the
    wholesalers who buy everything), most orders first, with the log's clock."""
    _pages_on(request)
    raw = request.query_params.get("limit", "12")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidInput("limit must be an integer between 1 and 100")
    limit = int(raw)
    state = _state(request)
    keys, r = state.customers.keys, state.redis
    ids: list[str] = []
    for shard in range(keys.shards):
        _, members = await r.sscan(keys.users(shard), 0, count=DEMO_SCAN)
        ids += sorted(m.decode() for m in members)[:DEMO_SCAN]
    pipe = r.pipeline(transaction=False)
    for uid in ids:
        pipe.hgetall(keys.user(uid, "rfm"))
    rows: list[dict[str, Any]] = []
    for uid, rfm in zip(ids, await pipe.execute(), strict=True):
        orders = int(rfm.get(b"orders", 0))
        if 3 <= orders <= 40:
            rows.append({"user_id": uid, "orders": orders,
                         "monetary": round(float(rfm.get(b"monetary", 0)), 2),
                         "last_order": iso(float(rfm[b"last_ts"])) if b"last_ts" in rfm
                         else None})
    rows.sort(key=lambda row: (-row["orders"], row["user_id"]))
    clock = await state.reader.clock()
    return json({"request_id": request_id(request), "clock": iso(clock) if clock else None,
                 "customers": rows[:limit]})


async def ops_summary(request: Request) -> Response:
    _pages_on(request)
    state = _state(request)
    ops = getattr(request.app.state, "ops", None)
    if ops is None:
        ops = OpsSummary(state.settings, state.redis, state.customers.keys, state.holder)
        request.app.state.ops = ops
    body = await ops.get({"hits": state.reader.hits, "misses": state.reader.misses})
    body["recommendations"] = answered_counts()
    body["customer_reads"] = read_counts()
    body["request_id"] = request_id(request)
    body["served_at"] = time.time()
    return json(body, headers={"Cache-Control": "no-store"})


ROUTES = [
    Route("/widget.js", widget, methods=["GET"]),
    Route("/demo", demo_page, methods=["GET"]),
    Route("/ops", ops_page, methods=["GET"]),
    Route("/v1/demo/customers", demo_customers, methods=["GET"]),
    Route("/v1/ops/summary", ops_summary, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
