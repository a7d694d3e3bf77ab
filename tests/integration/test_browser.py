"""The widget, the demo storefront and the operator's page in headless Chromium, against a
real stack (broker, Valkey, worker, API) loaded with an Online Retail slice.

The shop is a second origin (a tiny HTTP server here) that drops the widget's script tag
into its product page, as a real shop would; the API allows that origin by CORS.
Screenshots land in ``.aisle/artifacts/browser/`` (the path is printed).

Needs Debian's ``chromium`` (``make test`` installs it); skipped, saying why, without it.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import pytest

from aisle.replay import replay_file
from aisle.runtime import free_port
from aisle.stack import Stack
from feature_store.client import open_redis_sync
from feature_store.keys import Keys
from models.train import train_once
from streams.lag import wait_caught_up
from streams.topics import EventProducer
from tests.conftest import ONLINE_RETAIL
from tests.integration.conftest import ADMIN_KEY, isolated_settings
from tests.integration.util import eventually, uid

pytestmark = pytest.mark.integration
CHROMIUM = Path(os.environ.get("AISLE_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps calling home, which a closed
# network answers with timeouts.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / ".aisle" / "artifacts" / "browser"
ITEM = "85123A"  # WHITE HANGING HEART T-LIGHT HOLDER: the best seller of the slice
ROWS = 20_000
# The shop holds the slots' space before the widget has loaded (docs/web.md).
RESERVE = ("[data-aisle-slot]{min-height:17rem;margin:1rem 0}"
           "[data-aisle-slot=offer]{min-height:18rem}")

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium "
                "(needs root); set AISLE_CHROMIUM to use another", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


class Shop(ThreadingHTTPServer):
    """A shop on its own origin: /product drops in the API's script; /selfhosted serves
    its own copy of it (as a shop may), so the page still loads when the API is down."""

    api_url = ""
    widget_copy = b""
    clock = ""

    def page(self, path: str, query: dict[str, str]) -> bytes:
        user, item = query.get("user", ""), query.get("item", ITEM)
        timeout = query.get("timeout", "1500")
        own = path == "/selfhosted"
        src = "/widget.js" if own else f"{self.api_url}/widget.js"
        href = f"{path}?{urlencode({'user': user, 'timeout': timeout})}&item={{item_id}}"
        attrs = {"src": src, "data-aisle-api": self.api_url, "data-aisle-user": user,
                 "data-aisle-item": item, "data-aisle-clock": self.clock,
                 "data-aisle-timeout": timeout, "data-aisle-href": href}
        tag = " ".join(f'{k}="{html.escape(v)}"' for k, v in attrs.items())
        return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
                f"<title>Shop: {html.escape(item)}</title><style>{RESERVE}</style></head>"
                f"<body style='font:15px "
                f"sans-serif;max-width:60rem;margin:1rem auto'><h1 id='product'>Product "
                f"{html.escape(item)}</h1><p>Our product text.</p>"
                f"<div data-aisle-slot='offer'></div><div data-aisle-slot='related'></div>"
                f"<div data-aisle-slot='recommended'></div><footer id='footer'>Shop footer"
                f"</footer><script {tag} async></script></body></html>").encode()


class ShopHandler(BaseHTTPRequestHandler):
    server: Shop

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        url = urlparse(self.path)
        if url.path == "/widget.js":
            body, kind = self.server.widget_copy, "text/javascript"
        elif url.path in ("/product", "/selfhosted"):
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            body, kind = self.server.page(url.path, query), "text/html; charset=utf-8"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def shop() -> Iterator[Shop]:
    server = Shop(("127.0.0.1", free_port()), ShopHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stack(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
          shop: Shop) -> Iterator[Stack]:
    settings = isolated_settings(servers, tmp_path_factory.mktemp("browser"))
    origin = f"http://127.0.0.1:{shop.server_address[1]}"
    settings.serving.cors_origins = [origin]
    s = Stack.start(settings, workers=1, api=True)
    try:
        asyncio.run(_load(s))
        shop.api_url = s.api_url or ""
        shop.widget_copy = httpx.get(f"{s.api_url}/widget.js").content
        body = httpx.get(f"{s.api_url}/v1/demo/customers").json()
        shop.clock = body["clock"]
        yield s
    finally:
        s.stop()


async def _load(stack: Stack) -> None:
    settings = stack.settings
    await replay_file(settings, ONLINE_RETAIL, limit_rows=ROWS)
    async with EventProducer(settings) as producer:  # one poison record for the ops page
        await producer.send_raw(settings.topics.events, b"{not json", key=b"poison")
    await wait_caught_up(settings, timeout=120)
    art = await train_once(settings)
    with httpx.Client(base_url=stack.api_url or "") as api:
        eventually(lambda: api.get("/readyz").json().get("model_version") == art.version)


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    # After the stack: playwright's sync API keeps an event loop running in this thread,
    # and the stack's set-up uses asyncio.run.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {ARTIFACTS}")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def shop_url(shop: Shop, user: str, item: str = ITEM, path: str = "/product",
             **extra: str) -> str:
    port = shop.server_address[1]
    return f"http://127.0.0.1:{port}{path}?{urlencode({'user': user, 'item': item, **extra})}"


def slot(page: Any, kind: str, state: str = "ready") -> Any:
    section = page.locator(f"section.aisle-slot[data-slot='{kind}']")
    page.wait_for_selector(f"section.aisle-slot[data-slot='{kind}'][data-state='{state}']",
                           state="attached")
    return section


def cards(section: Any) -> list[dict[str, str]]:
    return section.locator("a.aisle-link").evaluate_all(
        """links => links.map(a => ({item: a.dataset.itemId, request: a.dataset.requestId,
              title: a.querySelector('.aisle-title').textContent,
              alt: a.querySelector('img').alt,
              reason: (a.querySelector('.aisle-reason') || {}).textContent || ''}))""")


def seconds(text: str) -> int:
    days = int(m.group(1)) if (m := re.match(r"(\d+)d ", text)) else 0
    h, mi, s = (int(x) for x in text.split(" ")[-1].split(":"))
    return days * 86400 + h * 3600 + mi * 60 + s


def test_widget_renders_items_with_titles_and_a_ticking_offer(page: Any, shop: Shop,
                                                             stack: Stack) -> None:
    user = uid("visitor")  # a prospect: the policy gives a first-order discount
    page.goto(shop_url(shop, user))
    related, recommended, offer = (slot(page, k) for k in ("related", "recommended", "offer"))
    for section in (related, recommended):
        shown = cards(section)
        assert shown, "the slot shows items"
        assert all(c["title"] and c["alt"] == c["title"] for c in shown)
        assert all(c["reason"] for c in shown), "every item says why"
        assert section.locator("ul[role='list'] > li").count() == len(shown)
    assert ITEM not in {c["item"] for c in cards(related)}, "never the item itself"
    # A new visitor's recommendations come from the same item; the page shows each once.
    both = {c["item"] for c in cards(related)} & {c["item"] for c in cards(recommended)}
    assert not both, both
    assert len(cards(recommended)) == 6, "spares fill the slot to the default limit"
    assert cards(offer), "the offer names its items"
    assert "% off" in offer.locator(".aisle-deal").inner_text()
    assert offer.locator(".aisle-why").inner_text().startswith("Welcome")
    clock = offer.locator("time.aisle-clock")
    first = clock.inner_text()
    assert 0 < seconds(first) <= 48 * 3600
    page.wait_for_function("t => document.querySelector('time.aisle-clock').textContent !== t",
                           arg=first)
    second = clock.inner_text()
    assert seconds(second) < seconds(first), (first, second)
    # Keyboard: the first Tab lands on an item link, which shows a focus ring.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.classList.contains('aisle-link')")
    # Reserved heights: items landing did not push the page around.
    shift = page.evaluate("""() => new Promise(done => {
        let total = 0;
        new PerformanceObserver(list => { for (const e of list.getEntries())
            if (!e.hadRecentInput) total += e.value; }).observe({type: 'layout-shift',
                                                               buffered: true});
        requestAnimationFrame(() => requestAnimationFrame(() => done(total)));
    })""")
    print(f"cumulative layout shift: {shift}")
    assert shift < 0.05, f"cumulative layout shift {shift}"  # 0.09 without reserving
    page.screenshot(path=str(ARTIFACTS / "widget-product-page.png"), full_page=True)


def test_a_click_sends_a_view_with_its_request_id_and_changes_what_comes_next(
        page: Any, shop: Shop, stack: Stack) -> None:
    user = uid("clicker")
    page.goto(shop_url(shop, user))
    related = slot(page, "related")
    before = cards(slot(page, "recommended"))
    target = cards(related)[0]
    answer = related.get_attribute("data-request-id")
    with page.expect_request(lambda r: r.url.endswith("/v1/events")
                             and r.method == "POST") as sent, \
            page.expect_navigation():
        page.locator(f"section[data-slot='related'] a[data-item-id='{target['item']}']").click()
    event = sent.value.post_data_json
    assert event["type"] == "product.viewed" and event["user_id"] == user
    assert event["payload"] == {"item_id": target["item"], "request_id": target["request"]}
    assert target["request"] == answer
    # The real worker folds the view into the customer's state.
    keys = Keys(stack.settings.features.key_prefix, stack.settings.features.shards)
    store = open_redis_sync(stack.settings)
    try:
        eventually(lambda: store.zscore(keys.user(user, "views"), target["item"]) is not None)
    finally:
        store.close()
    # Back on the first product page, the same slot now answers differently: the view counts.
    page.goto(shop_url(shop, user))
    after = cards(slot(page, "recommended"))
    assert after[0]["request"] != before[0]["request"]
    assert [c["item"] for c in after] != [c["item"] for c in before]
    assert any(c["reason"] == f"because you viewed {target['title']}" for c in after), after
    page.screenshot(path=str(ARTIFACTS / "widget-after-click.png"), full_page=True)


def test_demo_storefront_shows_a_real_customer(page: Any, stack: Stack) -> None:
    customers = httpx.get(f"{stack.api_url}/v1/demo/customers").json()["customers"]
    assert customers and all(3 <= c["orders"] <= 40 for c in customers)
    page.goto(f"{stack.api_url}/demo")
    page.wait_for_selector("#profile-facts")
    facts = page.locator("#profile-facts").inner_text()
    assert customers[0]["user_id"] in facts
    assert page.locator("#purchases li").count() >= 1
    recommended = slot(page, "recommended")
    shown = cards(recommended)
    assert shown and all(c["title"] for c in shown)
    recommended.locator("a.aisle-link").first.click()
    page.wait_for_selector("#events li")
    assert shown[0]["item"] in page.locator("#events li").first.inner_text()
    page.wait_for_function("t => document.getElementById('product-title').textContent === t",
                           arg=shown[0]["title"])
    slot(page, "recommended")
    page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)


def test_ops_page_shows_the_pipeline(page: Any, stack: Stack) -> None:
    httpx.get(f"{stack.api_url}/v1/items/{ITEM}/related")  # some latency to report
    httpx.get(f"{stack.api_url}/v1/users/ops-page-visitor/recommendations")
    page.goto(f"{stack.api_url}/ops")
    page.wait_for_selector("body[data-loaded='true']")
    partitions = 2 * stack.settings.topics.partitions  # events + catalog
    assert page.locator("#lag tbody tr").count() == partitions
    rows = page.locator("#lag tbody td.num").all_inner_texts()
    assert int(page.locator("#lag-total").inner_text().replace(",", "")) == sum(
        int(x.replace(",", "")) for x in rows)
    assert int(page.locator("#dlq-count").inner_text()) >= 1
    assert page.locator("#dlq li.deadletter").count() >= 1
    version = httpx.get(f"{stack.api_url}/readyz").json()["model_version"]
    assert page.locator("#model dd").first.inner_text() == version
    assert "related" in page.locator("#latency").inner_text()
    reused = page.locator("#reused").inner_text()
    assert re.match(r"\d+\.\d% of [\d,]+ recommendations reused", reused), reused
    assert page.locator("#no-experiments").inner_text() == "no experiments"
    page.wait_for_function("document.getElementById('rate').textContent !== 'measuring…'")
    page.screenshot(path=str(ARTIFACTS / "ops.png"), full_page=True)


def test_ops_page_charts_a_running_experiment(page: Any, stack: Stack) -> None:
    """A real experiment (admin API → worker → exposures → results) on the ops page."""
    xid = uid("ops-x")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    spec = {"id": xid, "surfaces": ["recommendations"], "layer": uid("layer"),
            "variants": [{"name": "control", "weight": 1},
                         {"name": "no-als", "weight": 1, "params": {"blend_als": 0}}]}
    api = httpx.Client(base_url=stack.api_url or "", timeout=10)
    assert api.post("/v1/admin/experiments", json=spec, headers=admin).status_code == 202
    eventually(lambda: any(e["id"] == xid for e in api.get("/v1/experiments").json()
                           ["experiments"]))
    users = [uid("ops") for _ in range(40)]

    def served() -> bool:  # the API caches definitions for a moment after the worker folds
        body = api.get(f"/v1/users/{users[0]}/recommendations").json()
        return any(x["id"] == xid for x in body["experiments"])

    eventually(served)
    for user in users[1:]:
        assert api.get(f"/v1/users/{user}/recommendations").status_code == 200

    def exposed() -> dict[str, Any] | None:
        doc = api.get(f"/v1/experiments/{xid}/results").json()
        return doc if sum(v["exposures"] for v in doc["variants"]) >= len(users) else None

    doc = eventually(exposed)
    page.goto(f"{stack.api_url}/ops")
    card = page.locator(f"article.experiment[data-experiment-id='{xid}']")
    card.wait_for()
    chart = card.locator("svg.chart")
    assert chart.locator("rect.bar").count() == len(doc["variants"]) == 2
    assert chart.locator("line.whisker").count() == 6  # a bar and two caps per variant
    rows = card.locator("table tbody tr").all_inner_texts()
    for variant in doc["variants"]:
        row = next(r for r in rows if r.split("\t")[0] == variant["variant"])
        assert row.split("\t")[2] == str(variant["exposures"]), (row, variant)
    card.screenshot(path=str(ARTIFACTS / "ops-experiment.png"))
    api.close()


def test_slots_collapse_when_the_api_hangs_or_stops(page: Any, shop: Shop,
                                                    stack: Stack) -> None:
    assert stack.api is not None
    user = uid("late")
    proc = stack.api.proc
    proc.send_signal(signal.SIGSTOP)  # hung: connections open, no answer
    try:
        page.goto(shop_url(shop, user, path="/selfhosted", timeout="800"))
        for kind in ("related", "recommended", "offer"):
            section = slot(page, kind, state="collapsed")
            assert section.get_attribute("data-why") == "timeout"
        assert page.locator("[data-aisle-slot]:visible").count() == 0
        assert page.locator("#footer").is_visible()
        page.screenshot(path=str(ARTIFACTS / "collapsed-timeout.png"), full_page=True)
    finally:
        proc.send_signal(signal.SIGCONT)
    stack.api.stop()  # gone: connection refused
    page.goto(shop_url(shop, user, path="/selfhosted"))
    for kind in ("related", "recommended", "offer"):
        assert slot(page, kind, state="collapsed").get_attribute("data-why") == "unavailable"
    assert page.locator("[data-aisle-slot]:visible").count() == 0
    page.screenshot(path=str(ARTIFACTS / "collapsed-stopped.png"), full_page=True)
