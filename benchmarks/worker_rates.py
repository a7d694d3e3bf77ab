"""A worker's CPU at steady event rates, from idle up: what one costs to keep running.

Run from the repo root: ``python -m benchmarks.worker_rates [--rates 0,100,400,1500,5000]
[--seconds 12] [--spy] [--out worker_rates]``. Starts the stack on Online Retail with a
trained model (``serving_stack``, as the serving benchmarks), then for each rate produces
Taobao events at that rate from a process of its own (``bench_freshness.Background``)
and reads the worker's CPU seconds from ``/proc`` around it, once the worker has
settled (:func:`settle`). Rate 0 is the idle worker
(timers, the fetch loop). ``--spy`` also samples the worker with py-spy and keeps its
collapsed stacks (``results/<out>_<rate>.stacks``, not committed) and the largest
functions in the JSON. Writes ``benchmarks/results/<out>.json``.

``bench_ingest`` measures a worker flat out, where fetched batches hold thousands of
events; this measures the other end, where a fetch brings a handful and a worker's
fixed costs per fetch, per batch and per timer tick are what it spends.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.bench_freshness import Background
from benchmarks.serving_cpu import measured, wait_idle
from benchmarks.serving_report import RESULTS, machine, write_json
from benchmarks.serving_spy import aggregate, py_spy, sampled
from benchmarks.serving_stack import DATA, loaded_stack


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker_rates",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="0,100,400,1500,5000", help="events/s; 0 = idle")
    p.add_argument("--seconds", type=float, default=12.0, help="per rate")
    p.add_argument("--spy", action="store_true", help="py-spy the worker at each rate")
    p.add_argument("--out", default="worker_rates")
    return p.parse_args(argv)


def one_rate(loaded: Any, pid: int, rate: float, args: argparse.Namespace,
             ) -> tuple[dict[str, Any], str | None]:
    def run() -> dict[str, Any]:
        if rate <= 0:
            time.sleep(args.seconds)
            return {"produced": 0, "seconds": args.seconds}
        background = Background(loaded.stack.settings, rate, args.seconds)
        background.start()
        return background.finish(timeout=args.seconds + 60)

    pids = {"worker": pid}
    stacks = None
    if args.spy:
        (load, cpu), stacks = sampled(py_spy(), pid, 250, args.seconds,
                                      lambda: measured(pids, run))
    else:
        load, cpu = measured(pids, run)
    worker_s = cpu["process_s"].get("worker", 0.0)
    row = {"rate": rate, "produced": load["produced"], "seconds": round(load["seconds"], 2),
           "worker_cpu_s": worker_s,
           "worker_cores": round(worker_s / load["seconds"], 3),
           "worker_us_per_event": (round(worker_s / load["produced"] * 1e6)
                                   if load["produced"] else None),
           "others_share": cpu.get("others_share")}
    if stacks is not None:
        row["profile"] = aggregate(stacks, 25)
    return row, stacks


def settle(loaded: Any, pid: int) -> float:
    """Start the background events once and wait until the worker is idle again. Their
    clock is Taobao's (2017), six years past the Online Retail log's, so the first ones
    make the worker sweep the population (every customer now lapsed) and the push drain
    then decides win-back offers for many: one-off work that is not a per-event cost and
    had put 0.5-0.7 cores on the first rates measured."""
    started = time.monotonic()
    background = Background(loaded.stack.settings, 100.0, 3.0)
    background.start()
    background.finish(timeout=60)
    time.sleep(5.0)  # the population check runs every 10 s
    wait_idle(pid, busy_below=0.1, window_s=2.0, limit_s=180.0)
    return round(time.monotonic() - started, 1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    rows = []
    with loaded_stack(DATA, None, console.log) as loaded:
        pid = loaded.stack.workers[0].proc.pid
        settle_s = settle(loaded, pid)
        console.log(f"settled in {settle_s} s")
        for rate in [float(r) for r in args.rates.split(",")]:
            row, stacks = one_rate(loaded, pid, rate, args)
            if stacks is not None:
                (RESULTS / f"{args.out}_{int(rate)}.stacks").write_text(stacks)
            console.log(f"{rate:.0f} events/s: worker {row['worker_cores']} cores, "
                        f"{row['worker_us_per_event']} µs/event; others "
                        f"{row['others_share']}")
            rows.append(row)
    table = Table(title="One worker's CPU at steady event rates (Taobao events)")
    for col in ("events/s", "produced", "worker cores", "µs/event", "others"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['rate']:.0f}", str(r["produced"]), f"{r['worker_cores']:.3f}",
                      str(r["worker_us_per_event"] or "–"), f"{r['others_share']}")
    console.print(table)
    out = write_json({"benchmark": "worker_rates", "machine": machine(), "settings": vars(args),
                      "settle_s": settle_s, "rates": rows}, args.out + ".json")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
