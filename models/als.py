"""Implicit-feedback ALS: training via ``implicit``, per-user fold-in, item-item similarity.

Conventions are implicit 0.7.3's own, so a folded-in user equals the user ``implicit``
would solve (``AlternatingLeastSquares.recalculate_user``):

* the CSR data implicit sees is the *confidence* ``C = alpha * weight`` (not the
  ``1 + alpha * w`` of Hu, Koren & Volinsky 2008): unobserved items have confidence 1,
  an observed item confidence ``alpha * w``, preference ``p = 1`` (``p = 0`` and
  confidence ``|C|`` for a negative entry);
* the ridge term is a plain ``regularization * I``, not scaled by the user's number of
  interactions (no ALS-WR "weighted lambda");

so the user solve is ``x = (YᵀY + Y_Iᵀ (C_I - 1) Y_I + λI)⁻¹ Y_Iᵀ C_I``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg.lapack as lapack
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from models.matrix import Interactions
from models.scoring import top_k_rows

# similar_items scores a block of rows at a time: at most this many bytes of scores
# (peak memory about 3x that) and at most this many rows. Measured on 2 cores at 3.7k-60k
# items: 64-256-row blocks are within noise of each other, 512+ rows get slower (the block
# leaves the cache), and ~20-row blocks too (each re-reads all factors for little work).
SIMILAR_BLOCK_BYTES = 64 << 20
SIMILAR_BLOCK_ROWS = 128
# FoldIn.solve_many: histories up to this many items are solved stacked (Woodbury), at
# most this many customers per stack (a stack of 32-item histories at k = 96 holds
# 512 x 32 x 96 float64 twice: 25 MB).
STACKED_MAX_ITEMS = 32
STACK_USERS = 512
# A history's stack width: its length rounded up to a power of two (0 for none).
_PADDED = np.array([0, *(1 << (n - 1).bit_length() for n in range(1, STACKED_MAX_ITEMS + 1)), 0])


@dataclass
class ALSParams:
    factors: int = 64
    regularization: float = 0.05
    iterations: int = 15
    alpha: float = 4.0
    seed: int = 42


def fit_als(inter: Interactions, params: ALSParams, *, num_threads: int = 0,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Train on ``inter`` (weights, not confidences): ``(user_factors, item_factors)``.

    ``num_threads`` is implicit's own OpenMP pool (0 = all cores). BLAS is pinned to one
    thread: implicit calls it per user from each of its threads, and a threaded BLAS
    under that oversubscribes the cores (implicit warns about it, rightly). ``device``
    "gpu" trains with implicit's CUDA ALS (see :func:`resolve_device`).
    """
    if device == "gpu":
        return _fit_als_gpu(inter, params)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors, regularization=params.regularization,
            alpha=params.alpha, dtype=np.float32, iterations=params.iterations,
            calculate_training_loss=False, num_threads=num_threads,
            random_state=params.seed)
        # implicit multiplies by alpha itself: the data it solves with is alpha * w.
        model.fit(inter.matrix, show_progress=False)
    return (np.ascontiguousarray(model.user_factors, dtype=np.float32),
            np.ascontiguousarray(model.item_factors, dtype=np.float32))


