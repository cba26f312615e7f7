"""Workloads of issue #5: fixed float32 inputs, float64 references and hard operators.

Everything here is NumPy only; the libraries under test live in :mod:`_libs`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SEED = 0
TOPK = 5
MARGIN = 9.0  # C - 1 for C = 10 classes: the tutorial's soft 0/1 loss

WORKLOADS: dict[str, str] = {
    "W1": "sort, n=1000",
    "W2": "sort, batch 256x100",
    "W3": "ranks, 1000 rows of 10",
    "W4": "ranks, n=1000",
    "W5": "top-5 of n=1000",
    "W6": "median of n=10000",
    "G1": "value_and_grad soft 0/1 loss, 1000x10 logits",
    "G2": "grad of sum(w * sort(x)), n=1000",
}
FORWARD = ("W1", "W2", "W3", "W4", "W5", "W6")
GRADIENT = ("G1", "G2")


@dataclasses.dataclass(frozen=True)
class Data:
    """The float32 inputs of one workload (shared by every library)."""

    x: np.ndarray  # values, or logits for G1
    w: np.ndarray | None = None  # G2: fixed weights of the linear functional
    onehot: np.ndarray | None = None  # G1: one-hot labels


def make_data(name: str) -> Data:
    """Same seed per workload, so every library (and every run) sees the same numbers."""
    rng = np.random.default_rng([SEED, int(name[1]), ord(name[0])])

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    if name in ("W1", "W4", "W5"):
        return Data(normal(1000))
    if name == "W2":
        return Data(normal(256, 100))
    if name == "W3":
        return Data(normal(1000, 10))
    if name == "W6":
        return Data(normal(10000))
    if name == "G1":
        logits = normal(1000, 10)
        labels = rng.integers(0, 10, size=1000)
        return Data(logits, onehot=np.eye(10, dtype=np.float32)[labels])
    if name == "G2":
        return Data(normal(1000), w=normal(1000))
    raise KeyError(name)


def quantile_target_weights(n: int, q: float = 0.5) -> np.ndarray:
    """The 3-target measure of a single soft quantile (default weight ``min(0.02, 1.5/n)``)."""
    w = min(0.02, 1.5 / n, 0.5 * q, 0.5 * (1 - q), 0.5)
    return np.array([q - w / 2, w, 1 - q - w / 2])


def target_weights(name: str, n: int) -> np.ndarray | None:
    """Target measure of the workload's Sinkhorn problem (``None``: ``n`` uniform targets)."""
    if name == "W5":
        return np.concatenate([[(n - TOPK) / n], np.full(TOPK, 1.0 / n)])
    if name == "W6":
        return quantile_target_weights(n)
    return None


def loss_grad_numpy(r: np.ndarray, onehot: np.ndarray) -> tuple[float, np.ndarray]:
    """Soft 0/1 loss ``mean(relu(9 - <onehot, r>))`` and its gradient with respect to ``r``."""
    s = np.sum(onehot * r, axis=1)
    active = (MARGIN - s) > 0
    value = float(np.mean(np.maximum(MARGIN - s, 0.0)))
    return value, -(onehot * active[:, None]) / r.shape[0]


def flatten_output(name: str, out: Any) -> np.ndarray:
    """One float64 vector per result, to measure distances (G1: loss value, then gradient)."""
    if name == "G1":
        value, grad = out
        return np.concatenate([np.reshape(np.asarray(value, dtype=np.float64), (1,)), np.ravel(grad)])
    return np.ravel(np.asarray(out, dtype=np.float64))


def reference(name: str, data: Data, epsilon: float, threshold: float, max_iterations: int) -> np.ndarray:
    """Tightly converged float64 NumPy softsort (the accuracy reference)."""
    import softsort

    opts = {"epsilon": epsilon, "threshold": threshold, "max_iterations": max_iterations}
    x = data.x.astype(np.float64)
    if name in ("W1", "W2"):
        out: Any = softsort.sort(x, axis=-1, **opts)
    elif name in ("W3", "W4"):
        out = softsort.ranks(x, axis=-1, **opts)
    elif name == "W5":
        out = softsort.sort(x, topk=TOPK, **opts)
    elif name == "W6":
        out = softsort.quantile(x, 0.5, **opts)
    elif name == "G1":
        r, pullback = softsort.vjp(softsort.ranks, x, axis=-1, **opts)
        value, ct = loss_grad_numpy(r, data.onehot.astype(np.float64))
        out = (value, pullback(ct))
    else:
        _, pullback = softsort.vjp(softsort.sort, x, **opts)
        out = pullback(data.w.astype(np.float64))
    return flatten_output(name, out)


def _hard_ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, axis=-1, kind="stable"), axis=-1).astype(np.float64)


def hard(name: str, data: Data) -> np.ndarray:
    """The hard (non-smoothed) operator, in float64; for gradients, its a.e. gradient."""
    x = data.x.astype(np.float64)
    if name in ("W1", "W2"):
        out: Any = np.sort(x, axis=-1)
    elif name in ("W3", "W4"):
        out = _hard_ranks(x)
    elif name == "W5":
        out = np.sort(x)[-TOPK:]
    elif name == "W6":
        out = np.quantile(x, [0.5])
    elif name == "G1":
        value, _ = loss_grad_numpy(_hard_ranks(x), data.onehot.astype(np.float64))
        out = (value, np.zeros_like(x))  # hard ranks are piecewise constant
    else:
        w = data.w.astype(np.float64)
        out = w[_hard_ranks(x).astype(np.int64)]  # d/dx_i sum_j w_j x_(j) = w_{rank(i)}
    return flatten_output(name, out)
