"""Fixtures and marks that OTT-JAX's ``tests/tools/soft_sort_test.py`` expects (nox -s ott-tests).

Written for softsort from what that test file uses, not taken from OTT-JAX: a ``rng``
fixture (a JAX key), an ``enable_x64`` fixture (float64 inside the test), and a ``fast``
mark whose ``with_args(argnames, argvalues, only_fast=...)`` form parametrizes the test.
Every parametrization runs (``only_fast`` selects a subset in OTT's "fast" CI job only).

Named ``ott_conftest.py`` so that softsort's own suite never loads it as a conftest; the
nox session copies it, as ``conftest.py``, next to a rewritten copy of OTT's test file.
JAX is imported inside the fixtures: collecting this module (doctests) needs no JAX.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fast: OTT-JAX's mark for its quick CI subset (parametrizes with_args)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for mark in metafunc.definition.iter_markers("fast"):
        if mark.args:  # fast.with_args("a,b", [(..), ..], only_fast=...): a parametrization
            argnames, argvalues = mark.args
            metafunc.parametrize(argnames, argvalues)


@pytest.fixture
def rng() -> Any:
    import jax

    return jax.random.key(0)


@pytest.fixture
def enable_x64() -> Any:
    import jax

    with jax.enable_x64(True):
        yield True
