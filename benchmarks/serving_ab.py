"""Serving code at a git commit against the working tree, in one process, alternated.

Run from the repo root: ``python -m benchmarks.serving_ab --ref COMMIT [--rounds 6]
[--concurrency 1] [--modules serving.service,serving.again,feature_store.reader]
[--data PATH]``. Starts the stack on Online Retail (``--data``: another dataset;
``serving_stack``) and builds the API's services in this process (``serving_profile``).
The named modules are also loaded as they were at ``--ref`` (``git show``), and each
round runs every customer through both versions (the service, reader and
customer-service objects switched between the two classes) in alternating order,
``--concurrency`` callers at once. Reports per answer the CPU of this process and of the
Valkey server (``/proc``), medians of the rounds, for recommendations and offers, and
checks that both versions give every customer the same recommendations (item, score,
reason) and the same offers decision (shown and issued: id, rule, items, expiry, reason;
nothing is issued here, so a customer a rule matches is decided afresh every time).
Writes ``benchmarks/results/<out>.json``.

A module not named keeps the working tree's code in both versions, so name every module
whose change is measured. Diagnosis for a change, not in ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import prometheus_client.registry
import uvloop
from rich.console import Console

from benchmarks.bench_foldin import write_result
from benchmarks.serving_cpu import _process_s as process_s
from benchmarks.serving_profile import _service
from benchmarks.serving_report import machine
from benchmarks.serving_stack import DATA, loaded_stack, user_ids

ROOT = Path(__file__).resolve().parent.parent
#: The object of the in-process API each module's class is switched on.
SWITCHED = {"serving.service": "service", "feature_store.reader": "reader",
            "serving.crm": "customers"}


def old_module(name: str, ref: str) -> types.ModuleType:
    """Module ``name`` as it was at ``ref``, loaded beside the current one."""
    path = name.replace(".", "/") + ".py"
    src = subprocess.check_output(["git", "show", f"{ref}:{path}"], text=True, cwd=ROOT)
    mod = types.ModuleType(f"{name}_at_{ref}")
    mod.__file__ = str(ROOT / path)
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    registry = prometheus_client.registry.REGISTRY
    register = registry.register
    registry.register = lambda collector: None  # type: ignore[method-assign]
    try:
        exec(compile(src, path, "exec"), mod.__dict__)  # noqa: S102 - our own code
    finally:
        registry.register = register  # type: ignore[method-assign]
    return mod


def old_modules(names: list[str], ref: str) -> dict[str, types.ModuleType]:
    """The modules at ``ref``, each seeing the others' old versions."""
    olds = {name: old_module(name, ref) for name in names}
    for mod in olds.values():
        for other, old in olds.items():
            for attr, value in list(mod.__dict__.items()):
                if getattr(value, "__module__", None) == other and hasattr(old, attr):
                    mod.__dict__[attr] = getattr(old, attr)
    return olds


def _process_s(pid: int) -> float:
    return process_s(pid) or 0.0  # Valkey's CPU seconds; 0 without /proc


