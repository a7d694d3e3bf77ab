"""The streaming gap as a function of staleness: how far behind a full retrain the served
recommendations fall when the model was last retrained 1 day, 3 days or a week (data
time) before the cut, with the user fold-in applied per batch since.

Run from the repo root: ``python -m benchmarks.stream_staleness [--dataset online_retail]``.
Writes ``benchmarks/results/stream_staleness.json``.

Each gap is one ``eval_quality.served_run`` (same split, same seeded customers, the
worker's own ``BatchProcessor`` into a Valkey of this run's own): replay up to the
retrain, train, replay the rest with fold-in, answer (streaming), retrain at the cut,
answer (full). The full retrain is repeated per gap as the same-run reference. If the
gap grows with staleness, the week-old item factors are what the streaming row lacks;
the items first seen since each retrain, and their share of the new-items truth, are
counted beside it (what item-side fold-in of brand-new items could at most recover).
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

from rich.console import Console

from aisle.runtime import start_store
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import machine_info, tree_state
from benchmarks.eval_quality import MAX_USERS, eval_settings, sample_users, served_run
from benchmarks.quality_data import Split, load, test_split, touched

console = Console(width=None if sys.stdout.isatty() else 150)
GAPS_D = (1, 3, 7)


def new_since(split: Split, since: float, users: list[str]) -> dict[str, Any]:
    before = {i for ev in split.train if ev.ts < since for i in touched(ev)}
    fresh = {i for ev in split.train if ev.ts >= since for i in touched(ev)} - before
    truth = split.truth(True)
    pairs = [(u, i) for u in users for i in truth.get(u, ())]
    return {"items_first_seen_since_retrain": len(fresh),
            "share_of_new_truth_pairs": round(sum(i in fresh for _, i in pairs)
                                              / max(1, len(pairs)), 4)}


def gap(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    return {f"{truth}_{m}": round(row[truth][m] / ref[truth][m] - 1.0, 4)
            for truth in ("all", "new") for m in ("recall", "ndcg")}


async def measure(name: str, redis_url: str, tmp: Path, max_users: int) -> dict[str, Any]:
    split = test_split(load(name))
    users = sample_users(split, max_users)
    rows = {}
    for days in GAPS_D:
        started = time.perf_counter()
        since = split.cut_ts - days * 86400.0
        settings = eval_settings(redis_url, tmp, f"st{days}")
        run = await served_run(split, users, [], settings, since)
        row = {"streaming": {t: run["streaming"][t] for t in ("all", "new")},
               "full": {t: run["full"][t] for t in ("all", "new")},
               "streaming_vs_full": gap(run["streaming"], run["full"]),
               **new_since(split, since, users),
               "seconds": round(time.perf_counter() - started, 1)}
        console.print(f"  {days} d: {row['streaming_vs_full']} "
                      f"(first seen since: {row['items_first_seen_since_retrain']} items, "
                      f"{row['share_of_new_truth_pairs']:.1%} of new truth)")
        rows[f"{days}d"] = row
    return {"dataset": name, "sampled_customers": len(users), "gaps": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="online_retail")
    parser.add_argument("--users", type=int, default=MAX_USERS)
    args = parser.parse_args()
    tree = tree_state()
    tmp = Path(tempfile.mkdtemp(prefix="aisle-staleness-"))
    store, redis_url = start_store(tmp)
    try:
        result = asyncio.run(measure(args.dataset, redis_url, tmp, args.users))
    finally:
        store.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    path = write_result("stream_staleness.json", {"machine": machine_info(tree), **result})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
