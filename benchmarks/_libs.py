"""The libraries under test, each behind the same small interface.

Frameworks are imported lazily (inside :func:`build`), so ``--libs softsort-numpy`` runs
without JAX or PyTorch installed.

A runner's ``run()`` computes the workload once and blocks until the result is ready
(``jax.block_until_ready``; PyTorch CPU and NumPy are synchronous). ``result()`` converts
the last output to NumPy outside the timed region.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from _workloads import MARGIN, TOPK, Data, loss_grad_numpy, target_weights

LIBS = (
    "softsort-jax",
    "softsort-jax-dual",
    "softsort-numpy",
    "softsort-torch",
    "ott",
    "ott-unrolled",
    "softsort-jax-matched",  # after OTT-JAX: its threshold is chosen to match OTT-JAX's accuracy
    "torchsort",
)
JAX_LIBS = ("softsort-jax", "softsort-jax-dual", "ott", "ott-unrolled", "softsort-jax-matched")


class NotApplicable(Exception):
    """The library does not offer this workload (shown as 'n/a', not as a failure)."""


@dataclasses.dataclass
class Options:
    epsilon: float = 1e-2
    threshold: float = 1e-3
    max_iterations: int = 2000
    inner_iterations: int = 10
    torchsort_strength: float = 1.0
    init: str = "auto"  # softsort's start; "softsort-jax-dual" sets "dual"

    def softsort(self) -> dict[str, Any]:
        """softsort's options: the shared solver options and its start."""
        return {**self.solver(), "init": self.init}

    def solver(self) -> dict[str, Any]:
        """The Sinkhorn options softsort and OTT-JAX share."""
        return {
            "epsilon": self.epsilon,
            "threshold": self.threshold,
            "max_iterations": self.max_iterations,
            "inner_iterations": self.inner_iterations,
        }


@dataclasses.dataclass
class Runner:
    run: Callable[[], Any]
    to_numpy: Callable[[Any], Any]
    iterations: Callable[[], int | None] = lambda: None
    # (bytes, method) computed statically (XLA buffer assignment), or None to measure
    static_memory: Callable[[], tuple[int, str] | None] = lambda: None
    memory_method: str = "malloc"  # how to measure when static_memory gives nothing
    last: Any = None

    def __call__(self) -> Any:
        self.last = self.run()
        return self.last

    def result(self) -> Any:
        return self.to_numpy(self.last)


def available(lib: str) -> str | None:
    """``None`` when the library can run here, else the reason it cannot."""
    needs = {
        "softsort-jax": ("softsort", "jax"),
        "softsort-jax-dual": ("softsort", "jax"),
        "softsort-jax-matched": ("softsort", "jax"),
        "softsort-numpy": ("softsort",),
        "softsort-torch": ("softsort", "torch"),
        "ott": ("ott", "jax"),
        "ott-unrolled": ("ott", "jax"),
        "torchsort": ("torch", "torchsort"),
    }[lib]
    for mod in needs:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # ImportError, or a broken build (torchsort's C++ extension)
            return f"cannot import {mod}: {type(exc).__name__}: {exc}"
    return None


def version(module: str) -> str | None:
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:
        try:
            from importlib.metadata import version as dist_version

            return dist_version({"ott": "ott-jax"}.get(module, module))
        except Exception:
            return None


def build(lib: str, name: str, data: Data, opts: Options) -> Runner:
    return {
        "softsort-jax": _softsort_jax,
        "softsort-jax-dual": lambda n, d, o: _softsort_jax(n, d, dataclasses.replace(o, init="dual")),
        "softsort-jax-matched": _softsort_jax,  # bench.py sets the threshold
        "softsort-numpy": _softsort_numpy,
        "softsort-torch": _softsort_torch,
        "ott": _ott,
        "ott-unrolled": _ott_unrolled,
        "torchsort": _torchsort,
    }[lib](name, data, opts)


def _softsort_iterations(xp_x: Any, name: str, opts: Options, asarray: Callable[[np.ndarray], Any]) -> int:
    """Iterations of the workload's Sinkhorn problem, via the public ``transport_for_sort``.

    softsort counts per problem (a converged problem of a batch stops); report the largest.
    """
    import softsort

    b = target_weights(name, xp_x.shape[-1])
    kw = {} if b is None else {"target_weights": asarray(b)}
    iterations = softsort.transport_for_sort(xp_x, **kw, **opts.softsort()).iterations
    if hasattr(iterations, "detach"):
        iterations = iterations.detach().cpu()
    return int(np.max(np.asarray(iterations)))


