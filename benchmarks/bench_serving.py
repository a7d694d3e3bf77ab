"""Serving latency and throughput of one API process, against a trivial endpoint.

Run from the repo root: ``python -m benchmarks.bench_serving [--rates 200,500,1000]
[--seconds 20] [--quick]``. Writes ``benchmarks/results/serving.json`` and
``serving.png``.

Starts the whole stack on Online Retail (``serving_stack``), then, from a separate load
generator process (``serving_load``):

1. measures the generator's own ceiling against a canned server (``serving_canned``);
2. open loop at each rate, for ``/v1/ping`` (the baseline: same server, no work),
   related items, recommendations and limited-time offers, interleaved so they see the
   same machine; latency counts from each request's due time (offers answers that
   issued a new offer, which waits for Kafka's ack, are also reported apart);
3. closed loop with a fixed number of connections: peak requests/s of each endpoint,
   as a share of ping's.

The machine is shared and noisy, so numbers are only compared within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from aisle.runtime import free_port, wait_for_port
from benchmarks.serving_cpu import measured, wait_idle
from benchmarks.serving_load import LoadGenerator
from benchmarks.serving_report import machine, open_point, plot, print_tables, write_json
from benchmarks.serving_stack import DATA, Loaded, item_ids, loaded_stack, paths, user_ids

ENDPOINTS = ("ping", "related", "recommendations", "offers")
SEED = 7
NOTES = {
    "latency": "open loop, ms from each request's due time to the end of its answer; "
               "includes waiting for one of the pool's keep-alive connections; failed "
               "requests count at the time they failed, unfinished ones (still waiting "
               "drain_s after the schedule ended) at the time we gave up (a lower bound)",
    "errors": "failed (refused, reset, timed out) + unfinished; non_200: HTTP answers "
              "other than 200; degraded: 200s whose body says \"degraded\": true (the "
              "service gave up on a store read after its 0.25 s timeout and answered from "
              "memory), a sign of overload rather than success",
    "flags": "generator-limited: the generator started requests at < 97% of the offered "
             "rate; server-saturated: answers came at < 97% of it, or some were unfinished",
    "generator_late_ms": "due time -> the generator started the request: the generator's "
                         "own lateness (its timer and its share of the CPU)",
    "client": "raw asyncio HTTP/1.1 keep-alive pool (benchmarks/serving_http.py), asyncio "
              "loop with a select() selector; httpx measured as too slow (generator.*)",
    "cpu": "CPU seconds per process during each point, from /proc (10 ms ticks); "
           "api_ms_per_request = API CPU / answered requests; others_share = share of "
           "the machine's CPU used outside the benchmark's processes (neighbours)",
    "peak": "closed loop, best of the rounds; ping_near_generator_ceiling: ping's rate "
            "may be the generator's limit, so the vs_ping shares are upper bounds",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_serving",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default=None, help="open-loop rates, req/s (200,500,1000)")
    p.add_argument("--seconds", type=float, default=None, help="per open-loop point (20)")
    p.add_argument("--connections", type=int, default=32,
                   help="open-loop connection pool (keep-alive)")
    p.add_argument("--peak-connections", type=int, default=16)
    p.add_argument("--peak-seconds", type=float, default=None, help="per closed-loop run (5)")
    p.add_argument("--limit-rows", type=int, default=None, help="replay only this many rows")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="cProfile the service in process (serving_profile); on unless --quick")
    p.add_argument("--quick", action="store_true",
                   help="smoke run, about a minute: 100,300 req/s, 5 s, 100k rows")
    p.add_argument("--api-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the worker and API processes, to try a "
                        "change without editing code (e.g. OPENBLAS_NUM_THREADS=1)")
    p.add_argument("--pin", action="store_true",
                   help="generator on CPU 0, API on CPU 1 (os.sched_setaffinity): the load "
                        "comes from elsewhere in production; worker, Valkey, broker unpinned")
    p.add_argument("--out", default=None,
                   help="result file stem in benchmarks/results (serving, serving_quick)")
    args = p.parse_args(argv)
    quick = args.quick
    args.rates = [float(r) for r in (args.rates or ("100,300" if quick else "200,500,1000"))
                  .split(",")]
    args.seconds = args.seconds or (5.0 if quick else 20.0)
    args.peak_seconds = args.peak_seconds or (2.0 if quick else 5.0)
    args.rounds = 1 if quick else 2
    args.profile = not quick if args.profile is None else args.profile
    args.out = args.out or ("serving_quick" if quick else "serving")
    if quick and args.limit_rows is None:
        args.limit_rows = 100_000
    return args


@contextlib.contextmanager
def canned_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serving_canned", str(port)])
    try:
        wait_for_port(port, 10, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def generator_ceiling(gen: LoadGenerator, args: argparse.Namespace) -> dict[str, Any]:
    """What the generator reaches when the server costs (almost) nothing."""
    seconds = 2.0 if args.quick else 3.0
    top = max(args.rates)
    with canned_server() as url:
        common = {"url": url, "paths": ["/v1/ping"], "connections": args.peak_connections}
        raw = gen.run(mode="closed", client="raw", seconds=seconds, **common)
        httpx = gen.run(mode="closed", client="httpx", seconds=seconds, **common)
        at_top = gen.run(mode="open", rate=top, seconds=seconds, url=url, paths=["/v1/ping"],
                         connections=args.connections)
    point = open_point("canned", at_top)
    return {"connections": args.peak_connections, "raw_closed_rps": raw["rps"],
            "httpx_closed_rps": httpx["rps"], "raw_open_at_top_rate": point}


def processes(loaded: Loaded, gen: LoadGenerator) -> dict[str, int]:
    stack = loaded.stack
    managed = [*stack.embedded.processes, *stack.workers, *([stack.api] if stack.api else [])]
    return {**{m.name: m.proc.pid for m in managed}, "generator": gen.proc.pid}


def open_loop(gen: LoadGenerator, loaded: Loaded, requests: dict[str, list[str]],
              args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    points = []
    pids = processes(loaded, gen)
    for rate in args.rates:
        for endpoint in ENDPOINTS:
            how = answered_how(loaded.api_url)
            raw, cpu = measured(pids, lambda rate=rate, endpoint=endpoint: gen.run(
                mode="open", url=loaded.api_url, paths=requests[endpoint], rate=rate,
                seconds=args.seconds, connections=args.connections))
            point = open_point(endpoint, raw)
            point["cpu"] = with_api_ms(cpu, point["requests"] - point["unfinished"])
            if endpoint == "recommendations":
                after = answered_how(loaded.api_url)
                point["answered_how"] = {k: after[k] - how.get(k, 0.0) for k in after}
                console.log(f"recommendations answered: {point['answered_how']}")
            lat = point["latency_ms"]
            if point.get("issued"):
                console.log(f"{endpoint:>15} @ {rate:g}/s: {point['issued']} answers issued "
                            f"an offer (p99 {point['issued_latency_ms']['p99']:.2f} ms); the "
                            f"others p99 {point['not_issued_latency_ms']['p99']:.2f} ms")
            console.log(f"{endpoint:>15} @ {rate:g}/s: p50 {lat['p50']:.2f} p99 {lat['p99']:.2f}"
                        f" max {lat['max']:.1f} ms, errors {point['errors']}, API "
                        f"{point['cpu'].get('api_ms_per_request', 0):.2f} ms CPU/request, "
                        f"degraded {point['degraded']}, "
                        f"others {point['cpu'].get('others_share', 0):.0%} of the machine "
                        f"{' '.join(point['flags'])}")
            points.append(point)
            # An overloaded API keeps working through what the generator gave up on
            # (9 s of recommendations at 1,000/s): the next point waits for it, and
            # says how long it waited. A fixed second did not do: the offers point
            # after overloaded recommendations measured their backlog (p99 1.1 s).
            point["drain_s"] = wait_idle(pids["api"])
    return points


def answered_how(api_url: str) -> dict[str, float]:
    """The API's count of recommendations by how they were answered (derived, the
    customer's kept answer reused, the last one given with the store away): /metrics."""
    body = httpx.get(f"{api_url}/metrics", timeout=10).text
    prefix = 'aisle_recommendations_total{how="'
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in body.splitlines() if line.startswith(prefix)}


