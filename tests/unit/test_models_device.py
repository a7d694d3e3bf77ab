"""model.device: retrains on implicit's GPU ALS where there is one. This machine has no
GPU, so what is tested is the fallback and the refusal: "auto" trains on the CPU, "gpu"
stops a worker or `aisle train` at start with a message that says what to do."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace

import implicit.gpu
import numpy as np
import pytest

from aisle.stack import aisle_argv
from models.als import ALSParams, GPUUnavailable, fit_als, resolve_device
from models.train import fit_artifact
from tests.unit.test_models_als import random_interactions

PARAMS = ALSParams(factors=8, iterations=3)


def test_cpu_is_cpu_and_auto_is_the_gpu_only_with_cuda() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("gpu" if implicit.gpu.HAS_CUDA else "cpu")


def test_gpu_without_cuda_is_refused_with_what_to_do() -> None:
    if implicit.gpu.HAS_CUDA:  # a GPU machine: "gpu" is simply the GPU
        assert resolve_device("gpu") == "gpu"
        return
    with pytest.raises(GPUUnavailable, match="AISLE_MODEL__DEVICE=gpu") as err:
        resolve_device("gpu")
    assert "rmm" in str(err.value) and "AISLE_MODEL__DEVICE=auto" in str(err.value)


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu, gpu, auto"):
        resolve_device("tpu")


def test_auto_without_cuda_trains_the_cpu_model() -> None:
    inter = random_interactions()
    device = resolve_device("auto")
    art = fit_artifact(inter, 0.0, PARAMS, top_k=5, consumable={}, device=device)
    assert art.stats["device"] == device
    if device == "cpu":  # the same model the CPU path gives, factor for factor
        _, items = fit_als(inter, PARAMS)
        np.testing.assert_array_equal(art.item_factors, items)
    assert art.item_factors.dtype == np.float32 and isinstance(art.item_factors, np.ndarray)


@pytest.mark.parametrize("command", ["train", "worker"])
def test_a_gpu_setting_without_cuda_stops_the_process_at_start(command: str) -> None:
    if implicit.gpu.HAS_CUDA:
        return
    # Nothing listens at these URLs: the process must stop before it connects anywhere.
    env = {**os.environ, "AISLE_MODEL__DEVICE": "gpu", "AISLE_KAFKA_URL": "kafka://127.0.0.1:9",
           "AISLE_REDIS_URL": "redis://127.0.0.1:9/0"}
    done = subprocess.run(aisle_argv(command), env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert "AISLE_MODEL__DEVICE=gpu" in done.stderr and "Traceback" not in done.stderr


def als_loss(inter, users: np.ndarray, items: np.ndarray, params: ALSParams) -> float:  # type: ignore[no-untyped-def]
    """The objective both fits minimise, dense: confidence alpha*w where bought, 1 elsewhere."""
    observed = inter.matrix.toarray().astype(np.float64)
    conf = np.where(observed > 0, params.alpha * observed, 1.0)
    pref = (observed > 0).astype(np.float64)
    err = pref - users.astype(np.float64) @ items.astype(np.float64).T
    ridge = (users.astype(np.float64) ** 2).sum() + (items.astype(np.float64) ** 2).sum()
    return float((conf * err**2).sum() + params.regularization * ridge)


def test_the_gpu_confidence_is_what_the_cpu_fit_solves_with() -> None:
    # implicit's GPU fit ignores alpha; we hand it alpha * w with alpha = 1. On the CPU,
    # that must be the very model alpha itself gives, so the two devices agree.
    from models.als import gpu_confidence

    inter = random_interactions()
    params = ALSParams(factors=8, iterations=4, alpha=4.0)
    scaled = replace(inter, matrix=gpu_confidence(inter.matrix, 4.0))
    a = fit_als(inter, params)
    b = fit_als(scaled, replace(params, alpha=1.0))
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-6)
    assert scaled.matrix.dtype == np.float32


@pytest.mark.skipif(not implicit.gpu.HAS_CUDA, reason="needs implicit's CUDA ALS")
def test_the_gpu_fit_reaches_the_cpu_fits_loss() -> None:
    # Before alpha was applied by hand the GPU loss was 7-8% above the CPU's.
    inter = random_interactions()
    params = ALSParams(factors=8, iterations=15, alpha=4.0)
    cpu = als_loss(inter, *fit_als(inter, params), params)
    gpu = als_loss(inter, *fit_als(inter, params, device="gpu"), params)
    assert gpu <= 1.02 * cpu, (gpu, cpu)
