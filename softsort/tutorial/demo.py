"""The operators of the tutorial beside the hard ones, the regularization path and the soft median filter.

``python -m softsort demo`` prints :func:`operator_table` and saves the figures of
:func:`plot_regularization_path` and :func:`plot_median_filter`; the gallery examples call
the same functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

import softsort

from ._deps import quiet_int64_warning, require

__all__ = [
    "X",
    "format_table",
    "load_photo",
    "median_filters",
    "operator_table",
    "plot_median_filter",
    "plot_operators",
    "plot_regularization_path",
    "regularization_path",
    "run_demo",
    "salt_and_pepper",
    "soft_median_filter",
]

#: The tutorial's vector.
X = np.array([1.0, 5.0, 4.0, 8.0, 12.0])
BACKENDS = ("numpy", "jax", "torch")


def _converters(backend: str) -> tuple[Callable[[np.ndarray], Any], Callable[[Any], np.ndarray]]:
    if backend == "numpy":
        return np.asarray, np.asarray
    if backend == "jax":
        jnp = require("jax.numpy")
        return jnp.asarray, np.asarray
    if backend == "torch":
        torch = require("torch")
        return torch.asarray, lambda t: t.detach().cpu().numpy()
    msg = f"unknown backend {backend!r}: use one of {BACKENDS}"
    raise ValueError(msg)


def operator_table(backend: str = "numpy", seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Soft operators on ``X = [1, 5, 4, 8, 12]`` (and a top-5 of 1000 uniform values) beside the hard ones.

    Parameters
    ----------
    backend : {"numpy", "jax", "torch"}
        Array library the soft operators run on (JAX in its default float32 unless x64 is on).
    seed : int
        Seed of the 1000 uniform values.

    Returns
    -------
    list of (str, numpy.ndarray, numpy.ndarray)
        Rows ``(operator, hard result, soft result)``.
    """
    to, back = _converters(backend)
    x = to(X)
    u = np.random.default_rng(seed).uniform(size=1000)
    with quiet_int64_warning():
        rows = [
            ("sort, eps=1e-2 (default)", np.sort(X), back(softsort.sort(x))),
            ("sort, eps=1e-4", np.sort(X), back(softsort.sort(x, epsilon=1e-4))),
            ("sort, eps=1e-1", np.sort(X), back(softsort.sort(x, epsilon=1e-1))),
            ("ranks", np.argsort(np.argsort(X)).astype(float), back(softsort.ranks(x))),
            ("median", np.atleast_1d(np.median(X)), back(softsort.quantile(x, 0.5))),
            ("top-5 of 1000 uniform", np.sort(u)[-5:], back(softsort.sort(to(u), topk=5))),
        ]
    return rows


def format_table(rows: list[tuple[str, np.ndarray, np.ndarray]], backend: str = "numpy") -> str:
    """Format :func:`operator_table` as text.

    Parameters
    ----------
    rows : list
        As returned by :func:`operator_table`.
    backend : str
        Named in the header.

    Returns
    -------
    str
        The table.
    """

    def fmt(v: np.ndarray) -> str:
        return " ".join(f"{float(a):7.3f}" for a in np.ravel(v))

    lines = [
        f"softsort {softsort.__version__} demo, backend: {backend};  x = {X.tolist()}",
        f"{'operator':<26s}{'hard':<42s}soft",
    ]
    lines += [f"{name:<26s}{fmt(h):<42s}{fmt(s)}" for name, h, s in rows]
    return "\n".join(lines)