async def _run(settings: Any, users: list[str], olds: dict[str, types.ModuleType],
               args: argparse.Namespace, server: int) -> dict[str, Any]:
    async with _service(settings) as (_, calls):
        recommend = calls["recommendations"]
        service = recommend.__closure__[0].cell_contents  # type: ignore[attr-defined]
        objects = {"service": service, "reader": service.reader,
                   "customers": service.customers}
        classes: dict[str, dict[Any, type]] = {"old": {}, "new": {}}
        for name, mod in olds.items():
            if name in SWITCHED:
                obj = objects[SWITCHED[name]]
                classes["new"][obj] = type(obj)
                classes["old"][obj] = getattr(mod, type(obj).__name__)

        def use(version: str) -> None:
            for obj, cls in classes[version].items():
                obj.__class__ = cls

        async def offers(user: str) -> Any:
            view = await service.customers.view(user)
            return await service.customers.decide(view)

        answers = {}
        for version in ("old", "new"):
            use(version)
            for user in users:
                await recommend(user)
            answers[version] = [[(x.item_id, x.score, x.reason)
                                 for x in (await recommend(user)).items] for user in users]
        same = sum(a == b for a, b in zip(answers["old"], answers["new"], strict=True))
        differing = [{"user": user, "old": a, "new": b} for user, a, b in
                     zip(users, answers["old"], answers["new"], strict=True) if a != b][:5]
        # Each customer's two decisions back to back: trending (the bestsellers and
        # gap closers) moves while the passes run, and one pass after the other
        # differed for 2 of 990 Online Retail customers with the same code twice.
        decisions: dict[str, list[Any]] = {"old": [], "new": []}
        for user in users:
            for version in ("old", "new"):
                use(version)
                decisions[version].append(_decision(await offers(user)))
        same_offers = sum(a == b for a, b in zip(decisions["old"], decisions["new"],
                                                 strict=True))
        issuing = sum(d[1] is not None for d in decisions["new"])
        offers_differing = [{"user": user, "old": a, "new": b} for user, a, b in
                            zip(users, decisions["old"], decisions["new"], strict=True)
                            if a != b][:5]
        cases = {"recommendations": recommend, "offers": offers}
        rows: dict[str, dict[str, list[float]]] = {}
        for r in range(args.rounds):
            for version in ("old", "new") if r % 2 else ("new", "old"):
                use(version)
                for case, call in cases.items():
                    queue = list(users)

                    async def caller(call: Any = call, queue: list[str] = queue) -> None:
                        while queue:
                            await call(queue.pop())

                    started, served = time.process_time(), _process_s(server)
                    await asyncio.gather(*(caller() for _ in range(args.concurrency)))
                    row = rows.setdefault(f"{case}, {version}", {"api_us": [], "valkey_us": []})
                    row["api_us"].append((time.process_time() - started) / len(users) * 1e6)
                    row["valkey_us"].append((_process_s(server) - served) / len(users) * 1e6)
        use("new")
    return {"same_answers": same, "customers": len(users), "differing": differing,
            "same_offer_decisions": same_offers, "offers_issued": issuing,
            "offers_differing": offers_differing, "cases": {
        name: {"api_us_median": round(statistics.median(v["api_us"]), 1),
               "valkey_us_median": round(statistics.median(v["valkey_us"]), 1),
               "api_us_rounds": [round(x, 1) for x in v["api_us"]],
               "valkey_us_rounds": [round(x, 1) for x in v["valkey_us"]]}
        for name, v in rows.items()}}


def _decision(decision: Any) -> tuple[list[tuple[Any, ...]], Any]:
    """An offers decision as comparable values: what is shown and what is issued."""
    def offer(o: Any) -> tuple[Any, ...]:
        return (o.offer_id, o.rule_id, o.items, o.expires_at, o.reason)

    return ([offer(o) for o in decision.show],
            None if decision.issue is None else offer(decision.issue))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving_ab",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", required=True, help="the commit to compare with")
    p.add_argument("--modules", default="serving.service,serving.again,feature_store.reader")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--data", type=Path, default=DATA, help="dataset to replay (Online Retail)")
    p.add_argument("--out", default="serving_ab")
    args = p.parse_args(argv)
    console = Console()
    olds = old_modules(args.modules.split(","), args.ref)
    with loaded_stack(args.data, None, console.log) as loaded:
        server = next(m.proc.pid for m in loaded.stack.embedded.processes
                      if "valkey" in m.name)
        users = user_ids(loaded, random.Random(7))
        result = uvloop.run(_run(loaded.stack.settings, users, olds, args, server))
    result = {"benchmark": "serving_ab", "machine": machine(),
              "settings": {**vars(args), "data": str(args.data)},
              **result}
    for name, row in result["cases"].items():
        console.print(f"{name:28s} API {row['api_us_median']:8.1f} µs  Valkey "
                      f"{row['valkey_us_median']:7.1f} µs  per answer")
    console.print(f"same recommendations: {result['same_answers']}/{result['customers']}; "
                  f"same offer decisions: {result['same_offer_decisions']}/"
                  f"{result['customers']} ({result['offers_issued']} issuing)")
    console.print(f"wrote {write_result(args.out + '.json', result)}")


if __name__ == "__main__":
    main()
