"""What each kind of store op costs Valkey per event: the same folded batches applied
with the real script and with one op family made a no-op, alternately (diagnosis).

Run from the repo root: ``python -m benchmarks.store_ops_cost [--quick] [--runs N]
[--families zlog,session,...]``. Writes ``benchmarks/results/store_ops_cost.json``
(``store_ops_cost_quick.json``). Not in ``make bench``: it answers "where does Valkey's
time per event go", not a target.

The Taobao slice is folded once, as ``bench_store_malloc`` folds it (worker-sized shard
batches). One embedded Valkey (jemalloc when the machine has it, as ``aisle up``) then
applies all of them with ``RedisStore.apply_many`` into a flushed server, once per
variant per round, the variants interleaved in every round:

* ``script``: the real ``store.lua``;
* ``no <op>``: the same script with that opcode's body skipped (``OPS.<op>`` returns at
  once), so ``script - no <op>`` is what that family of ops costs, unpacked arguments
  and dispatch aside;
* ``no ops``: every opcode skipped: what is left is the script's own part (unpacking
  the batch, the offset watermark, the event-id dedupe, the loop);
* ``empty ops``: every event sent with an empty op list (its id, offset and time only):
  the part of ``no ops`` that does not depend on the ops' size.

Valkey's CPU seconds come from ``/proc``, per event applied; medians over rounds, and the
cost of a family is the median of its per-round differences (each round's variants ran
back to back, so a slow patch of the shared machine hits both sides of a difference).
A skipped family also changes what later ops find (a skipped ``hinc`` changes the spend
``xexpose`` reads), so the costs are close to additive, not exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aisle.runtime import allocator_of, start_store
from aisle.settings import Settings
from benchmarks.bench_foldin import write_result
from benchmarks.bench_ingest import QUICK_ROWS, machine_info, tree_state
from benchmarks.bench_store_malloc import apply_all, folded_batches
from feature_store.redis_store import SCRIPT, ShardBatch

console = Console()
RUNS = 3
#: The families worth pricing on the Taobao log (the others are rare there).
FAMILIES = ("zlog", "session", "catalog", "seen", "hinc", "zmaxn", "sadd", "xview")


def opcodes(script: str) -> list[str]:
    """Every opcode the script defines, in order."""
    return re.findall(r"^OPS\.(\w+) = function\(o\)", script, flags=re.MULTILINE)


def skipping(script: str, ops: list[str]) -> str:
    """``script`` with the bodies of ``ops`` skipped: each returns as soon as it is
    called. An opcode the script does not define is an error, not a silent no-op."""
    known = set(opcodes(script))
    unknown = [op for op in ops if op not in known]
    if unknown:
        raise ValueError(f"store.lua defines no opcode {', '.join(unknown)}")
    for op in ops:
        head = f"OPS.{op} = function(o)"
        script = script.replace(head, f"{head} do return end", 1)
    return script


def without_ops(batches: list[list[ShardBatch]]) -> list[list[ShardBatch]]:
    return [[(shard, source, [(eid, off, ts, []) for eid, off, ts, _ in events])
             for shard, source, events in batch] for batch in batches]


def variants(families: list[str]) -> dict[str, tuple[str, bool]]:
    """name -> (script, send the ops?)"""
    out = {"script": (SCRIPT, True)}
    for family in families:
        out[f"no {family}"] = (skipping(SCRIPT, family.split(",")), True)
    out["no ops"] = (skipping(SCRIPT, opcodes(SCRIPT)), True)
    out["empty ops"] = (skipping(SCRIPT, opcodes(SCRIPT)), False)
    return out


async def run(rows: int | None, runs: int, families: list[str], log_dir: Path,
              ) -> dict[str, Any]:
    settings = Settings(data_dir=log_dir)
    batches, events = folded_batches(settings, rows)
    bare = without_ops(batches)
    ops_per_event = sum(len(ops) for batch in batches for _, _, evs in batch
                        for _, _, _, ops in evs) / events
    chosen = variants(families)
    managed, url = start_store(log_dir / "valkey")
    malloc = allocator_of(managed.proc.pid)
    rows_out: list[dict[str, Any]] = []
    try:
        for rnd in range(1, runs + 1):
            for name, (script, with_ops) in chosen.items():
                row = await apply_all(url, settings, batches if with_ops else bare,
                                      managed.proc.pid, events, script)
                row.update(run=rnd, variant=name)
                rows_out.append(row)
                console.print(f"  round {rnd} {name:16s} Valkey "
                              f"{row['valkey_us_per_event']:6.2f} µs/event")
    finally:
        managed.stop()
    return {"events": events, "ops_per_event": round(ops_per_event, 2), "store_malloc": malloc,
            "runs": rows_out, "summary": summarize(rows_out, list(chosen))}


def summarize(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Median Valkey µs/event per variant, and per variant the median over rounds of
    (script - variant): what the skipped part costs."""
    by = {(r["run"], r["variant"]): r["valkey_us_per_event"] for r in rows}
    rounds = sorted({r["run"] for r in rows})
    out: dict[str, Any] = {}
    for name in names:
        mine = [by[rnd, name] for rnd in rounds if (rnd, name) in by]
        saved = [by[rnd, "script"] - by[rnd, name] for rnd in rounds
                 if (rnd, name) in by and (rnd, "script") in by]
        out[name] = {"valkey_us_per_event": round(statistics.median(mine), 2),
                     "min": min(mine), "max": max(mine),
                     "cost_us_per_event": (round(statistics.median(saved), 2)
                                           if name != "script" else None)}
    return out


def report(result: dict[str, Any]) -> None:
    s = result["summary"]
    table = Table(title=f"Valkey applying {result['events']:,} folded Taobao events "
                        f"({result['ops_per_event']} ops each), medians of "
                        f"{len({r['run'] for r in result['runs']})} rounds",
                  title_justify="left")
    for col in ("variant", "Valkey µs/event (min–max)", "cost: script − variant",
                "share of script"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    whole = s["script"]["valkey_us_per_event"]
    for name, row in s.items():
        cost = row["cost_us_per_event"]
        table.add_row(name, f"{row['valkey_us_per_event']:.1f} ({row['min']:.1f}–{row['max']:.1f})",
                      "" if cost is None else f"{cost:.1f}",
                      "" if cost is None else f"{100 * cost / whole:.0f}%")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} Taobao rows")
    parser.add_argument("--runs", type=int, default=RUNS, help="rounds of every variant")
    parser.add_argument("--families", default=" ".join(FAMILIES),
                        help="op families to price, space-separated; ops of one family "
                             "comma-separated (default: %(default)s)")
    args = parser.parse_args()
    families = args.families.split()
    skipping(SCRIPT, [op for f in families for op in f.split(",")])  # fail before folding
    tree = tree_state()
    with tempfile.TemporaryDirectory(prefix="aisle-store-ops-") as tmp:
        result = asyncio.run(run(QUICK_ROWS if args.quick else None, args.runs, families,
                                 Path(tmp)))
    result = {"benchmark": "store_ops_cost", "machine": machine_info(tree),
              "quick": args.quick, "method": __doc__.split("\n\n", 2)[2].strip(), **result}
    report(result)
    name = "store_ops_cost_quick.json" if args.quick else "store_ops_cost.json"
    console.print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
