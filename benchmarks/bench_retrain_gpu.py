"""GPU retrain cost: ``implicit``'s CUDA ALS (the ``model.device = gpu`` path) vs its CPU ALS.

Run from the repo root on a machine with an NVIDIA GPU, implicit's CUDA build and RAPIDS'
rmm (``pip install implicit 'rmm-cu13==26.4.*'``; rmm 26.10 breaks implicit 0.7.3):
``python -m benchmarks.bench_retrain_gpu``.
Writes ``benchmarks/results/retrain_gpu.json`` (``--out`` to write elsewhere). Where
implicit has no CUDA it says so and exits 0 having written nothing.

Matrices, each fitted in the same run on both sides:

* Online Retail, built the project's way (``bench_foldin.online_retail``: customers ×
  stock codes, weight = number of invoices; ``--data`` names the csv.gz where
  ``shared/data`` is not beside the repo);
* synthetic scale-ups (``--scales``, users × items): per-customer history lengths
  log-normal with mean ``--per-user`` (20), items drawn by a Zipf-like popularity
  ``1 / (rank + 10)^0.9`` over shuffled ids, weights a view/cart/purchase mix
  (1 / 3 / 10) decayed by a 30-day half-life over 180 days; repeats of an item sum.

Per matrix and per k (64 and the settings' default), with the settings' regularization,
alpha, iterations and seed:

* CPU: ``implicit.cpu.als`` configured exactly as ``models.als.fit_als`` runs it (BLAS
  pinned to one thread, implicit's OpenMP on all cores), with a callback timing each
  iteration. On the larger scales only ``--cpu-iterations`` iterations are run (the
  per-iteration cost is what is compared; the JSON says how many ran);
* GPU, the project's path: ``models.als.fit_als(device="gpu")`` end to end (host
  transpose, upload, ``iterations`` sweeps, factors back to numpy), timed whole;
* GPU, per iteration: ``implicit.gpu.als`` with the same parameters and a callback that
  synchronises the device before each timestamp. Fitted on ``alpha * weights`` with
  ``alpha = 1``, the confidence the CPU side trains on (see "alpha" below).

Checks (``checks`` in the JSON; each can fail):

* ``gpu_ignores_alpha``: implicit 0.7.3's GPU ``fit`` never applies ``alpha`` (its CPU
  ``fit`` multiplies the matrix by it). Two GPU fits, same seed, ``alpha`` 0.54 and 1.0,
  bit-identical factors show it;
* ``loss``: the implicit-ALS objective (``Σ_obs c(1-s)² + Σ_unobs s² + λ(|X|²+|Y|²)``,
  ``c = alpha * w``, normalised as implicit does) of each factor set, computed here in
  numpy. Pass: the GPU fit on the CPU's confidences is within 2 % of the CPU fit;
* ``recall@20`` on Online Retail with one held-out item per customer (≥ 5 items):
  CPU, CPU with another seed, GPU (project path), GPU (alpha applied). Pass: GPU with
  alpha applied within 0.02 of the CPU;
* top-20 overlap (seen items excluded) between CPU and GPU factors, beside the overlap
  between two GPU fits that differ only in their seed (how much seeds alone move it).

The stored ``results/retrain_gpu.json`` was taken before ``models.als`` applied alpha
itself for the GPU: in it ``gpu_project_path`` is that old, alpha-less path and
``gpu_alpha_applied`` is what ``fit_als(device="gpu")`` does since. ``results/
retrain_gpu_h200.json`` (an H200, session 22) is the first run of that path itself.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "retrain_gpu.json"
LOSS_TOLERANCE = 0.02
RECALL_TOLERANCE = 0.02
TOP_N = 20


# -- setup ---------------------------------------------------------------------------

def cuda_status() -> tuple[bool, str]:
    """Whether implicit can train on a GPU here, and why not."""
    try:
        from models.als import _cuda
    except ImportError as err:  # implicit (or the project's deps) not installed at all
        return False, f"cannot import models.als: {err}"
    return _cuda()


def model_defaults() -> tuple[dict[str, Any], str]:
    """``ModelSettings``' factors, regularization, iterations, alpha and seed.

    Imported where pydantic is installed; otherwise read from ``aisle/settings.py``'s
    source (the GPU machine has no pydantic), so the numbers are the settings' own.
    """
    names = ("factors", "regularization", "iterations", "alpha", "seed")
    try:
        from aisle.settings import ModelSettings

        m = ModelSettings()
        return {n: getattr(m, n) for n in names}, "aisle.settings.ModelSettings()"
    except ImportError:
        pass
    tree = ast.parse((ROOT / "aisle" / "settings.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelSettings")
    out: dict[str, Any] = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id in names and node.value is not None:
            value = node.value
            if isinstance(value, ast.Call):  # Field(96, ge=..., le=...)
                value = value.args[0]
            out[node.target.id] = ast.literal_eval(value)
    missing = set(names) - set(out)
    if missing:
        raise RuntimeError(f"could not read {sorted(missing)} from aisle/settings.py")
    return out, "aisle/settings.py source (ast; pydantic not installed)"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("implicit", "rmm-cu13", "librmm-cu13", "rapids-logger", "numpy", "scipy",
                 "cupy-cuda13x", "cuda-bindings", "threadpoolctl"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def gpu_info() -> dict[str, Any]:
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True,
                           timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return {"nvidia_smi": f"unavailable: {err}"}
    return {"nvidia_smi": q}


def sync() -> None:
    """Wait for the GPU (implicit's kernels run on the device's streams)."""
    import cupy

    cupy.cuda.runtime.deviceSynchronize()


# -- matrices ------------------------------------------------------------------------

def synthetic(n_users: int, n_items: int, per_user: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    sigma = 1.0
    counts = rng.lognormal(np.log(per_user) - sigma**2 / 2, sigma, n_users)
    counts = np.clip(np.rint(counts), 1, max(1, n_items // 20)).astype(np.int64)
    n = int(counts.sum())
    rank_weight = 1.0 / (np.arange(n_items) + 10.0) ** 0.9
    cdf = np.cumsum(rank_weight)
    cdf /= cdf[-1]
    ids = rng.permutation(n_items).astype(np.int32)  # popularity is not the id order
    cols = ids[np.minimum(np.searchsorted(cdf, rng.random(n)), n_items - 1)]
    rows = np.repeat(np.arange(n_users, dtype=np.int32), counts)
    event = rng.choice(np.array([1.0, 3.0, 10.0]), n, p=[0.7, 0.15, 0.15])
    weights = (event * 0.5 ** (rng.random(n) * 180 / 30)).astype(np.float32)
    m = sp.csr_matrix((weights, (rows, cols)), shape=(n_users, n_items), dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    return m


def holdout(m: sp.csr_matrix, min_items: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray,
                                                                  np.ndarray]:
    """Remove one random item from every user with ≥ ``min_items``: (train, users, items)."""
    rng = np.random.default_rng(seed)
    m = m.tocsr(copy=True)
    lengths = np.diff(m.indptr)
    users = np.flatnonzero(lengths >= min_items)
    pos = m.indptr[users] + (rng.random(len(users)) * lengths[users]).astype(np.int64)
    items = m.indices[pos].copy()
    m.data[pos] = 0.0
    m.eliminate_zeros()
    return m, users, items


# -- quality -------------------------------------------------------------------------

def als_loss(m: sp.csr_matrix, alpha: float, reg: float, x: np.ndarray, y: np.ndarray) -> float:
    """implicit's objective for confidence ``alpha * w``, normalised as implicit does."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    total = float(np.sum((x64.T @ x64) * (y64.T @ y64)))  # Σ over all (u, i) of s²
    coo = m.tocoo()
    step = 2_000_000
    for start in range(0, coo.nnz, step):
        r, c = coo.row[start:start + step], coo.col[start:start + step]
        s = np.einsum("ij,ij->i", x[r], y[c], dtype=np.float64)
        conf = alpha * coo.data[start:start + step].astype(np.float64)
        total += float(np.sum(conf * (1.0 - s) ** 2 - s**2))
    total += reg * (float(np.sum(x64**2)) + float(np.sum(y64**2)))
    n_u, n_i = m.shape
    return total / (alpha * float(m.data.sum()) + n_u * n_i - m.nnz)


