"""``make bench``: every benchmark, one after another, each side by side with its baseline.

Each writes its JSON to benchmarks/results/; benchmarks/README.md summarises them.
``--quick`` passes through to the ones that have a short mode.
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHMARKS = [
    ("benchmarks.bench_foldin", False),
    ("benchmarks.bench_ann", True),       # ~1 minute (ALS fit on Taobao, then 3 rounds)
    ("benchmarks.bench_store_client", True),  # ~1 minute: the API's customer read, 2 ways
    ("benchmarks.bench_training", False),
    ("benchmarks.bench_retrain", False),
    ("benchmarks.bench_ingest", True),
    ("benchmarks.bench_store_malloc", True),  # Valkey with libc malloc vs jemalloc, ~2 min
    ("benchmarks.bench_freshness", True),
    ("benchmarks.bench_rebuild", True),   # ~3 minutes: 6 rebuilds of the Taobao slice
    ("benchmarks.bench_serving", True),
    ("benchmarks.bench_cluster", True),   # one Valkey vs a 3-primary cluster, ~6 minutes
    ("benchmarks.eval_customer", False),
    ("benchmarks.bench_memory", True),
    ("benchmarks.bench_widget", False),  # needs chromium (make browser)
    ("benchmarks.sim_experiments", True),
    ("benchmarks.bench_experiments_serving", False),
    ("benchmarks.bench_similar", False),   # ~1 minute quiet (all pairs at 85k items)
    ("benchmarks.eval_quality", False),    # ~10 minutes: replays both datasets twice
    ("benchmarks.bench_basket_pairs", False),  # ~6 minutes: Online Retail 4 times
    ("benchmarks.related_gap", False),  # ~4 minutes quiet: pure Python recounts
    ("benchmarks.related_blend", False),  # ~3 minutes quiet: validation replay + 8 blends
    ("benchmarks.stream_staleness", False),  # ~5 minutes quiet: Online Retail 3 times
    ("benchmarks.bench_soak", False),  # 10 minutes
]


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    failed = []
    for module, has_quick in BENCHMARKS:
        args = [sys.executable, "-m", module] + (["--quick"] if quick and has_quick else [])
        print(f"\n=== {module} ===", flush=True)
        started = time.monotonic()
        if subprocess.call(args) != 0:
            failed.append(module)
        print(f"({module}: {time.monotonic() - started:.0f} s)", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
