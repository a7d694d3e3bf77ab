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

A third row per gap tries the item refresh before building it into the worker: with the
week-old model, every customer is folded in against its item factors (as the worker's
fold-in does), then each item touched since the retrain gets a fresh least-squares
solve given those user factors (``FoldIn`` with the roles swapped: the item analogue of
the user fold-in; items first seen since keep no factors). The refreshed factors are
published as a model version and the same customers are answered again. Its cost per
item is timed next to ``implicit``'s ``partial_fit_items`` on the same items (one
thread each).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from rich.console import Console
from threadpoolctl import threadpool_limits

from aisle.runtime import start_store
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import machine_info, tree_state
from benchmarks.eval_quality import MAX_USERS, eval_settings, sample_users, score, served
from benchmarks.quality_data import Split, load, test_split, touched
from benchmarks.quality_served import StoreSession
from models.als import FoldIn
from models.artifacts import ModelArtifact, new_version, publish_model
from models.train import read_matrix, refresh_items_once

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


async def refresh_items(session: StoreSession, stale: ModelArtifact, fresh: set[str],
                        ) -> tuple[ModelArtifact, dict[str, Any]]:
    """``stale`` with the factors of the ``fresh`` items re-solved given every customer's
    fold-in against ``stale`` (current interaction weights); published as current."""
    m = session.settings.model
    inter, ref_ts = await read_matrix(session.client, session.keys, m.half_life_d * 86400)
    index = stale.item_index
    cols = np.array([index.get(i, -1) for i in inter.item_ids])
    x = inter.matrix.tocsr()
    histories = []
    for u in range(x.shape[0]):
        idx, w = x.indices[x.indptr[u]:x.indptr[u + 1]], x.data[x.indptr[u]:x.indptr[u + 1]]
        keep = cols[idx] >= 0
        histories.append((cols[idx[keep]], w[keep]))
    with threadpool_limits(1, "blas"):
        started = time.perf_counter()
        users = stale.fold_in().solve_many(histories)
        users_s = time.perf_counter() - started
        xt = x.T.tocsr()  # items x users
        picked = [c for c, item in enumerate(inter.item_ids) if item in fresh and cols[c] >= 0]
        factors = stale.item_factors.copy()
        started = time.perf_counter()
        solver = FoldIn(users, m.regularization, m.alpha)
        for c in picked:
            lo, hi = xt.indptr[c], xt.indptr[c + 1]
            factors[cols[c]] = solver.solve(xt.indices[lo:hi], xt.data[lo:hi])
        ours_s = time.perf_counter() - started
        model = AlternatingLeastSquares(factors=factors.shape[1], regularization=m.regularization,
                                        alpha=m.alpha, dtype=np.float32, num_threads=1)
        model.user_factors = users.copy()
        model.item_factors = stale.item_factors.copy()
        started = time.perf_counter()
        model.partial_fit_items(cols[picked], xt[picked])
        implicit_s = time.perf_counter() - started
    drift = float(np.max(np.abs(model.item_factors[cols[picked]] - factors[cols[picked]])))
    art = dataclasses.replace(stale, version=new_version(), ref_ts=ref_ts,
                              item_factors=factors, stats={**stale.stats, "refreshed": len(picked)})
    await publish_model(session.client, session.settings.features.key_prefix, art)
    await session.holder.refresh()
    n = max(1, len(picked))
    return art, {"items_refreshed": len(picked), "users_folded": len(histories),
                 "users_fold_in_s": round(users_s, 3),
                 "us_per_item_ours": round(1e6 * ours_s / n, 1),
                 "us_per_item_implicit_partial_fit_items": round(1e6 * implicit_s / n, 1),
                 "max_abs_diff_vs_implicit": round(drift, 5)}


async def staleness_run(split: Split, users: list[str], session: StoreSession, since: float,
                        ) -> dict[str, Any]:
    head = [ev for ev in split.train if ev.ts < since]
    tail = [ev for ev in split.train if ev.ts >= since]
    fresh = {i for ev in tail for i in touched(ev)}
    await session.replay(head)
    stale = await session.train()
    await session.replay(tail)
    row: dict[str, Any] = {"streaming": score(await served(session, split, users), split, users)}
    # The worker's own refresh (models.train.refresh_items_once): items read off the store.
    started = time.perf_counter()
    wired = await refresh_items_once(session.settings, session.client)
    row["wired_refresh"] = {"items_refreshed": wired.stats["refreshed_items"] if wired else 0,
                            "seconds": round(time.perf_counter() - started, 2)}
    await session.holder.refresh()
    row["streaming_wired_refresh"] = score(await served(session, split, users), split, users)
    _, row["item_refresh"] = await refresh_items(session, stale, fresh)
    row["streaming_item_refresh"] = score(await served(session, split, users), split, users)
    await session.train()
    row["full"] = score(await served(session, split, users), split, users)
    await session.wipe()
    return row


async def measure(name: str, redis_url: str, tmp: Path, max_users: int,
                  gaps: tuple[int, ...] = GAPS_D) -> dict[str, Any]:
    split = test_split(load(name))
    users = sample_users(split, max_users)
    rows = {}
    for days in gaps:
        started = time.perf_counter()
        since = split.cut_ts - days * 86400.0
        session = StoreSession.open(eval_settings(redis_url, tmp, f"st{days}"))
        try:
            row = await staleness_run(split, users, session, since)
        finally:
            await session.close()
        row["streaming_vs_full"] = gap(row["streaming"], row["full"])
        row["item_refresh_vs_full"] = gap(row["streaming_item_refresh"], row["full"])
        row["wired_refresh_vs_full"] = gap(row["streaming_wired_refresh"], row["full"])
        row |= new_since(split, since, users)
        row["seconds"] = round(time.perf_counter() - started, 1)
        console.print(f"  {days} d: streaming {row['streaming_vs_full']}, with item refresh "
                      f"{row['item_refresh_vs_full']}; {row['item_refresh']}; wired refresh "
                      f"{row['wired_refresh_vs_full']} ({row['wired_refresh']}); first seen "
                      f"since: {row['items_first_seen_since_retrain']} items, "
                      f"{row['share_of_new_truth_pairs']:.1%} of new truth")
        rows[f"{days}d"] = row
    return {"dataset": name, "sampled_customers": len(users), "gaps": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="online_retail")
    parser.add_argument("--users", type=int, default=MAX_USERS)
    parser.add_argument("--gaps", default=",".join(map(str, GAPS_D)),
                        help="days between the stale retrain and the cut (1,3,7)")
    parser.add_argument("--out", default="stream_staleness")
    args = parser.parse_args()
    tree = tree_state()
    tmp = Path(tempfile.mkdtemp(prefix="aisle-staleness-"))
    store, redis_url = start_store(tmp)
    try:
        gaps = tuple(int(d) for d in args.gaps.split(","))
        result = asyncio.run(measure(args.dataset, redis_url, tmp, args.users, gaps))
    finally:
        store.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    path = write_result(f"{args.out}.json", {"machine": machine_info(tree), **result})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