def top_n(m: sp.csr_matrix, x: np.ndarray, y: np.ndarray, users: np.ndarray,
          n: int = TOP_N) -> np.ndarray:
    """Top-n items (seen ones excluded) for ``users``: (len(users), n), unordered."""
    out = np.empty((len(users), n), dtype=np.int64)
    step = max(1, 50_000_000 // max(1, y.shape[0]))
    for start in range(0, len(users), step):
        u = users[start:start + step]
        scores = x[u] @ y.T
        seen = m[u]
        scores[np.repeat(np.arange(len(u)), np.diff(seen.indptr)), seen.indices] = -np.inf
        out[start:start + len(u)] = np.argpartition(-scores, n, axis=1)[:, :n]
    return out


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    shared = [len(np.intersect1d(p, q)) for p, q in zip(a, b, strict=True)]
    return float(np.mean(shared)) / a.shape[1]


def recall(tops: np.ndarray, held: np.ndarray) -> float:
    return float(np.mean(np.any(tops == held[:, None], axis=1)))


# -- fits ----------------------------------------------------------------------------

def cpu_fit(m: sp.csr_matrix, p: dict[str, Any], factors: int, iterations: int,
            seed: int | None = None, num_threads: int = 0,
            ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """implicit's CPU ALS as ``models.als.fit_als`` runs it, with per-iteration times."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    stamps: list[float] = []
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors, regularization=p["regularization"], alpha=p["alpha"],
            dtype=np.float32, iterations=iterations, calculate_training_loss=False,
            num_threads=num_threads, random_state=p["seed"] if seed is None else seed)
        start = time.perf_counter()
        model.fit(m, show_progress=False, callback=lambda *_: stamps.append(time.perf_counter()))
        total = time.perf_counter() - start
    return (timing(start, stamps, total, iterations),
            np.ascontiguousarray(model.user_factors, dtype=np.float32),
            np.ascontiguousarray(model.item_factors, dtype=np.float32))


def gpu_fit_project(m: sp.csr_matrix, p: dict[str, Any], factors: int,
                    ) -> tuple[float, np.ndarray, np.ndarray]:
    """The project's path, whole: ``fit_als(device="gpu")``."""
    from models.als import ALSParams, fit_als
    from models.matrix import Interactions

    inter = Interactions([], [], m)  # fit_als reads only .matrix
    params = ALSParams(factors=factors, regularization=p["regularization"],
                       iterations=p["iterations"], alpha=p["alpha"], seed=p["seed"])
    sync()
    start = time.perf_counter()
    users, items = fit_als(inter, params, device="gpu")
    return time.perf_counter() - start, users, items


def gpu_fit_direct(m: sp.csr_matrix, p: dict[str, Any], factors: int, iterations: int,
                   alpha: float, prescale: float, seed: int | None = None,
                   ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """implicit.gpu ALS on ``prescale * m`` with ``alpha``, per-iteration synced times."""
    from implicit.gpu.als import AlternatingLeastSquares as GpuALS

    data = m if prescale == 1.0 else (m * np.float32(prescale)).astype(np.float32)
    stamps: list[float] = []

    def tick(*_: object) -> None:
        sync()
        stamps.append(time.perf_counter())

    model = GpuALS(factors=factors, regularization=p["regularization"], alpha=alpha,
                   dtype=np.float32, iterations=iterations, calculate_training_loss=False,
                   random_state=p["seed"] if seed is None else seed)
    sync()
    start = time.perf_counter()
    model.fit(data, show_progress=False, callback=tick)
    cpu = model.to_cpu()
    total = time.perf_counter() - start
    out = (timing(start, stamps, total, iterations),
           np.ascontiguousarray(cpu.user_factors, dtype=np.float32),
           np.ascontiguousarray(cpu.item_factors, dtype=np.float32))
    del model
    return out


def timing(start: float, stamps: list[float], total: float, iterations: int) -> dict[str, Any]:
    """Per-iteration seconds: the gaps between callbacks (the first from the fit's start,
    so it carries the transpose, the init and, on the GPU, the upload); the median over
    iterations 2.. is the steady cost of one sweep."""
    gaps = np.diff(np.array([start, *stamps]))
    steady = gaps[1:] if len(gaps) > 1 else gaps
    per_iter = float(np.median(steady))
    return {"iterations": iterations, "total_s": round(total, 4),
            "per_iteration_s": round(per_iter, 5),
            "first_iteration_s": round(float(gaps[0]), 4),
            "setup_and_copy_back_s": round(total - per_iter * iterations, 4),
            "iteration_s": [round(float(g), 5) for g in gaps]}


# -- the run -------------------------------------------------------------------------

class Run:
    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.started, self.budget_s = out, time.perf_counter(), budget_s
        self.result: dict[str, Any] = {"benchmark": "retrain_gpu", "complete": False,
                                       "matrices": {}, "checks": {}, "skipped": []}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=2) + "\n")

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {msg}", flush=True)


def measure_matrix(run: Run, name: str, m: sp.csr_matrix, p: dict[str, Any], ks: list[int],
                   cpu_iterations: int, quality: bool) -> None:
    entry: dict[str, Any] = {"users": m.shape[0], "items": m.shape[1], "nnz": int(m.nnz),
                             "cpu_iterations_run": cpu_iterations, "by_k": {}}
    run.result["matrices"][name] = entry
    sample = np.random.default_rng(1).choice(m.shape[0], min(2000, m.shape[0]), replace=False)
    for k in ks:
        row: dict[str, Any] = {}
        entry["by_k"][str(k)] = row
        row["gpu_project_fit_als_s"], gu, gi = gpu_fit_project(m, p, k)
        run.log(f"{name} k={k}: GPU fit_als(device='gpu') {row['gpu_project_fit_als_s']:.2f}s")
        row["gpu"], au, ai = gpu_fit_direct(m, p, k, p["iterations"], 1.0, p["alpha"])
        run.log(f"{name} k={k}: GPU per iteration {row['gpu']['per_iteration_s']:.4f}s")
        row["cpu"], cu, ci = cpu_fit(m, p, k, cpu_iterations)
        run.log(f"{name} k={k}: CPU per iteration {row['cpu']['per_iteration_s']:.4f}s "
                f"({cpu_iterations} iterations, total {row['cpu']['total_s']:.2f}s)")
        row["speedup_per_iteration"] = round(
            row["cpu"]["per_iteration_s"] / row["gpu"]["per_iteration_s"], 2)
        if quality and cpu_iterations == p["iterations"]:
            _, su, si = gpu_fit_direct(m, p, k, p["iterations"], 1.0, p["alpha"],
                                       seed=p["seed"] + 1)
            loss = {"cpu": als_loss(m, p["alpha"], p["regularization"], cu, ci),
                    "gpu_alpha_applied": als_loss(m, p["alpha"], p["regularization"], au, ai),
                    "gpu_project_path": als_loss(m, p["alpha"], p["regularization"], gu, gi)}
            rel = loss["gpu_alpha_applied"] / loss["cpu"] - 1.0
            tops = {n: top_n(m, u, i, sample) for n, (u, i) in
                    {"cpu": (cu, ci), "gpu": (au, ai), "gpu_seed2": (su, si),
                     "gpu_project": (gu, gi)}.items()}
            row["quality"] = {
                "loss": {n: round(v, 6) for n, v in loss.items()},
                "loss_gpu_vs_cpu_rel": round(rel, 5),
                "loss_pass": bool(abs(rel) <= LOSS_TOLERANCE),
                "top20_overlap_users": len(sample),
                "top20_overlap_cpu_vs_gpu": round(overlap(tops["cpu"], tops["gpu"]), 4),
                "top20_overlap_gpu_vs_gpu_seed2": round(overlap(tops["gpu"], tops["gpu_seed2"]), 4),
                "top20_overlap_cpu_vs_gpu_project": round(
                    overlap(tops["cpu"], tops["gpu_project"]), 4),
            }
            run.log(f"{name} k={k}: quality {row['quality']}")
        run.save()


def online_retail_checks(run: Run, m: sp.csr_matrix, p: dict[str, Any]) -> None:
    k = p["factors"]
    # implicit's GPU fit and alpha: same seed, alpha 0.54 vs 1.0.
    _, u1, i1 = gpu_fit_direct(m, p, k, 3, p["alpha"], 1.0)
    _, u2, i2 = gpu_fit_direct(m, p, k, 3, 1.0, 1.0)
    same = bool(np.array_equal(u1, u2) and np.array_equal(i1, i2))
    run.result["checks"]["gpu_ignores_alpha"] = {
        "what": f"implicit.gpu ALS, same seed, alpha={p['alpha']} vs alpha=1.0, 3 iterations",
        "factors_bit_identical": same}
    run.log(f"implicit.gpu ignores alpha in fit: {same}")
    # Held-out recall.
    train, users, held = holdout(m, 5, seed=0)
    fits = {
        "cpu": cpu_fit(train, p, k, p["iterations"])[1:],
        "cpu_seed2": cpu_fit(train, p, k, p["iterations"], seed=p["seed"] + 1)[1:],
        "gpu_project_path": gpu_fit_project(train, p, k)[1:],
        "gpu_alpha_applied": gpu_fit_direct(train, p, k, p["iterations"], 1.0, p["alpha"])[1:],
        "gpu_alpha_applied_seed2": gpu_fit_direct(train, p, k, p["iterations"], 1.0,
                                                  p["alpha"], seed=p["seed"] + 1)[1:],
    }
    rec = {n: round(recall(top_n(train, u, i, users), held), 4) for n, (u, i) in fits.items()}
    run.result["checks"]["online_retail_recall_at_20"] = {
        "held_out_users": len(users), "k": k, "recall": rec,
        "pass": bool(rec["gpu_alpha_applied"] >= rec["cpu"] - RECALL_TOLERANCE),
        "tolerance": RECALL_TOLERANCE}
    run.log(f"recall@20: {rec}")
    run.save()


def thread_scaling(run: Run, m: sp.csr_matrix, p: dict[str, Any]) -> None:
    """CPU seconds per iteration on Online Retail by implicit thread count (how the CPU
    side scales on this machine), and what BLAS looks like inside the fit's limits."""
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(1, "blas"):
        blas = [{k: i.get(k) for k in ("internal_api", "num_threads", "version")}
                for i in threadpool_info() if i.get("user_api") == "blas"]
    out = {}
    for n in (1, 2, 4, 8, 16):
        if n <= (os.cpu_count() or 1):
            out[str(n)] = cpu_fit(m, p, p["factors"], p["iterations"], num_threads=n)[0][
                "per_iteration_s"]
    run.result["cpu_thread_scaling_online_retail"] = {
        "k": p["factors"], "per_iteration_s_by_threads": out, "blas_inside_limits": blas}
    run.log(f"CPU thread scaling (Online Retail, k={p['factors']}): {out}; BLAS {blas}")
    run.save()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="Online Retail csv.gz (default: shared/data beside the repo)")
    ap.add_argument("--scales", default="1000000x100000",
                    help="comma-separated USERSxITEMS synthetic matrices ('' for none)")
    ap.add_argument("--per-user", type=float, default=20.0)
    ap.add_argument("--ks", default="64,default", help="factors to run ('default' = settings')")
    ap.add_argument("--cpu-iterations", type=int, default=3,
                    help="CPU iterations on synthetic scales above --full-cpu-nnz")
    ap.add_argument("--full-cpu-nnz", type=int, default=30_000_000,
                    help="synthetic matrices up to this many non-zeros get full CPU fits")
    ap.add_argument("--budget-s", type=float, default=float("inf"),
                    help="skip a synthetic scale when less than this much time is left")
    ap.add_argument("--thread-scaling", action="store_true",
                    help="also time the CPU fit on Online Retail at 1-16 threads")
    ap.add_argument("--out", type=Path, default=RESULT)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ok, why = cuda_status()
    if not ok:
        print(f"bench_retrain_gpu: no GPU training here ({why}); nothing measured, nothing "
              "written. It needs an NVIDIA GPU, implicit's CUDA build and rmm "
              "(pip install 'rmm-cu13==26.4.*').")
        return 0
    from benchmarks.bench_foldin import DATA, online_retail
    from benchmarks.common import cpu_model
    from models.als import resolve_device

    defaults, source = model_defaults()
    ks = sorted({defaults["factors"] if k == "default" else int(k)
                 for k in args.ks.split(",")})
    run = Run(args.out, args.budget_s)
    run.result.update({
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), **gpu_info()},
        "versions": versions(), "resolve_device_auto": resolve_device("auto"),
        "params": defaults, "params_source": source, "ks": ks,
        "command": " ".join([sys.executable, "-m", "benchmarks.bench_retrain_gpu",
                             *(argv if argv is not None else sys.argv[1:])])})
    run.log(f"{run.result['machine']} {run.result['versions']}")
    # Warm-up: CUDA context, cuBLAS handle, rmm (not timed).
    warm = synthetic(2000, 500, 10, seed=9)
    gpu_fit_direct(warm, defaults, ks[0], 2, 1.0, 1.0)
    cpu_fit(warm, defaults, ks[0], 2)

    started = time.perf_counter()
    retail = online_retail(args.data or DATA).matrix
    run.result["online_retail_build_s"] = round(time.perf_counter() - started, 2)
    run.log(f"Online Retail {retail.shape}, nnz {retail.nnz}")
    online_retail_checks(run, retail, defaults)
    if args.thread_scaling:
        thread_scaling(run, retail, defaults)
    measure_matrix(run, "online_retail", retail, defaults, ks, defaults["iterations"], True)

    for scale in filter(None, args.scales.split(",")):
        if run.left() <= 0:
            run.result["skipped"].append(scale)
            run.log(f"skipped {scale}: out of budget")
            continue
        n_users, n_items = (int(v) for v in scale.lower().split("x"))
        started = time.perf_counter()
        m = synthetic(n_users, n_items, args.per_user, seed=7)
        gen = time.perf_counter() - started
        full = m.nnz <= args.full_cpu_nnz
        name = f"synthetic_{scale}"
        run.log(f"{name}: nnz {m.nnz} built in {gen:.1f}s")
        measure_matrix(run, name, m, defaults, ks,
                       defaults["iterations"] if full else args.cpu_iterations, quality=full)
        run.result["matrices"][name]["generate_s"] = round(gen, 1)
        del m
        run.save()

    checks = run.result["checks"]
    quality_rows = [r["quality"] for mx in run.result["matrices"].values()
                    for r in mx["by_k"].values() if "quality" in r]
    checks["all_loss_within_tolerance"] = all(q["loss_pass"] for q in quality_rows)
    checks["loss_tolerance"] = LOSS_TOLERANCE
    run.result["complete"] = True
    run.save()
    run.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
