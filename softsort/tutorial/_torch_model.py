"""The tutorial CNN and its train step in PyTorch (autograd)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

import softsort

from ._deps import require
from .data import Dataset

EVAL_CHUNK = 2000


def make_cnn(num_classes: int, image_shape: tuple[int, ...]) -> Any:
    """Two conv blocks (32 and 64 channels, 3x3, ReLU, 2x2 average pooling), dense 512, dense ``num_classes``.

    Parameters
    ----------
    num_classes : int
        Number of outputs.
    image_shape : tuple of int
        ``(H, W, 1)``; inputs are ``(B, H, W, 1)`` like the JAX model's (moved to NCHW inside).

    Returns
    -------
    torch.nn.Module
        The model.
    """
    torch = require("torch")
    nn = torch.nn
    h, w = image_shape[0] // 4, image_shape[1] // 4

    module: Any = nn.Module  # a runtime class of an untyped framework

    class CNN(module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1),
                nn.ReLU(),
                nn.AvgPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(64 * h * w, 512),
                nn.ReLU(),
                nn.Linear(512, num_classes),
            )

        def forward(self, x: Any) -> Any:
            return self.features(x.permute(0, 3, 1, 2))

    return CNN()


def losses(logits: Any, labels: Any) -> dict[str, Any]:
    """Soft 0/1 loss, cross-entropy and accuracy of a batch (torch tensors).

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, C)`` scores.
    labels : torch.Tensor
        ``(B,)`` integer labels.

    Returns
    -------
    dict
        ``soft_error``, ``cross_entropy`` and ``accuracy`` (0-d tensors, batch means).
    """
    torch = require("torch")
    f = torch.nn.functional
    c = logits.shape[-1]
    one_hot = f.one_hot(labels, c).to(logits.dtype)
    soft_ranks = softsort.ranks(logits, axis=-1)
    soft_error = torch.mean(torch.relu(c - 1 - torch.sum(one_hot * soft_ranks, dim=1)))
    cross_entropy = f.cross_entropy(logits, labels)
    accuracy = torch.mean((torch.argmax(logits, dim=-1) == labels).to(logits.dtype))
    return {"soft_error": soft_error, "cross_entropy": cross_entropy, "accuracy": accuracy}


class TorchTrainer:
    """Model, optimizer, step and evaluation of one run.

    Steps and evaluations run with ``threads`` intra-op threads (default 1, restored
    afterwards): the tensors are tiny, and on a small shared CPU the synchronization of
    several threads costs far more than it saves (30x slower steps with 2 threads on a
    busy 2-core machine).
    """

    def __init__(self, loss: str, data: Dataset, opt: Any, seed: int, threads: int | None = 1) -> None:
        torch = require("torch")
        self.torch = torch
        self.threads = threads
        torch.manual_seed(seed)
        self.model = make_cnn(data.num_classes, data.x_train.shape[1:])
        if opt.name == "adamw":
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=opt.learning_rate, weight_decay=opt.weight_decay)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=opt.learning_rate)
        self.key = "soft_error" if loss == "soft-error" else "cross_entropy"

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        previous = self.torch.get_num_threads()
        if self.threads is not None:
            self.torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            self.torch.set_num_threads(previous)

    def compile(self, x_batches: list[np.ndarray], y_batches: list[np.ndarray]) -> None:
        """Nothing to compile: PyTorch runs eagerly (kept for the common trainer interface)."""

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on a batch; returns the batch loss."""
        torch = self.torch
        with self._threads():
            self.model.train()
            self.opt.zero_grad(set_to_none=True)
            value = losses(self.model(torch.from_numpy(x)), torch.from_numpy(y))[self.key]
            value.backward()
            self.opt.step()
        return float(value.detach())

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Mean metrics over ``x, y`` (in chunks, no gradients)."""
        torch = self.torch
        self.model.eval()
        totals: dict[str, float] = {}
        with torch.no_grad(), self._threads():
            for s in range(0, x.shape[0], EVAL_CHUNK):
                xb, yb = torch.from_numpy(x[s : s + EVAL_CHUNK]), torch.from_numpy(y[s : s + EVAL_CHUNK])
                for k, v in losses(self.model(xb), yb).items():
                    totals[k] = totals.get(k, 0.0) + float(v) * xb.shape[0]
        return {k: v / x.shape[0] for k, v in totals.items()}


def make_trainer(loss: str, data: Dataset, opt: Any, seed: int) -> TorchTrainer:
    """Build the PyTorch trainer (see :class:`TorchTrainer`)."""
    return TorchTrainer(loss, data, opt, seed)
