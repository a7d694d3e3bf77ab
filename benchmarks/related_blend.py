"""Related items: what the blend with ALS neighbours and co-views does to the served
related hit rate, on the validation split (the test period is never read).

Run from the repo root: ``python -m benchmarks.related_blend [--dataset online_retail]``.
Writes ``benchmarks/results/related_blend.json``.

The validation split's training log (the first 85% of the training period) goes through
the worker's ``BatchProcessor`` into a Valkey of this run's own and the model is trained
with the current defaults (``eval_quality``'s served path). Then ``service.related``
answers the validation anchors (customers' and guests' next orders, seeded as in
``eval_quality``) for each point of a grid over ``serving.blend_als`` and
``serving.blend_coview`` (``blend_copurchase`` fixed: only the ratios matter), next to
the store's co-purchase counts alone and plain co-occurrence of every training order.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from aisle.runtime import start_store
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import machine_info, tree_state
from benchmarks.eval_quality import (
    MAX_ANCHORS,
    RELATED_K,
    anchors,
    eval_settings,
    every_order_co_occurrence,
    guest_anchors,
    related_hits,
)
from benchmarks.quality_baselines import co_related
from benchmarks.quality_data import load, order_baskets, test_split, validation_split
from benchmarks.quality_served import StoreSession, related
from feature_store.reader import FeatureReader

console = Console(width=None if sys.stdout.isatty() else 150)
ALS = (0.0, 0.25, 0.5, 1.0)
COVIEW = (0.0, 0.3)


async def measure(name: str, redis_url: str, tmp: Path) -> dict[str, Any]:
    events = load(name)
    test_cut = test_split(events).cut_ts
    val = validation_split(events)
    catalog = len(val.catalog)
    sets = {"customers": anchors(val, MAX_ANCHORS),
            "guests": guest_anchors(order_baskets(events, val.cut_ts, test_cut),
                                    val.catalog, MAX_ANCHORS)}
    sets = {k: v for k, v in sets.items() if v}
    session = StoreSession.open(eval_settings(redis_url, tmp, f"rb{name[:2]}"))
    out: dict[str, Any] = {"dataset": name, "anchors": {k: len(v) for k, v in sets.items()}}
    try:
        out["replay_s"] = round(await session.replay(val.train), 1)
        await session.train()
        every = every_order_co_occurrence(order_baskets(val.train))
        reader = FeatureReader(session.client, session.keys, 0.0)
        rows: dict[str, dict[str, float]] = {}
        for kind, pairs in sets.items():
            items = sorted({a for a, _ in pairs})
            rows.setdefault("plain co-occurrence, every order", {})[kind] = related_hits(
                co_related(every, items, RELATED_K), pairs, catalog)["hit_rate"]
            store = {a: list(await reader.co_counts("buy", a))[:RELATED_K] for a in items}
            rows.setdefault("store co-purchase counts alone", {})[kind] = related_hits(
                store, pairs, catalog)["hit_rate"]
        base = session.settings
        for als, coview in itertools.product(ALS, COVIEW):
            session.settings = base.model_copy(update={"serving": base.serving.model_copy(
                update={"blend_als": als, "blend_coview": coview})})
            service = await session.service()
            label = f"served, blend_als {als}, blend_coview {coview}"
            for kind, pairs in sets.items():
                items = sorted({a for a, _ in pairs})
                rows.setdefault(label, {})[kind] = related_hits(
                    await related(service, items, RELATED_K), pairs, catalog)["hit_rate"]
            console.print(f"  {label}: {rows[label]}")
        session.settings = base
        for row in rows.values():
            row["mean"] = round(float(np.mean(list(row.values()))), 4)
        out["rows"] = rows
        await session.wipe()
    finally:
        await session.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="online_retail")
    args = parser.parse_args()
    tree = tree_state()
    tmp = Path(tempfile.mkdtemp(prefix="aisle-related-blend-"))
    store, redis_url = start_store(tmp)
    started = time.perf_counter()
    try:
        result = asyncio.run(measure(args.dataset, redis_url, tmp))
    finally:
        store.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    for label, row in result["rows"].items():
        console.print(f"  {label:55s} {row}")
    path = write_result("related_blend.json", {"machine": machine_info(tree), **result})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
