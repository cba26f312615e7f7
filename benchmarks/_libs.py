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
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from _workloads import (
    EXPERTS_K,
    MARGIN,
    TOPK,
    Data,
    balance_loss_grad_numpy,
    loss_grad_numpy,
    spearman_loss_grad_numpy,
    target_weights,
)

LIBS = (
    "softsort-jax",
    "softsort-jax-base",  # softsort at another git revision (--base), jitted: a speed-up over it
    "softsort-jax-ottpath",
    "softsort-numpy",
    "softsort-torch",
    "ott",
    "ott-unrolled",
    "softsort-jax-matched",  # after OTT-JAX: its threshold is chosen to match OTT-JAX's accuracy
    "torchsort",
)
JAX_LIBS = ("softsort-jax", "softsort-jax-base", "softsort-jax-ottpath", "ott", "ott-unrolled", "softsort-jax-matched")

#: The revision ``softsort-jax-base`` runs (``bench.py --base``): the round-two baseline.
BASE_REVISION = "6d31c35"
_BASE: dict[str, Any] = {}


def extract_revision(rev: str, into: str, name: str) -> None:
    """Put the ``softsort`` package of git revision ``rev`` into ``into/name`` (``git archive``)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "softsort"], cwd=root, check=True, capture_output=True
    ).stdout
    path = os.path.join(into, f"{name}.tar")
    with open(path, "wb") as fh:
        fh.write(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    os.rename(os.path.join(into, "softsort"), os.path.join(into, name))


def base_softsort(rev: str | None = None) -> Any:
    """softsort as it was at ``rev`` (default :data:`BASE_REVISION`), imported as ``softsort_base``.

    The package imports itself relatively, so the old copy lives beside the current one in
    the same process (the benchmark then times both on the same inputs, in turn).
    """
    if "module" not in _BASE:
        tmp = tempfile.mkdtemp(prefix="softsort-base-")
        extract_revision(rev or BASE_REVISION, tmp, "softsort_base")
        sys.path.insert(0, tmp)
        _BASE["module"] = importlib.import_module("softsort_base")
        _BASE["revision"] = rev or BASE_REVISION
    return _BASE["module"]


class NotApplicable(Exception):
    """The library does not offer this workload (shown as 'n/a', not as a failure)."""


@dataclasses.dataclass
class Options:
    epsilon: float = 1e-2
    threshold: float = 1e-3
    max_iterations: int = 2000
    inner_iterations: int = 10
    torchsort_strength: float = 1.0
    init: str = "auto"  # softsort's start; "softsort-jax-ottpath" sets "zeros"
    momentum: str | float = "adaptive"  # softsort's over-relaxation; "softsort-jax-ottpath" sets 1.0
    #: PyTorch's device ("cuda" in benchmarks/gpu.py); JAX uses its default device.
    device: str = "cpu"
    #: softsort's ``memory_budget`` (None: its default); the GPU run raises it.
    memory_budget: int | None = None

    def softsort(self) -> dict[str, Any]:
        """softsort's options: the shared solver options, its start and memory budget."""
        extra = {} if self.memory_budget is None else {"memory_budget": self.memory_budget}
        return {**self.solver(), "init": self.init, "momentum": self.momentum, **extra}

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
        "softsort-jax-base": ("softsort", "jax"),
        "softsort-jax-ottpath": ("softsort", "jax"),
        "softsort-jax-matched": ("softsort", "jax"),
        "softsort-numpy": ("softsort",),
        "softsort-torch": ("softsort", "torch"),
        "softsort-cupy": ("softsort", "cupy"),
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
        "softsort-jax-base": _softsort_jax_base,
        "softsort-jax-ottpath": lambda n, d, o: _softsort_jax(n, d, dataclasses.replace(o, init="zeros", momentum=1.0)),
        "softsort-jax-matched": _softsort_jax,  # bench.py sets the threshold
        "softsort-numpy": _softsort_numpy,
        "softsort-torch": _softsort_torch,
        "softsort-cupy": _softsort_cupy,
        "ott": _ott,
        "ott-unrolled": _ott_unrolled,
        "torchsort": _torchsort,
    }[lib](name, data, opts)


