"""PyTorch specifics: torch.func, no_grad, low-precision dtypes, devices."""

from __future__ import annotations

import numpy as np
import pytest

import softsort
from conftest import available

pytestmark = [
    pytest.mark.backend("torch"),
    pytest.mark.skipif(not available("torch"), reason="PyTorch backend not enabled"),
]
torch = pytest.importorskip("torch")

X = torch.asarray(np.random.default_rng(0).normal(size=(4, 12)))


@pytest.mark.parametrize(
    "op",
    [softsort.sort, softsort.ranks, lambda x: softsort.quantile(x, 0.5), lambda x: softsort.topk_mask(x, 3)],
)
def test_func_vmap_equals_batched(op) -> None:
    torch.testing.assert_close(torch.func.vmap(op)(X), op(X), atol=1e-9, rtol=0)


def test_func_grad_equals_autograd() -> None:
    w = torch.asarray(np.random.default_rng(1).normal(size=12))
    f = lambda a: torch.sum(w * softsort.ranks(a, epsilon=0.1))
    g_func = torch.func.grad(f)(X[0])
    x = X[0].clone().requires_grad_(True)
    f(x).backward()
    torch.testing.assert_close(g_func, x.grad)
    g_vmap = torch.func.vmap(torch.func.grad(f))(X)
    torch.testing.assert_close(g_vmap[0], g_func)


def test_no_grad_keeps_nothing() -> None:
    x = X.clone().requires_grad_(True)
    with torch.no_grad():
        out = softsort.ranks(x)
    assert out.grad_fn is None
    assert not out.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computes_in_float32(dtype) -> None:
    x = X.to(dtype).requires_grad_(True)
    out = softsort.ranks(x)
    assert out.dtype == dtype
    ref = softsort.ranks(X.to(dtype).to(torch.float32))
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)
    out.sum().backward()
    assert x.grad is not None
    assert x.grad.dtype == dtype
    assert torch.all(torch.isfinite(x.grad.float()))


def test_tutorial_loss_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, 10, generator=gen, requires_grad=True)
    labels = torch.randint(0, 10, (1000,), generator=gen)
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    loss = torch.relu(9.0 - (one_hot * softsort.ranks(logits, axis=-1)).sum(1)).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(torch.isfinite(logits.grad))
    assert logits.grad.abs().max() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_and_gradient(device) -> None:
    index = 0 if device == "cuda" else 1
    if index >= torch.cuda.device_count():
        pytest.skip(f"no {device}")
    x = X.to(device).requires_grad_(True)
    out = softsort.ranks(x)
    assert out.device == x.device
    out.sum().backward()
    assert x.grad.device == x.device
