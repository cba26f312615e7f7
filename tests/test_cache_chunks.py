"""Cache-sized chunks of a batch (``Backend.cache_chunk_bytes``) give the unsplit batch's answer.

On a CPU the core solves a batch whose plans exceed the adapter's ``cache_chunk_bytes`` in
chunks that fit the cache (``_operators.cache_rows``, ``Backend.map_chunks``). Rows are
independent problems, so values and gradients must not change. Here the chunk is forced
down to a few rows (the defaults split only batches of many large rows) and every result is
compared with the same call solved at once, on every backend and through every transform:
``softsort.vjp`` (NumPy), ``jax.jit``/``vmap``/``grad``, a batch sharded over two devices,
PyTorch autograd and ``torch.func``. The batch is not a multiple of the chunk, so the last
chunk is shorter (JAX: the rows left over after the equal chunks of ``lax.map``).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import softsort
from conftest import Backend, Lib, available
from softsort import backends
from softsort._core import _operators

B, N = 40, 12
X = np.random.default_rng(3).normal(size=(B, N))
COT = np.random.default_rng(4).normal(size=(B, N))
#: plans of 3 rows of 12 x 12 in float64: 3 rows per chunk for sort and ranks, more for the
#: operators with fewer targets; every operator's batch of 40 is split with a remainder
SMALL = 3 * N * N * 8


def _adapters() -> list[type]:
    """Every adapter class (the framework ones are imported on first use: import them here)."""
    for name in ("_numpy", "_jax", "_torch"):
        try:
            importlib.import_module(f"softsort.backends.{name}")
        except ImportError:
            continue
    found, todo = [], [backends.Backend]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.fixture
def chunked(monkeypatch):
    """``set(nbytes)``: every adapter's chunk size (None: never split); returns the rows chosen."""
    chosen: list[int | None] = []
    original = _operators.cache_rows

    def spy(*args):
        rows = original(*args)
        chosen.append(rows)
        return rows

    monkeypatch.setattr(_operators, "cache_rows", spy)

    def set_bytes(nbytes):
        for cls in _adapters():
            monkeypatch.setattr(cls, "cache_chunk_bytes", lambda self, like, nbytes=nbytes: nbytes, raising=False)
        chosen.clear()
        return chosen

    return set_bytes


def _tol(lib: Lib) -> dict:
    return {"rtol": 1e-9, "atol": 1e-10} if lib.float64 else {"rtol": 2e-4, "atol": 2e-5}


def _value_and_grad(lib: Lib, fun, x, cot, **kw):
    """(value, gradient of <cot, fun(x)>) as NumPy arrays, through the backend's own machinery."""
    if lib.backend is Backend.JAX:
        import jax

        out, pull = jax.vjp(lambda a: fun(a, **kw), x)
        return np.asarray(out), np.asarray(pull(cot[..., : out.shape[-1]])[0])
    if lib.backend is Backend.TORCH:
        import torch

        xt = x.detach().clone().requires_grad_()
        out = fun(xt, **kw)
        (g,) = torch.autograd.grad(out, xt, cot[..., : out.shape[-1]])
        return out.detach().numpy(), g.numpy()
    out, pull = softsort.vjp(fun, x, **kw)
    return lib.to_numpy(out), lib.to_numpy(pull(cot[..., : out.shape[-1]]))


OPERATORS = [
    ("sort", softsort.sort, {}),
    ("sort-topk", softsort.sort, {"topk": 4}),
    ("sort-descending", softsort.sort, {"descending": True}),
    ("ranks", softsort.ranks, {}),
    ("ranks-straight-through", softsort.ranks, {"straight_through": True}),
    ("topk_mask", softsort.topk_mask, {"k": 3}),
    ("quantile", softsort.quantile, {"q": 0.3}),
    ("quantize", softsort.quantize, {"num_levels": 3}),
]


@pytest.mark.parametrize(("name", "fun", "kw"), OPERATORS, ids=[o[0] for o in OPERATORS])
def test_chunked_equals_whole_batch(lib, chunked, name, fun, kw):
    """Values and gradients of every operator, chunked and not, on every backend."""
    del name
    x, cot = lib.asarray(X), lib.asarray(COT)
    chosen = chunked(None)
    ref = _value_and_grad(lib, fun, x, cot, epsilon=0.05, **kw)
    assert not any(chosen)
    chosen = chunked(SMALL)
    got = _value_and_grad(lib, fun, x, cot, epsilon=0.05, **kw)
    assert any(r is not None and r < B for r in chosen), chosen  # the batch was split
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, **_tol(lib))


@pytest.mark.parametrize("kw", [{"mask": "ragged"}, {"implicit_diff": False}], ids=["mask", "unrolled"])
def test_chunked_options(lib, chunked, kw):
    """``mask=`` (each chunk takes its rows' masks) and differentiation through the iterations."""
    if "implicit_diff" in kw and lib.backend not in (Backend.JAX, Backend.TORCH):
        pytest.skip("unrolled differentiation needs a framework with autodiff")
    x, cot = lib.asarray(X), lib.asarray(COT)
    if kw.get("mask") == "ragged":
        lengths = np.arange(B) % (N - 2) + 3
        kw = {"mask": lib.asarray(np.arange(N)[None, :] < lengths[:, None])}
    chunked(None)
    ref = _value_and_grad(lib, softsort.ranks, x, cot, epsilon=0.05, **kw)
    chosen = chunked(SMALL)
    got = _value_and_grad(lib, softsort.ranks, x, cot, epsilon=0.05, **kw)
    assert any(chosen), chosen
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, **_tol(lib))


