"""Learning through soft ranks: the soft 0/1 loss vs cross-entropy, in JAX or PyTorch.

The soft 0/1 loss of a batch of logits ``(B, C)`` with labels ``y`` is

    mean(relu(C - 1 - soft_rank(logits)[i, y_i]))

zero when the true class has the largest logit (rank ``C - 1``). The loop (batches,
evaluation schedule, timing, progress bar, metrics) is shared; :mod:`._jax_model` and
:mod:`._torch_model` provide the model, the jitted/autograd train step and the evaluation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from ._deps import require
from .data import Dataset, batches, load_data

__all__ = [
    "LOSSES",
    "OptimizerConfig",
    "TrainConfig",
    "default_optimizers",
    "plot_curves",
    "run",
    "train",
]

LOSSES = ("soft-error", "cross-entropy")
METRICS = ("soft_error", "cross_entropy", "accuracy")


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer of one run: ``"adamw"`` (with weight decay) or ``"adam"``.

    Attributes
    ----------
    name : str
        ``"adamw"`` or ``"adam"``.
    learning_rate : float
        Step size.
    weight_decay : float
        Decoupled weight decay (AdamW only).
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0


def default_optimizers() -> dict[str, OptimizerConfig]:
    """The original tutorial's optimizers, with a larger step for the small digits data.

    Returns
    -------
    dict
        ``{"soft-error": AdamW(lr=2e-3, wd=1e-4), "cross-entropy": Adam(lr=2e-3)}``.
        (The original used lr ``5e-4`` for one epoch of MNIST at batch 1000; digits has 1437
        training images, so we take batches of 64 and a 4x larger step.)
    """
    return {
        "soft-error": OptimizerConfig("adamw", 2e-3, 1e-4),
        "cross-entropy": OptimizerConfig("adam", 2e-3, 0.0),
    }


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Attributes
    ----------
    epochs : int
        Passes over the training set.
    batch_size : int
        Examples per step.
    seed : int
        Seed of the initialization and of the batch order.
    evals_per_epoch : int
        Evaluations per epoch (at least one, at its end), plus one before training.
    train_eval_size : int
        The training-set curves are measured on the first this-many training examples.
    optimizers : dict
        Loss name -> :class:`OptimizerConfig`.
    """

    epochs: int = 15
    batch_size: int = 64
    seed: int = 0
    evals_per_epoch: int = 1
    train_eval_size: int = 5000
    optimizers: dict[str, OptimizerConfig] = field(default_factory=default_optimizers)


class Trainer(Protocol):
    """What a framework module provides for one (model, loss, optimizer)."""

    def compile(self, x_batches: list[np.ndarray], y_batches: list[np.ndarray]) -> None: ...

    def step(self, x: np.ndarray, y: np.ndarray) -> float: ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]: ...


def _make_trainer(framework: str, loss: str, data: Dataset, opt: OptimizerConfig, seed: int) -> Trainer:
    if framework == "jax":
        from . import _jax_model

        return _jax_model.make_trainer(loss, data, opt, seed)
    if framework == "torch":
        from . import _torch_model

        return _torch_model.make_trainer(loss, data, opt, seed)
    msg = f"unknown framework {framework!r}: use 'jax' or 'torch'"
    raise ValueError(msg)


