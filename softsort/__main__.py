"""``python -m softsort demo``: the operators on a small vector beside the hard ones."""

from __future__ import annotations

import sys

import numpy as np

import softsort


def demo() -> None:
    x = np.array([1.0, 5.0, 4.0, 8.0, 12.0])
    rows = [
        ("hard sort", np.sort(x)),
        ("soft sort eps=1e-2", softsort.sort(x)),
        ("soft sort eps=1e-4", softsort.sort(x, epsilon=1e-4)),
        ("soft sort eps=1e-1", softsort.sort(x, epsilon=1e-1)),
        ("hard ranks", np.argsort(np.argsort(x)).astype(float)),
        ("soft ranks", softsort.ranks(x)),
        ("hard median", np.atleast_1d(np.median(x))),
        ("soft median", softsort.quantile(x, 0.5)),
    ]
    print(f"x = {x}")
    for name, values in rows:
        print(f"{name:>20s}: " + " ".join(f"{v:7.3f}" for v in values))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["demo"]:
        print("usage: python -m softsort demo", file=sys.stderr)
        return 2
    demo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
