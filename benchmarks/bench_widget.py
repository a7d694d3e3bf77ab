"""What the widget costs a shop page, next to the API calls it makes, in headless Chromium.

Run from the repo root: ``python -m benchmarks.bench_widget [--data PATH] [--runs N]``.
Writes ``benchmarks/results/widget.json`` and prints a table. Needs Debian's chromium
(``make browser``).

A fresh embedded stack (broker, Valkey, one worker, the API) is loaded with 20,000 Online
Retail rows and a trained model. A product page on a second origin (served by the
a minimal http.server on loopback) is loaded ``RUNS``
times in a fresh browser context each (cold: no cached script), alternating:

* widget: the page with the script tag; time from navigation start to each slot's
  ``aisle:<slot>:ready`` performance mark the widget sets, and the page's cumulative
  layout shift;
* baseline: the same page with a plain script that fetches the same three answers with
  ``fetch`` and does nothing else; time from navigation start until all three arrived.

The difference is what the widget itself adds (its download, parsing, rendering). Then
``/v1/ops/summary`` against ``/v1/ping`` (the same server's trivial endpoint): a summary
built afresh (every 2 s) and one served from its 2-second reuse.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from rich.console import Console
from rich.table import Table

from aisle.replay import replay_file
from aisle.runtime import free_port
from aisle.settings import Settings
from aisle.stack import Stack
from benchmarks.bench_foldin import DATA, write_result
from benchmarks.bench_ingest import machine_info, tree_state
from models.train import train_once
from streams.lag import wait_caught_up

ROWS = 20_000
RUNS = 20
ITEM = "85123A"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SLOTS = ("offer", "related", "recommended")
console = Console()

BASELINE_JS = """
const t0 = performance.now(), api = %(api)r, u = %(user)r, i = %(item)r;
Promise.all([
  fetch(api + '/v1/items/' + i + '/related?limit=6&user_id=' + u),
  fetch(api + '/v1/users/' + u + '/recommendations?limit=6&context_item=' + i),
  fetch(api + '/v1/users/' + u + '/offers')].map(p => p.then(r => r.json())))
.then(() => { performance.mark('baseline:done'); });
"""


PAGES: dict[str, bytes] = {}
# The shop holds the slots' space before the widget has loaded (docs/web.md).
RESERVE = ("[data-aisle-slot]{min-height:17rem;margin:1rem 0}"
           "[data-aisle-slot=offer]{min-height:18rem}")


class ShopHandler(BaseHTTPRequestHandler):
    """The shop's origin: a real server on loopback (a page the browser made up itself
    counts as public, and Chromium's local-network checks then block calls to the API)."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        body = PAGES.get(urlparse(self.path).path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def shop_page(api: str, user: str, widget: bool) -> str:
    slots = "".join(f"<div data-aisle-slot='{k}'></div>" for k in SLOTS)
    script = (f"<script src='{api}/widget.js' data-aisle-user='{user}' "
              f"data-aisle-item='{ITEM}' async></script>" if widget else
              f"<script>{BASELINE_JS % {'api': api, 'user': user, 'item': ITEM}}</script>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Shop</title>"
            f"<style>{RESERVE}</style></head><body><h1>Product {ITEM}</h1>{slots}"
            f"<footer>footer</footer>{script}</body></html>")


def load(browser: Any, url: str, html: str, widget: bool) -> dict[str, float]:
    context = browser.new_context()
    page = context.new_page()
    PAGES[urlparse(url).path] = html.encode()
    page.goto(url)
    if widget:
        page.wait_for_function(
            """ks => ks.every(k => performance.getEntriesByName('aisle:' + k + ':ready').length
                   || performance.getEntriesByName('aisle:' + k + ':collapsed').length)""",
            arg=list(SLOTS), timeout=20_000)
        collapsed = page.evaluate("""() => Array.from(document.querySelectorAll(
            "section[data-state='collapsed']"), s => s.dataset.slot + ':' + s.dataset.why)""")
        if collapsed:
            raise RuntimeError(f"slots collapsed: {collapsed}")
        out = {k: page.evaluate(f"performance.getEntriesByName('aisle:{k}:ready')[0].startTime")
               for k in SLOTS}
        out["all"] = max(out.values())
        out["cls"] = page.evaluate("""() => new Promise(done => { let t = 0;
            new PerformanceObserver(l => { for (const e of l.getEntries()) t += e.value; })
              .observe({type: 'layout-shift', buffered: true});
            requestAnimationFrame(() => requestAnimationFrame(() => done(t))); })""")
    else:
        page.wait_for_function("performance.getEntriesByName('baseline:done').length",
                               timeout=20_000)
        out = {"all": page.evaluate(
            "performance.getEntriesByName('baseline:done')[0].startTime")}
    context.close()
    return out


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def p90(xs: list[float]) -> float:
    return round(statistics.quantiles(xs, n=10)[-1], 2) if len(xs) >= 2 else xs[0]