# -- softsort on JAX --------------------------------------------------------------------------
def _jax_memory(jitted: Any, args: tuple[Any, ...]) -> Callable[[], tuple[int, str] | None]:
    def memory() -> tuple[int, str] | None:
        stats = jitted.lower(*args).compile().memory_analysis()
        if stats is None:
            return None
        return int(stats.temp_size_in_bytes + stats.output_size_in_bytes), "xla"

    return memory


def _softsort_forward(name: str, o: dict) -> Callable[[Any], Any] | None:
    """The softsort call of forward workload ``name`` (W1-W6), the same on every backend."""
    import softsort

    return {
        "W1": lambda x: softsort.sort(x, axis=-1, **o),
        "W2": lambda x: softsort.sort(x, axis=-1, **o),
        "W3": lambda x: softsort.ranks(x, axis=-1, **o),
        "W4": lambda x: softsort.ranks(x, axis=-1, **o),
        "W5": lambda x: softsort.sort(x, topk=TOPK, **o),
        "W6": lambda x: softsort.quantile(x, 0.5, **o),
    }.get(name)


def _softsort_jax(name: str, data: Data, opts: Options) -> Runner:
    import jax
    import jax.numpy as jnp

    import softsort

    o = opts.softsort()
    x = jnp.asarray(data.x)
    args: tuple[Any, ...] = (x,)
    forward = _softsort_forward(name, o)
    if forward is not None:
        f: Callable[..., Any] = forward
    elif name == "G1":
        onehot = jnp.asarray(data.onehot)

        def loss(logits: Any) -> Any:
            r = softsort.ranks(logits, axis=-1, **o)
            return jnp.mean(jax.nn.relu(MARGIN - jnp.sum(onehot * r, axis=1)))

        f = jax.value_and_grad(loss)
    else:
        w = jnp.asarray(data.w)
        f = jax.grad(lambda x: jnp.sum(w * softsort.sort(x, **o)))
    jitted = jax.jit(f)
    return Runner(
        run=lambda: jax.block_until_ready(jitted(*args)),
        to_numpy=lambda out: jax.tree_util.tree_map(np.asarray, out),
        iterations=lambda: _softsort_iterations(x, name, opts, jnp.asarray),
        static_memory=_jax_memory(jitted, args),
    )


# -- softsort on NumPy (gradients with softsort.vjp) ------------------------------------------
def _softsort_numpy(name: str, data: Data, opts: Options) -> Runner:
    import softsort

    o = opts.softsort()
    x = data.x
    forward = _softsort_forward(name, o)
    if forward is not None:
        run: Callable[[], Any] = lambda: forward(x)
    elif name == "G1":

        def run() -> Any:
            r, pullback = softsort.vjp(softsort.ranks, x, axis=-1, **o)
            value, ct = loss_grad_numpy(r, data.onehot)
            return value, pullback(ct.astype(np.float32))

    else:

        def run() -> Any:
            _, pullback = softsort.vjp(softsort.sort, x, **o)
            return pullback(data.w)

    return Runner(
        run=run,
        to_numpy=lambda out: out,
        iterations=lambda: _softsort_iterations(x, name, opts, np.asarray),
        memory_method="tracemalloc",
    )


# -- softsort on PyTorch (CPU, autograd) ------------------------------------------------------
def _softsort_torch(name: str, data: Data, opts: Options) -> Runner:
    import torch

    import softsort

    o = opts.softsort()
    x = torch.from_numpy(data.x)
    forward = _softsort_forward(name, o)
    if forward is not None:
        run: Callable[[], Any] = lambda: forward(x)
    elif name == "G1":
        onehot = torch.from_numpy(data.onehot)

        def run() -> Any:
            logits = x.detach().requires_grad_(True)
            r = softsort.ranks(logits, axis=-1, **o)
            value = torch.mean(torch.relu(MARGIN - torch.sum(onehot * r, dim=1)))
            (grad,) = torch.autograd.grad(value, logits)
            return value.detach(), grad

    else:
        w = torch.from_numpy(data.w)

        def run() -> Any:
            xx = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.sum(w * softsort.sort(xx, **o)), xx)
            return grad

    def to_numpy(out: Any) -> Any:
        if isinstance(out, tuple):
            return tuple(t.detach().numpy() for t in out)
        return out.detach().numpy()

    return Runner(
        run=run,
        to_numpy=to_numpy,
        iterations=lambda: _softsort_iterations(x, name, opts, torch.from_numpy),
    )