def test_not_split_where_the_answer_is_the_plan_or_the_squashing_is_custom(lib, chunked):
    """``transport_for_sort`` returns the plan and potentials; a custom squashing may mix rows."""
    x = lib.asarray(X)
    chosen = chunked(SMALL)
    softsort.transport_for_sort(x, epsilon=0.05)
    softsort.ranks(x, epsilon=0.05, squashing_fun=lambda v: 1.0 / (1.0 + lib.xp.exp(-v)))
    assert chosen  # the question was asked ...
    assert not any(chosen), chosen  # ... and the answer was: at once


def test_default_sizes_split_large_cpu_batches_only():
    """The defaults: NumPy splits a batch of large rows, not a small one; unknown libraries never."""
    from softsort.backends import _numpy

    numpy_backend = _numpy.NumpyBackend(np)
    big = np.zeros((4096, 128), dtype=np.float32)
    op = _operators.ranks_op(None, None)
    rows = _operators.cache_rows(numpy_backend, op, big, None)
    assert rows == _numpy.CACHE_CHUNK_BYTES // (128 * 128 * 4)
    assert _operators.cache_rows(numpy_backend, op, big[:8], None) is None  # fits one chunk
    assert backends.Backend(np).cache_chunk_bytes(big) is None


@pytest.mark.backend("jax")
def test_jax_jit_vmap_and_grad_of_chunks(chunked):
    """Under ``jax.jit`` the chunks are one ``lax.map`` (equal chunks, then the rows left over)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = jnp.asarray(X, dtype=jnp.float32)
    cot = jnp.asarray(COT, dtype=jnp.float32)

    def loss(a):
        return jnp.sum(softsort.ranks(a, epsilon=0.05) * cot)

    stacked = jnp.stack([x, -x])
    chunked(None)
    ref_grad = jax.jit(jax.grad(loss))(x)
    ref_vmap = jax.jit(jax.vmap(lambda a: softsort.ranks(a, epsilon=0.05)))(stacked)
    chosen = chunked(3 * N * N * 4)
    grad = jax.jit(jax.grad(loss))(x)
    vmapped = jax.jit(jax.vmap(lambda a: softsort.ranks(a, epsilon=0.05)))(stacked)
    assert 3 in chosen, chosen
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(ref_vmap), rtol=1e-4, atol=1e-5)


@pytest.mark.backend("jax")
def test_jax_sharded_batch_keeps_its_rows(chunked):
    """A batch sharded over two devices: chunk j holds rows j, j + count, ... of each device."""
    jax = pytest.importorskip("jax")
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices: XLA_FLAGS=--xla_force_host_platform_device_count=2")
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("batch",))
    rows = np.random.default_rng(5).normal(size=(16, 6))
    x = jax.device_put(jax.numpy.asarray(rows, dtype=jax.numpy.float32), NamedSharding(mesh, P("batch", None)))
    ref = softsort.ranks(rows, epsilon=0.1)
    chosen = chunked(4 * 6 * 6 * 4)  # 4 rows per chunk: 2 on each device, 4 chunks
    fn = jax.jit(lambda a: softsort.ranks(a, epsilon=0.1))
    out = fn(x)
    assert 4 in chosen, chosen
    assert out.sharding.is_equivalent_to(x.sharding, x.ndim), out.sharding
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)
    hlo = fn.lower(x).compile().as_text()
    assert "f32[2,6,6]" in hlo, "each device should sweep its own 2 rows of a chunk"
    # eagerly the batch is solved whole: consecutive slices would lose the sharding
    eager = softsort.ranks(x, epsilon=0.1)
    assert eager.sharding.is_equivalent_to(x.sharding, x.ndim), eager.sharding
    np.testing.assert_allclose(np.asarray(eager), ref, rtol=1e-4, atol=1e-5)
    # inside shard_map each device splits its own 8 rows (4 per chunk: 2 chunks), gradient too
    per_device = jax.shard_map(
        lambda a: softsort.ranks(a, epsilon=0.1), mesh=mesh, in_specs=P("batch"), out_specs=P("batch")
    )
    cot = np.random.default_rng(6).normal(size=rows.shape)

    def value_and_grad():
        return jax.jit(jax.value_and_grad(lambda a: jax.numpy.sum(per_device(a) * cot)))(x)

    chosen = chunked(None)
    v_ref, g_ref = value_and_grad()
    chosen = chunked(4 * 6 * 6 * 4)
    v, g = value_and_grad()
    assert 4 in chosen, chosen
    assert g.sharding.is_equivalent_to(x.sharding, x.ndim), g.sharding
    np.testing.assert_allclose(float(v), float(v_ref), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not available("torch"), reason="torch not enabled")
@pytest.mark.backend("torch")
def test_torch_func_of_chunks(chunked):
    """``torch.func.grad`` and ``torch.func.vmap`` through the chunk loop."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(X)
    cot = torch.tensor(COT)

    def loss(a):
        return (softsort.ranks(a, epsilon=0.05) * cot).sum()

    stacked = torch.stack([x, -x])
    chunked(None)
    ref_grad = torch.func.grad(loss)(x)
    ref_vmap = torch.func.vmap(lambda a: softsort.ranks(a, epsilon=0.05))(stacked)
    chosen = chunked(SMALL)
    grad = torch.func.grad(loss)(x)
    vmapped = torch.func.vmap(lambda a: softsort.ranks(a, epsilon=0.05))(stacked)
    assert 3 in chosen, chosen
    np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(vmapped.numpy(), ref_vmap.numpy(), rtol=1e-9, atol=1e-10)
