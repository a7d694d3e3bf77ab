"""``aisle rebuild``: wall time to wipe the store and fold the whole log again.

Run from the repo root: ``python -m benchmarks.bench_rebuild [--quick] [--rounds N]``.
Writes ``benchmarks/results/rebuild.json`` (``rebuild_quick.json``).

An embedded stack (one worker, no API; retrain, population sweep and push drain off)
takes the Taobao slice (``--quick``: its first 38,277 rows) and catches up; then the
rebuild runs ``--rounds`` times with the worker's write-ahead (``streams/ahead.py``) and,
alternated with it, as a baseline in the same run, with ``worker.write_ahead=false``
(each batch written once the previous one has answered). Each rebuild wipes what the
previous one built and applies every event again; the worker waits at the rebuild lock
meanwhile. Recorded per rebuild: wall seconds (with the fixed 1.5 s lock grace period),
events applied, and this process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from aisle.replay import replay_file
from aisle.settings import Settings
from aisle.stack import Stack
from benchmarks.bench_foldin import machine, write_result
from benchmarks.common import SHARED_DATA
from streams.lag import wait_caught_up
from streams.rebuild import rebuild_from_log

TAOBAO = SHARED_DATA / "taobao_userbehavior" / "userbehavior_sample.csv.gz"
QUICK_ROWS = 38_277


def run(rounds: int, limit_rows: int | None) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="aisle-bench-rebuild-"))
    stack = Stack.start(Settings(data_dir=tmp, worker={"retrain_interval_s": 0,
                                                       "population_interval_s": 0},
                                 push={"drain_interval_s": 0}), api=False)
    s = stack.settings
    rows: list[dict[str, Any]] = []
    try:
        asyncio.run(replay_file(s, TAOBAO, limit_rows=limit_rows))
        asyncio.run(wait_caught_up(s, timeout=600))
        for rnd in range(1, rounds + 1):
            for ahead in (True, False):
                variant = s.model_copy(update={"worker": s.worker.model_copy(
                    update={"write_ahead": ahead})})
                cpu = time.process_time()
                got = asyncio.run(rebuild_from_log(variant))
                row = {"round": rnd, "write_ahead": ahead, "seconds": round(got["seconds"], 2),
                       "events": got["records"], "applied": got["applied"],
                       "rebuild_cpu_s": round(time.process_time() - cpu, 2)}
                print(row, flush=True)
                rows.append(row)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} Taobao rows")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = run(args.rounds, QUICK_ROWS if args.quick else None)
    summary = {}
    for ahead in (True, False):
        mine = [r["seconds"] for r in rows if r["write_ahead"] is ahead]
        summary["write_ahead" if ahead else "writes_wait"] = {
            "median_s": statistics.median(mine), "min_s": min(mine), "max_s": max(mine),
            "events_per_s": round(rows[0]["events"] / statistics.median(mine))}
    print(summary)
    name = "rebuild_quick.json" if args.quick else "rebuild.json"
    result = {"benchmark": "rebuild", "machine": machine(), "quick": args.quick,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "method": __doc__.split("\n\n", 2)[2].strip(), "summary": summary,
              "rows": rows}
    print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
