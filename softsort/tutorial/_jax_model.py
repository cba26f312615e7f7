"""The tutorial CNN and its train step in JAX (flax.linen + optax, jitted)."""

from __future__ import annotations

from typing import Any

import numpy as np

import softsort

from ._deps import quiet_int64_warning, require
from .data import Dataset

EVAL_CHUNK = 2000


def make_cnn(num_classes: int) -> Any:
    """Two conv blocks (32 and 64 channels, 3x3, ReLU, 2x2 average pooling), dense 512, dense ``num_classes``.

    Parameters
    ----------
    num_classes : int
        Number of outputs.

    Returns
    -------
    flax.linen.Module
        The model; inputs are ``(B, H, W, 1)`` images.
    """
    nn = require("flax.linen")

    module: Any = nn.Module  # a runtime class of an untyped framework

    class CNN(module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), strides=(2, 2))
            x = nn.avg_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), strides=(2, 2))
            x = x.reshape((x.shape[0], -1))
            x = nn.relu(nn.Dense(512)(x))
            return nn.Dense(num_classes)(x)

    return CNN()


def losses(logits: Any, labels: Any) -> dict[str, Any]:
    """Soft 0/1 loss, cross-entropy and accuracy of a batch (JAX arrays).

    Parameters
    ----------
    logits : jax.Array
        ``(B, C)`` scores.
    labels : jax.Array
        ``(B,)`` integer labels.

    Returns
    -------
    dict
        ``soft_error``, ``cross_entropy`` and ``accuracy`` (0-d arrays, batch means).
    """
    jax = require("jax")
    jnp = jax.numpy
    optax = require("optax")
    c = logits.shape[-1]
    one_hot = jax.nn.one_hot(labels, c, dtype=logits.dtype)
    soft_ranks = softsort.ranks(logits, axis=-1)
    soft_error = jnp.mean(jax.nn.relu(c - 1 - jnp.sum(one_hot * soft_ranks, axis=1)))
    cross_entropy = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return {"soft_error": soft_error, "cross_entropy": cross_entropy, "accuracy": accuracy}


class JaxTrainer:
    """Parameters, optimizer state and the jitted step/evaluation of one run."""

    def __init__(self, loss: str, data: Dataset, opt: Any, seed: int) -> None:
        jax = require("jax")
        optax = require("optax")
        jnp = jax.numpy
        model = make_cnn(data.num_classes)
        self.params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *data.x_train.shape[1:]), jnp.float32))
        if opt.name == "adamw":
            tx = optax.adamw(opt.learning_rate, weight_decay=opt.weight_decay)
        else:
            tx = optax.adam(opt.learning_rate)
        self.opt_state = tx.init(self.params)
        key = "soft_error" if loss == "soft-error" else "cross_entropy"

        def objective(params: Any, x: Any, y: Any) -> Any:
            return losses(model.apply(params, x), y)[key]

        @jax.jit
        def step(params: Any, opt_state: Any, x: Any, y: Any) -> Any:
            value, grads = jax.value_and_grad(objective)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, value

        @jax.jit
        def evaluate(params: Any, x: Any, y: Any) -> Any:
            return losses(model.apply(params, x), y)

        self._step, self._evaluate = step, evaluate

    def compile(self, x_batches: list[np.ndarray], y_batches: list[np.ndarray]) -> None:
        """Compile the train step for each batch shape, so that training steps all run compiled.

        The step is a pure function: calling it and dropping its result changes no state.
        """
        with quiet_int64_warning():
            for x, y in zip(x_batches, y_batches, strict=True):
                require("jax").block_until_ready(self._step(self.params, self.opt_state, x, y))

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on a batch; returns the batch loss."""
        with quiet_int64_warning():
            self.params, self.opt_state, value = self._step(self.params, self.opt_state, x, y)
        return float(value)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Mean metrics over ``x, y`` (in chunks)."""
        totals: dict[str, float] = {}
        with quiet_int64_warning():
            for s in range(0, x.shape[0], EVAL_CHUNK):
                out = self._evaluate(self.params, x[s : s + EVAL_CHUNK], y[s : s + EVAL_CHUNK])
                w = min(EVAL_CHUNK, x.shape[0] - s)
                for k, v in out.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * w
        return {k: v / x.shape[0] for k, v in totals.items()}


def make_trainer(loss: str, data: Dataset, opt: Any, seed: int) -> JaxTrainer:
    """Build the JAX trainer (see :class:`JaxTrainer`)."""
    return JaxTrainer(loss, data, opt, seed)