class FoldIn:
    """Solve a user's vector from their history against fixed item factors.

    The exact least-squares step of ALS (see the module docstring), in float64, using
    only the user's rows: O(|I| k² + k³) per user with the Gram matrix cached once. This
    is what lets a new purchase move a customer's recommendations without retraining.
    """

    def __init__(self, item_factors: np.ndarray, regularization: float, alpha: float) -> None:
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.alpha = float(alpha)
        self.regularization = float(regularization)
        k = self.item_factors.shape[1]
        y = self.item_factors.astype(np.float64)
        self._gram = y.T @ y + self.regularization * np.eye(k)
        # LAPACK's posv (Cholesky + solve) straight: ~2x less overhead than cho_factor/
        # cho_solve or np.linalg.solve at k = 64, where the call overhead dominates.
        (self._posv,) = lapack.get_lapack_funcs(("posv",), (self._gram,))
        self._h: np.ndarray | None = None  # G⁻¹, for solve_many (built on first use)

    @property
    def factors(self) -> int:
        return int(self.item_factors.shape[1])

    def solve(self, item_idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The user's factors ``(k,)`` float32 from item indices (unique) and weights.

        An empty history gives the zero vector (implicit does the same).
        """
        if len(item_idx) == 0:
            return np.zeros(self.factors, dtype=np.float32)
        conf = self.alpha * np.asarray(weights, dtype=np.float64)
        rows = self.item_factors[np.asarray(item_idx)].astype(np.float64)
        a = (rows.T * (np.abs(conf) - 1.0)) @ rows
        a += self._gram
        b = np.maximum(conf, 0.0) @ rows
        # a is symmetric, so its transpose is the Fortran-ordered array posv wants (no copy).
        _, x, info = self._posv(a.T, b, lower=False, overwrite_a=True, overwrite_b=True)
        if info != 0:
            raise ValueError(f"fold-in system not positive definite (info={info}): "
                             "regularization must be > 0 and weights finite")
        return x.astype(np.float32)

    def solve_many(self, histories: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """``solve`` for each ``(item_idx, weights)``: ``(n_users, k)`` float32, the same
        vectors to float64 rounding (~1e-15 relative; float32-identical in the tests).

        A worker folds in every customer a batch touched, most with a short history (on
        the Taobao slice 97% have 16 items or fewer). For those, the k x k solve is
        replaced by one of the history's size (Woodbury's identity, below), batched over
        customers with histories of about the same length, so numpy works on stacks
        instead of being called ~15 times per customer: 2,000 Taobao-like histories at
        k = 96, 67-95 -> 7-10 us per customer (``benchmarks/README.md``, session 15).
        Longer histories keep ``solve``: there the k x k system is the smaller one.

        With ``G = YᵀY + λI`` (cached, as is ``H = G⁻¹``), ``D = diag(|C| - 1)`` and
        ``p = max(C, 0)`` over the customer's ``L`` items ``Y_I``, the solve of
        ``(G + Y_Iᵀ D Y_I) x = Y_Iᵀ p`` is ``x = Zᵀ (p - t)``, where ``Z = Y_I H``,
        ``S = Y_I Zᵀ`` and ``(I + D S) t = D S p``: an L x L system, never singular
        where the k x k one is not (``det(G + Y_Iᵀ D Y_I) = det G · det(I + D S)``).
        Padding a history with rows whose ``D`` and ``p`` are 0 leaves ``x`` unchanged,
        which is what lets histories of different lengths share a stack.
        """
        if not histories:
            return np.zeros((0, self.factors), dtype=np.float32)
        lengths = np.array([len(idx) for idx, _ in histories], dtype=np.int64)
        return self.solve_flat(
            np.concatenate([np.asarray(idx, dtype=np.int64) for idx, _ in histories]),
            np.concatenate([np.asarray(w, dtype=np.float64) for _, w in histories]),
            lengths)

    def solve_flat(self, idx: np.ndarray, weights: np.ndarray, lengths: np.ndarray,
                   ) -> np.ndarray:
        """:meth:`solve_many` of histories laid end to end: customer ``u``'s items are
        ``idx[s:s + lengths[u]]`` (weights likewise), ``s`` the sum of the lengths
        before. The worker's fold-in reads its customers' histories in one flat run, so
        the stacks are gathered with a few numpy calls instead of three per customer."""
        idx = np.asarray(idx, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float64)
        lengths = np.asarray(lengths, dtype=np.int64)
        out = np.zeros((len(lengths), self.factors), dtype=np.float32)
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        for u in np.flatnonzero(lengths > STACKED_MAX_ITEMS):
            s = starts[u]
            out[u] = self.solve(idx[s:s + lengths[u]], weights[s:s + lengths[u]])
        # Stacked with histories padded to the next power of two (1 -> 1, 3 -> 4, ...).
        widths = _PADDED[np.minimum(lengths, STACKED_MAX_ITEMS + 1)]
        for width in np.unique(widths[widths > 0]).tolist():
            users = np.flatnonzero(widths == width)
            for at in range(0, len(users), STACK_USERS):
                chunk = users[at:at + STACK_USERS]
                n = lengths[chunk]
                row = np.repeat(np.arange(len(chunk)), n)
                col = np.arange(len(row)) - np.repeat(np.cumsum(n) - n, n)
                src = np.repeat(starts[chunk], n) + col
                items = np.zeros((len(chunk), width), dtype=np.int64)
                conf = np.zeros((len(chunk), width), dtype=np.float64)
                valid = np.zeros((len(chunk), width), dtype=bool)
                items[row, col] = idx[src]
                conf[row, col] = weights[src]
                valid[row, col] = True
                out[chunk] = self._solve_stacked(items, conf, valid)
        return out

    def _solve_stacked(self, idx: np.ndarray, conf: np.ndarray, valid: np.ndarray,
                       ) -> np.ndarray:
        """The stack's vectors from its padded item rows, weights and which are real."""
        width = idx.shape[1]
        conf = conf * self.alpha
        d = np.where(valid, np.abs(conf) - 1.0, 0.0)
        p = np.maximum(conf, 0.0)  # 0 on the padding already
        y = self.item_factors[idx].astype(np.float64)     # m, width, k
        z = y @ self._inverse()                            # m, width, k
        s = y @ z.transpose(0, 2, 1)                       # m, width, width
        lhs = d[:, :, None] * s
        lhs[:, np.arange(width), np.arange(width)] += 1.0
        rhs = d * np.einsum("mij,mj->mi", s, p)
        try:
            t = np.linalg.solve(lhs, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError as exc:
            raise ValueError("fold-in system singular: regularization must be > 0 and "
                             "weights finite") from exc
        x = np.einsum("mwk,mw->mk", z, p - t)
        if not np.isfinite(x).all():
            raise ValueError("fold-in gave a non-finite vector: weights must be finite")
        return x.astype(np.float32)

    def _inverse(self) -> np.ndarray:
        """``H = G⁻¹``, from its Cholesky factor; once per model."""
        if self._h is None:
            k = self.factors
            _, h, info = self._posv(self._gram.copy(order="F"), np.eye(k), lower=False)
            if info != 0:
                raise ValueError(f"Gram matrix not positive definite (info={info})")
            self._h = (h + h.T) / 2  # symmetric to the last bit
        return self._h


def similar_items(item_factors: np.ndarray, top_k: int,
                  block_bytes: int = SIMILAR_BLOCK_BYTES,
                  candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of every item, never itself: ``(ids int32, scores float32)``.

    Shape ``(n, min(top_k, m - 1))`` for ``m`` candidates; best first, ties by lower
    index. ``candidates`` (sorted item indices) restricts who can be a neighbour — every
    item still gets neighbours, but the cost is ``n × m`` instead of ``n²``. Scored in row
    blocks of at most ``block_bytes`` so 100k items need no 40 GB similarity matrix.
    An item with an all-zero vector (never trained on) scores 0 against everything.
    """
    n = len(item_factors)
    cand = np.arange(n) if candidates is None else np.asarray(candidates, dtype=np.int64)
    m = len(cand)
    k = max(0, min(top_k, m - 1))
    unit = _unit_rows(item_factors)
    unit_c = unit[cand] if candidates is not None else unit
    # Where each item sits among the candidates (-1: not one), to never pick itself.
    own = np.full(n, -1, dtype=np.int64)
    own[cand] = np.arange(m)
    ids = np.empty((n, k), dtype=np.int32)
    scores = np.empty((n, k), dtype=np.float32)
    step = max(1, min(SIMILAR_BLOCK_ROWS, block_bytes // (4 * max(m, 1))))
    for start in range(0, n, step):
        stop = min(n, start + step)
        sims = unit[start:stop] @ unit_c.T
        rows = np.flatnonzero(own[start:stop] >= 0)
        sims[rows, own[start:stop][rows]] = -np.inf  # never itself
        best = top_k_rows(sims, k)
        ids[start:stop] = cand[best]
        scores[start:stop] = np.take_along_axis(sims, best, axis=1)
    return ids, scores


def _unit_rows(factors: np.ndarray) -> np.ndarray:
    factors = np.asarray(factors, dtype=np.float32)
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return np.divide(factors, norms, out=np.zeros_like(factors), where=norms > 0)


# -- GPU retrains (model.device). implicit's CUDA ALS needs an NVIDIA GPU, implicit's
# CUDA extension and RAPIDS' rmm package (pip install 'rmm-cu13==26.4.*'); implicit.gpu.HAS_CUDA
# says whether all three are there.
DEVICES = ("cpu", "gpu", "auto")


class GPUUnavailable(RuntimeError):
    """model.device is "gpu" but implicit cannot train on a GPU in this process."""


def resolve_device(device: str) -> str:
    """"cpu" or "gpu" for a ``model.device`` setting: "auto" is the GPU when implicit has
    CUDA, else the CPU; "gpu" without CUDA fails here, where a process starts, rather than
    an hour later in its first scheduled retrain."""
    if device not in DEVICES:
        raise ValueError(f"model.device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cpu":
        return "cpu"
    has_cuda, why = _cuda()
    if has_cuda:
        return "gpu"
    if device == "auto":
        return "cpu"
    raise GPUUnavailable(
        f"AISLE_MODEL__DEVICE=gpu, but implicit cannot train on a GPU here ({why}); "
        "it needs an NVIDIA GPU, implicit's CUDA build and the rmm package "
        "(pip install 'rmm-cu13==26.4.*'; 26.10 breaks implicit 0.7.3). "
        "Set AISLE_MODEL__DEVICE=auto to use a GPU only where "
        "there is one, or cpu.")


def _cuda() -> tuple[bool, str]:
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # implicit warns why it has no GPU
        warnings.simplefilter("always")
        import implicit.gpu
    if implicit.gpu.HAS_CUDA:
        return True, ""
    if caught:
        return False, "; ".join(str(w.message) for w in caught)
    return False, ("implicit.gpu.HAS_CUDA is false" if implicit.gpu.HAS_RMM
                   else "implicit.gpu.HAS_CUDA is false: rmm is not installed")


def _fit_als_gpu(inter: Interactions, params: ALSParams) -> tuple[np.ndarray, np.ndarray]:
    from implicit.gpu.als import AlternatingLeastSquares as GpuALS

    # implicit 0.7.3's GPU fit() does not multiply by alpha (its CPU fit and both
    # partial fits do): factors came out identical at alpha 0.54 and 1.0, with a loss
    # 7-8% worse than the CPU fit's. So scale here and hand it alpha = 1.
    model = GpuALS(factors=params.factors, regularization=params.regularization,
                   alpha=1.0, dtype=np.float32, iterations=params.iterations,
                   calculate_training_loss=False, random_state=params.seed)
    model.fit(gpu_confidence(inter.matrix, params.alpha), show_progress=False)
    # to_numpy, not to_cpu(): that builds a CPU model outside the BLAS thread limit,
    # which only earns an OpenBLAS warning. The artifact and the fold-in never see the GPU.
    return (np.ascontiguousarray(model.user_factors.to_numpy(), dtype=np.float32),
            np.ascontiguousarray(model.item_factors.to_numpy(), dtype=np.float32))


def gpu_confidence(matrix, alpha: float):
    """The CSR the GPU fit must see: ``alpha * w`` in float32, which the CPU fit forms itself."""
    return (matrix * np.float32(alpha)).astype(np.float32)
