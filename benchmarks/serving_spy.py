"""Where the API's CPU goes under load: py-spy samples the API process while the load
generator holds an open-loop rate on one endpoint.

Run from the repo root: ``python -m benchmarks.serving_spy [--rate 500] [--seconds 15]
[--endpoints recommendations,related]`` (needs the ``bench`` extra: py-spy). Starts the
whole stack on Online Retail (``serving_stack``), warms each endpoint, then samples the
API with ``py-spy record --nonblocking`` (the API is never paused) for the point's
length. Writes ``benchmarks/results/<out>.json``: per endpoint the latency summary, and
each function's share of the samples, its own ("self": the innermost frame) and with
what it called ("inclusive"). Native time (numpy, hiredis, the uvloop loop) counts for
the Python line that called it.

The in-process profile (``serving_profile``) calls the service one request at a time and
misses what only load shows: this found the experiment definitions re-read by every
request that came while their TTL's read was on its way (3% of a recommendation's CPU).
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.bench_serving import SEED, processes
from benchmarks.serving_load import LoadGenerator, summary_ms
from benchmarks.serving_report import RESULTS, machine, write_json
from benchmarks.serving_stack import DATA, item_ids, loaded_stack, paths, user_ids

_LINE = re.compile(r":\d+\)$")
_SITE = re.compile(r"^.*/(site-packages|python3\.\d+)/")
_REPO = str(Path(__file__).resolve().parent.parent) + "/"
OURS = ("serving/", "feature_store/", "models/", "streams/", "push/", "aisle/")


def frame_name(frame: str) -> str:
    """``"func (path/to/file.py:12)"`` -> ``"func (file path from the package)"``: lines
    merged, the interpreter's and site-packages' prefixes dropped."""
    name, _, where = _LINE.sub(")", frame).partition(" (")
    if not where:
        return name
    return f"{name} ({_SITE.sub('', where).removeprefix(_REPO)}"


def aggregate(raw: str, top: int = 40) -> dict[str, Any]:
    """py-spy's ``--format raw`` (collapsed stacks: ``frame;frame;... count`` per line)
    as shares of all samples, the largest first."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for f in set(frames):  # a recursive function counts once per sample
            inclusive[f] += n

    def shares(c: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(f, round(k / total, 4)) for f, k in c.most_common(n)] if total else []

    # Inclusive: three times as many, as the server's frames around every request come
    # first.
    return {"samples": total, "self": shares(own, top),
            "inclusive": shares(inclusive, 3 * top)}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    return found


def sampled(spy: str, pid: int, rate: int, seconds: float, run: Any) -> tuple[Any, str]:
    """``run()`` while py-spy samples ``pid``; its result and the collapsed stacks."""
    with tempfile.TemporaryDirectory(prefix="aisle-spy-") as tmp:
        out = Path(tmp) / "stacks.txt"
        proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", str(rate), "--duration",
             str(max(1, round(seconds))), "--nonblocking", "--format", "raw", "--output",
             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            result = run()
        finally:
            _, err = proc.communicate(timeout=seconds + 30)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"py-spy failed ({proc.returncode}): {err.strip()[-500:]}")
        return result, out.read_text()


def ours(frame: str) -> bool:
    """A frame of Aisle's serving path (not its command line)."""
    where = frame.rpartition(" (")[2]
    return where.startswith(OURS) and not where.startswith("aisle/cli.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_spy",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=500.0, help="requests/s, open loop")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--endpoints", default="recommendations,related,offers")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--sample-rate", type=int, default=250, help="py-spy samples/s")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--limit-rows", type=int, default=None)
    p.add_argument("--data", type=Path, default=DATA, help="dataset to replay (Online Retail)")
    p.add_argument("--out", default="serving_spy")
    p.add_argument("--stacks", action="store_true",
                   help="also keep py-spy's collapsed stacks: results/<out>_<endpoint>.stacks")
    return p.parse_args(argv)


def show(console: Console, endpoint: str, point: dict[str, Any], rows: int = 25) -> None:
    lat = point["latency_ms"]
    table = Table(title=f"{endpoint} @ {point['rate']:.0f}/s: p50 {lat['p50']:.2f} "
                        f"p99 {lat['p99']:.2f} ms, {point['profile']['samples']} samples")
    table.add_column("self %", justify="right")
    table.add_column("function (own time)")
    table.add_column("inclusive %", justify="right")
    table.add_column("function (with callees)")
    own, incl = point["profile"]["self"], point["profile"]["inclusive"]
    # With callees, only Aisle's own functions: the server's and framework's frames
    # around every request would fill the table (the JSON keeps them).
    incl = [row for row in incl if ours(row[0])]
    for k in range(min(rows, max(len(own), len(incl)))):
        a = own[k] if k < len(own) else ("", 0.0)
        b = incl[k] if k < len(incl) else ("", 0.0)
        table.add_row(f"{100 * a[1]:.1f}", a[0][:70], f"{100 * b[1]:.1f}", b[0][:70])
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=190)
    spy = py_spy()
    rng = random.Random(SEED)
    result: dict[str, Any] = {"benchmark": "serving_spy", "machine": machine(),
                              "settings": {**vars(args), "data": str(args.data)}, "points": {}}
    with loaded_stack(args.data, args.limit_rows, console.log) as loaded, LoadGenerator() as gen:
        api_pid = processes(loaded, gen)["api"]
        items, users = item_ids(loaded, rng), user_ids(loaded, rng)
        for endpoint in args.endpoints.split(","):
            requests = paths(endpoint, items, users)
            gen.run(mode="closed", url=loaded.api_url, paths=requests, seconds=1.0,
                    warmup_s=0.0, connections=4)
            raw, stacks = sampled(
                spy, api_pid, args.sample_rate, args.seconds,
                lambda requests=requests: gen.run(
                    mode="open", url=loaded.api_url, paths=requests, rate=args.rate,
                    seconds=args.seconds, connections=args.connections))
            point = {"rate": args.rate, "answered": len(raw["latency_ms"]),
                     "errors": raw["errors"], "latency_ms": summary_ms(
                         [v / 1e3 for v in raw["latency_ms"]]),
                     "profile": aggregate(stacks, args.top)}
            result["points"][endpoint] = point
            if args.stacks:
                (RESULTS / f"{args.out}_{endpoint}.stacks").write_text(stacks)
            show(console, endpoint, point)
    console.print(f"wrote {write_json(result, args.out + '.json')}")


if __name__ == "__main__":
    main()
