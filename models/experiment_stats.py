"""Experiment results from the streamed sums: metrics, lift with 95% intervals, the
sample-ratio check, guardrails and CUPED. Pure functions; no I/O.

The store keeps, per (variant, day), sums over customers: ``users``, ``exp`` (exposures),
``clk``, ``cart``, ``conv`` (customers with an attributed order), ``ord``, ``rev`` and the
sums of squares and products ``e2 c2 ec o2 r2 ro`` of the per-customer counts, plus the
pre-period spend ``x x2 rx`` (RFM monetary at first exposure). The customer is the unit
of randomisation, so every variance is computed over customers:

* conversion, revenue per user: means over customers (a proportion; Welch's standard
  error of a mean);
* CTR (clicks / exposures) and AOV (revenue / orders): ratios of two per-customer sums,
  with the delta method (their numerator and denominator vary together per customer);
* lift = treatment / control − 1, its standard error by the delta method on the ratio
  of two independent estimates; 95% interval = ± 1.96 se (normal, scipy.stats);
* CUPED (revenue per user): ``y − θ(x − x̄)`` with θ = cov(y, x)/var(x) pooled over
  variants, x = spend before the first exposure; same mean, smaller variance when the
  pre-period predicts the outcome.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

Z95 = float(stats.norm.ppf(0.975))
SRM_ALPHA = 0.001  # the usual threshold: a real mismatch is a bug, not bad luck
FIELDS = ("users", "x", "x2", "exp", "e2", "clk", "c2", "ec", "cart", "conv", "ord", "o2",
          "rev", "r2", "rx", "ro", "moved")
METRICS = ("ctr", "conversion", "revenue_per_user", "aov")


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float | None
    var: float | None  # variance of the estimate

    @property
    def ci95(self) -> tuple[float, float] | None:
        if self.value is None or self.var is None:
            return None
        half = Z95 * math.sqrt(max(self.var, 0.0))
        return self.value - half, self.value + half


PerDay = dict[str, dict[str, dict[str, float]]]  # variant -> day -> field -> sum


def parse_fields(raw: Iterable[tuple[str, float]], into: PerDay | None = None) -> PerDay:
    """Stored fields ``variant|day|metric`` → nested sums (per-shard partials add up)."""
    out: PerDay = into if into is not None else {}
    for field, value in raw:
        variant, day, metric = field.rsplit("|", 2)
        cell = out.setdefault(variant, {}).setdefault(day, {})
        cell[metric] = cell.get(metric, 0.0) + float(value)
    return out


def totals(per_day: PerDay, until: str | None = None) -> dict[str, dict[str, float]]:
    """Sums per variant over all days (or up to and including ``until``)."""
    out: dict[str, dict[str, float]] = {}
    for variant, days in per_day.items():
        t = out.setdefault(variant, dict.fromkeys(FIELDS, 0.0))
        for day, cell in days.items():
            if until is None or day <= until:
                for k, v in cell.items():
                    t[k] = t.get(k, 0.0) + v
    return out


def _var(n: float, s: float, s2: float) -> float:
    """Sample variance from a count, a sum and a sum of squares."""
    if n < 2:
        return math.nan
    return max((s2 - s * s / n) / (n - 1), 0.0)


def _cov(n: float, sa: float, sb: float, sab: float) -> float:
    return (sab - sa * sb / n) / (n - 1) if n >= 2 else math.nan


def mean_estimate(n: float, s: float, s2: float) -> Estimate:
    if n <= 0:
        return Estimate(None, None)
    v = _var(n, s, s2)
    return Estimate(s / n, None if math.isnan(v) else v / n)


def ratio_estimate(n: float, sy: float, sy2: float, sx: float, sx2: float,
                   sxy: float) -> Estimate:
    """Σy/Σx over customers, with the delta-method variance."""
    if n <= 0 or sx <= 0:
        return Estimate(None, None)
    r = sy / sx
    if n < 2:
        return Estimate(r, None)
    mx = sx / n
    var = (_var(n, sy, sy2) - 2 * r * _cov(n, sy, sx, sxy) + r * r * _var(n, sx, sx2))
    return Estimate(r, max(var, 0.0) / (n * mx * mx))


def metric(t: Mapping[str, float], name: str) -> Estimate:
    n = t.get("users", 0.0)
    match name:
        case "ctr":
            return ratio_estimate(n, t["clk"], t["c2"], t["exp"], t["e2"], t["ec"])
        case "conversion":
            return mean_estimate(n, t["conv"], t["conv"])  # 0/1 per customer: Σy² = Σy
        case "revenue_per_user":
            return mean_estimate(n, t["rev"], t["r2"])
        case "aov":
            return ratio_estimate(n, t["rev"], t["r2"], t["ord"], t["o2"], t["ro"])
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")


def lift(treat: Estimate, control: Estimate) -> dict[str, Any] | None:
    """Relative lift of ``treat`` over ``control`` with a 95% interval and a p-value."""
    t, c = treat.value, control.value
    if t is None or c is None or c == 0 or treat.var is None or control.var is None:
        return None
    rel = t / c - 1
    se_rel = math.sqrt(treat.var / c**2 + t**2 * control.var / c**4)
    se_abs = math.sqrt(treat.var + control.var)
    p = 2 * float(stats.norm.sf(abs(t - c) / se_abs)) if se_abs > 0 else None
    return {"relative": _f(rel), "ci95": [_f(rel - Z95 * se_rel), _f(rel + Z95 * se_rel)],
            "absolute": _f(t - c), "abs_ci95": [_f(t - c - Z95 * se_abs),
                                                _f(t - c + Z95 * se_abs)],
            "p_value": _f(p), "significant": p is not None and p < 0.05}


def cuped_revenue(tot: Mapping[str, Mapping[str, float]]) -> dict[str, Estimate]:
    """Revenue per user adjusted by pre-period spend (θ pooled over variants)."""
    pool = {k: sum(t[k] for t in tot.values()) for k in ("users", "x", "x2", "rev", "rx")}
    n = pool["users"]
    vx = _var(n, pool["x"], pool["x2"])
    if n < 2 or not vx > 0:
        return {}
    theta = _cov(n, pool["rev"], pool["x"], pool["rx"]) / vx
    mean_x = pool["x"] / n
    out = {}
    for variant, t in tot.items():
        m = t["users"]
        if m < 2:
            continue
        vy, vxx = _var(m, t["rev"], t["r2"]), _var(m, t["x"], t["x2"])
        cxy = _cov(m, t["rev"], t["x"], t["rx"])
        adj = t["rev"] / m - theta * (t["x"] / m - mean_x)
        out[variant] = Estimate(adj, max(vy - 2 * theta * cxy + theta**2 * vxx, 0.0) / m)
    return out


def srm_check(users: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, Any]:
    """Chi-square test of the observed split against the configured weights."""
    names = [v for v in weights]
    observed = [users.get(v, 0.0) for v in names]
    total, wsum = sum(observed), sum(weights.values())
    expected = [total * weights[v] / wsum for v in names]
    if total == 0 or min(expected) < 5:
        return {"p_value": None, "ok": True, "observed": dict(zip(names, observed, strict=True)),
                "expected": dict(zip(names, expected, strict=True)),
                "warning": "too few users to check the split yet"}
    p = float(stats.chisquare(observed, expected).pvalue)
    ok = p >= SRM_ALPHA
    share = ", ".join(f"{v} {o / total:.1%} (expected {e / total:.1%})"
                      for v, o, e in zip(names, observed, expected, strict=True))
    warning = None if ok else (
        f"SAMPLE RATIO MISMATCH (chi-square p={p:.2g} < {SRM_ALPHA}): users split {share}. "
        "Assignment, targeting or exposure logging is broken for some variant; do not "
        "trust these results until the cause is found.")
    return {"p_value": _f(p), "ok": ok, "observed": dict(zip(names, observed, strict=True)),
            "expected": {v: _f(e) for v, e in zip(names, expected, strict=True)},
            "warning": warning}


def guardrail_checks(tot: Mapping[str, Mapping[str, float]], control: str,
                     guardrails: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    """``violated``: the metric is down by more than allowed with 95% confidence (the
    interval's upper end is below −max_drop); ``warning``: the point estimate is."""
    out = []
    for name, max_drop in guardrails:
        for variant, t in tot.items():
            if variant == control or control not in tot:
                continue
            d = lift(metric(t, name), metric(tot[control], name))
            limit = -max_drop / 100
            status = ("unknown" if d is None
                      else "violated" if d["ci95"][1] is not None and d["ci95"][1] < limit
                      else "warning" if d["relative"] is not None and d["relative"] < limit
                      else "ok")
            out.append({"metric": name, "variant": variant, "max_drop_pct": max_drop,
                        "relative": d["relative"] if d else None,
                        "ci95": d["ci95"] if d else None, "status": status,
                        "ok": status != "violated"})
    return out


def results(experiment: str, per_day: PerDay, weights: Mapping[str, float], control: str,
            primary: str, guardrails: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """The results document of ``GET /v1/experiments/{id}/results``."""
    tot = totals(per_day)
    for v in weights:
        tot.setdefault(v, dict.fromkeys(FIELDS, 0.0))
    cuped = cuped_revenue(tot)
    variants = []
    for v in weights:
        t = tot[v]
        est = {m: metric(t, m) for m in METRICS}
        lifts = ({m: lift(est[m], metric(tot[control], m)) for m in METRICS}
                 if v != control else {})
        row: dict[str, Any] = {
            "variant": v, "weight": weights[v], "control": v == control,
            "users": int(t["users"]), "exposures": int(t["exp"]), "clicks": int(t["clk"]),
            "carts": int(t["cart"]), "converted": int(t["conv"]), "orders": int(t["ord"]),
            "revenue": _f(round(t["rev"], 2)), "moved": int(t["moved"]),
            **{m: _f(est[m].value) for m in METRICS},
            "ci95": {m: _pair(est[m].ci95) for m in METRICS},
            "lift": lifts.get(primary), "lifts": lifts,
        }
        if v in cuped:
            row["revenue_per_user_cuped"] = _f(cuped[v].value)
            if v != control and control in cuped:
                row["lift_cuped"] = lift(cuped[v], cuped[control])
        variants.append(row)
    extra = sorted(set(tot) - set(weights))  # variants since removed from the definition
    return {"experiment": experiment, "control": control, "primary_metric": primary,
            "variants": variants, "removed_variants": extra,
            "srm": srm_check({v: tot[v]["users"] for v in weights}, weights),
            "guardrails": guardrail_checks({v: tot[v] for v in weights}, control, guardrails)}


def series(per_day: PerDay, variants: Sequence[str]) -> list[dict[str, Any]]:
    """Cumulative metrics with 95% intervals at the end of each day (for the plot)."""
    days = sorted({d for v in per_day.values() for d in v})
    out = []
    for day in days:
        tot = totals(per_day, until=day)
        row: dict[str, Any] = {"day": day, "variants": {}}
        for v in variants:
            t = tot.get(v, dict.fromkeys(FIELDS, 0.0))
            row["variants"][v] = {m: {"value": _f(metric(t, m).value),
                                      "ci95": _pair(metric(t, m).ci95)} for m in METRICS}
            row["variants"][v]["users"] = int(t["users"])
        out.append(row)
    return out


def _f(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _pair(p: tuple[float, float] | None) -> list[float | None] | None:
    return None if p is None else [_f(p[0]), _f(p[1])]
