"""softsort.tutorial and the command line: IDX parser, demo, training (fast settings)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from softsort import __main__ as cli
from softsort.tutorial import _deps, data, demo, training
from softsort.tutorial.data import IDXError, read_idx, write_idx

# The tutorial's own code is NumPy; the tests that train or tabulate with a framework say which.
pytestmark = pytest.mark.backend("numpy")


# -- IDX parser ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip(tmp_path, dtype, suffix):
    a = (np.arange(24) - 5).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, a)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, b)


def _header(code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(s.to_bytes(4, "big") for s in shape)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "shorter than the 4-byte magic"),
        (b"\x00\x00", "shorter than the 4-byte magic"),
        (b"\x01\x00\x08\x01" + b"\x00\x00\x00\x01" + b"\x05", "bad IDX magic"),
        (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x05", "bad IDX magic"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02", "truncated IDX header"),
        (_header(0x08, (2, 3)) + bytes(5), "truncated IDX data"),
        (_header(0x0C, (4,)) + bytes(15), "truncated IDX data"),
        (_header(0x08, (2, 3)) + bytes(7), "trailing bytes"),
        (b"PK\x03\x04 not idx at all", "bad IDX magic"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_idx_rejects_malformed(tmp_path, content, match, compress):
    path = tmp_path / "bad-idx"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(IDXError, match=match):
        read_idx(path)


def test_idx_rejects_corrupt_gzip(tmp_path):
    path = tmp_path / "bad-idx.gz"
    path.write_bytes(gzip.compress(_header(0x08, (10,)) + bytes(10))[:-12])
    with pytest.raises(IDXError, match="gzip"):
        read_idx(path)


def _write_mnist(directory, n_train=12, n_eval=6, rows=28, cols=28, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_eval, rows, cols), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_eval, dtype=np.uint8),
    }
    for name, a in arrays.items():
        write_idx(os.path.join(directory, name + ext), a)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    ds = data.load_data(f"mnist:{tmp_path}")
    assert ds.x_train.shape == (12, 28, 28, 1)
    assert ds.x_eval.shape == (6, 28, 28, 1)
    assert ds.x_train.dtype == np.float32
    assert 0.0 <= ds.x_train.min()
    assert ds.x_train.max() <= 1.0
    np.testing.assert_allclose(ds.x_train[..., 0] * 255, arrays["train-images-idx3-ubyte"], atol=1e-3)
    np.testing.assert_array_equal(ds.y_eval, arrays["t10k-labels-idx1-ubyte"])


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_mnist(tmp_path / "nowhere")
    _write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))  # 6 images, 5 labels
    with pytest.raises(IDXError, match="6 images but"):
        data.load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((6, 1), np.uint8))
    with pytest.raises(IDXError, match="labels of shape"):
        data.load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(6, 12, np.uint8))
    with pytest.raises(IDXError, match=r"digits 0\.\.9"):
        data.load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(6, np.uint8))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((12, 28), np.uint8))
    with pytest.raises(IDXError, match=r"shape \(N, rows, cols\)"):
        data.load_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((12, 28, 28), np.float32))
    with pytest.raises(IDXError, match="uint8 images"):
        data.load_mnist(tmp_path)
    with pytest.raises(ValueError, match="unknown data"):
        data.load_data("cifar")


def test_batches_cover_each_epoch():
    a = np.concatenate(list(data.batches(10, 4, seed=0, epoch=3)))
    np.testing.assert_array_equal(np.sort(a), np.arange(10))
    b = np.concatenate(list(data.batches(10, 4, seed=0, epoch=3)))
    np.testing.assert_array_equal(a, b)


def test_digits():
    pytest.importorskip("sklearn")
    ds = data.load_digits()
    assert ds.x_train.shape == (1437, 8, 8, 1)
    assert ds.x_eval.shape == (360, 8, 8, 1)
    assert set(np.unique(ds.y_eval)) == set(range(10))


# -- dependencies and import hygiene ---------------------------------------------------------
def test_install_hints():
    assert 'softsort-ot[examples]"' in _deps.install_hint("matplotlib.pyplot")
    assert "softsort-ot[examples,jax]" in _deps.install_hint("flax.linen")
    assert 'softsort-ot[torch]"' in _deps.install_hint("torch")
    assert _deps.install_command(["jax", "flax", "matplotlib"]) == 'pip install "softsort-ot[examples,jax]" flax optax'
    assert _deps.install_command(["torch"]) == 'pip install "softsort-ot[torch]"'
    with pytest.raises(_deps.MissingDependencyError, match="pip install"):
        _deps.require("softsort_no_such_module")


def test_import_softsort_is_light():
    code = (
        "import sys, softsort, softsort.__main__; "
        "bad = [m for m in ('matplotlib', 'jax', 'torch', 'flax', 'optax', 'sklearn', 'scipy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": ""})


# -- demo ------------------------------------------------------------------------------------------
def test_operator_table_numpy():
    rows = demo.operator_table("numpy")
    names = [r[0] for r in rows]
    assert names[0].startswith("sort")
    assert "ranks" in names
    assert "median" in names
    for name, hard, soft in rows:
        assert hard.shape == soft.shape, name
    sharp = dict((r[0], r) for r in rows)["sort, eps=1e-4"]
    np.testing.assert_allclose(sharp[2], sharp[1], atol=0.05)
    text = demo.format_table(rows)
    assert "top-5 of 1000 uniform" in text


@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.backend(b)) for b in ("jax", "torch")])
def test_operator_table_backends(backend):
    pytest.importorskip(backend)
    ref = demo.operator_table("numpy")
    for (name, _, a), (_, _, b) in zip(ref, demo.operator_table(backend), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, err_msg=name)


def test_demo_cli_table_only(capsys):
    assert cli.main(["demo", "--no-figures"]) == 0
    assert "soft" in capsys.readouterr().out


def test_demo_cli_without_matplotlib(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    assert cli.main(["demo", "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "ranks" in out
    assert 'pip install "softsort-ot[examples]"' in out
    assert not (tmp_path / "figs").exists()


def test_demo_cli_figures(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    pytest.importorskip("sklearn")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    for name in ("regularization_path.png", "median_filter.png", "operators.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_regularization_path_is_monotone():
    _eps, s, r = demo.regularization_path(epsilons=np.logspace(-3, 1, 9))
    assert (np.diff(s, axis=1) > 0).all()
    assert (np.diff(r[:, np.argsort(demo.X)], axis=1) > 0).all()


def test_soft_median_filter_matches_generic_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    import softsort

    img = np.random.default_rng(0).random((6, 7))
    opts = {"epsilon": 0.1, "threshold": 1e-12, "max_iterations": 20000}
    batched = demo.soft_median_filter(img, **opts)
    per_pixel = ndimage.generic_filter(img, lambda p: softsort.quantile(p, 0.5, **opts)[0], size=3)
    np.testing.assert_allclose(batched, per_pixel, rtol=1e-8, atol=1e-10)
    sharp = demo.soft_median_filter(img, epsilon=1e-3)
    np.testing.assert_allclose(sharp, ndimage.median_filter(img, size=3), atol=0.02)


# -- training --------------------------------------------------------------------------------------
def _tiny_dataset(n_train=64, n_eval=32, seed=0):
    rng = np.random.default_rng(seed)
    protos = rng.random((10, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, n_train + n_eval)
    x = np.clip(protos[y] + 0.1 * rng.standard_normal((y.size, 8, 8)), 0, 1).astype(np.float32)[..., None]
    return data.Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "tiny")


FAST = training.TrainConfig(epochs=1, batch_size=32)


def _check_metrics(metrics, losses):
    for loss in losses:
        c = metrics[loss]
        assert len(c["step"]) == 2  # before training and after the epoch
        for split in ("train", "eval"):
            for k in ("soft_error", "cross_entropy", "accuracy"):
                assert all(np.isfinite(c[split][k])), (loss, split, k)
        assert 0.0 <= c["final_eval_accuracy"] <= 1.0
        assert c["wall_time_s"] > 0


@pytest.mark.parametrize("framework", [pytest.param(f, marks=pytest.mark.backend(f)) for f in ("jax", "torch")])
def test_train_one_epoch(tmp_path, framework, capsys, monkeypatch):
    """One epoch per loss, with the progress bar: it is drawn before the model is built and
    compiled (that preparation is its first step), and ends on the final evaluation's accuracy."""
    if framework == "jax":
        pytest.importorskip("jax")
        pytest.importorskip("flax")
        pytest.importorskip("optax")
    else:
        pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    os.environ.setdefault("MPLBACKEND", "Agg")
    before_build = []
    make = training._make_trainer

    def spy(*args):
        before_build.append(capsys.readouterr().err)  # what the terminal shows while the model is built
        return make(*args)

    monkeypatch.setattr(training, "_make_trainer", spy)
    ds = _tiny_dataset()
    metrics = training.run(framework, data=ds, out=tmp_path, config=FAST, progress=True, log=None)
    _check_metrics(metrics, training.LOSSES)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["soft-error"]["final_eval_accuracy"] == metrics["soft-error"]["final_eval_accuracy"]
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"

    steps = 1 + -(-ds.x_train.shape[0] // FAST.batch_size)  # the preparation step, then the batches
    err = capsys.readouterr().err
    assert len(before_build) == len(training.LOSSES)
    for loss, shown in zip(training.LOSSES, before_build, strict=True):
        assert f"{framework} {loss}" in shown
        assert "compiling" in shown
        assert f"0/{steps}" in shown
    ends = [*before_build[1:], err]  # each loss's bar ends before the next loss's model is built
    for loss, text in zip(training.LOSSES, ends, strict=True):
        last = [seg for seg in re.split(r"[\r\n]", text) if seg.startswith(f"{framework} {loss}")][-1]
        assert f"{steps}/{steps}" in last, last
        shown_acc = re.search(r"eval_acc=([0-9.]+)", last)
        assert shown_acc is not None, last
        assert shown_acc.group(1) == f"{metrics[loss]['final_eval_accuracy']:.3f}", last
        assert metrics[loss]["prepare_time_s"] > 0


@pytest.mark.backend("jax", "torch")
def test_soft_error_loss_agrees_across_frameworks():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((16, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    ref = training.soft_error_numpy(logits.astype(np.float64), labels)
    if importlib.util.find_spec("torch") is not None:
        import torch

        from softsort.tutorial import _torch_model

        got = _torch_model.losses(torch.from_numpy(logits), torch.from_numpy(labels))["soft_error"]
        assert float(got) == pytest.approx(ref, rel=1e-3, abs=1e-4)
    if all(importlib.util.find_spec(m) is not None for m in ("jax", "optax", "flax")):
        import jax.numpy as jnp

        from softsort.tutorial import _deps as deps
        from softsort.tutorial import _jax_model

        with deps.quiet_int64_warning():
            got = _jax_model.losses(jnp.asarray(logits), jnp.asarray(labels))["soft_error"]
        assert float(got) == pytest.approx(ref, rel=1e-3, abs=1e-4)


@pytest.mark.backend("torch")
def test_train_cli_mnist(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    _write_mnist(tmp_path / "mnist", n_train=40, n_eval=20, gz=False)
    out = tmp_path / "out"
    argv = ["train", "--framework", "torch", "--loss", "soft-error", "--data", f"mnist:{tmp_path / 'mnist'}"]
    argv += ["--epochs", "1", "--batch-size", "20", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"soft-error", "framework", "data"}
    assert "cross-entropy" not in metrics
    assert metrics["train_size"] == 40
    assert metrics["eval_size"] == 20
    # a malformed file is reported, not a traceback
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")
    assert cli.main([*argv[:-2], "--out", str(tmp_path / "out2")]) == 1
    assert "truncated IDX header" in capsys.readouterr().err


def test_cli_help_shows_every_default(capsys):
    for command, expected in (
        ("train", ["(default: jax)", "(default: both)", "(default: digits)", "(default: 15)", "(default: 64)"]),
        ("demo", ["(default: numpy)", "(default: out)"]),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main([command, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for item in expected:
            assert item in text, (command, item)
        # every option's help, from its name to the next option, says its default
        blocks = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
        options = [b for b in blocks if b.strip().startswith("--")]
        assert len(options) >= (8 if command == "train" else 3)
        for block in options:
            assert "default" in " ".join(block.split()), (command, block)
    cfg = training.TrainConfig()
    assert (cfg.epochs, cfg.batch_size) == (15, 64)  # the values the help shows are the ones used


def test_train_cli_missing_framework(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("torch", "flax") else real(n, *a))
    assert cli.main(["train", "--framework", "torch"]) == 1
    err = capsys.readouterr().err
    assert "torch" in err
    assert re.search(r'pip install "softsort-ot\[(examples,)?torch\]"', err)
    assert cli.main(["train", "--framework", "jax"]) == 1
    err = capsys.readouterr().err
    assert re.search(r'pip install "softsort-ot\[(examples,)?jax\]" flax optax', err)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(data, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
