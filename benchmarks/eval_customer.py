"""Customer intelligence against what customers actually did next, on UCI Online Retail.

Run from the repo root: ``python -m benchmarks.eval_customer``. Writes
``benchmarks/results/customer_eval.json``.

Facts are built per customer from the orders before the calibration end (2011-09-09,
the clock), as the stream would keep them: purchase history bounded to
``FeatureSettings.history_max`` lines, newest first; spend net of cancellations; guest
orders skipped. The next 90 days are the holdout:

- churn: AUC of ``1 - p_alive`` for "no order in the holdout", next to plain recency and
  to BG/NBD's expected purchases; calibration by decile;
- replenishment: for (customer, item) pairs predicted to run out by the holdout's end and
  rebought in it, the error in days between the predicted date (the run-out, or the
  clock if already overdue) and the first rebuy; against a naive per-item median gap
  (pooled over all customers, no own history, no minimum of repeaters); coverage;
- segment sizes and lifecycle stages at the clock, with each group's holdout active rate.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from aisle.datasets import open_dataset
from aisle.settings import FeatureSettings
from models.customer import (
    build_profile,
    expected_purchases,
    fit_bgnbd,
    lifecycle_transitions,
    load_segment_rules,
    p_alive,
    population_cycles,
    replenishments,
    rfm_thresholds,
    rfm_values,
    rhythms,
)
from models.customer_types import CustomerFacts, PopulationStats, Purchase
from models.replenishment import trip_gaps_days
from streams.events import CatalogItemUpserted, OrderCancelled, OrderPlaced

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/online_retail/online_retail.csv.gz")
RESULT = ROOT / "benchmarks" / "results" / "customer_eval.json"
DAY = 86400.0
CAL_END = datetime(2011, 9, 9, tzinfo=UTC).timestamp()
HOLDOUT_DAYS = 90.0
UNIT_DAYS = 7.0
HISTORY_MAX = FeatureSettings().history_max
AFFINITY_HALF_LIFE_D = FeatureSettings().affinity_half_life_d
MIN_REPEATERS = 3
# "Due soon" as a reminder would use it: predicted within 14 days, rebought within 28.
DUE_SOON_DAYS = 14.0
SWEEP_METRICS = ("predicted_pairs", "precision", "recall_of_rebuys", "mae_days",
                 "due_soon_rebought_share")


@dataclass
class Log:
    """What the eval needs from the event stream, per customer."""

    orders: dict[str, list[tuple[str, float, list[Purchase]]]] = field(
        default_factory=lambda: defaultdict(list))
    cancels: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list))
    category: dict[str, str] = field(default_factory=dict)


def read_log(path: Path) -> tuple[Log, dict[str, object]]:
    events, stats = open_dataset(path)
    log = Log()
    for ev in events:
        if isinstance(ev, CatalogItemUpserted):
            log.category[ev.payload.item_id] = ev.payload.category
        elif isinstance(ev, OrderPlaced) and ev.user_id is not None:
            lines: dict[str, list[float]] = {}
            for li in ev.payload.lines:
                q_a = lines.setdefault(li.item_id, [0, 0.0])
                q_a[0] += li.quantity
                q_a[1] += li.quantity * li.unit_price
            purchases = [Purchase(ev.payload.order_id, item, ev.ts, int(q), round(a, 2),
                                  log.category.get(item)) for item, (q, a) in lines.items()]
            log.orders[ev.user_id].append((ev.payload.order_id, ev.ts, purchases))
        elif isinstance(ev, OrderCancelled) and ev.user_id is not None:
            amount = sum(li.quantity * li.unit_price for li in ev.payload.lines)
            log.cancels[ev.user_id].append((ev.ts, amount))
    return log, {"rows_read": stats.rows_read, "events": stats.events,
                 "guest_orders": stats.guest_orders}


def month(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def facts_at(user: str, log: Log, clock: float) -> CustomerFacts | None:
    orders = [o for o in log.orders.get(user, []) if o[1] < clock]
    if not orders:
        return None
    orders.sort(key=lambda o: o[1])
    cancels = [c for c in log.cancels.get(user, []) if c[0] < clock]
    spend: dict[str, float] = defaultdict(float)
    categories: dict[str, float] = defaultdict(float)
    lines: list[Purchase] = []
    for _, ts, purchases in orders:
        for p in purchases:
            spend[month(ts)] += p.amount
            categories[p.category or "unknown"] += 0.5 ** ((clock - ts) / DAY
                                                           / AFFINITY_HALF_LIFE_D)
            lines.append(p)
    for ts, amount in cancels:
        spend[month(ts)] -= amount
    times = [o[1] for o in orders] + [c[0] for c in cancels]
    return CustomerFacts(
        user_id=user, first_seen_ts=min(times), last_seen_ts=max(times),
        first_order_ts=orders[0][1], last_order_ts=orders[-1][1], orders=len(orders),
        monetary=round(sum(spend.values()), 2), purchases=tuple(reversed(lines))[:HISTORY_MAX],
        sources={"replay:online_retail": len(times)},
        spend_by_month={m: round(v, 2) for m, v in spend.items()},
        categories=dict(categories))


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties half (Mann-Whitney)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def deciles(key: np.ndarray, columns: dict[str, np.ndarray]) -> list[dict[str, float]]:
    order = np.argsort(key, kind="stable")
    return [{"n": len(part), **{name: round(float(col[part].mean()), 4)
                                for name, col in columns.items()}}
            for part in np.array_split(order, 10)]


def rebought_items(customers: list[CustomerFacts]) -> set[str]:
    """Items some customer bought on two trips or more (the store's ``rebuyers``)."""
    out: set[str] = set()
    for f in customers:
        by_item: dict[str, list[float]] = defaultdict(list)
        for p in f.purchases:
            by_item[p.item_id].append(p.ts)
        out.update(item for item, stamps in by_item.items() if trip_gaps_days(stamps))
    return out


def naive_item_medians(histories: list[tuple[Purchase, ...]]) -> dict[str, float]:
    gaps: dict[str, list[float]] = defaultdict(list)
    for purchases in histories:
        by_item: dict[str, list[float]] = defaultdict(list)
        for p in purchases:
            by_item[p.item_id].append(p.ts)
        for item, stamps in by_item.items():
            gaps[item].extend(trip_gaps_days(stamps))
    return {item: float(np.median(g)) for item, g in gaps.items() if g}


def evaluate_replenishment(customers: list[CustomerFacts], stats: PopulationStats,
                           repeat_items: set[str], log: Log,
                           max_overdue: float = 3.0) -> dict[str, object]:
    end = CAL_END + HOLDOUT_DAYS * DAY
    rebought: dict[tuple[str, str], float] = {}
    for f in customers:
        for _, ts, purchases in log.orders[f.user_id]:
            if CAL_END <= ts < end:
                for p in purchases:
                    key = (f.user_id, p.item_id)
                    rebought[key] = min(rebought.get(key, math.inf), ts)
    known = {(f.user_id, p.item_id) for f in customers for p in f.purchases}
    rebuys = {k for k in rebought if k in known}  # items bought before and again
    naive = naive_item_medians([f.purchases for f in customers])
    ours: dict[tuple[str, str], tuple[float, str]] = {}
    base: dict[tuple[str, str], float] = {}
    for f in customers:
        for r in replenishments(f, stats, CAL_END, HOLDOUT_DAYS, repeat_items, max_overdue):
            ours[(f.user_id, r.item_id)] = (max(r.runout_ts, CAL_END), r.basis)
        last: dict[str, float] = {}
        for p in f.purchases:
            last[p.item_id] = max(last.get(p.item_id, 0.0), p.ts)
        for item, ts in last.items():
            if item in naive:  # the same due and overdue rule, a naive interval
                runout = ts + naive[item] * DAY
                if runout <= end and CAL_END - runout <= max_overdue * naive[item] * DAY:
                    base[(f.user_id, item)] = max(runout, CAL_END)

    def signed(pred: dict[tuple[str, str], float], keys: set[tuple[str, str]]) -> np.ndarray:
        return np.array([(rebought[k] - pred[k]) / DAY for k in sorted(keys)])

    def summary(pred: dict[tuple[str, str], float]) -> dict[str, object]:
        hits = set(pred) & set(rebought)
        err = signed(pred, hits)
        mid = signed({k: CAL_END + HOLDOUT_DAYS / 2 * DAY for k in hits}, hits)
        soon = {k for k, v in pred.items() if v <= CAL_END + DUE_SOON_DAYS * DAY}
        soon_hits = {k for k in soon & set(rebought)
                     if rebought[k] < CAL_END + 2 * DUE_SOON_DAYS * DAY}
        return {"predicted_pairs": len(pred), "rebought_in_holdout": len(hits),
                "precision": round(len(hits) / max(len(pred), 1), 4),
                "recall_of_rebuys": round(len(hits & rebuys) / max(len(rebuys), 1), 4),
                "mae_days": round(float(np.abs(err).mean()), 2) if err.size else None,
                "median_abs_error_days": round(float(np.median(np.abs(err))), 2)
                if err.size else None,
                "bias_days": round(float(err.mean()), 2) if err.size else None,
                "mid_holdout_constant_mae_days": round(float(np.abs(mid).mean()), 2)
                if mid.size else None,
                "due_soon_pairs": len(soon),
                "due_soon_rebought_share": round(len(soon_hits) / max(len(soon), 1), 4)}

    def paired(keys: set[tuple[str, str]]) -> dict[str, object]:
        keys = keys & set(base) & set(rebought)
        return {"n": len(keys),
                "model_mae_days": round(float(np.abs(signed(our_dates, keys)).mean()), 2)
                if keys else None,
                "naive_mae_days": round(float(np.abs(signed(base, keys)).mean()), 2)
                if keys else None}

    our_dates = {k: v[0] for k, v in ours.items()}
    by_basis = {}
    for basis in ("customer", "population", "category"):
        keys = {k for k, v in ours.items() if v[1] == basis}
        by_basis[basis] = summary({k: our_dates[k] for k in keys}) | {
            "vs_naive_same_pairs": paired(keys)}
    return {"holdout_rebuy_pairs": len(rebuys), "model": summary(our_dates),
            "naive_item_median": summary(base), "by_basis": by_basis,
            "common_pairs": paired(set(our_dates)),
            "due_soon": f"predicted date within {DUE_SOON_DAYS:g} days of the clock; "
                        f"share rebought within {2 * DUE_SOON_DAYS:g} days"}


def main() -> None:
    started = time.perf_counter()
    log, replay = read_log(DATA)
    read_s = time.perf_counter() - started
    customers = [f for f in (facts_at(u, log, CAL_END) for u in sorted(log.orders)) if f]
    end = CAL_END + HOLDOUT_DAYS * DAY
    active = np.array([any(CAL_END <= ts < end for _, ts, _ in log.orders[f.user_id])
                       for f in customers])
    holdout_orders = np.array([sum(CAL_END <= ts < end for _, ts, _ in log.orders[f.user_id])
                               for f in customers], dtype=np.float64)

    t0 = time.perf_counter()
    thresholds = rfm_thresholds(*rfm_values(customers, CAL_END), as_of=CAL_END)
    x, t_x, big_t = rhythms(customers, CAL_END, UNIT_DAYS)
    params = fit_bgnbd(x, t_x, big_t, time_unit_days=UNIT_DAYS)
    fit_s = time.perf_counter() - t0
    items, cats = population_cycles((f.purchases for f in customers), MIN_REPEATERS)
    repeat_items = rebought_items(customers)
    stats = PopulationStats(rfm=thresholds, churn=params, item_cycle_days=items,
                            category_cycle_days=cats, as_of=CAL_END)
    stats_s = time.perf_counter() - t0

    alive = p_alive(params, x, t_x, big_t)
    expected = expected_purchases(params, HOLDOUT_DAYS / UNIT_DAYS, x, t_x, big_t)
    recency = np.array([(CAL_END - f.last_order_ts) / DAY for f in customers])  # type: ignore[operator]
    churned = ~active
    repeat = x > 0
    churn = {
        "customers": len(customers), "repeat_buyers": int(repeat.sum()),
        "holdout_active_rate": round(float(active.mean()), 4),
        "auc_all": {"one_minus_p_alive": round(auc(1 - alive, churned), 4),
                    "recency_days": round(auc(recency, churned), 4),
                    "minus_expected_purchases": round(auc(-expected, churned), 4)},
        "auc_repeat_buyers": {
            "one_minus_p_alive": round(auc(1 - alive[repeat], churned[repeat]), 4),
            "recency_days": round(auc(recency[repeat], churned[repeat]), 4),
            "minus_expected_purchases": round(auc(-expected[repeat], churned[repeat]), 4)},
        "auc_one_time_buyers": {
            "recency_days": round(auc(recency[~repeat], churned[~repeat]), 4),
            "minus_expected_purchases": round(auc(-expected[~repeat], churned[~repeat]), 4)},
        "calibration_p_alive_repeat_buyers": deciles(alive[repeat], {
            "mean_p_alive": alive[repeat], "active_rate": active[repeat].astype(float)}),
        "one_time_buyers": {"n": int((~repeat).sum()), "p_alive": 1.0,
                            "active_rate": round(float(active[~repeat].mean()), 4)},
        "calibration_expected_purchases": deciles(expected, {
            "mean_expected_orders": expected, "mean_actual_orders": holdout_orders,
            "active_rate": active.astype(float)}),
    }

    t1 = time.perf_counter()
    rules = load_segment_rules()
    profiles = [build_profile(f, stats, CAL_END, rules, repeat_items) for f in customers]
    profile_s = time.perf_counter() - t1

    def groups(names: list[str]) -> dict[str, dict[str, float]]:
        out = {}
        for name, n in sorted(Counter(names).items(), key=lambda kv: -kv[1]):
            mask = np.array([v == name for v in names])
            out[name] = {"customers": n, "share": round(n / len(names), 4),
                         "holdout_active_rate": round(float(active[mask].mean()), 4)}
        return out

    reactivated_ever = sum(any(s == "reactivated" for s, _ in
                               lifecycle_transitions(f, CAL_END, rules.lifecycle))
                           for f in customers)
    result = {
        "benchmark": "customer_eval",
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__},
        "data": {"file": str(DATA), **replay, "customers_at_clock": len(customers)},
        "clock": datetime.fromtimestamp(CAL_END, UTC).isoformat(),
        "holdout_days": HOLDOUT_DAYS, "history_max_lines": HISTORY_MAX,
        "bgnbd": {"r": round(params.r, 4), "alpha": round(params.alpha, 4),
                  "a": round(params.a, 4), "b": round(params.b, 4),
                  "time_unit_days": UNIT_DAYS},
        "rfm_thresholds": {"recency_days": thresholds.recency_days,
                           "frequency": thresholds.frequency, "monetary": thresholds.monetary},
        "population_cycles": {"items": len(items), "categories": len(cats),
                              "median_item_cycle_days": round(float(np.median(
                                  list(items.values()))), 1) if items else None,
                              "repeat_items": len(repeat_items)},
        "churn": churn,
        "replenishment": evaluate_replenishment(customers, stats, repeat_items, log,
                                                rules.profile.max_overdue_intervals),
        "replenishment_max_overdue_sweep": {
            f"{k:g}": {name: {m: v for m, v in s.items() if m in SWEEP_METRICS}
                       for name, s in (("model", r["model"]),
                                       ("naive_item_median", r["naive_item_median"]),
                                       ("basis_customer", r["by_basis"]["customer"]))}
            for k in (0.5, 1.0, 2.0)
            for r in [evaluate_replenishment(customers, stats, repeat_items, log, k)]},
        "segments": groups([p.segment for p in profiles]),
        "lifecycle": groups([p.lifecycle for p in profiles]),
        "lifecycle_reactivated_ever": reactivated_ever,
        "tiers": dict(Counter(p.tier.tier or "none" for p in profiles)),
        "price_bands": dict(Counter(p.price_band or "none" for p in profiles)),
        "timings_s": {"read_events": round(read_s, 2), "fit_bgnbd_and_rfm": round(fit_s, 3),
                      "population_stats": round(stats_s, 3),
                      "build_profile_all": round(profile_s, 3),
                      "build_profile_per_customer_ms": round(profile_s / len(profiles) * 1e3,
                                                             3)},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {RESULT}")


def print_table(result: dict) -> None:  # type: ignore[type-arg]
    churn, repl = result["churn"], result["replenishment"]
    print(f"clock {result['clock']}, holdout {result['holdout_days']:g} days, "
          f"{churn['customers']} customers ({churn['repeat_buyers']} repeat), "
          f"active in holdout {churn['holdout_active_rate']:.1%}")
    print(f"BG/NBD (weeks): {result['bgnbd']}")
    print(f"\n{'churn AUC':<28}{'1-p_alive':>11}{'recency':>11}{'-E[orders]':>12}")
    for name in ("auc_all", "auc_repeat_buyers", "auc_one_time_buyers"):
        row = churn[name]
        cells = [row.get(k) for k in ("one_minus_p_alive", "recency_days",
                                      "minus_expected_purchases")]
        print(f"{name:<28}" + "".join(f"{'-' if c is None else f'{c:.3f}':>11}" for c in cells))
    print("\np_alive deciles (repeat buyers): mean p_alive / active rate")
    print("  " + "  ".join(f"{d['mean_p_alive']:.2f}/{d['active_rate']:.2f}"
                           for d in churn["calibration_p_alive_repeat_buyers"]))
    print("E[orders in holdout] deciles: predicted / actual")
    print("  " + "  ".join(f"{d['mean_expected_orders']:.2f}/{d['mean_actual_orders']:.2f}"
                           for d in churn["calibration_expected_purchases"]))
    print(f"\n{'replenishment':<22}{'pairs':>8}{'rebought':>10}{'precision':>11}"
          f"{'recall':>9}{'MAE d':>8}{'MedAE d':>9}")
    rows = [("model", repl["model"]), ("naive item median", repl["naive_item_median"])]
    rows += [(f"  basis {k}", v) for k, v in repl["by_basis"].items()]
    for name, s in rows:
        mae = "-" if s["mae_days"] is None else f"{s['mae_days']:.1f}"
        med = "-" if s["median_abs_error_days"] is None else f"{s['median_abs_error_days']:.1f}"
        print(f"{name:<22}{s['predicted_pairs']:>8}{s['rebought_in_holdout']:>10}"
              f"{s['precision']:>11.3f}{s['recall_of_rebuys']:>9.3f}{mae:>8}{med:>9}")
    common = repl["common_pairs"]
    print(f"common pairs {common['n']}: model MAE {common['model_mae_days']} d, "
          f"naive MAE {common['naive_mae_days']} d; holdout rebuy pairs "
          f"{repl['holdout_rebuy_pairs']}")
    print(f"\n{'':<22}{'bias d':>8}{'mid-const MAE':>14}{'due soon':>10}{'rebought':>10}"
          f"{'same-pair naive MAE':>21}")
    for name, s in rows:
        same = s.get("vs_naive_same_pairs")
        vs = f"{same['naive_mae_days']} ({same['n']})" if same else "-"
        print(f"{name:<22}{s['bias_days']:>8}{s['mid_holdout_constant_mae_days']:>14}"
              f"{s['due_soon_pairs']:>10}{s['due_soon_rebought_share']:>10.1%}{vs:>21}")
    print("max overdue intervals (default 3 above): model precision / recall / MAE d / "
          "due-soon rebought")
    for k, v in result["replenishment_max_overdue_sweep"].items():
        m = v["model"]
        print(f"  {k:>4}: {m['precision']:.3f} / {m['recall_of_rebuys']:.3f} / "
              f"{m['mae_days']} / {m['due_soon_rebought_share']:.1%}")
    for title in ("segments", "lifecycle"):
        print(f"\n{title:<20}{'customers':>10}{'share':>8}{'active':>8}")
        for name, g in result[title].items():
            print(f"{name:<20}{g['customers']:>10}{g['share']:>8.1%}"
                  f"{g['holdout_active_rate']:>8.1%}")
    print(f"\ntiers {result['tiers']}; price bands {result['price_bands']}")
    print(f"timings {result['timings_s']}")


if __name__ == "__main__":
    main()
