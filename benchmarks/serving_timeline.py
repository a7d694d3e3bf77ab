"""Where a slow answer waited: a per-request timeline of the generator and the API.

Run from the repo root: ``python -m benchmarks.serving_timeline [--rate 1000]
[--seconds 15] [--pin] [--no-warm] [--out serving_timeline]``. Writes
``benchmarks/results/<out>.json`` and one ``<out>_<endpoint>.png`` per endpoint.

Same stack and requests as ``bench_serving``; the API runs with
``AISLE_SERVING__TIMELINE_PATH`` set (``serving/timeline.py``) and the generator with
``timeline`` on, and both stamp on ``perf_counter`` (CLOCK_MONOTONIC, shared between
processes). Each request's latency (due time -> our task had the answer) is split into:

- ``generator_late``: due -> the generator started the request (its own lag: not the
  server's);
- ``pool_wait``: started -> written: waiting for one of the pool's connections, all busy
  with earlier answers (the server's doing: a real client would wait too);
- ``to_handler``: written -> the API's ASGI app was called (socket, uvicorn's parsing, and
  the API loop being busy with other work: queueing in the server);
- ``redis`` / ``kafka``: the handler's own awaits on Redis and on the producer;
- ``handler_other``: the rest of the handler: its Python, plus waits for the loop while
  other requests ran between its awaits;
- ``to_first_byte``: response started -> its first byte reached the generator;
- ``to_last_byte``: first -> last byte;
- ``generator_resume``: last byte -> the generator's task ran (its own lag again).

Alongside: both loops' lag (a 1 ms ticker's lateness), both processes' GC pauses, and every
process's CPU at 20 Hz (psutil), with the rest of the machine as "others".

``--pin`` puts the generator on CPU 0 and the API on CPU 1 (``os.sched_setaffinity``;
the worker, Valkey and the broker stay free to use both): in production the load comes
from other machines, so this keeps the generator from taking the API's core.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psutil
from rich.console import Console

from benchmarks.bench_serving import SEED, pin, processes
from benchmarks.serving_load import LoadGenerator, summary_ms
from benchmarks.serving_report import RESULTS, machine, open_point, write_json
from benchmarks.serving_stack import DATA, item_ids, loaded_stack, paths, republish, user_ids

STAGES = ("generator_late", "pool_wait", "to_handler", "redis", "kafka", "handler_other",
          "to_first_byte", "to_last_byte", "generator_resume")


RUNQUEUE = ("api", "generator")  # whose main thread's run-queue wait is sampled too


def _runqueue_s(pid: int) -> float:
    """Seconds the process's main thread spent runnable but waiting for a CPU
    (schedstat(5)'s second field): the OS, not the program, delayed it."""
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return math.nan


class CpuSampler:
    """Every process's CPU seconds and the machine's busy seconds, 20 times a second."""

    def __init__(self, pids: dict[str, int], hz: float = 20.0) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.period = 1.0 / hz
        self.samples: list[tuple[float, dict[str, float], float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            used = {}
            for name, proc in self.procs.items():
                try:
                    t = proc.cpu_times()
                except psutil.Error:
                    continue
                used[name] = t.user + t.system
                if name in RUNQUEUE:
                    used[name + "_runqueue"] = _runqueue_s(proc.pid)
            m = psutil.cpu_times()
            busy = m.user + m.nice + m.system + m.irq + m.softirq + m.steal
            self.samples.append((time.perf_counter(), used, busy))

    def shares(self) -> dict[str, list[float]]:
        """Per interval: each process's share of ONE core, and others' (machine - ours)."""
        out: dict[str, list[float]] = {"t": [], "others": []}
        for (t0, u0, b0), (t1, u1, b1) in zip(self.samples, self.samples[1:], strict=False):
            dt = t1 - t0
            out["t"].append(t1)
            ours = 0.0
            for name in u1:
                if name in u0:
                    share = (u1[name] - u0[name]) / dt
                    out.setdefault(name, []).append(share)
                    if not name.endswith("_runqueue"):
                        ours += share
            out["others"].append(max(0.0, (b1 - b0) / dt - ours))
        return out


def split(gen: dict[str, Any], api_requests: list[list[Any]]) -> list[dict[str, float]]:
    """Each generator request's latency, stage by stage (NaN where unmatched)."""
    by_path: dict[str, list[list[Any]]] = {}
    for rec in api_requests:
        by_path.setdefault(rec[0], []).append(rec)
    for recs in by_path.values():
        recs.sort(key=lambda r: r[1])
    called_of = {p: [r[1] for r in recs] for p, recs in by_path.items()}
    rows = []
    for k, (path, (started, sent, first, last, done)) in enumerate(
            zip(gen["paths"], gen["marks"], strict=True)):
        due = gen["start"] + k * gen["interval"]
        row = {"due": due, "latency": done - due, "generator_late": started - due,
               "pool_wait": sent - started}
        key = unquote(path.split("?", 1)[0])  # the API sees the decoded path
        recs = by_path.get(key, [])
        j = bisect.bisect_left(called_of.get(key, []), sent - 1e-4)
        if math.isnan(sent) or j >= len(recs) or recs[j][1] > last:
            rows.append(row)
            continue
        _, called, started, _end, _status, redis_s, kafka_s, *_ = recs[j]
        row.update(to_handler=called - sent, redis=redis_s, kafka=kafka_s,
                   handler_other=started - called - redis_s - kafka_s,
                   to_first_byte=first - started, to_last_byte=last - first,
                   generator_resume=done - last)
        rows.append(row)
    return rows


def overlaps(spans: list[list[float]], lo: float, hi: float) -> float:
    """Seconds of GC pause inside [lo, hi]."""
    return sum(max(0.0, min(hi, s + d) - max(lo, s)) for s, d, *_ in spans)


def integrate(cpu: dict[str, list[float]], key: str, lo: float, hi: float) -> float:
    """Seconds of ``key`` (a share of a core, sampled at 20 Hz) within about [lo, hi]."""
    ts, series = cpu["t"], cpu.get(key, [])
    total = 0.0
    for k in range(1, min(len(ts), len(series))):
        a, b = ts[k - 1], ts[k]
        overlap = min(hi, b) - max(lo, a)
        if overlap > 0 and not math.isnan(series[k]):
            total += series[k] * overlap
    return total


def gc_by_generation(spans: list[list[float]], lo: float, hi: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for start, pause, gen, _, *cpu in spans:
        if lo <= start <= hi:
            g = out.setdefault(f"gen{gen}", {"pauses": 0, "total_ms": 0.0, "max_ms": 0.0,
                                             "cpu_total_ms": 0.0, "cpu_max_ms": 0.0})
            g["pauses"] += 1
            g["total_ms"] = round(g["total_ms"] + pause * 1e3, 3)
            g["max_ms"] = round(max(g["max_ms"], pause * 1e3), 3)
            if cpu:  # the collector's own CPU; wall - CPU = the OS ran someone else
                g["cpu_total_ms"] = round(g["cpu_total_ms"] + cpu[0] * 1e3, 3)
                g["cpu_max_ms"] = round(max(g["cpu_max_ms"], cpu[0] * 1e3), 3)
    return out


def attribute(rows: list[dict[str, float]], api: dict[str, Any], gen: dict[str, Any],
              cpu: dict[str, list[float]]) -> dict[str, Any]:
    """Mean stage times of all, of the slowest 1% and of the slowest 0.1%, and how much of
    the slow ones' time a GC pause (API's, generator's) covered."""
    done = [r for r in rows if "to_handler" in r and not math.isnan(r["latency"])]
    ordered = sorted(done, key=lambda r: r["latency"])
    out: dict[str, Any] = {"matched": len(done), "requests": len(rows)}
    for label, q in (("all", 0.0), ("slowest_1pct", 0.99), ("slowest_0.1pct", 0.999)):
        part = ordered[int(q * len(ordered)):] or ordered[-1:]
        mean = {s: round(sum(r[s] for r in part) / len(part) * 1e3, 3) for s in STAGES}
        lat = sum(r["latency"] for r in part) / len(part) * 1e3
        entry: dict[str, Any] = {"n": len(part), "latency_ms": round(lat, 3),
                                 "stages_ms": mean}
        if label != "all":
            entry["api_gc_ms"] = round(sum(overlaps(api["gc"], r["due"], r["due"] + r["latency"])
                                           for r in part) / len(part) * 1e3, 3)
            entry["generator_gc_ms"] = round(sum(overlaps(gen["gc"], r["due"],
                                                          r["due"] + r["latency"])
                                                 for r in part) / len(part) * 1e3, 3)
            entry["dominant"] = max(mean, key=lambda s: mean[s])
            # The API's main thread runnable but not running: the OS gave the CPU to
            # another process (a neighbour, Valkey, the generator) during the request.
            entry["api_runqueue_ms"] = round(sum(
                integrate(cpu, "api_runqueue", r["due"], r["due"] + r["latency"])
                for r in part) / len(part) * 1e3, 3)
        out[label] = entry
    return out


def lag_summary(lag: list[list[float]], lo: float, hi: float) -> dict[str, float]:
    return summary_ms([late for woke, late in lag if lo <= woke <= hi])


def plot_window(name: str, endpoint: str, rows: list[dict[str, float]], api: dict[str, Any],
                gen: dict[str, Any], cpu: dict[str, list[float]], half_s: float = 1.5,
                ) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worst = max((r for r in rows if "to_handler" in r), key=lambda r: r["latency"])
    t0 = worst["due"]
    lo, hi = t0 - half_s, t0 + half_s
    win = [r for r in rows if lo <= r["due"] <= hi and "to_handler" in r]
    fig, ax = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    x = [r["due"] - t0 for r in win]
    bottom = [0.0] * len(win)
    for stage in STAGES:
        h = [max(0.0, r[stage]) * 1e3 for r in win]
        ax[0].bar(x, h, bottom=bottom, width=0.001, label=stage)
        bottom = [b + v for b, v in zip(bottom, h, strict=True)]
    ax[0].set_ylabel("latency ms (stacked stages)")
    ax[0].legend(fontsize=7, ncol=4, loc="upper right")
    ax[0].set_title(f"{endpoint}: ±{half_s:g} s around the slowest request "
                    f"({worst['latency'] * 1e3:.1f} ms)")
    for series, label in ((api["loop_lag"], "API loop"), (gen["loop_lag"], "generator loop")):
        pts = [(w - t0, late * 1e3) for w, late in series if lo <= w <= hi]
        ax[1].plot([p[0] for p in pts], [p[1] for p in pts], lw=0.7, label=label)
    ax[1].set_ylabel("1 ms ticker late, ms")
    ax[1].legend(fontsize=7, loc="upper right")
    for spans, color, label in ((api["gc"], "tab:red", "API GC"),
                                (gen["gc"], "tab:purple", "generator GC")):
        for s, d, g, *_ in spans:
            if lo <= s <= hi:
                ax[2].barh(label, max(d, 2e-4), left=s - t0, color=color)
                ax[2].text(s - t0, label, f"g{g} {d * 1e3:.1f}", fontsize=6)
    ax[2].set_ylabel("GC pauses")
    idx = [k for k, t in enumerate(cpu["t"]) if lo <= t <= hi]
    for proc, series in cpu.items():
        if proc == "t" or not idx:
            continue
        ax[3].plot([cpu["t"][k] - t0 for k in idx], [series[k] for k in idx], label=proc)
    ax[3].set_ylabel("CPU, cores (20 Hz)")
    ax[3].set_xlabel("seconds from the slowest request's due time")
    ax[3].legend(fontsize=7, ncol=4, loc="upper right")
    fig.tight_layout()
    path = RESULTS / f"{name}_{endpoint}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_timeline",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--endpoints", default="ping,related,recommendations,offers")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--pin", action="store_true", help="generator on CPU 0, API on CPU 1")
    p.add_argument("--limit-rows", type=int, default=None)
    p.add_argument("--api-env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--publish-at", type=float, default=None, metavar="SECONDS",
                   help="republish the model under a new version this long into each "
                        "point, as a retrain or item refresh does (serving_stack.republish)")
    p.add_argument("--out", default="serving_timeline")
    p.add_argument("--no-warm", dest="warm", action="store_false",
                   help="no warm-up second: offers then meet every customer's first visit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=190)
    endpoints = args.endpoints.split(",")
    rng = random.Random(SEED)
    result: dict[str, Any] = {"benchmark": "serving_timeline", "machine": machine(),
                              "settings": vars(args) | {"stages": STAGES}}
    raw: dict[str, dict[str, Any]] = {}
    cpu: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="aisle-timeline-") as tmp:
        api_file = Path(tmp) / "api_timeline.json"
        env = dict(kv.split("=", 1) for kv in args.api_env)
        env["AISLE_SERVING__TIMELINE_PATH"] = str(api_file)
        with loaded_stack(DATA, args.limit_rows, console.log, env) as loaded, \
                LoadGenerator() as gen:
            pids = processes(loaded, gen)
            result["pinned"] = pin(pids) if args.pin else {}
            items, users = item_ids(loaded, rng), user_ids(loaded, rng)
            requests = {e: paths(e, items, users) for e in endpoints}
            for endpoint in endpoints if args.warm else ():  # as bench_serving does
                gen.run(mode="closed", url=loaded.api_url, paths=requests[endpoint],
                        seconds=1.0, warmup_s=0.0, connections=4)
            for endpoint in endpoints:
                publish = (threading.Timer(args.publish_at, republish, [loaded.stack.settings])
                           if args.publish_at is not None else None)
                if publish is not None:
                    publish.start()
                with CpuSampler(pids) as sampler:
                    raw[endpoint] = gen.run(mode="open", url=loaded.api_url,
                                            paths=requests[endpoint], rate=args.rate,
                                            seconds=args.seconds,
                                            connections=args.connections, timeline=True)
                cpu[endpoint] = sampler.shares()
                time.sleep(1.0)
        api = json.loads(api_file.read_text())  # written when the API shut down
    result["api_heap_at_stop"] = api.get("heap_at_stop")
    result["points"] = {}
    for endpoint in endpoints:
        gen_tl = raw[endpoint].pop("timeline")
        point = open_point(endpoint, raw[endpoint])
        rows = split(gen_tl, api["requests"])
        lo, hi = gen_tl["start"], gen_tl["start"] + args.seconds
        share = {k: round(sum(v) / len(v), 3) for k, v in cpu[endpoint].items()
                 if k != "t" and v}
        point.update(attribution=attribute(rows, api, gen_tl, cpu[endpoint]),
                     api_gc_by_generation=gc_by_generation(api["gc"], lo, hi),
                     api_loop_lag_ms=lag_summary(api["loop_lag"], lo, hi),
                     generator_loop_lag_ms=lag_summary(gen_tl["loop_lag"], lo, hi),
                     api_gc={"pauses": sum(lo <= s <= hi for s, *_ in api["gc"]),
                             "max_ms": round(max((d for s, d, *_ in api["gc"] if lo <= s <= hi),
                                                 default=0.0) * 1e3, 3)},
                     generator_gc={"pauses": len(gen_tl["gc"]),
                                   "max_ms": round(max((d for _, d, *_ in gen_tl["gc"]),
                                                       default=0.0) * 1e3, 3)},
                     cpu_cores_mean=share)
        point.pop("latency_ms_raw", None)
        result["points"][endpoint] = point
        png = plot_window(args.out, endpoint, rows, api, gen_tl, cpu[endpoint])
        att = point["attribution"]
        console.log(f"{endpoint:>15}: p50 {point['latency_ms']['p50']:.2f} p99 "
                    f"{point['latency_ms']['p99']:.2f} p99.9 {point['latency_ms']['p99.9']:.2f}"
                    f" ms; slowest 1% ({att['slowest_1pct']['latency_ms']:.1f} ms mean) "
                    f"mostly {att['slowest_1pct']['dominant']}: "
                    f"{att['slowest_1pct']['stages_ms']}; API GC in them "
                    f"{att['slowest_1pct']['api_gc_ms']} ms, API run-queue wait "
                    f"{att['slowest_1pct']['api_runqueue_ms']} ms; API loop lag p99 "
                    f"{point['api_loop_lag_ms']['p99']} ms, generator "
                    f"{point['generator_loop_lag_ms']['p99']} ms; CPU {share}; {png.name}")
    console.print(f"wrote {write_json(result, args.out + '.json')}")


if __name__ == "__main__":
    main()