def _softsort_iterations(
    xp_x: Any, name: str, opts: Options, asarray: Callable[[np.ndarray], Any], softsort: Any = None
) -> int:
    """Iterations of the workload's Sinkhorn problem, via the public ``transport_for_sort``.

    softsort counts per problem (a converged problem of a batch stops); report the largest.
    """
    if softsort is None:
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


def _softsort_forward(name: str, o: dict, softsort: Any = None) -> Callable[[Any], Any] | None:
    """The softsort call of forward workload ``name`` (W1-W8), the same on every backend."""
    if softsort is None:
        import softsort

    return {
        "W1": lambda x: softsort.sort(x, axis=-1, **o),
        "W2": lambda x: softsort.sort(x, axis=-1, **o),
        "W3": lambda x: softsort.ranks(x, axis=-1, **o),
        "W4": lambda x: softsort.ranks(x, axis=-1, **o),
        "W5": lambda x: softsort.sort(x, topk=TOPK, **o),
        "W6": lambda x: softsort.quantile(x, 0.5, **o),
        "W7": lambda x: softsort.topk_mask(x, k=EXPERTS_K, axis=-1, **o),
        "W8": lambda x: softsort.ranks(x, axis=-1, **o),
    }.get(name)


def _loss(name: str, data: Data, xp: Any, asarray: Callable[[np.ndarray], Any]) -> Callable[[Any], Any] | None:
    """The loss of G7 (of a top-2 mask) and G8 (of ranks), written once for JAX and PyTorch.

    Same formulas as ``balance_loss_grad_numpy`` and ``spearman_loss_grad_numpy``.
    """
    if name == "G7":

        def balance(mask: Any) -> Any:
            load = xp.mean(mask, axis=0)
            return mask.shape[-1] * xp.sum(load * load)

        return balance
    if name == "G8":
        true_ranks = asarray(data.true_ranks)

        def spearman(r: Any) -> Any:
            rows, n = r.shape
            d = r - true_ranks
            return 6.0 / (n * (n * n - 1.0)) / rows * xp.sum(d * d)

        return spearman
    return None


#: Workloads the base revision cannot run: at 6d31c35, ``jit(value_and_grad)`` of G8 on one
#: CPU device deadlocks in jaxlib's batched LAPACK solve (fixed in 3c8379f: the dense solve
#: became an elimination written in jnp on every CPU).
#: Keyed by the full commit hash, so that any spelling of the revision (``--base``) matches.
BASE_HANGS = {"6d31c3595326827ee7a2cba26068347253e65cfb": ("G8",)}


