"""One data pipeline for both frameworks: digits (bundled with scikit-learn) or MNIST IDX files.

Everything here is NumPy; the JAX and PyTorch training loops convert the batches.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ._deps import require

__all__ = ["Dataset", "IDXError", "batches", "load_data", "load_digits", "load_mnist", "read_idx", "write_idx"]

#: IDX type codes (third byte of the magic number) -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "eval_images": "t10k-images-idx3-ubyte",
    "eval_labels": "t10k-labels-idx1-ubyte",
}


class IDXError(ValueError):
    """A file is not a valid IDX file (bad magic, wrong dimensions, truncated data...)."""


class Dataset(NamedTuple):
    """Images and labels, split into a training and an evaluation set.

    Attributes
    ----------
    x_train, x_eval
        ``float32`` images of shape ``(N, H, W, 1)`` with values in ``[0, 1]``.
    y_train, y_eval
        ``int64`` labels of shape ``(N,)`` in ``[0, num_classes)``.
    name
        Human-readable description of the data.
    num_classes
        Number of classes.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    name: str
    num_classes: int = 10

    def subset(self, train: int | None = None, eval: int | None = None) -> Dataset:
        """The first ``train`` training and ``eval`` evaluation examples (``None``: all).

        Parameters
        ----------
        train, eval : int, optional
            How many examples to keep.

        Returns
        -------
        Dataset
            A smaller dataset (views, no copy).
        """
        return self._replace(
            x_train=self.x_train[:train],
            y_train=self.y_train[:train],
            x_eval=self.x_eval[:eval],
            y_eval=self.y_eval[:eval],
        )


