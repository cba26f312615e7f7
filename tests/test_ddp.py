"""Distributed PyTorch: a ``DistributedDataParallel`` step through soft ranks, on 2 processes.

Two processes (gloo, ``tcp://127.0.0.1``, ``torch.multiprocessing.spawn``) each take half
of a batch through the tutorial's CNN and its soft 0/1 loss; DDP averages their gradients.
With equal halves and a loss that is a batch mean, that average is the gradient of one
process on the whole batch: checked in float64 to 1e-12.
"""

from __future__ import annotations

import importlib
import socket

import numpy as np
import pytest

from conftest import available

pytestmark = pytest.mark.skipif(not available("torch"), reason="torch not enabled")

IMAGE = (4, 4, 1)
CLASSES = 3
SAMPLES = 8  # 4 per process


def tutorial_torch_model():
    """The tutorial's PyTorch model module (the one place that names its package)."""
    return importlib.import_module("softsort.tutorial._torch_model")


def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(SAMPLES, *IMAGE)), rng.integers(0, CLASSES, size=SAMPLES)


def model_and_loss():
    import torch

    module = tutorial_torch_model()
    torch.manual_seed(0)
    model = module.make_cnn(CLASSES, IMAGE).double()

    def loss(m, images, labels):
        return module.losses(m(torch.from_numpy(images)), torch.from_numpy(labels))["soft_error"]

    return model, loss


def _ddp_step(rank: int, world: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, loss = model_and_loss()
        ddp = DistributedDataParallel(model)
        images, labels = batch()
        mine = slice(rank * SAMPLES // world, (rank + 1) * SAMPLES // world)
        loss(ddp, images[mine], labels[mine]).backward()
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
        torch.save(grads, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_averaged_gradients_equal_one_process_on_the_whole_batch(tmp_path) -> None:
    import torch
    import torch.multiprocessing as mp

    out = str(tmp_path / "grads")
    mp.spawn(_ddp_step, args=(2, free_port(), out), nprocs=2, join=True)
    model, loss = model_and_loss()
    images, labels = batch()
    value = loss(model, images, labels)
    assert float(value.detach()) > 0  # the loss has a gradient to compare
    value.backward()
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad.abs().max()) > 0, name
        for g in ranks:  # DDP leaves the same averaged gradient on every process
            torch.testing.assert_close(g[name], p.grad, rtol=1e-12, atol=1e-12)
