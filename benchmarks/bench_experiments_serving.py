"""What an experiment costs an answer: assignment + the exposure event, on real data.

Run from the repo root: ``python -m benchmarks.bench_experiments_serving [--data PATH]``.
Writes ``benchmarks/results/experiments_serving.json``.

One stack (broker, Valkey, worker, API) holds an Online Retail slice and a trained model.
One experiment owns half of its layer's buckets ([0, 5000)) and its two variants have no
parameters, so customers in it get the same work as the others *plus* assignment and
one awaited ``experiment.exposed`` send. Customers outside it are the baseline, in the
same run: requests alternate between the two groups, sequentially, so both see the same
machine. Afterwards the exposures the store counted are compared with the answers served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx

from benchmarks.common import cpu_model
from benchmarks.serving_stack import DATA, loaded_stack, user_ids
from models.assignment import in_layer_range
from streams import events as ev
from streams.topics import EventProducer

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "experiments_serving.json"
XID = "bench-overhead"


async def _create(settings: object) -> None:
    spec = ev.ExperimentSpec(id=XID, surfaces=["recommendations"], layer="bench",
                             layer_range=(0, 5000),
                             variants=[ev.Variant(name="a", weight=1),
                                       ev.Variant(name="b", weight=1)])
    async with EventProducer(settings) as producer:  # type: ignore[arg-type]
        await producer.send_events([ev.ExperimentCreated(
            event_id=f"bench-{time.time_ns()}", occurred_at=datetime.now(UTC), payload=spec)])


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--rows", type=int, default=80_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with loaded_stack(args.data, args.rows, print) as loaded:
        asyncio.run(_create(loaded.stack.settings))
        rng = random.Random(1)
        users = [u for u in user_ids(loaded, rng, known=600) if not u.startswith("bench-new")]
        inside = [u for u in users if in_layer_range("bench", u, 0, 5000)]
        outside = [u for u in users if not in_layer_range("bench", u, 0, 5000)]
        n = min(len(inside), len(outside))
        lat: dict[str, list[float]] = {"in": [], "out": []}
        served_in = 0
        with httpx.Client(base_url=loaded.api_url, timeout=10) as client:
            deadline = time.monotonic() + 60
            while not client.get(f"/v1/users/{quote(inside[0])}/recommendations"
                                 ).json()["experiments"]:
                if time.monotonic() > deadline:
                    raise TimeoutError("the experiment did not reach the API")
                time.sleep(0.2)
            served_in += 1
            for _ in range(args.rounds):
                for a, b in zip(inside[:n], outside[:n], strict=True):
                    for group, user in (("in", a), ("out", b)):
                        t = time.perf_counter()
                        body = client.get(f"/v1/users/{quote(user)}/recommendations").json()
                        lat[group].append((time.perf_counter() - t) * 1000)
                        assert bool(body["experiments"]) == (group == "in")
                        served_in += group == "in"
            deadline = time.monotonic() + 120
            logged = 0
            while time.monotonic() < deadline:
                doc = client.get(f"/v1/experiments/{XID}/results").json()
                logged = sum(v["exposures"] for v in doc["variants"])
                if logged >= served_in:
                    break
                time.sleep(0.5)
        result = {
            "benchmark": "experiments_serving", "rows": args.rows, "rounds": args.rounds,
            "requests_per_group": len(lat["in"]),
            "latency_ms": {g: {"median": round(statistics.median(v), 2),
                               "p95": round(_pct(v, 0.95), 2), "mean": round(
                                   statistics.fmean(v), 2)} for g, v in lat.items()},
            "answers_in_experiment": served_in, "exposures_counted": logged,
            "srm": doc["srm"], "machine": {"cpu": cpu_model()},
        }
        result["overhead_ms_median"] = round(result["latency_ms"]["in"]["median"]
                                             - result["latency_ms"]["out"]["median"], 2)
    OUT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