def train(
    framework: str,
    loss: str,
    data: Dataset,
    config: TrainConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the tutorial CNN with one loss and record its curves.

    Parameters
    ----------
    framework : {"jax", "torch"}
        JAX (flax + optax, jitted step) or PyTorch.
    loss : {"soft-error", "cross-entropy"}
        Objective to minimize.
    data : Dataset
        Training and evaluation sets.
    config : TrainConfig, optional
        Settings (default :class:`TrainConfig`).
    progress : bool
        Show a tqdm progress bar (on stderr) from the start: its first step is the
        preparation (building the model, compiling, the evaluation before training); its
        ``eval_acc`` is the latest evaluation's accuracy.

    Returns
    -------
    dict
        ``step``, ``epoch`` (evaluation points), ``train`` and ``eval`` (each a dict of
        ``soft_error``, ``cross_entropy``, ``accuracy`` lists), ``final_eval_accuracy``,
        ``wall_time_s``, ``prepare_time_s`` (model, compilation and the evaluation before
        training) and ``optimizer``.
    """
    if loss not in LOSSES:
        msg = f"unknown loss {loss!r}: use one of {LOSSES}"
        raise ValueError(msg)
    cfg = config or TrainConfig()
    opt = cfg.optimizers[loss]
    start = time.perf_counter()
    n = data.x_train.shape[0]
    steps_per_epoch = -(-n // cfg.batch_size)
    bar = None
    if progress:
        # The bar comes first, so that the run talks while the model is built and compiled:
        # its first step is that preparation (compilation and the evaluation before training).
        tqdm = require("tqdm").tqdm
        bar = tqdm(total=1 + cfg.epochs * steps_per_epoch, desc=f"{framework} {loss}", unit="step", leave=True)
        bar.set_postfix_str("compiling and evaluating the initial model")
    trainer = _make_trainer(framework, loss, data, opt, cfg.seed)
    checkpoints = {round(steps_per_epoch * (k + 1) / cfg.evals_per_epoch) for k in range(cfg.evals_per_epoch)}
    xt, yt = data.x_train[: cfg.train_eval_size], data.y_train[: cfg.train_eval_size]
    curves: dict[str, Any] = {
        "step": [],
        "epoch": [],
        "train": {m: [] for m in METRICS},
        "eval": {m: [] for m in METRICS},
    }

    def record(step: int) -> None:
        curves["step"].append(step)
        curves["epoch"].append(step / steps_per_epoch)
        for split, (x, y) in (("train", (xt, yt)), ("eval", (data.x_eval, data.y_eval))):
            for k, v in trainer.evaluate(x, y).items():
                curves[split][k].append(float(v))

    # Every batch shape of the run (a full batch, and the last one of an epoch if it is smaller).
    sizes = sorted({min(cfg.batch_size, n), n - (steps_per_epoch - 1) * cfg.batch_size})
    trainer.compile([data.x_train[:s] for s in sizes], [data.y_train[:s] for s in sizes])
    record(0)
    curves["prepare_time_s"] = time.perf_counter() - start
    postfix = {"eval_acc": f"{curves['eval']['accuracy'][-1]:.3f}"}
    if bar is not None:
        # Restart the bar's clock and rate after the preparation step, so that the rate and
        # the time left are those of training steps; the postfix keeps the preparation time.
        bar.reset()
        bar.n = bar.last_print_n = 1
        postfix["prepared"] = f"{curves['prepare_time_s']:.1f}s"
        bar.set_postfix(postfix)
    step = 0
    for epoch in range(cfg.epochs):
        for i, idx in enumerate(batches(n, cfg.batch_size, cfg.seed, epoch), start=1):
            value = trainer.step(data.x_train[idx], data.y_train[idx])
            step += 1
            if i in checkpoints:
                record(step)
                postfix["eval_acc"] = f"{curves['eval']['accuracy'][-1]:.3f}"  # the evaluation just made
            if bar is not None:
                if i % 10 == 0 or i in checkpoints:
                    postfix["loss"] = f"{value:.4f}"
                    bar.set_postfix(postfix, refresh=False)
                bar.update(1)
    if bar is not None:
        bar.close()
    curves["final_eval_accuracy"] = curves["eval"]["accuracy"][-1]
    curves["wall_time_s"] = time.perf_counter() - start
    curves["optimizer"] = asdict(opt)
    return curves


def plot_curves(metrics: dict[str, Any], path: str | os.PathLike[str] | None = None, title: str | None = None) -> Any:
    """Train (dashed) and eval (solid) curves of every trained loss, three panels.

    Parameters
    ----------
    metrics : dict
        Loss name -> the dict :func:`train` returns (extra keys are ignored).
    path : str or path-like, optional
        Where to save the PNG.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    plt = require("matplotlib.pyplot")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    colors = {"soft-error": "C0", "cross-entropy": "C1"}
    names = {"soft_error": "soft 0/1 loss", "cross_entropy": "cross-entropy", "accuracy": "accuracy"}
    for loss in LOSSES:
        if loss not in metrics or not isinstance(metrics[loss], dict):
            continue
        c = metrics[loss]
        for ax, m in zip(axes, METRICS, strict=True):
            ax.plot(c["epoch"], c["train"][m], "--", color=colors[loss], label=f"{loss} (train)")
            ax.plot(c["epoch"], c["eval"][m], "-", color=colors[loss], label=f"{loss} (eval)")
    for ax, m in zip(axes, METRICS, strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(names[m])
        if m != "accuracy":
            ax.set_yscale("log")
    axes[2].set_ylim(top=1.0)
    axes[2].legend(loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def run(
    framework: str = "jax",
    losses: Sequence[str] = LOSSES,
    data: str | Dataset = "digits",
    epochs: int | None = None,
    out: str | os.PathLike[str] | None = None,
    config: TrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train with each loss, then write ``metrics.json`` and ``training_curves.png`` to ``out``.

    Parameters
    ----------
    framework : {"jax", "torch"}
        Framework to train with.
    losses : sequence of str
        Losses to train with, each from scratch.
    data : str or Dataset
        ``"digits"``, ``"mnist:DIR"`` or a :class:`~softsort.tutorial.data.Dataset`.
    epochs : int, optional
        Overrides ``config.epochs``.
    out : str or path-like, optional
        Output folder (created); nothing is written when ``None``.
    config : TrainConfig, optional
        Other settings.
    progress : bool
        Show progress bars.
    log : callable, optional
        Receives a summary line per loss.

    Returns
    -------
    dict
        ``{"framework", "data", "config", <loss>: curves...}`` as written to ``metrics.json``.
    """
    dataset = load_data(data) if isinstance(data, str) else data
    cfg = config or TrainConfig()
    if epochs is not None:
        cfg = TrainConfig(**{**asdict(cfg), "epochs": epochs, "optimizers": cfg.optimizers})
    if framework not in ("jax", "torch"):
        msg = f"unknown framework {framework!r}: use 'jax' or 'torch'"
        raise ValueError(msg)
    metrics: dict[str, Any] = {
        "framework": framework,
        "data": dataset.name,
        "train_size": int(dataset.x_train.shape[0]),
        "eval_size": int(dataset.x_eval.shape[0]),
        "config": {k: v for k, v in asdict(cfg).items() if k != "optimizers"},
    }
    for loss in losses:
        curves = train(framework, loss, dataset, cfg, progress=progress)
        metrics[loss] = curves
        if log is not None:
            log(
                f"{framework} {loss}: final eval accuracy {curves['final_eval_accuracy']:.4f} "
                f"({curves['wall_time_s']:.1f} s)"
            )
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "metrics.json"), "w") as fh:
            json.dump(metrics, fh, indent=1)
        fig = plot_curves(metrics, os.path.join(out, "training_curves.png"), title=f"{framework}, {dataset.name}")
        require("matplotlib.pyplot").close(fig)
    return metrics


def soft_error_numpy(logits: np.ndarray, labels: np.ndarray) -> float:
    """The soft 0/1 loss with NumPy arrays (for checks; training uses the framework's).

    Parameters
    ----------
    logits : numpy.ndarray
        ``(B, C)`` scores.
    labels : numpy.ndarray
        ``(B,)`` integer labels.

    Returns
    -------
    float
        ``mean(relu(C - 1 - soft_rank(logits)[i, labels_i]))``.
    """
    import softsort

    c = logits.shape[-1]
    r = softsort.ranks(logits, axis=-1)
    true_rank = np.sum(np.eye(c)[labels] * r, axis=1)
    return float(np.mean(np.maximum(c - 1 - true_rank, 0.0)))