# -- IDX ----------------------------------------------------------------------------------------
def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            msg = f"{os.fspath(path)}: corrupt or truncated gzip data ({exc})"
            raise IDXError(msg) from exc
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Parameters
    ----------
    path : str or path-like
        The file. Gzip compression is detected from the content, not the name.

    Returns
    -------
    numpy.ndarray
        The array, in native byte order, with the dtype and shape the header declares.

    Raises
    ------
    IDXError
        Bad magic number (the first two bytes must be zero, the third a known type code),
        zero dimensions, a truncated header or body, or trailing bytes.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from softsort.tutorial.data import read_idx, write_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "a-idx2-ubyte")
    >>> write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> read_idx(path)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
    """
    name = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        msg = f"{name}: not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic number"
        raise IDXError(msg)
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in IDX_DTYPES:
        msg = (
            f"{name}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTDD with type "
            f"TT in {{{', '.join(f'{c:02x}' for c in IDX_DTYPES)}}} and DD dimensions)"
        )
        raise IDXError(msg)
    if ndim == 0:
        msg = f"{name}: IDX header declares 0 dimensions"
        raise IDXError(msg)
    header = 4 + 4 * ndim
    if len(raw) < header:
        msg = f"{name}: truncated IDX header: {ndim} dimensions need {header} bytes, the file has {len(raw)}"
        raise IDXError(msg)
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header
    if body != expected:
        kind = "truncated" if body < expected else "trailing bytes in"
        msg = f"{name}: {kind} IDX data: shape {shape} of {dtype.name} needs {expected} bytes, found {body}"
        raise IDXError(msg)
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (used by the tests to make small MNIST-like files).

    Parameters
    ----------
    path : str or path-like
        Destination. Gzipped when ``compress`` is true, or when ``None`` and the name ends in ``.gz``.
    array : numpy.ndarray
        Array of one of the IDX dtypes (uint8, int8, int16, int32, float32, float64).
    compress : bool, optional
        Force or forbid gzip compression.
    """
    a = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(a.dtype.newbyteorder("="))
    if code is None:
        msg = f"write_idx: dtype {a.dtype} has no IDX type code"
        raise ValueError(msg)
    data = struct.pack(">HBB", 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    data += a.astype(IDX_DTYPES[code]).tobytes()
    if compress or (compress is None and os.fspath(path).endswith(".gz")):
        data = gzip.compress(data)
    with open(path, "wb") as fh:
        fh.write(data)


def _find(directory: str, stem: str) -> str:
    candidates = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
    for c in candidates:
        p = os.path.join(directory, c)
        if os.path.isfile(p):
            return p
    msg = f"MNIST file {stem}[.gz] not found in {directory!r}"
    raise FileNotFoundError(msg)


def _mnist_pair(directory: str, images_stem: str, labels_stem: str) -> tuple[np.ndarray, np.ndarray]:
    ipath, lpath = _find(directory, images_stem), _find(directory, labels_stem)
    images, labels = read_idx(ipath), read_idx(lpath)
    if images.ndim != 3 or images.dtype != np.uint8:
        msg = f"{ipath}: expected uint8 images of shape (N, rows, cols), got {images.dtype} {images.shape}"
        raise IDXError(msg)
    if labels.ndim != 1 or labels.dtype != np.uint8:
        msg = f"{lpath}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}"
        raise IDXError(msg)
    if images.shape[0] != labels.shape[0]:
        msg = f"{ipath} has {images.shape[0]} images but {lpath} has {labels.shape[0]} labels"
        raise IDXError(msg)
    if labels.size and labels.max() > 9:
        msg = f"{lpath}: labels must be digits 0..9, found {int(labels.max())}"
        raise IDXError(msg)
    return images, labels


def load_mnist(directory: str | os.PathLike[str]) -> Dataset:
    """Load MNIST from the four standard IDX files in ``directory``.

    Parameters
    ----------
    directory : str or path-like
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped
        (``.gz``) and optionally with a dot before ``idx``.

    Returns
    -------
    Dataset
        The 60000 training and 10000 test images (test = evaluation set), scaled to [0, 1].

    Raises
    ------
    FileNotFoundError
        A file is missing.
    IDXError
        A file is malformed, or images and labels disagree.
    """
    d = os.fspath(directory)
    if not os.path.isdir(d):
        msg = f"MNIST directory {d!r} does not exist"
        raise FileNotFoundError(msg)
    xtr, ytr = _mnist_pair(d, MNIST_FILES["train_images"], MNIST_FILES["train_labels"])
    xev, yev = _mnist_pair(d, MNIST_FILES["eval_images"], MNIST_FILES["eval_labels"])
    if xtr.shape[1:] != xev.shape[1:]:
        msg = f"MNIST training images are {xtr.shape[1:]} but test images are {xev.shape[1:]}"
        raise IDXError(msg)
    scale = np.float32(1.0 / 255.0)
    return Dataset(
        (xtr[..., None] * scale).astype(np.float32),
        ytr.astype(np.int64),
        (xev[..., None] * scale).astype(np.float32),
        yev.astype(np.int64),
        f"MNIST from {d}",
    )


def load_digits(eval_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, offline), split stratified.

    Parameters
    ----------
    eval_fraction : float
        Fraction of the images held out for evaluation.
    seed : int
        Seed of the split.

    Returns
    -------
    Dataset
        1437 training and 360 evaluation images (with the defaults), scaled to [0, 1].
    """
    datasets = require("sklearn.datasets")
    model_selection = require("sklearn.model_selection")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    xtr, xev, ytr, yev = model_selection.train_test_split(x, y, test_size=eval_fraction, random_state=seed, stratify=y)
    return Dataset(xtr, ytr, xev, yev, "scikit-learn digits (8x8)")


def load_data(spec: str = "digits") -> Dataset:
    """Load the data named by ``spec``: ``"digits"`` or ``"mnist:DIR"``.

    Parameters
    ----------
    spec : str
        ``"digits"`` (default, offline) or ``"mnist:DIR"`` with ``DIR`` holding the IDX files.

    Returns
    -------
    Dataset
        The data.

    Raises
    ------
    ValueError
        Unknown ``spec``.
    """
    if spec == "digits":
        return load_digits()
    if spec.startswith("mnist:") and len(spec) > len("mnist:"):
        return load_mnist(spec[len("mnist:") :])
    msg = f"unknown data {spec!r}: use 'digits' or 'mnist:DIR'"
    raise ValueError(msg)


def batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterator[np.ndarray]:
    """Shuffled index batches for one epoch (the same for every framework).

    Parameters
    ----------
    n : int
        Number of examples.
    batch_size : int
        Batch size; the last batch may be smaller.
    seed, epoch : int
        Together they fix the permutation.

    Yields
    ------
    numpy.ndarray
        Indices of one batch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