# -- OTT-JAX 0.6 ott.tools.soft_sort ----------------------------------------------------------
@contextlib.contextmanager
def _record_ott_iterations() -> Iterator[list[np.ndarray]]:
    """Wrap ``ott.tools.soft_sort.transport_for_sort`` to report ``n_iters`` of every solve.

    The operators call it through the module global, under ``jax.vmap``; a
    ``jax.debug.callback`` hands each row's ``n_iters`` back to the host.
    """
    import jax
    import ott.tools.soft_sort as ots

    recorded: list[np.ndarray] = []
    original = ots.transport_for_sort

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        jax.debug.callback(lambda n: recorded.append(np.asarray(n)), out.n_iters)
        return out

    ots.transport_for_sort = wrapped
    try:
        yield recorded
    finally:
        ots.transport_for_sort = original


def _ott_function(name: str, data: Data, kw: dict[str, Any], forward_only: bool = False) -> Callable[..., Any]:
    import jax
    import jax.numpy as jnp
    from ott.tools import soft_sort as ots

    if name in ("W1", "W2") or (forward_only and name == "G2"):
        return lambda x: ots.sort(x, axis=-1, **kw)
    if name in ("W3", "W4") or (forward_only and name == "G1"):
        return lambda x: ots.ranks(x, axis=-1, **kw)
    if name == "W5":
        return lambda x: ots.sort(x, axis=-1, topk=TOPK, **kw)
    if name == "W6":
        return lambda x: ots.quantile(x, 0.5, axis=-1, **kw)
    if name == "G1":
        onehot = jnp.asarray(data.onehot)

        def loss(logits: Any) -> Any:
            r = ots.ranks(logits, axis=-1, **kw)
            return jnp.mean(jax.nn.relu(MARGIN - jnp.sum(onehot * r, axis=1)))

        return jax.value_and_grad(loss)
    w = jnp.asarray(data.w)
    return jax.grad(lambda x: jnp.sum(w * ots.sort(x, **kw)))


def _ott_runner(name: str, data: Data, kw: dict[str, Any]) -> Runner:
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(data.x)
    jitted = jax.jit(_ott_function(name, data, kw))

    def iterations() -> int | None:
        with _record_ott_iterations() as rec:
            jax.block_until_ready(jax.jit(_ott_function(name, data, kw, forward_only=True))(x))
        return int(max(int(np.max(r)) for r in rec)) if rec else None

    return Runner(
        run=lambda: jax.block_until_ready(jitted(x)),
        to_numpy=lambda out: jax.tree_util.tree_map(np.asarray, out),
        iterations=iterations,
        static_memory=_jax_memory(jitted, (x,)),
    )


def _ott(name: str, data: Data, opts: Options) -> Runner:
    return _ott_runner(name, data, opts.solver())


def _ott_unrolled(name: str, data: Data, opts: Options) -> Runner:
    """OTT with ``implicit_diff=None``: backpropagation through the Sinkhorn iterations."""
    if name not in ("G1", "G2"):
        raise NotApplicable("only for gradients (forward is the same as 'ott')")
    return _ott_runner(name, data, {**opts.solver(), "implicit_diff": None})


# -- torchsort (isotonic regression, O(n log n), no Sinkhorn) ---------------------------------
def _torchsort(name: str, data: Data, opts: Options) -> Runner:
    import torch
    import torchsort

    s = opts.torchsort_strength
    x = torch.from_numpy(data.x)
    x2 = x if x.ndim == 2 else x[None]

    def soft_sort(t: Any) -> Any:
        return torchsort.soft_sort(t, regularization_strength=s)

    def soft_rank(t: Any) -> Any:  # torchsort's ranks are 1-based; softsort's are 0-based
        return torchsort.soft_rank(t, regularization_strength=s) - 1.0

    if name in ("W1", "W2"):
        run: Callable[[], Any] = lambda: soft_sort(x2)
    elif name in ("W3", "W4"):
        run = lambda: soft_rank(x2)
    elif name == "W5":
        run = lambda: soft_sort(x2)[..., -TOPK:]  # no top-k operator: full sort, then slice
    elif name == "W6":
        n = x.shape[-1]

        def run() -> Any:  # no quantile operator: middle of the soft sort (n even: two values)
            ys = soft_sort(x2)
            return (ys[..., (n - 1) // 2] + ys[..., n // 2]) / 2

    elif name == "G1":
        onehot = torch.from_numpy(data.onehot)

        def run() -> Any:
            logits = x.detach().requires_grad_(True)
            value = torch.mean(torch.relu(MARGIN - torch.sum(onehot * soft_rank(logits), dim=1)))
            (grad,) = torch.autograd.grad(value, logits)
            return value.detach(), grad

    else:
        w = torch.from_numpy(data.w)

        def run() -> Any:
            xx = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.sum(w * soft_sort(xx[None])[0]), xx)
            return grad

    def to_numpy(out: Any) -> Any:
        if isinstance(out, tuple):
            return tuple(t.detach().numpy() for t in out)
        return out.detach().numpy()

    return Runner(run=run, to_numpy=to_numpy)
