"""The API's customer read over its pipelined connection vs redis-py's asyncio client.

Run from the repo root: ``python -m benchmarks.bench_store_client [--quick] [--rounds N]``.
Starts an embedded Valkey, writes one customer the size of Online Retail's median
customer (61 interactions and bought items, 34 purchase lines, 12 RFM fields), and
times, alternately in the same process and event loop (uvloop, as the API runs):

- ``PING`` and the customer read (``FeatureReader.customer``: one ``EVALSHA``, its reply
  parsed) through the client the API opens (``open_redis``: redis-py with commands
  packed by hiredis) — the baseline;
- the same through ``feature_store/multiplexed.py`` (``FeatureReader(fast=...)``);
- the customer's state alone (``FeatureReader.user``: a personalised related answer),
  a redis-py pipeline against the same reads as one transaction on the pipelined
  connection;
- the customer read's raw replies over the pipelined connection both ways: the script
  (``EVALSHA customer.lua``, session 11) and its commands as one ``MULTI``/``EXEC``
  (``Multiplexed.transaction``, what the reader sends since session 12);
- each one caller at a time and 16 callers at once (a loaded API's requests overlap).

Reports CPU µs per call of this process (``time.process_time``) and of the Valkey server
(``/proc``, 10 ms ticks), the median of the rounds, and checks that both paths read the
same customer and that the script and the transaction return the same replies. Writes
``benchmarks/results/store_client.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.table import Table

from aisle.runtime import start_store
from aisle.settings import Settings
from benchmarks.bench_foldin import write_result
from benchmarks.serving_report import machine
from feature_store.client import open_redis
from feature_store.keys import Keys
from feature_store.multiplexed import Multiplexed
from feature_store.reader import (
    CUSTOMER_KEYS,
    CUSTOMER_SCRIPT,
    FeatureReader,
    customer_commands,
)

USER = "c-median"


async def _write_customer(client: Any, keys: Keys) -> None:
    k = lambda s: keys.user(USER, s)  # noqa: E731
    items = [f"2{n:04d}" for n in range(61)]
    await client.zadd(k("ia"), {i: 1.0 + n / 7 for n, i in enumerate(items)})
    await client.hset(k("bought"), mapping={i: 1 + n % 4 for n, i in enumerate(items)})
    await client.zadd(k("views"), {i: 1.3e9 + n for n, i in enumerate(items[:5])})
    await client.hset(k("rfm"), mapping={f"f{n}": n * 1.5 for n in range(12)})
    await client.rpush(k("hist"), *[f'["O{n}","{items[n]}",3.5,2,{1.3e9 + n}]'
                                    for n in range(34)])
    await client.hset(k("spend"), mapping={"2011-10": 310.5, "2011-11": 120.0})
    await client.hset(k("src"), mapping={"web": 20})
    await client.zadd(k("cat"), {f"cat{n}": n for n in range(10)})


def _process_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_per_call(call: Callable[[], Awaitable[Any]], n: int, concurrency: int,
                        server: int) -> tuple[float, float]:
    """(this process's, the server's) CPU µs per call."""
    started, served = time.process_time(), _process_s(server)
    if concurrency == 1:
        for _ in range(n):
            await call()
    else:
        for _ in range(n // concurrency):
            await asyncio.gather(*(call() for _ in range(concurrency)))
    return ((time.process_time() - started) / n * 1e6,
            (_process_s(server) - served) / n * 1e6)


async def _run(url: str, server: int, rounds: int, n: int) -> dict[str, Any]:
    settings = Settings(redis_url=url)
    # As the API opens it (serving/app.py).
    client = open_redis(settings, socket_timeout=1.0, socket_connect_timeout=1.0,
                        max_connections=64)
    fast = Multiplexed.of(client)
    assert fast is not None
    keys = Keys("bench", 8)
    await _write_customer(client, keys)
    plain, over_fast = FeatureReader(client, keys), FeatureReader(client, keys, fast=fast)
    same = (await plain.customer(USER) == await over_fast.customer(USER)
            and await plain.user(USER) == await over_fast.user(USER))
    user_keys = [keys.user(USER, s) for s in CUSTOMER_KEYS]
    script = plain._customer_script
    same_replies = (await fast.evalsha(script.sha, CUSTOMER_SCRIPT, user_keys, [20])
                    == await fast.transaction(customer_commands(user_keys, 20)))
    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "PING, redis-py": client.ping,
        "PING, multiplexed": lambda: fast.execute("PING"),
        "customer read, redis-py": lambda: plain.customer(USER),
        "customer read, multiplexed": lambda: over_fast.customer(USER),
        "state alone (personalised related), redis-py": lambda: plain.user(USER),
        "state alone (personalised related), multiplexed": lambda: over_fast.user(USER),
        "raw customer replies, script": lambda: fast.evalsha(
            script.sha, CUSTOMER_SCRIPT, user_keys, [20]),
        "raw customer replies, transaction": lambda: fast.transaction(
            customer_commands(user_keys, 20)),
    }
    samples: dict[str, list[tuple[float, float]]] = {}
    for concurrency in (1, 16):
        for call in cases.values():
            await _cpu_per_call(call, n // 10, concurrency, server)  # warm
        for r in range(rounds):
            order = list(cases.items()) if r % 2 == 0 else list(cases.items())[::-1]
            for name, call in order:
                samples.setdefault(f"{name}, {concurrency} at once", []).append(
                    await _cpu_per_call(call, n, concurrency, server))
    await fast.close()
    await client.aclose()
    rows = {name: {"cpu_us_median": round(statistics.median(a for a, _ in v), 1),
                   "server_cpu_us_median": round(statistics.median(b for _, b in v), 1),
                   "cpu_us_rounds": [round(a, 1) for a, _ in v],
                   "server_cpu_us_rounds": [round(b, 1) for _, b in v]}
            for name, v in samples.items()}
    return {"same_customer": same, "script_and_transaction_same_replies": same_replies,
            "calls_per_round": n, "rounds": rounds, "cases": rows}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_store_client",
                                description=__doc__)
    p.add_argument("--quick", action="store_true", help="3 rounds of 1,000 calls")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 6)
    n = 1000 if args.quick else 4000
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="aisle-client-"))
    store, url = start_store(tmp)
    try:
        result = uvloop.run(_run(url, store.proc.pid, rounds, n))
    finally:
        store.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"benchmark": "store_client", "machine": machine(), **result}
    table = Table(title="CPU per call (µs, median of alternated rounds)")
    table.add_column("case")
    table.add_column("API µs", justify="right")
    table.add_column("Valkey µs", justify="right")
    table.add_column("API rounds")
    for name, row in result["cases"].items():
        table.add_row(name, f"{row['cpu_us_median']:.1f}", f"{row['server_cpu_us_median']:.1f}",
                      str(row["cpu_us_rounds"]))
    console.print(table)
    console.print(f"both paths read the same customer: {result['same_customer']}; the "
                  "script and the transaction return the same replies: "
                  f"{result['script_and_transaction_same_replies']}")
    console.print(f"wrote {write_result('store_client.json', result)}")


if __name__ == "__main__":
    main()
