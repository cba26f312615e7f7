"""Command line: ``python -m softsort demo`` and ``python -m softsort train``.

A thin front end: the work is done by the ``softsort.tutorial`` package (shipped with
softsort), imported lazily so that ``import softsort`` stays free of matplotlib, JAX and
PyTorch.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m softsort", description="softsort tutorial: demo and training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,train}")
    demo = sub.add_parser(
        "demo",
        help="soft operators beside the hard ones; regularization path and soft median filter figures",
        description="Print the soft operators on x=[1,5,4,8,12] beside the hard ones, and write "
        "regularization_path.png, median_filter.png and operators.png (needs matplotlib, scipy, scikit-learn).",
    )
    demo.add_argument("--backend", choices=("numpy", "jax", "torch"), default="numpy", help="array library (numpy)")
    demo.add_argument("--out", default="out", help="folder for the figures (default: out)")
    demo.add_argument("--no-figures", action="store_true", help="only print the table")
    train = sub.add_parser(
        "train",
        help="train a small CNN with the soft 0/1 loss and/or cross-entropy",
        description="Train the tutorial CNN through soft ranks (soft 0/1 loss) and with cross-entropy; "
        "write metrics.json and training_curves.png.",
    )
    train.add_argument("--framework", choices=("jax", "torch"), default="jax", help="jax (flax+optax) or torch")
    train.add_argument(
        "--loss", choices=("soft-error", "cross-entropy", "both"), default="both", help="loss to train with (both)"
    )
    train.add_argument("--data", default="digits", help="'digits' (scikit-learn, offline; default) or 'mnist:DIR'")
    train.add_argument("--epochs", type=int, default=None, help="passes over the training set (default 15)")
    train.add_argument("--batch-size", type=int, default=None, help="batch size (default 64)")
    train.add_argument("--seed", type=int, default=0, help="random seed (0)")
    train.add_argument("--out", default=None, help="output folder (default: out/train-<framework>)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    if args.epochs is not None and args.epochs < 1:
        print("error: --epochs must be at least 1", file=sys.stderr)
        return 2
    cfg = training.TrainConfig()
    if args.batch_size is not None or args.seed:
        from dataclasses import replace

        cfg = replace(cfg, batch_size=args.batch_size or cfg.batch_size, seed=args.seed)
    losses = training.LOSSES if args.loss == "both" else (args.loss,)
    out = args.out or f"out/train-{args.framework}"
    try:
        metrics = training.run(
            args.framework, losses, args.data, args.epochs, out, config=cfg, progress=not args.no_progress
        )
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