def full_hash(rev: str) -> str | None:
    """The commit that ``rev`` names in this checkout (None if git cannot say)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=root, capture_output=True)
    except OSError:
        return None
    return out.stdout.decode().strip() if out.returncode == 0 else None


def _softsort_jax_base(name: str, data: Data, opts: Options) -> Runner:
    commit = full_hash(_BASE.get("revision", BASE_REVISION))
    if name in BASE_HANGS.get(commit or "", ()):
        raise NotApplicable(f"{name} deadlocks at the base revision")
    return _softsort_jax(name, data, opts, base_softsort())


def _softsort_jax(name: str, data: Data, opts: Options, softsort: Any = None) -> Runner:
    import jax
    import jax.numpy as jnp

    if softsort is None:
        import softsort

    o = opts.softsort()
    x = jnp.asarray(data.x)
    args: tuple[Any, ...] = (x,)
    forward = _softsort_forward(name, o, softsort)
    loss_of = _loss(name, data, jnp, jnp.asarray)
    if forward is not None:
        f: Callable[..., Any] = forward
    elif name == "G1":
        onehot = jnp.asarray(data.onehot)

        def loss(logits: Any) -> Any:
            r = softsort.ranks(logits, axis=-1, **o)
            return jnp.mean(jax.nn.relu(MARGIN - jnp.sum(onehot * r, axis=1)))

        f = jax.value_and_grad(loss)
    elif loss_of is not None:
        op = _softsort_forward("W7" if name == "G7" else "W8", o, softsort)
        f = jax.value_and_grad(lambda x: loss_of(op(x)))
    else:
        w = jnp.asarray(data.w)
        f = jax.grad(lambda x: jnp.sum(w * softsort.sort(x, **o)))
    jitted = jax.jit(f)
    return Runner(
        run=lambda: jax.block_until_ready(jitted(*args)),
        to_numpy=lambda out: jax.tree_util.tree_map(np.asarray, out),
        iterations=lambda: _softsort_iterations(x, name, opts, jnp.asarray, softsort),
        static_memory=_jax_memory(jitted, args),
    )


# -- softsort on NumPy and CuPy (gradients with softsort.vjp) ----------------------------------
def _softsort_numpy(name: str, data: Data, opts: Options) -> Runner:
    return _softsort_eager(name, data, opts, np, lambda a: a, lambda: None)


def _softsort_cupy(name: str, data: Data, opts: Options) -> Runner:
    """softsort on CuPy arrays (the GPU run); results are waited for with a stream sync."""
    import cupy as cp

    runner = _softsort_eager(name, data, opts, cp, cp.asarray, cp.cuda.Stream.null.synchronize)
    runner.to_numpy = lambda out: tuple(cp.asnumpy(t) for t in out) if isinstance(out, tuple) else cp.asnumpy(out)
    runner.memory_method = "none"
    return runner


def _softsort_eager(
    name: str, data: Data, opts: Options, xp: Any, asarray: Callable[[np.ndarray], Any], sync: Callable[[], None]
) -> Runner:
    import softsort

    o = opts.softsort()
    x = asarray(data.x)
    forward = _softsort_forward(name, o)
    grad_of = {
        "G1": (softsort.ranks, {}, lambda out: loss_grad_numpy(out, xp.asarray(data.onehot))),
        "G7": (softsort.topk_mask, {"k": EXPERTS_K}, balance_loss_grad_numpy),
        "G8": (softsort.ranks, {}, lambda out: spearman_loss_grad_numpy(out, xp.asarray(data.true_ranks))),
    }
    if forward is not None:

        def run() -> Any:
            out = forward(x)
            sync()
            return out

    elif name in grad_of:
        op, kw, loss = grad_of[name]

        def run() -> Any:
            out, pullback = softsort.vjp(op, x, axis=-1, **kw, **o)
            value, ct = loss(out)
            grad = pullback(ct.astype(x.dtype))
            sync()
            return value, grad

    else:
        w = asarray(data.w)

        def run() -> Any:
            _, pullback = softsort.vjp(softsort.sort, x, **o)
            grad = pullback(w)
            sync()
            return grad

    return Runner(
        run=run,
        to_numpy=lambda out: out,
        iterations=lambda: _softsort_iterations(x, name, opts, asarray),
        memory_method="tracemalloc",
    )


# -- softsort on PyTorch (CPU, autograd) ------------------------------------------------------
def _softsort_torch(name: str, data: Data, opts: Options) -> Runner:
    import torch

    import softsort

    o = opts.softsort()
    tensor, to_numpy, synced = _torch_io(opts)
    x = tensor(data.x)
    forward = _softsort_forward(name, o)
    loss_of = _loss(name, data, torch, tensor)
    if forward is not None:
        run: Callable[[], Any] = lambda: forward(x)
    elif name == "G1":
        onehot = tensor(data.onehot)

        def run() -> Any:
            logits = x.detach().requires_grad_(True)
            r = softsort.ranks(logits, axis=-1, **o)
            value = torch.mean(torch.relu(MARGIN - torch.sum(onehot * r, dim=1)))
            (grad,) = torch.autograd.grad(value, logits)
            return value.detach(), grad

    elif loss_of is not None:
        op = _softsort_forward("W7" if name == "G7" else "W8", o)

        def run() -> Any:
            xx = x.detach().requires_grad_(True)
            value = loss_of(op(xx))
            (grad,) = torch.autograd.grad(value, xx)
            return value.detach(), grad

    else:
        w = tensor(data.w)

        def run() -> Any:
            xx = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.sum(w * softsort.sort(xx, **o)), xx)
            return grad

    return Runner(
        run=synced(run),
        to_numpy=to_numpy,
        iterations=lambda: _softsort_iterations(x, name, opts, tensor),
    )


def _torch_io(opts: Options) -> tuple[Callable[[np.ndarray], Any], Callable[[Any], Any], Callable[[Any], Any]]:
    """Tensors on ``opts.device``, results back to NumPy, and a run that waits for CUDA."""
    import torch

    def tensor(a: np.ndarray) -> Any:
        return torch.from_numpy(a).to(opts.device)

    def to_numpy(out: Any) -> Any:
        if isinstance(out, tuple):
            return tuple(t.detach().cpu().numpy() for t in out)
        return out.detach().cpu().numpy()

    def synced(run: Callable[[], Any]) -> Callable[[], Any]:
        if not opts.device.startswith("cuda"):
            return run

        def waited() -> Any:
            out = run()
            torch.cuda.synchronize()
            return out

        return waited

    return tensor, to_numpy, synced


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
    if name == "W7" or (forward_only and name == "G7"):
        return lambda x: ots.topk_mask(x, axis=-1, k=EXPERTS_K, **kw)
    if name == "W8" or (forward_only and name == "G8"):
        return lambda x: ots.ranks(x, axis=-1, **kw)
    loss_of = _loss(name, data, jnp, jnp.asarray)
    if loss_of is not None:
        op = _ott_function("W7" if name == "G7" else "W8", data, kw)
        return jax.value_and_grad(lambda x: loss_of(op(x)))
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
    if name[0] != "G":
        raise NotApplicable("only for gradients (forward is the same as 'ott')")
    return _ott_runner(name, data, {**opts.solver(), "implicit_diff": None})


# -- torchsort (isotonic regression, O(n log n), no Sinkhorn) ---------------------------------
def _torchsort(name: str, data: Data, opts: Options) -> Runner:
    import torch
    import torchsort

    s = opts.torchsort_strength
    tensor, to_numpy, synced = _torch_io(opts)
    x = tensor(data.x)
    x2 = x if x.ndim == 2 else x[None]

    def soft_sort(t: Any) -> Any:
        return torchsort.soft_sort(t, regularization_strength=s)

    def soft_rank(t: Any) -> Any:  # torchsort's ranks are 1-based; softsort's are 0-based
        return torchsort.soft_rank(t, regularization_strength=s) - 1.0

    if name in ("W1", "W2"):
        run: Callable[[], Any] = lambda: soft_sort(x2)
    elif name in ("W3", "W4", "W8"):
        run = lambda: soft_rank(x2)
    elif name in ("W7", "G7"):
        raise NotApplicable("torchsort has no top-k mask")
    elif name == "G8":
        loss_of = _loss(name, data, torch, torch.from_numpy)

        def run() -> Any:
            xx = x.detach().requires_grad_(True)
            value = loss_of(soft_rank(xx))
            (grad,) = torch.autograd.grad(value, xx)
            return value.detach(), grad

    elif name == "W5":
        run = lambda: soft_sort(x2)[..., -TOPK:]  # no top-k operator: full sort, then slice
    elif name == "W6":
        n = x.shape[-1]

        def run() -> Any:  # no quantile operator: middle of the soft sort (n even: two values)
            ys = soft_sort(x2)
            return (ys[..., (n - 1) // 2] + ys[..., n // 2]) / 2

    elif name == "G1":
        onehot = tensor(data.onehot)

        def run() -> Any:
            logits = x.detach().requires_grad_(True)
            value = torch.mean(torch.relu(MARGIN - torch.sum(onehot * soft_rank(logits), dim=1)))
            (grad,) = torch.autograd.grad(value, logits)
            return value.detach(), grad

    else:
        w = tensor(data.w)

        def run() -> Any:
            xx = x.detach().requires_grad_(True)
            ys = soft_sort(xx if xx.ndim == 2 else xx[None]).reshape(xx.shape)
            (grad,) = torch.autograd.grad(torch.sum(w * ys), xx)
            return grad

    return Runner(run=synced(run), to_numpy=to_numpy)
