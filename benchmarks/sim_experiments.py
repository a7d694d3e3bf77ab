"""A/B experiments simulated on real Online Retail customers, through the real folds and
the memory twin of store.lua (the same ops the workers run; the contract test keeps the
two stores equal).

Run from the repo root: ``python -m benchmarks.sim_experiments [--quick] [--data PATH]``.
Writes ``benchmarks/results/experiments_sim.json``.

Customers are the 4,300-odd Online Retail customers. Their orders before 2011-06-01 are
their pre-period spend (one order each, so RFM monetary holds it at first exposure; the
CUPED covariate). From then on, every real order is preceded by a recommendation answer
(an exposure, an hour before) and each customer gets 1 + Poisson(3) more answers at
random times; each answer is clicked with probability 8%. Variant ``b`` of the *lift*
experiment truly does better: clicks ×1.10 and every order's amount ×1.10 (conversion
unchanged). The split is the engine's assignment (sha256 of salt and customer). 5% of all
events are delivered twice, as Kafka redelivery would.

* lift: R runs with different salts: the detected lift and its 95% interval, how often
  the interval covers the true lift and how often the lift is detected (p < 0.05);
  CUPED's interval next to the plain one;
* A/A: R runs through the pipeline where both variants behave the same, and 1,000
  re-randomisations of the per-customer outcomes one of them left in the store (new salts,
  the same metric code): the false-positive rate per metric (should be about 5%);
* broken split: variant ``b`` loses the exposures of 3%, 6%, 10%, 20% of its customers (a
  logging bug); the SRM check (p < 0.001) says so from some loss on, and stays quiet on
  the intact split and the A/A runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from aisle.datasets.online_retail import read_events
from aisle.datasets.stats import ReplayStats
from aisle.settings import Settings
from benchmarks.common import cpu_model
from feature_store.keys import Keys
from feature_store.memory_store import MemoryStore
from feature_store.updates import Folder
from models import experiment_stats as xs
from models.assignment import bucket, variant_for
from streams import events as ev

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv.gz"
OUT = ROOT / "benchmarks" / "results" / "experiments_sim.json"
SPLIT = datetime(2011, 6, 1, tzinfo=UTC).timestamp()
END = datetime(2011, 12, 10, tzinfo=UTC).timestamp()
BASE_CTR = 0.08
TRUE_LIFT = 0.10
WEIGHTS = [("a", 1.0), ("b", 1.0)]
METRICS = ("ctr", "conversion", "revenue_per_user")
BATCH = 10_000


@dataclass
class Customer:
    user_id: str
    pre_spend: float
    orders: list[tuple[float, float]]  # (ts, amount) from SPLIT on


def load_customers(path: Path) -> list[Customer]:
    pre: dict[str, float] = defaultdict(float)
    post: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in read_events(path, ReplayStats("online_retail")):
        if isinstance(e, ev.OrderPlaced) and e.user_id:
            amount = round(sum(li.quantity * li.unit_price for li in e.payload.lines), 2)
            if amount <= 0:
                continue
            if e.ts < SPLIT:
                pre[e.user_id] += amount
            else:
                post[e.user_id].append((e.ts, amount))
    users = sorted(set(pre) | set(post))
    return [Customer(u, round(pre.get(u, 0.0), 2), sorted(post.get(u, []))) for u in users]


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def customer_events(c: Customer, variant: str, run: int, lift: float,
                    drop: bool) -> list[ev.AnyEvent]:
    """One customer's simulated history. ``lift`` applies to clicks and order amounts;
    ``drop``: this customer's exposures are lost (the broken-split scenario)."""
    rng = random.Random(f"{run}:{c.user_id}")
    out: list[ev.AnyEvent] = []
    u = c.user_id
    if c.pre_spend > 0:
        out.append(ev.OrderPlaced(event_id=f"pre-{u}", user_id=u, occurred_at=_at(SPLIT - 86400),
                                  payload=ev.Order(order_id=f"pre-{u}", lines=[ev.OrderLine(
                                      item_id="pre", quantity=1, unit_price=c.pre_spend)])))
    times = [ts - 3600 for ts, _ in c.orders]
    times += [rng.uniform(SPLIT, END) for _ in range(1 + int(np.random.default_rng(
        rng.randrange(2**32)).poisson(3.0)))]
    for n, ts in enumerate(sorted(times)):
        rid = f"r{run}-{u}-{n}"
        if not drop:
            out.append(ev.ExperimentExposed(
                event_id=f"x-{rid}-sim", user_id=u, occurred_at=_at(ts),
                payload=ev.Exposure(request_id=rid, experiment="sim", variant=variant,
                                    surface="recommendations", items=["i1"])))
        if rng.random() < BASE_CTR * (1 + lift):
            out.append(ev.ProductViewed(event_id=f"v-{rid}", user_id=u, occurred_at=_at(ts + 60),
                                        payload=ev.ItemRef(item_id="i1", request_id=rid)))
    for n, (ts, amount) in enumerate(c.orders):
        out.append(ev.OrderPlaced(
            event_id=f"o-{u}-{n}", user_id=u, occurred_at=_at(ts),
            payload=ev.Order(order_id=f"o-{u}-{n}", lines=[ev.OrderLine(
                item_id="i1", quantity=1, unit_price=round(amount * (1 + lift), 2))])))
    return out