def plot_operators(path: str | os.PathLike[str] | None = None, seed: int = 0) -> Any:
    """Figure of :func:`operator_table`: soft vs hard sort, ranks, median and top-5.

    Parameters
    ----------
    path : str or path-like, optional
        Where to save the PNG.
    seed : int
        Seed of the 1000 uniform values.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    plt = require("matplotlib.pyplot")
    # 2 x 2, not 1 x 4: at the width of a docs page each panel keeps readable titles and ticks
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.2), layout="constrained")
    axes = axes.ravel()
    pos = np.arange(X.size)
    ax = axes[0]
    ax.plot(pos, np.sort(X), "ko", ms=9, mfc="none", label="hard sort")
    for eps, marker in ((1e-4, "x"), (1e-2, "s"), (1e-1, "^")):
        ax.plot(pos, softsort.sort(X, epsilon=eps), marker + "-", label=f"soft, eps={eps:g}")
    ax.set(title="sort of x = [1, 5, 4, 8, 12]", xlabel="position")
    ax.legend(fontsize="small")
    ax = axes[1]
    w = 0.38
    ax.bar(pos - w / 2, np.argsort(np.argsort(X)), w, color="0.6", label="hard ranks")
    ax.bar(pos + w / 2, softsort.ranks(X), w, label="soft ranks (eps=1e-2)")
    ax.set(title="ranks", xlabel="index in x", xticks=pos)
    ax.legend(fontsize="small")
    ax = axes[2]
    eps_grid = np.logspace(-3, 1, 30)
    ax.semilogx(eps_grid, [float(softsort.quantile(X, 0.5, epsilon=e)[0]) for e in eps_grid], label="soft median")
    ax.axhline(np.median(X), color="k", ls="--", label="hard median")
    ax.axhline(X.mean(), color="0.6", ls=":", label="mean")
    ax.set(title="median vs epsilon", xlabel="epsilon")
    ax.legend(fontsize="small")
    ax = axes[3]
    u = np.random.default_rng(seed).uniform(size=1000)
    ax.plot(np.arange(5), np.sort(u)[-5:], "ko", ms=9, mfc="none", label="hard top-5")
    ax.plot(np.arange(5), softsort.sort(u, topk=5), "s-", label="sort(x, topk=5)")
    ax.set(title="top-5 of 1000 uniform values", xlabel="position")
    ax.legend(fontsize="small")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def regularization_path(x: np.ndarray = X, epsilons: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Soft sort and soft ranks of ``x`` for each epsilon.

    Parameters
    ----------
    x : numpy.ndarray
        1-D values.
    epsilons : numpy.ndarray, optional
        Default ``logspace(-3, 1, 41)``: 1e-3 .. 10.

    Returns
    -------
    epsilons, sorted, ranks : numpy.ndarray
        ``(E,)``, ``(E, n)`` and ``(E, n)``.
    """
    eps = np.logspace(-3, 1, 41) if epsilons is None else np.asarray(epsilons)
    sorted_ = np.stack([softsort.sort(x, epsilon=e) for e in eps])
    ranks = np.stack([softsort.ranks(x, epsilon=e) for e in eps])
    return eps, sorted_, ranks


