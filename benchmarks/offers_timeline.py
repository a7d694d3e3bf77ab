"""Offers at a fixed open-loop rate, pass after pass, second by second: the first pass
meets every customer's first visit (offers issued, each awaiting Kafka's ack), the later
passes the steady state, where every customer holds a live offer.

Run from the repo root: ``python -m benchmarks.offers_timeline [--rate 1000]
[--seconds 10] [--passes 4] [--spy] [--out NAME]``. Writes
``benchmarks/results/offers_timeline.json`` (``--out``).
Same stack, customers and generator as ``bench_serving`` (Online Retail, generator on
CPU 0, API on CPU 1).
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from rich.console import Console

from benchmarks.bench_serving import SEED, pin, processes
from benchmarks.serving_cpu import measured, wait_idle
from benchmarks.serving_load import LoadGenerator
from benchmarks.serving_report import RESULTS, machine, write_json
from benchmarks.serving_spy import py_spy, sampled
from benchmarks.serving_stack import DATA, item_ids, loaded_stack, paths, user_ids


def quantile(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)


def seconds_of(latency_ms: list[float], rate: float) -> list[dict[str, float]]:
    step = max(1, int(rate))
    out = []
    for start in range(0, len(latency_ms), step):
        chunk = sorted(latency_ms[start:start + step])
        out.append({"p50": quantile(chunk, 0.5), "p99": quantile(chunk, 0.99),
                    "max": round(chunk[-1], 2)})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--spy", action="store_true",
                   help="py-spy the API through the first pass (the burst of first visits); "
                        "its collapsed stacks go to results/<out>_first.stacks")
    p.add_argument("--out", default="offers_timeline")
    args = p.parse_args(argv)
    console = Console()
    rng = random.Random(SEED)
    passes: list[dict[str, Any]] = []
    with loaded_stack(DATA, None, console.log) as loaded, LoadGenerator() as gen:
        pids = processes(loaded, gen)
        pin(pids)
        users = user_ids(loaded, rng)
        requests = paths("offers", item_ids(loaded, rng), users)
        for n in range(args.passes):
            def run() -> dict[str, Any]:
                return gen.run(mode="open", url=loaded.api_url, paths=requests,
                               rate=args.rate, seconds=args.seconds, connections=32)

            if args.spy and n == 0:
                (raw, cpu), stacks = sampled(py_spy(), pids["api"], 250, args.seconds,
                                             lambda: measured(pids, run))
                (RESULTS / f"{args.out}_first.stacks").write_text(stacks)
            else:
                raw, cpu = measured(pids, run)
            ordered = sorted(raw["latency_ms"])
            answered = len(ordered) - raw["unfinished"]
            row = {"pass": n, "issued": raw["issued"], "errors": raw["errors"],
                   "p50_ms": quantile(ordered, 0.5), "p99_ms": quantile(ordered, 0.99),
                   "api_ms_per_request": round(cpu["process_s"].get("api", 0.0)
                                               / max(1, answered) * 1e3, 3),
                   "others_share": cpu.get("others_share"),
                   "per_second": seconds_of(raw["latency_ms"], args.rate)}
            console.log(f"pass {n}: issued {row['issued']}, p50 {row['p50_ms']} p99 "
                        f"{row['p99_ms']} ms, API {row['api_ms_per_request']} ms CPU/request; "
                        "p99 by second " + " ".join(f"{s['p99']:g}" for s in row["per_second"]))
            passes.append(row)
            wait_idle(pids["api"])
    out = write_json({"benchmark": "offers_timeline", "machine": machine(),
                      "settings": vars(args), "customers": len(set(users)),
                      "passes": passes}, args.out + ".json")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
