"""Turns the load generator's raw answers into the serving benchmark's table, JSON and plot."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.common import cpu_model
from benchmarks.serving_load import summary_ms

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Below this share of the offered rate, a point did not run at the rate it claims.
ON_RATE = 0.97


def open_point(endpoint: str, raw: dict[str, Any]) -> dict[str, Any]:
    """One (endpoint, rate) row: percentiles from the due time, failures, and flags."""
    rate = raw["offered_rps"]
    status = {int(k): v for k, v in raw["status"].items()}
    failed = status.get(-1, 0)
    non_200 = sum(v for k, v in status.items() if k > 0 and k != 200)
    flags = []
    if raw["dispatch_rps"] < ON_RATE * rate:
        flags.append("generator-limited")
    if raw["unfinished"] or raw["answered_rps"] < ON_RATE * rate:
        flags.append("server-saturated")
    return {
        "endpoint": endpoint, "offered_rps": rate, "dispatch_rps": raw["dispatch_rps"],
        "answered_rps": raw["answered_rps"], "requests": raw["requests"],
        "latency_ms": summary_ms([v / 1e3 for v in raw["latency_ms"]]),
        # By due second: a first visit's burst (every answer made afresh, then reused)
        # and a steady queue look alike in the run's p99 and apart here.
        "p99_ms_by_second": per_second_p99(raw["latency_ms"], rate),
        "errors": failed + raw["unfinished"], "error_kinds": raw["errors"],
        "unfinished": raw["unfinished"], "non_200": non_200, "degraded": raw["degraded"],
        "generator_late_ms": raw["generator_late_ms"], "pool_wait_ms": raw["pool_wait_ms"],
        "flags": flags,
        **({"issued": raw["issued"], "issued_latency_ms": raw["issued_latency_ms"],
            "not_issued_latency_ms": raw["not_issued_latency_ms"]}
           if raw.get("issued") else {}),
    }


def per_second_p99(latency_ms: list[float], rate: float) -> list[float]:
    """p99 (ms) of the requests due in each second of an open-loop run (request i is due
    at i / rate), rounded to 0.01 ms.

    >>> per_second_p99([1.0] * 98 + [50.0] * 2 + [2.0] * 100, 100.0)
    [50.0, 2.0]
    """
    step = max(1, round(rate))
    return [round(summary_ms([v / 1e3 for v in latency_ms[k:k + step]])["p99"], 2)
            for k in range(0, len(latency_ms), step)]


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git_commit": _git_commit()}


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    # Others edit the tree while benchmarks run: say when the commit is not the whole story.
    return out.stdout.strip() + ("+dirty" if dirty else "")



# ---------------------------------------------------------------- output
def print_tables(console: Console, result: dict[str, Any]) -> None:
    table = Table(title="Open loop: latency from the due time (ms); API CPU ms per answered "
                        "request; others: share of the machine used outside the benchmark",
                  title_justify="left")
    for name in ("endpoint", "offered", "sent/s", "answered/s", "p50", "p90", "p99",
                 "p99.9", "max", "errors", "non-200", "degraded", "gen late p99", "API CPU/req",
                 "others", "flags"):
        table.add_column(name, justify="left" if name in ("endpoint", "flags") else "right")
    for p in result["open_loop"]:
        lat = p["latency_ms"]
        table.add_row(p["endpoint"], f"{p['offered_rps']:g}", f"{p['dispatch_rps']:.0f}",
                      f"{p['answered_rps']:.0f}",
                      *(f"{lat[k]:.2f}" for k in ("p50", "p90", "p99", "p99.9", "max")),
                      str(p["errors"]), str(p["non_200"]), str(p["degraded"]),
                      f"{p['generator_late_ms']['p99']:.2f}",
                      f"{p['cpu'].get('api_ms_per_request', math.nan):.2f}",
                      f"{p['cpu'].get('others_share', math.nan):.0%}", ", ".join(p["flags"]))
    console.print(table)
    peak = result["peak"]
    table = Table(title=f"Closed loop, {peak['connections']} connections: peak throughput "
                        f"(best of {peak['rounds']} rounds)", title_justify="left")
    for name in ("endpoint", "req/s", "vs ping", "p50 ms", "p99 ms", "errors", "non-200",
                 "degraded"):
        table.add_column(name, justify="left" if name == "endpoint" else "right")
    for endpoint, best in peak["best"].items():
        table.add_row(endpoint, f"{best['rps']:.0f}", f"{best['vs_ping']:.0%}",
                      f"{best['latency_ms_summary']['p50']:.2f}",
                      f"{best['latency_ms_summary']['p99']:.2f}",
                      str(sum(best["errors"].values())),
                      str(sum(v for k, v in best["status"].items() if k not in ("200", "-1"))),
                      str(best["degraded"]))
    console.print(table)
    if peak.get("ping_near_generator_ceiling"):
        console.print("ping's peak is near the generator's ceiling: the shares are upper bounds")
    gen = result["generator"]
    top = gen["raw_open_at_top_rate"]
    console.print(f"generator against a canned server: closed loop raw client "
                  f"{gen['raw_closed_rps']:.0f} req/s, httpx {gen['httpx_closed_rps']:.0f} "
                  f"req/s ({gen['connections']} connections); open loop at "
                  f"{top['offered_rps']:g}/s: p50 {top['latency_ms']['p50']:.2f} ms, p99 "
                  f"{top['latency_ms']['p99']:.2f} ms, generator late p99 "
                  f"{top['generator_late_ms']['p99']:.2f} ms {' '.join(top['flags'])}")


def write_json(result: dict[str, Any], name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def plot(result: dict[str, Any], name: str) -> Path | None:
    """Latency percentiles against offered rate, one panel per endpoint, log y."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is a convenience; the JSON is the result
        return None
    endpoints = list(dict.fromkeys(p["endpoint"] for p in result["open_loop"]))
    fig, axes = plt.subplots(1, len(endpoints), figsize=(4.5 * len(endpoints), 4),
                             sharey=True, squeeze=False)
    for ax, endpoint in zip(axes[0], endpoints, strict=True):
        points = [p for p in result["open_loop"] if p["endpoint"] == endpoint]
        rates = [p["offered_rps"] for p in points]
        for key in ("p50", "p90", "p99", "p99.9", "max"):
            ax.plot(rates, [p["latency_ms"][key] for p in points], marker="o", label=key)
        for p in points:
            if p["flags"]:
                ax.annotate("*", (p["offered_rps"], p["latency_ms"]["max"]), ha="center")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (req/s)")
        ax.set_title(endpoint)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("latency from due time (ms)")
    axes[0][0].legend(loc="upper left", ncol=2, fontsize=8)
    machine = result["machine"]
    fig.suptitle(f"Aisle serving, one API process, open loop ({machine['cpus']} cpus, "
                 f"{machine['git_commit']}, {machine['date'][:10]}); * flagged point",
                 fontsize=10)
    fig.tight_layout()
    path = RESULTS / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
