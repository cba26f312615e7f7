"""Workloads of issues #5 and #16: fixed float32 inputs, float64 references, hard operators.

Everything here is NumPy only; the libraries under test live in :mod:`_libs`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SEED = 0
TOPK = 5
MARGIN = 9.0  # C - 1 for C = 10 classes: the tutorial's soft 0/1 loss
EXPERTS_K = 2  # W7/G7: top-2 routing

#: Batch of the workloads whose size is given at run time (``--large``: the issue's 10^5).
DEFAULT_ROWS = {"W7": 16384, "G7": 16384, "W8": 4096, "G8": 4096}
LARGE_ROWS = 100_000

WORKLOADS: dict[str, str] = {
    "W1": "sort, n=1000",
    "W2": "sort, batch 256x100",
    "W3": "ranks, 1000 rows of 10",
    "W4": "ranks, n=1000",
    "W5": "top-5 of n=1000",
    "W6": "median of n=10000",
    "G1": "value_and_grad soft 0/1 loss, 1000x10 logits",
    "G2": "grad of sum(w * sort(x)), n=1000",
    "W7": "top-2 mask over 64 experts, 16384 tokens",
    "G7": "value_and_grad load-balancing loss of top-2 masks, 16384x64",
    "W8": "ranks, 4096 lists of 128 scores",
    "G8": "value_and_grad Spearman loss of ranks, 4096x128",
}
FORWARD = ("W1", "W2", "W3", "W4", "W5", "W6")
GRADIENT = ("G1", "G2")
#: Issue #16's workloads: mixture-of-experts routing and listwise ranking.
ROUND_TWO = ("W7", "G7", "W8", "G8")


def describe(name: str, rows: int) -> str:
    """The workload's description with its batch (``--large`` changes W7/G7/W8/G8's)."""
    text = WORKLOADS[name]
    default = DEFAULT_ROWS.get(name)
    return text if default is None or rows == default else text.replace(str(default), str(rows))


@dataclasses.dataclass(frozen=True)
class Data:
    """The float32 inputs of one workload (shared by every library)."""

    x: np.ndarray  # values, or logits for G1
    w: np.ndarray | None = None  # G2: fixed weights of the linear functional
    onehot: np.ndarray | None = None  # G1: one-hot labels
    true_ranks: np.ndarray | None = None  # G8: the ranks the scores should have (float32)


def make_data(name: str, rows: int | None = None) -> Data:
    """Same seed per workload, so every library (and every run) sees the same numbers.

    ``rows``: the batch of W7/G7/W8/G8 (default :data:`DEFAULT_ROWS`).
    """
    rng = np.random.default_rng([SEED, int(name[1]), ord(name[0])])
    rows = rows or DEFAULT_ROWS.get(name, 0)

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
    if name in ("W7", "G7"):  # router logits
        return Data(normal(rows, 64))
    if name == "W8":
        return Data(normal(rows, 128))
    if name == "G8":  # scores and the relevance order they are trained towards
        relevance = rng.permutation(np.tile(np.arange(128), (rows, 1)), axis=1)
        scores = 0.05 * relevance + 2.0 * normal(rows, 128)
        return Data(scores.astype(np.float32), true_ranks=relevance.astype(np.float32))
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
    if name in ("W7", "G7"):  # topk_mask's two targets: the n - k others, then the top k
        return np.array([(n - EXPERTS_K) / n, EXPERTS_K / n])
    return None


def loss_grad_numpy(r: np.ndarray, onehot: np.ndarray) -> tuple[float, np.ndarray]:
    """Soft 0/1 loss ``mean(relu(9 - <onehot, r>))`` and its gradient with respect to ``r``."""
    s = np.sum(onehot * r, axis=1)
    active = (MARGIN - s) > 0
    value = float(np.mean(np.maximum(MARGIN - s, 0.0)))
    return value, -(onehot * active[:, None]) / r.shape[0]


def balance_loss_grad_numpy(mask: np.ndarray) -> tuple[float, np.ndarray]:
    """G7's load-balancing loss ``E * sum_e (mean_t mask_te)**2`` and its gradient.

    It is smallest when every expert gets the same share of the tokens; ``mask`` is the
    (tokens, experts) top-k mask.
    """
    tokens, experts = mask.shape
    load = np.mean(mask, axis=0)
    value = float(experts * np.sum(load**2))
    return value, np.broadcast_to(2.0 * experts * load / tokens, mask.shape).astype(mask.dtype)


def spearman_loss_grad_numpy(r: np.ndarray, true_ranks: np.ndarray) -> tuple[float, np.ndarray]:
    """G8's loss: one minus the mean Spearman correlation of the ranks ``r`` with ``true_ranks``.

    ``1 - mean_rows(1 - 6 sum (r - t)**2 / (n (n**2 - 1)))``, i.e. the mean over rows of
    ``6 sum (r - t)**2 / (n (n**2 - 1))``; its gradient with respect to ``r``.
    """
    rows, n = r.shape
    scale = 6.0 / (n * (n * n - 1.0)) / rows
    d = r - true_ranks
    return float(scale * np.sum(d * d)), (2.0 * scale * d).astype(r.dtype)


def flatten_output(name: str, out: Any) -> np.ndarray:
    """One float64 vector per result, to measure distances (G1, G7, G8: loss value, then gradient)."""
    if name in ("G1", "G7", "G8"):
        value, grad = out
        return np.concatenate([np.reshape(np.asarray(value, dtype=np.float64), (1,)), np.ravel(grad)])
    return np.ravel(np.asarray(out, dtype=np.float64))


def reference(name: str, data: Data, epsilon: float, threshold: float, max_iterations: int) -> np.ndarray:
    """Tightly converged float64 NumPy softsort (the accuracy reference)."""
    import softsort

    # Newton steps for the rows still running after 100 iterations: near-ties at the k-th
    # value of W7/G7 otherwise take minutes to reach a tight threshold (same fixed point).
    opts = {"epsilon": epsilon, "threshold": threshold, "max_iterations": max_iterations, "newton": True}
    x = data.x.astype(np.float64)
    if name in ("W1", "W2"):
        out: Any = softsort.sort(x, axis=-1, **opts)
    elif name in ("W3", "W4"):
        out = softsort.ranks(x, axis=-1, **opts)
    elif name == "W5":
        out = softsort.sort(x, topk=TOPK, **opts)
    elif name == "W6":
        out = softsort.quantile(x, 0.5, **opts)
    elif name == "W7":
        out = softsort.topk_mask(x, k=EXPERTS_K, axis=-1, **opts)
    elif name == "W8":
        out = softsort.ranks(x, axis=-1, **opts)
    elif name == "G1":
        r, pullback = softsort.vjp(softsort.ranks, x, axis=-1, **opts)
        value, ct = loss_grad_numpy(r, data.onehot.astype(np.float64))
        out = (value, pullback(ct))
    elif name == "G7":
        mask, pullback = softsort.vjp(softsort.topk_mask, x, k=EXPERTS_K, axis=-1, **opts)
        value, ct = balance_loss_grad_numpy(mask)
        out = (value, pullback(ct))
    elif name == "G8":
        r, pullback = softsort.vjp(softsort.ranks, x, axis=-1, **opts)
        value, ct = spearman_loss_grad_numpy(r, data.true_ranks.astype(np.float64))
        out = (value, pullback(ct))
    else:
        _, pullback = softsort.vjp(softsort.sort, x, **opts)
        out = pullback(data.w.astype(np.float64))
    return flatten_output(name, out)


def _hard_ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, axis=-1, kind="stable"), axis=-1).astype(np.float64)


def _hard_topk_mask(x: np.ndarray, k: int) -> np.ndarray:
    return (_hard_ranks(x) >= x.shape[-1] - k).astype(np.float64)


def hard(name: str, data: Data) -> np.ndarray:
    """The hard (non-smoothed) operator, in float64; for gradients, its a.e. gradient."""
    x = data.x.astype(np.float64)
    if name in ("W1", "W2"):
        out: Any = np.sort(x, axis=-1)
    elif name in ("W3", "W4"):
        out = _hard_ranks(x)
    elif name == "W5":
        out = np.sort(x, axis=-1)[..., -TOPK:]
    elif name == "W6":
        out = np.quantile(x, 0.5, axis=-1, keepdims=True)
    elif name == "W7":
        out = _hard_topk_mask(x, EXPERTS_K)
    elif name == "W8":
        out = _hard_ranks(x)
    elif name == "G1":
        value, _ = loss_grad_numpy(_hard_ranks(x), data.onehot.astype(np.float64))
        out = (value, np.zeros_like(x))  # hard ranks are piecewise constant
    elif name == "G7":
        value, _ = balance_loss_grad_numpy(_hard_topk_mask(x, EXPERTS_K))
        out = (value, np.zeros_like(x))
    elif name == "G8":
        value, _ = spearman_loss_grad_numpy(_hard_ranks(x), data.true_ranks.astype(np.float64))
        out = (value, np.zeros_like(x))
    else:
        w = data.w.astype(np.float64)
        # d/dx_i sum_j w_j x_(j) = w_{rank(i)}
        out = np.take_along_axis(w, _hard_ranks(x).astype(np.int64), axis=-1)
    return flatten_output(name, out)
