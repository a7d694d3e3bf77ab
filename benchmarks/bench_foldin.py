"""Fold-in cost per user: ``FoldIn.solve`` vs implicit's own user solve, on Online Retail.

Run from the repo root: ``python -m benchmarks.bench_foldin``. Writes
``benchmarks/results/foldin.json``. The matrix: customers × products, weight = number of
invoices (not cancellations) in which the customer bought the product.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import implicit
import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from benchmarks.common import cpu_model, shared_data
from models.als import ALSParams, FoldIn, fit_als
from models.matrix import Interactions, build_interactions

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data(ROOT) / "online_retail" / "online_retail.csv.gz"
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE_USERS = 1000


def purchase_rows(path: Path = DATA) -> Iterator[tuple[str, str, str]]:
    """(customer, stock code, invoice) of every bought line with a known customer."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            customer = row["CustomerID"].strip().removesuffix(".0")
            if (customer and not row["InvoiceNo"].startswith("C")
                    and float(row["Quantity"]) > 0):
                yield customer, row["StockCode"].strip(), row["InvoiceNo"]


def online_retail(path: Path = DATA) -> Interactions:
    # A set of (customer, item, invoice): an item on two lines of one invoice counts once.
    seen = set(purchase_rows(path))
    return build_interactions((user, item, 1.0) for user, item, _ in seen)


def machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
            "numpy": np.__version__, "implicit": implicit.__version__}



def write_result(name: str, result: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _histories(m: sp.csr_matrix, users: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.indices[m.indptr[u]:m.indptr[u + 1]], m.data[m.indptr[u]:m.indptr[u + 1]])
            for u in users]


def _us_per_user(fn, users: int, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    """Best of ``repeat`` runs (the least disturbed by the machine), µs per user."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) / users * 1e6)
    return round(min(runs), 2)


def bench_group(name: str, users: np.ndarray, inter: Interactions, fold: FoldIn,
                model: AlternatingLeastSquares) -> dict[str, object]:
    m = inter.matrix
    hists = _histories(m, users)
    rows = [m[int(u)] for u in users]  # one-row CSRs, as a streaming caller would build
    batch = m[users]
    ours = fold.solve_many(hists)
    theirs = model.recalculate_user(np.arange(len(users)), batch)
    model.num_threads = 1
    single = _us_per_user(lambda: [model.recalculate_user(0, r) for r in rows], len(users))
    model.num_threads = 0
    result = {
        "users": len(users),
        "median_items": float(statistics.median(len(i) for i, _ in hists)),
        "foldin_solve_us": _us_per_user(lambda: [fold.solve(i, w) for i, w in hists], len(users)),
        "foldin_solve_many_us": _us_per_user(lambda: fold.solve_many(hists), len(users)),
        "implicit_recalculate_user_single_us": single,
        "implicit_recalculate_user_batch_us": _us_per_user(
            lambda: model.recalculate_user(np.arange(len(users)), batch), len(users)),
        "max_abs_diff_vs_implicit": float(np.abs(ours - theirs).max()),
        "max_abs_factor": float(np.abs(theirs).max()),
    }
    print(f"{name:>10}: " + ", ".join(f"{k}={v}" for k, v in result.items()))
    return result


def main() -> None:
    inter = online_retail()
    params = ALSParams()
    print(f"matrix {inter.matrix.shape}, nnz {inter.matrix.nnz}; fitting k={params.factors}")
    _, items = fit_als(inter, params)
    fold = FoldIn(items, params.regularization, params.alpha)
    counts = np.diff(inter.matrix.indptr)
    rng = np.random.default_rng(0)
    groups = {
        "all": rng.choice(len(counts), SAMPLE_USERS, replace=False),
        "15-25": rng.permutation(np.flatnonzero((counts >= 15) & (counts <= 25)))[:SAMPLE_USERS],
    }
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=params.factors,
                                        regularization=params.regularization,
                                        alpha=params.alpha, random_state=params.seed)
        model.item_factors = items
        timings = {name: bench_group(name, np.sort(users), inter, fold, model)
                   for name, users in groups.items()}
    result = {"benchmark": "foldin", "machine": machine(), "blas_threads": 1,
              "matrix": {"users": inter.matrix.shape[0], "items": inter.matrix.shape[1],
                         "nnz": int(inter.matrix.nnz)},
              "params": vars(params), "groups": timings,
              "notes": "us per user, best of 3; implicit single = recalculate_user per user "
                       "(one-row CSR, num_threads=1); batch = one call for all users "
                       "(its OpenMP threads, all cores)"}
    print(f"wrote {write_result('foldin.json', result)}")


if __name__ == "__main__":
    main()
