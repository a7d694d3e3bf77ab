"""Co-purchase counts of big baskets: cost of ingest and next-basket hit rate, the old
30-line cap against sampled pairs (and exact counting), side by side in one run.

Run from the repo root: ``python -m benchmarks.bench_basket_pairs [--rounds N]``.
Writes ``benchmarks/results/basket_pairs.json``.

Online Retail's training log (the same time split as ``eval_quality``) is applied by the
worker's own ``BatchProcessor`` into a Valkey of this run's own, once per variant and
round (variants interleaved, each under its own key prefix, wiped after):

- ``cap30``: the fold before sampling, an order's first 30 distinct items paired
  exactly, the rest dropped (``basket_sample_k`` = 0);
- ``head30_kK``: the first 30 still exact, and every later line paired both ways with
  K others drawn from the whole order (``basket_sample_k`` = K, seeded by event id);
- ``exact``: every pair of every order (``basket_items_max`` = 10,000; with redis-py's
  5 s socket timeout, a pipeline of these scripts can time out on 2 shared cores).

Variants explored before (shipping each item's sampled partners from Python: uniform
samples of k at weight 1 or (n - 1) / k, nearest lines) are measured at commit 98b1cf1.

Per variant: wall seconds, this process's CPU and Valkey's CPU (``INFO cpu``) per event,
the slowest Lua calls (``SLOWLOG``, calls over 10 ms), and the related-items hit rate of
the store's co-purchase counts alone (top 10 of ``FeatureReader.co_counts``) on the
test period's baskets (``eval_quality.anchors``), next to plain co-occurrence counted on
the training baskets in Python.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from rich.console import Console

from aisle.runtime import start_store
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import machine_info, tree_state
from benchmarks.eval_quality import RELATED_K, anchors, eval_settings, related_hits
from benchmarks.quality_baselines import co_occurrence, co_related
from benchmarks.quality_data import Split, load, test_split
from benchmarks.quality_served import StoreSession
from feature_store.reader import FeatureReader

console = Console(width=None if sys.stdout.isatty() else 150)
SLOW_US = 10_000


def _k(k: int) -> dict[str, Any]:
    return {"features": {"basket_items_max": 30, "basket_sample_k": k}}


VARIANTS: dict[str, dict[str, Any]] = {
    "cap30": _k(0),  # the fold before sampling: lines past 30 dropped
    "head30_k5": _k(5),
    "head30_k10": _k(10),
    "head30_k20": _k(20),
    "exact": {"features": {"basket_items_max": 10_000}},
}


async def valkey_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run_variant(name: str, split: Split, redis_url: str, tmp: Path,
                      pairs: list[tuple[str, set[str]]]) -> dict[str, Any]:
    spec = VARIANTS[name]
    settings = eval_settings(redis_url, tmp, f"bp{name}", {"features": spec["features"]})
    session = StoreSession.open(settings)
    client = session.client
    try:
        await client.config_set("slowlog-log-slower-than", SLOW_US)
        await client.slowlog_reset()
        cpu0, started_cpu = await valkey_cpu(client), time.process_time()
        wall = await session.replay(split.train)
        ours = time.process_time() - started_cpu
        valkey = await valkey_cpu(client) - cpu0
        slow = [e for e in await client.slowlog_get(10_000)
                if b"evalsha" in (e["command"] or b"").lower()[:16]
                or b"fcall" in (e["command"] or b"").lower()[:16]]
        reader = FeatureReader(client, session.keys)
        items = sorted({a for a, _ in pairs})
        lists = {a: list(await reader.co_counts("buy", a))[:RELATED_K] for a in items}
        # The service reads each shard's top 50 partials; all of them, for comparison.
        whole = {a: list(await reader.co_counts("buy", a, n=100_000))[:RELATED_K]
                 for a in items}
        n = len(split.train)
        out = {"events": n, "wall_s": round(wall, 2),
               "events_per_s": round(n / wall),
               "our_cpu_us_per_event": round(1e6 * ours / n, 1),
               "valkey_cpu_us_per_event": round(1e6 * valkey / n, 1),
               "lua_calls_over_10ms": len(slow),
               "slowest_lua_ms": round(max((e["duration"] for e in slow), default=0) / 1000, 1),
               "related_copurchase_only": related_hits(lists, pairs, len(split.catalog)),
               "related_copurchase_all_partials": related_hits(whole, pairs,
                                                               len(split.catalog))}
        await session.wipe()
        return out
    finally:
        await client.config_set("slowlog-log-slower-than", 10_000)
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "exact"),
                        help=f"comma-separated, of {', '.join(VARIANTS)} (exact: minutes, "
                             "and may hit the client's socket timeout)")
    args = parser.parse_args()
    tree = tree_state()
    split = test_split(load("online_retail"))
    pairs = anchors(split, 1500)
    plain = related_hits(co_related(co_occurrence(split.train_baskets),
                                    sorted({a for a, _ in pairs}), RELATED_K),
                         pairs, len(split.catalog))
    console.print(f"plain co-occurrence (every pair, in Python): {plain}")
    names = args.variants.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="aisle-basket-pairs-"))
    store, redis_url = start_store(tmp)
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    try:
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                row = asyncio.run(run_variant(name, split, redis_url, tmp, pairs))
                rows[name].append(row)
                console.print(f"  round {r} {name}: {row}")
    finally:
        store.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for name, rs in rows.items():
        med = {k: float(np.median([x[k] for x in rs])) for k in
               ("wall_s", "events_per_s", "our_cpu_us_per_event", "valkey_cpu_us_per_event",
                "slowest_lua_ms")}
        summary[name] = {**med, "related_hit_rate": rs[0]["related_copurchase_only"]["hit_rate"],
                         "related_hit_rate_all_partials":
                             rs[0]["related_copurchase_all_partials"]["hit_rate"],
                         "lua_calls_over_10ms": rs[0]["lua_calls_over_10ms"]}
        console.print(f"{name:>11}: {summary[name]}")
    out = {"benchmark": "basket_pairs", "machine": machine_info(tree), "dataset": "online_retail",
           "train_events": len(split.train), "anchors": len(pairs),
           "related_plain_co_occurrence": plain, "rounds": args.rounds,
           "summary": summary, "runs": rows}
    console.print(f"wrote {write_result('basket_pairs.json', out)}")


if __name__ == "__main__":
    main()