def bench_pages(stack: Stack, runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    api = stack.api_url or ""
    shop = stack.settings.serving.cors_origins[0]
    widget_runs: list[dict[str, float]] = []
    base_runs: list[dict[str, float]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for n in range(runs + 1):  # the first pair warms the API and is dropped
                user = f"bench-{n}-{time.time_ns()}"
                w = load(browser, f"{shop}/w/{n}", shop_page(api, user, True), True)
                b = load(browser, f"{shop}/b/{n}", shop_page(api, user + "b", False), False)
                if n:
                    widget_runs.append(w)
                    base_runs.append(b)
        finally:
            browser.close()
    widget_all = [r["all"] for r in widget_runs]
    base_all = [r["all"] for r in base_runs]
    return {
        "runs": runs,
        "widget_all_slots_ready_ms": {"median": med(widget_all), "p90": p90(widget_all)},
        "widget_slot_ready_ms_median": {k: med([r[k] for r in widget_runs]) for k in SLOTS},
        "baseline_three_fetches_ms": {"median": med(base_all), "p90": p90(base_all)},
        "widget_overhead_ms_median": round(med(widget_all) - med(base_all), 2),
        "cumulative_layout_shift_max": round(max(r["cls"] for r in widget_runs), 4),
    }


def bench_ops(api: str, runs: int) -> dict[str, Any]:
    with httpx.Client(base_url=api, timeout=30) as c:
        def t(path: str) -> float:
            started = time.perf_counter()
            c.get(path).raise_for_status()
            return (time.perf_counter() - started) * 1000

        ping = [t("/v1/ping") for _ in range(runs)]
        built, reused = [], []
        for _ in range(max(3, runs // 4)):
            time.sleep(2.1)  # past the 2 s reuse: the next one is built afresh
            built.append(t("/v1/ops/summary"))
            reused.append(t("/v1/ops/summary"))
    return {"ping_ms_median": med(ping), "summary_built_ms_median": med(built),
            "summary_built_ms_max": round(max(built), 2),
            "summary_reused_ms_median": med(reused)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    tree = tree_state()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), ShopHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shop = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), serving={"port": 0, "cors_origins": [shop]},
                            model={"factors": 32, "iterations": 10})
        stack = Stack.start(settings, workers=1)
        try:
            s = stack.settings
            asyncio.run(replay_file(s, args.data, limit_rows=ROWS))
            asyncio.run(wait_caught_up(s, timeout=300))
            version = asyncio.run(train_once(s)).version
            with httpx.Client(base_url=stack.api_url or "") as c:
                deadline = time.monotonic() + 30
                while (c.get("/readyz").json().get("model_version") != version
                       and time.monotonic() < deadline):
                    time.sleep(0.2)
                script = c.get("/widget.js").content
            pages = bench_pages(stack, args.runs)
            ops = bench_ops(stack.api_url or "", args.runs)
        finally:
            stack.stop()
            server.shutdown()
    result = {"benchmark": "widget", "rows": ROWS, **machine_info(tree),
              "widget_js_bytes": len(script), "widget_js_gzip_bytes": len(gzip.compress(script)),
              "pages": pages, "ops": ops}
    path = write_result("widget.json", result)
    table = Table(title=f"widget on a cold product page, {args.runs} runs (median / p90, ms)")
    table.add_column("what")
    table.add_column("median", justify="right")
    table.add_column("p90", justify="right")
    w, b = pages["widget_all_slots_ready_ms"], pages["baseline_three_fetches_ms"]
    table.add_row("widget: all 3 slots rendered", str(w["median"]), str(w["p90"]))
    table.add_row("baseline: the 3 answers fetched", str(b["median"]), str(b["p90"]))
    for k, v in pages["widget_slot_ready_ms_median"].items():
        table.add_row(f"  widget: {k} slot", str(v), "")
    console.print(table)
    console.print(f"widget overhead (median) {pages['widget_overhead_ms_median']} ms; "
                  f"max CLS {pages['cumulative_layout_shift_max']}; widget.js "
                  f"{len(script)} B ({result['widget_js_gzip_bytes']} B gzipped)")
    console.print(f"/v1/ops/summary: built {ops['summary_built_ms_median']} ms "
                  f"(max {ops['summary_built_ms_max']}), reused "
                  f"{ops['summary_reused_ms_median']} ms; /v1/ping {ops['ping_ms_median']} ms")
    console.print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