def peak(gen: LoadGenerator, loaded: Loaded, requests: dict[str, list[str]],
         args: argparse.Namespace, console: Console) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in ENDPOINTS}
    pids = processes(loaded, gen)
    for _ in range(args.rounds):
        for endpoint in ENDPOINTS:
            how = answered_how(loaded.api_url)
            run, cpu = measured(pids, lambda endpoint=endpoint: gen.run(
                mode="closed", url=loaded.api_url, paths=requests[endpoint],
                seconds=args.peak_seconds, connections=args.peak_connections))
            # The closed-loop warm-up second is inside the CPU window: say so by name.
            run["cpu_incl_warmup"] = cpu
            if endpoint == "recommendations":  # warm-up included, as the CPU
                after = answered_how(loaded.api_url)
                run["answered_how_incl_warmup"] = {k: after[k] - how.get(k, 0.0)
                                                   for k in after}
                console.log(f"recommendations answered: {run['answered_how_incl_warmup']}")
            console.log(f"{endpoint:>15} closed loop: {run['rps']:.0f} req/s, others "
                        f"{cpu.get('others_share', 0):.0%} of the machine")
            runs[endpoint].append(run)
    # Best of the rounds: the run the shared machine disturbed least.
    best = {e: max(rs, key=lambda r: r["rps"]) for e, rs in runs.items()}
    for run in best.values():
        run["vs_ping"] = round(run["rps"] / best["ping"]["rps"], 3)
    return {"connections": args.peak_connections, "seconds": args.peak_seconds,
            "rounds": args.rounds, "best": best,
            "all_rps": {e: [r["rps"] for r in rs] for e, rs in runs.items()}}


