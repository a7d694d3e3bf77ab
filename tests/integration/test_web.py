"""The web-facing endpoints without a browser: the widget script, CORS for the shop's
origin, the demo and ops JSON, and the dead-letter tail, on the session's real broker and
Valkey (an API process, no worker: none of these needs one)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from aisle.settings import Settings
from aisle.stack import Stack
from serving.ops import deadletter_tail
from streams.topics import DeadLetter, EventProducer
from tests.integration.conftest import isolated_settings

pytestmark = pytest.mark.integration
SHOP = "https://shop.example"  # allowed by isolated_settings


@pytest.fixture(scope="module")
def web(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack.start(isolated_settings(servers, tmp_path_factory.mktemp("web")), workers=0)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def settings(web: Stack) -> Settings:
    return web.settings


@pytest.fixture(scope="module")
def client(web: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web.api_url or "", timeout=10) as c:
        yield c


def test_widget_script_is_served_cacheable(client: httpx.Client) -> None:
    res = client.get("/widget.js")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/javascript")
    assert "max-age=300" in res.headers["cache-control"]
    assert "aisle:select" in res.text
    for page in ("/demo", "/ops", "/static/pages.css", "/static/ops.js"):
        assert client.get(page).status_code == 200, page


def test_cors_allows_the_shops_origin_only(client: httpx.Client) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    ok = client.options("/v1/events", headers={"Origin": SHOP, **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == SHOP
    other = client.options("/v1/events", headers={"Origin": "https://evil.example",
                                                  **preflight})
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    got = client.get("/v1/items/85123A/related", headers={"Origin": SHOP})
    assert got.headers["access-control-allow-origin"] == SHOP
    assert got.headers["access-control-expose-headers"] == "X-Request-ID"


def test_demo_customers_checks_its_limit(client: httpx.Client) -> None:
    for bad in ("0", "101", "ten"):
        res = client.get("/v1/demo/customers", params={"limit": bad})
        assert res.status_code == 422
        assert "limit" in res.json()["detail"]
    body = client.get("/v1/demo/customers").json()
    assert body["customers"] == [] and body["request_id"]  # nothing replayed here


def test_ops_summary_reports_the_pipeline(client: httpx.Client,
                                                          settings: Settings) -> None:
    client.get("/v1/items/85123A/related")  # one cache lookup and one latency sample
    body = client.get("/v1/ops/summary").json()
    parts = body["lag"]["partitions"]
    assert len(parts) == 2 * settings.topics.partitions  # events + catalog
    assert {p["topic"] for p in parts} == {settings.topics.events, settings.topics.catalog}
    assert body["deadletters"] == {"count": 0, "latest": []}
    assert body["model"] == {"version": None}
    assert body["events"]["applied_total"] == 0
    assert body["events"]["per_s"] is None  # one reading is no rate yet
    cache = body["cache"]
    assert cache["misses"] >= 1
    assert cache["hit_rate"] == round(cache["hits"] / (cache["hits"] + cache["misses"]), 4)
    assert body["latency"]["related"]["count"] >= 1
    # A customer asked again with nothing changed: their kept answer (a degraded one,
    # the store late on a busy machine, is not kept: ask until one is reused).
    before, reads_before = body["recommendations"], body["customer_reads"]
    for _ in range(10):
        client.get("/v1/users/ops-page-customer/recommendations")
        summary = client.get("/v1/ops/summary").json()
        got, reads = summary["recommendations"], summary["customer_reads"]
        if got["reused"] > before["reused"] and reads["kept"] > reads_before["kept"]:
            break
    assert got["reused"] > before["reused"] and got["derived"] > before["derived"]
    total = got["derived"] + got["reused"] + got["last"]
    assert got["reused_share"] == round(got["reused"] / total, 4)
    # ... and its read came from the copy the store tracks, after one from the store.
    assert reads["kept"] > reads_before["kept"] and reads["store"] > reads_before["store"]
    assert reads["kept_share"] == round(reads["kept"] / (reads["kept"] + reads["store"]), 4)


def test_deadletter_tail_is_the_newest_first(settings: Settings) -> None:
    letters = [DeadLetter(f"reason {i}", settings.topics.events, 0, i, None, "", 1000.0 + i)
               for i in range(7)]

    async def go() -> tuple[int, list[DeadLetter]]:
        async with EventProducer(settings) as producer:
            await producer.send_deadletters(letters)
        return await deadletter_tail(settings, n=3)

    count, latest = asyncio.run(go())
    assert count == 7
    assert [dl.reason for dl in latest] == ["reason 6", "reason 5", "reason 4"]


def test_pages_can_be_switched_off(web: Stack) -> None:
    assert web.api is not None
    web.api.stop()
    url = web.start_api(extra_env={"AISLE_SERVING__PAGES": "false"})
    for path in ("/demo", "/ops", "/v1/ops/summary", "/v1/demo/customers"):
        res = httpx.get(url + path)
        assert res.status_code == 404, path
        assert "AISLE_SERVING__PAGES" in res.json()["detail"]
    assert httpx.get(url + "/widget.js").status_code == 200