def run_once(customers: list[Customer], run: int, lift: float, broken: float = 0.0,
             duplicates: float = 0.05) -> dict[str, Any]:
    """One experiment through folds + store; returns the results document."""
    return _run(customers, run, lift, broken, duplicates)[0]


def _run(customers: list[Customer], run: int, lift: float, broken: float = 0.0,
         duplicates: float = 0.05) -> tuple[dict[str, Any], MemoryStore, Keys]:
    """``broken``: the share of variant b's customers whose exposures are lost."""
    settings = Settings()
    keys = Keys("sim", 8)
    folder = Folder(keys, settings.features, settings.model)
    store = MemoryStore(keys, settings.features.dedupe_window_s)
    salt = f"sim-{run}"
    events: list[ev.AnyEvent] = []
    rng = random.Random(run)
    for c in customers:
        variant = variant_for(WEIGHTS, bucket(salt, c.user_id))
        drop = variant == "b" and rng.random() < broken
        events += customer_events(c, variant, run, lift if variant == "b" else 0.0, drop)
    events.sort(key=lambda e: e.ts)
    offset = 0
    for start in range(0, len(events), BATCH):  # batches per shard, as the workers apply
        batches: dict[int, list[Any]] = defaultdict(list)
        for e in events[start:start + BATCH]:
            ops = folder.fold(e)
            for _ in range(2 if rng.random() < duplicates else 1):
                offset += 1  # a redelivery arrives at a later offset
                batches[folder.shard(e)].append((e.event_id, offset, e.ts, ops))
        for shard, batch in batches.items():
            store.apply(shard, "sim/0", batch)
    per_day: xs.PerDay = {}
    for shard in range(keys.shards):
        xs.parse_fields(store.data.get(keys.experiment_stats(shard, "sim"), {}).items(),
                        per_day)
    doc = xs.results("sim", per_day, dict(WEIGHTS), "a", "ctr", [("revenue_per_user", 5.0)])
    return doc, store, keys


def customer_rows(store: MemoryStore, keys: Keys, customers: list[Customer]) -> np.ndarray:
    """Per-customer (exposures, clicks, orders, revenue) the opcodes kept for experiment
    ``sim`` (its ``u:<id>:xp`` hashes)."""
    rows = []
    for c in customers:
        xp = store.data.get(keys.user(c.user_id, "xp"), {})
        if "sim|v" in xp:
            rows.append([float(xp.get(f"sim|{f}", 0.0)) for f in "ecor"])
    return np.array(rows)


def rerandomised_aa(rows: np.ndarray, ids: list[str], runs: int) -> dict[str, Any]:
    """A/A by re-splitting the same simulated customers with ``runs`` new salts (the
    engine's assignment), metrics by the same functions as the results endpoint."""
    e, c, o, r = rows.T
    hits = dict.fromkeys(METRICS, 0)
    for n in range(runs):
        in_b = np.array([variant_for(WEIGHTS, bucket(f"aa-{n}", u)) == "b" for u in ids])
        tot = {}
        for name, m in (("a", ~in_b), ("b", in_b)):
            t = dict.fromkeys(xs.FIELDS, 0.0)
            t.update(users=float(m.sum()), exp=e[m].sum(), e2=(e[m] ** 2).sum(),
                     clk=c[m].sum(), c2=(c[m] ** 2).sum(), ec=(e[m] * c[m]).sum(),
                     conv=float((o[m] > 0).sum()), ord=o[m].sum(), o2=(o[m] ** 2).sum(),
                     rev=r[m].sum(), r2=(r[m] ** 2).sum(), ro=(r[m] * o[m]).sum())
            tot[name] = t
        for metric in METRICS:
            d = xs.lift(xs.metric(tot["b"], metric), xs.metric(tot["a"], metric))
            hits[metric] += bool(d and d["significant"])
    return {"runs": runs, "false_positive_rate": {m: hits[m] / runs for m in METRICS},
            "false_positive_ci95": {m: _rate_ci(hits[m], runs) for m in METRICS}}


def _b(doc: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in doc["variants"] if v["variant"] == "b")