def pin(pids: dict[str, int]) -> dict[str, list[int]]:
    """Generator on CPU 0, API on CPU 1, so neither takes the other's core."""
    if (os.cpu_count() or 1) < 2:
        return {}
    os.sched_setaffinity(pids["generator"], {0})
    os.sched_setaffinity(pids["api"], {1})
    return {"generator": [0], "api": [1]}


def with_api_ms(cpu: dict[str, Any], answered: int) -> dict[str, Any]:
    api_s = cpu["process_s"].get("api")
    if api_s is not None and answered:
        cpu["api_ms_per_request"] = round(api_s / answered * 1e3, 3)
    return cpu


def ping_near_ceiling(result: dict[str, Any]) -> bool:
    """Whether ping's peak may be the generator's: then it is a lower bound, and every
    share of it an upper bound."""
    return bool(result["peak"]["best"]["ping"]["rps"]
                > 0.8 * result["generator"]["raw_closed_rps"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Wide enough for the tables when the output goes to a file or a pipe.
    console = Console() if sys.stdout.isatty() else Console(width=190)
    started = time.monotonic()
    rng = random.Random(SEED)
    result: dict[str, Any] = {"benchmark": "serving", "machine": machine(),
                              "settings": {k: (str(v) if isinstance(v, Path) else v)
                                           for k, v in vars(args).items()}}
    extra_env = dict(kv.split("=", 1) for kv in args.api_env)
    with loaded_stack(args.data, args.limit_rows, console.log, extra_env) as loaded, \
            LoadGenerator() as gen:
        result["setup"] = loaded.setup
        result["pinned"] = pin(processes(loaded, gen)) if args.pin else {}
        items, users = item_ids(loaded, rng), user_ids(loaded, rng)
        requests = {e: paths(e, items, users) for e in ENDPOINTS}
        result["requests"] = {"distinct_items": len(set(items)),
                              "distinct_users": len(set(users)),
                              "unknown_users": sum(u.startswith("bench-new-") for u in users)}
        result["generator"] = generator_ceiling(gen, args)
        console.log(f"generator ceiling: raw {result['generator']['raw_closed_rps']:.0f} "
                    f"req/s, httpx {result['generator']['httpx_closed_rps']:.0f} req/s")
        for endpoint in ENDPOINTS:  # warm the API's caches and the model's pages
            gen.run(mode="closed", url=loaded.api_url, paths=requests[endpoint], seconds=1.0,
                    warmup_s=0.0, connections=4)
        result["open_loop"] = open_loop(gen, loaded, requests, args, console)
        result["peak"] = peak(gen, loaded, requests, args, console)
        if args.profile:
            from benchmarks.serving_profile import profile_service

            result["profile"] = profile_service(loaded, items, users, console, args.out)
    result["peak"]["ping_near_generator_ceiling"] = ping_near_ceiling(result)
    result["notes"] = NOTES
    result["wall_s"] = round(time.monotonic() - started, 1)
    print_tables(console, result)
    console.print(f"wrote {write_json(result, args.out + '.json')}")
    if (png := plot(result, args.out + ".png")) is not None:
        console.print(f"wrote {png}")


if __name__ == "__main__":
    main()
