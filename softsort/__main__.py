"""Command line: ``python -m softsort demo`` and ``python -m softsort train``.

A thin front end: the work is done by the ``softsort.tutorial`` package (shipped with
softsort), imported lazily so that ``import softsort`` stays free of matplotlib, JAX and
PyTorch.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    from softsort.tutorial.training import TrainConfig  # numpy only: no framework is imported

    cfg = TrainConfig()
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m softsort", description="softsort tutorial: demo and training.", formatter_class=fmt
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,train}")
    demo = sub.add_parser(
        "demo",
        help="soft operators beside the hard ones; regularization path and soft median filter figures",
        description="Print the soft operators on x=[1,5,4,8,12] beside the hard ones, and write "
        "regularization_path.png, median_filter.png and operators.png (needs matplotlib, scipy, scikit-learn).",
        formatter_class=fmt,
    )
    demo.add_argument("--backend", choices=("numpy", "jax", "torch"), default="numpy", help="array library")
    demo.add_argument("--out", default="out", help="folder for the figures")
    demo.add_argument("--no-figures", action="store_true", help="only print the table")
    train = sub.add_parser(
        "train",
        help="train a small CNN with the soft 0/1 loss and/or cross-entropy",
        description="Train the tutorial CNN through soft ranks (soft 0/1 loss) and with cross-entropy; "
        "write metrics.json and training_curves.png.",
        formatter_class=fmt,
    )
    train.add_argument("--framework", choices=("jax", "torch"), default="jax", help="jax (flax+optax) or torch")
    train.add_argument(
        "--loss", choices=("soft-error", "cross-entropy", "both"), default="both", help="loss to train with"
    )
    train.add_argument("--data", default="digits", help="'digits' (scikit-learn, offline) or 'mnist:DIR'")
    train.add_argument("--epochs", type=int, default=cfg.epochs, help="passes over the training set")
    train.add_argument("--batch-size", type=int, default=cfg.batch_size, help="examples per step")
    train.add_argument("--seed", type=int, default=cfg.seed, help="seed of the initialization and batch order")
    # The default depends on --framework, so it is written out instead of shown as None.
    train.add_argument(
        "--out", default=argparse.SUPPRESS, help="output folder (default: out/train-<framework>, e.g. out/train-jax)"
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar (drawn on stderr)")
    return parser


def _missing(modules: list[str]) -> str | None:
    import importlib.util

    from softsort.tutorial._deps import EXTRAS, install_command

    absent = [name for name in modules if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    names = ", ".join(EXTRAS.get(n, (n, ""))[0] for n in absent)
    return f"{names} not installed; install with: {install_command(absent)}"


def _demo(args: argparse.Namespace) -> int:
    from softsort.tutorial import demo
    from softsort.tutorial._deps import MissingDependencyError

    try:
        demo.run_demo(args.backend, None if args.no_figures else args.out)
    except MissingDependencyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    from softsort.tutorial import training

    framework_deps = ["jax", "flax", "optax"] if args.framework == "jax" else ["torch"]
    needed = [*framework_deps, "matplotlib"]
    if args.data == "digits":
        needed.append("sklearn")
    if not args.no_progress:
        needed.append("tqdm")
    hint = _missing(needed)
    if hint is not None:
        print(
            f"error: python -m softsort train --framework {args.framework} needs more packages: {hint}", file=sys.stderr
        )
        return 1
    if args.epochs < 1:
        print("error: --epochs must be at least 1", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    from dataclasses import replace

    cfg = replace(training.TrainConfig(), epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    losses = training.LOSSES if args.loss == "both" else (args.loss,)
    out = getattr(args, "out", None) or f"out/train-{args.framework}"
    try:
        metrics = training.run(args.framework, losses, args.data, None, out, config=cfg, progress=not args.no_progress)
    except (OSError, ValueError) as exc:  # missing or malformed MNIST files, bad --data
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{loss}: {metrics[loss]['final_eval_accuracy']:.4f}" for loss in losses)
    print(f"final eval accuracy ({metrics['data']}, {args.framework}): {summary}")
    print(f"wrote {out}/metrics.json and {out}/training_curves.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    args = _parser().parse_args(argv)
    return _demo(args) if args.command == "demo" else _train(args)


if __name__ == "__main__":
    raise SystemExit(main())