def _rate_ci(k: int, n: int) -> list[float]:
    ci = stats.binomtest(k, n).proportion_ci(0.95)
    return [round(ci.low, 4), round(ci.high, 4)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeated runs")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--lift-runs", type=int, default=10)
    ap.add_argument("--aa-runs", type=int, default=20)
    ap.add_argument("--rerandomisations", type=int, default=1000)
    args = ap.parse_args()
    lift_runs, aa_runs = (3, 5) if args.quick else (args.lift_runs, args.aa_runs)
    started = time.perf_counter()
    customers = load_customers(args.data)
    print(f"{len(customers)} customers, "
          f"{sum(len(c.orders) for c in customers)} orders after the split")

    # One run with and one without redeliveries: attribution must not count twice.
    t0 = time.perf_counter()
    first = run_once(customers, 0, TRUE_LIFT)
    per_run_s = time.perf_counter() - t0
    clean = run_once(customers, 0, TRUE_LIFT, duplicates=0.0)
    assert first["variants"] == clean["variants"], "redelivered events changed the results"

    lifts = [first] + [run_once(customers, r, TRUE_LIFT) for r in range(1, lift_runs)]
    summary: dict[str, Any] = {}
    for m in ("ctr", "revenue_per_user"):
        ds = [_b(d)["lifts"][m] for d in lifts]
        summary[m] = {
            "true_lift": TRUE_LIFT,
            "first_run": {"relative": ds[0]["relative"], "ci95": ds[0]["ci95"],
                          "p_value": ds[0]["p_value"]},
            "mean_detected": float(np.mean([d["relative"] for d in ds])),
            "coverage": sum(d["ci95"][0] <= TRUE_LIFT <= d["ci95"][1] for d in ds) / len(ds),
            "power": sum(d["significant"] for d in ds) / len(ds),
            "mean_ci_width": float(np.mean([d["ci95"][1] - d["ci95"][0] for d in ds])),
        }
    cuped = [_b(d)["lift_cuped"] for d in lifts if _b(d).get("lift_cuped")]
    summary["revenue_per_user_cuped"] = {
        "first_run": {"relative": cuped[0]["relative"], "ci95": cuped[0]["ci95"]},
        "mean_ci_width": float(np.mean([d["ci95"][1] - d["ci95"][0] for d in cuped])),
        "coverage": sum(d["ci95"][0] <= TRUE_LIFT <= d["ci95"][1] for d in cuped) / len(cuped),
        "power": sum(d["significant"] for d in cuped) / len(cuped)}
    summary["conversion_true_lift_0"] = {
        "significant_share": sum(_b(d)["lifts"]["conversion"]["significant"]
                                 for d in lifts) / len(lifts)}

    aa_full = [_run(customers, 1000 + r, 0.0) for r in range(aa_runs)]
    aa = [d for d, _, _ in aa_full]
    _, store, keys = aa_full[0]
    rows = customer_rows(store, keys, customers)
    ids = [c.user_id for c in customers
           if "sim|v" in store.data.get(keys.user(c.user_id, "xp"), {})]
    rerand = rerandomised_aa(rows, ids, args.rerandomisations)
    fp = {m: sum(_b(d)["lifts"][m]["significant"] for d in aa) for m in METRICS}
    any_fp = sum(any(_b(d)["lifts"][m]["significant"] for m in METRICS) for d in aa)
    srm_false_alarms = sum(not d["srm"]["ok"] for d in aa)

    broken = {share: run_once(customers, 7, TRUE_LIFT, broken=share)
              for share in (0.03, 0.06, 0.10, 0.20)}
    result = {
        "benchmark": "experiments_sim", "data": str(args.data.name),
        "customers": len(customers), "per_variant_users": {
            v["variant"]: v["users"] for v in first["variants"]},
        "exposures": sum(v["exposures"] for v in first["variants"]),
        "lift_runs": lift_runs, "aa_runs": aa_runs, "duplicates_share": 0.05,
        "redelivery_changed_results": False,
        "lift": summary,
        "example_variant_b": {k: _b(first)[k] for k in (
            "users", "exposures", "clicks", "orders", "ctr", "conversion", "revenue_per_user",
            "aov")},
        "aa": {"false_positive_rate": {m: fp[m] / aa_runs for m in METRICS},
               "false_positive_ci95": {m: _rate_ci(fp[m], aa_runs) for m in METRICS},
               "any_metric_false_positive_rate": any_fp / aa_runs,
               "srm_false_alarms": srm_false_alarms,
               "rerandomised": rerand},
        "broken_split": {f"b_loses_{share:.0%}": {
            "srm_p": d["srm"]["p_value"], "caught": not d["srm"]["ok"],
            "warning": d["srm"]["warning"],
            "users": {v["variant"]: v["users"] for v in d["variants"]}}
            for share, d in broken.items()},
        "intact_split_srm": first["srm"],
        "seconds_per_run": round(per_run_s, 2),
        "seconds_total": round(time.perf_counter() - started, 1),
        "machine": {"cpu": cpu_model(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("lift", "aa", "broken_split")}, indent=1))
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