def plot_regularization_path(path: str | os.PathLike[str] | None = None, x: np.ndarray = X) -> Any:
    """Two panels: soft-sorted values and soft ranks of ``x`` vs epsilon (log scale).

    Parameters
    ----------
    path : str or path-like, optional
        Where to save the PNG.
    x : numpy.ndarray
        The values (default ``[1, 5, 4, 8, 12]``).

    Returns
    -------
    matplotlib.figure.Figure
        The figure. The lines never cross: soft sort is increasing and soft ranks keep the
        order of ``x`` at every epsilon.
    """
    plt = require("matplotlib.pyplot")
    eps, sorted_, ranks = regularization_path(x)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for j in range(sorted_.shape[1]):
        a0.semilogx(eps, sorted_[:, j], label=f"sorted[{j}] (hard {np.sort(x)[j]:g})")
    for i in range(ranks.shape[1]):
        a1.semilogx(eps, ranks[:, i], label=f"rank of x[{i}] = {x[i]:g}")
    a0.set(title="soft sort vs epsilon", xlabel="epsilon", ylabel="value")
    a1.set(title="soft ranks vs epsilon", xlabel="epsilon", ylabel="rank")
    a0.legend(fontsize="small")
    a1.legend(fontsize="small")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def load_photo(downsample: int = 4) -> np.ndarray:
    """scikit-learn's ``china.jpg`` in grayscale, in [0, 1], block-averaged by ``downsample``.

    Parameters
    ----------
    downsample : int
        Block size of the averaging (4: 106 x 160 pixels).

    Returns
    -------
    numpy.ndarray
        2-D float64 image.
    """
    datasets = require("sklearn.datasets")
    rgb = datasets.load_sample_image("china.jpg").astype(np.float64) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114])
    h, w = (s // downsample * downsample for s in gray.shape)
    return np.asarray(gray[:h, :w].reshape(h // downsample, downsample, w // downsample, downsample).mean(axis=(1, 3)))


def salt_and_pepper(image: np.ndarray, fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Set a ``fraction`` of the pixels to 0 or 1 (half each, on average).

    Parameters
    ----------
    image : numpy.ndarray
        Image in [0, 1].
    fraction : float
        Fraction of corrupted pixels.
    seed : int
        Random seed.

    Returns
    -------
    numpy.ndarray
        The noisy copy.
    """
    rng = np.random.default_rng(seed)
    noisy: np.ndarray = image.copy()
    hit = rng.random(image.shape) < fraction
    noisy[hit] = rng.integers(0, 2, size=int(hit.sum())).astype(image.dtype)
    return noisy


def soft_median_filter(image: np.ndarray, epsilon: float, size: int = 3, **options: Any) -> np.ndarray:
    """``size x size`` soft median filter, every patch solved in one batched Sinkhorn.

    Equivalent to ``scipy.ndimage.generic_filter(image, soft_median, size=size)`` (same
    ``"reflect"`` border), but ``generic_filter`` calls its function once per pixel,
    which for softsort means one small Sinkhorn per pixel; here all the patches form a
    ``(H, W, size * size)`` batch and :func:`softsort.quantile` solves them together.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
    epsilon : float
        Entropic regularization.
    size : int
        Side of the window.
    **options
        Other solver options of :func:`softsort.quantile` (``threshold``...). The batch
        stops when all its problems meet ``threshold``, so batched and per-pixel results
        agree to about ``threshold``, not exactly.

    Returns
    -------
    numpy.ndarray
        The filtered image.
    """
    r = size // 2
    padded = np.pad(image, r, mode="symmetric")  # = scipy.ndimage's "reflect"
    patches = np.lib.stride_tricks.sliding_window_view(padded, (size, size))
    patches = patches.reshape(*image.shape, size * size)
    return np.asarray(softsort.quantile(patches, 0.5, axis=-1, epsilon=epsilon, **options)[..., 0])


def median_filters(
    downsample: int = 4, fraction: float = 0.1, epsilons: tuple[float, ...] = (0.01, 1.0), seed: int = 0
) -> dict[str, np.ndarray]:
    """The photo, its noisy copy, the hard 3x3 median filter and soft ones.

    Parameters
    ----------
    downsample : int
        See :func:`load_photo`.
    fraction : float
        Salt-and-pepper fraction.
    epsilons : tuple of float
        Regularizations of the soft medians.
    seed : int
        Noise seed.

    Returns
    -------
    dict
        ``"original"``, ``"noisy"``, ``"hard median"``, and ``"soft median, eps=..."`` images.
    """
    ndimage = require("scipy.ndimage")
    image = load_photo(downsample)
    noisy = salt_and_pepper(image, fraction, seed)
    out = {"original": image, "noisy": noisy, "hard median": ndimage.generic_filter(noisy, np.median, size=3)}
    for eps in epsilons:
        out[f"soft median, eps={eps:g}"] = soft_median_filter(noisy, eps)
    return out


def plot_median_filter(path: str | os.PathLike[str] | None = None, images: dict[str, np.ndarray] | None = None) -> Any:
    """Four panels: noisy photo, hard median filter, soft median filters at eps 0.01 and 1.

    Parameters
    ----------
    path : str or path-like, optional
        Where to save the PNG.
    images : dict, optional
        Output of :func:`median_filters` (computed when omitted).

    Returns
    -------
    matplotlib.figure.Figure
        The figure; titles give the mean absolute error to the clean photo.
    """
    plt = require("matplotlib.pyplot")
    images = median_filters() if images is None else images
    clean = images["original"]
    shown = [k for k in images if k != "original"]
    rows = -(-len(shown) // 2)  # two per row, so that each image stays large at page width
    fig, axes = plt.subplots(rows, 2, figsize=(8, 3.3 * rows), layout="constrained", squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(shown) :]:
        ax.set_axis_off()
    for ax, key in zip(axes, shown, strict=False):
        ax.imshow(images[key], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{key}\nMAE {np.mean(np.abs(images[key] - clean)):.4f}", fontsize="medium")
        ax.set_axis_off()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def run_demo(
    backend: str = "numpy", out: str | os.PathLike[str] | None = "out", log: Callable[[str], None] = print
) -> list[str]:
    """Print the operator table; save the figures when matplotlib is installed.

    Parameters
    ----------
    backend : {"numpy", "jax", "torch"}
        Backend of the table.
    out : str or path-like, optional
        Folder for ``regularization_path.png``, ``median_filter.png`` and ``operators.png``;
        ``None`` skips the figures.
    log : callable
        Receives the output lines.

    Returns
    -------
    list of str
        Paths written.
    """
    log(format_table(operator_table(backend), backend))
    if out is None:
        return []
    missing = [m for m in ("matplotlib", "scipy", "sklearn") if not _importable(m)]
    if missing:
        from ._deps import install_hint

        log(f"figures skipped: {install_hint(missing[0])}")
        return []
    plt = require("matplotlib.pyplot")
    os.makedirs(out, exist_ok=True)
    written = []
    for name, make in (
        ("operators.png", plot_operators),
        ("regularization_path.png", plot_regularization_path),
        ("median_filter.png", plot_median_filter),
    ):
        path = os.path.join(out, name)
        plt.close(make(path))
        written.append(path)
        log(f"wrote {path}")
    return written


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
