"""Every operator's docstring documents every option the operator accepts."""

from __future__ import annotations

import ast
import re

import numpy as np
import pytest

import softsort
from softsort import _validate

OPERATORS = [
    softsort.sort,
    softsort.ranks,
    softsort.quantile,
    softsort.topk_mask,
    softsort.quantize,
    softsort.quantile_normalization,
    softsort.sort_with,
    softsort.transport_for_sort,
]
EVERY_OPTION = (*_validate.OPTION_NAMES, "straight_through")


def _other_parameters(fun) -> list[str]:
    doc = fun.__doc__ or ""
    m = re.search(r"\n    Other Parameters\n    -{16}\n(.*?)(?=\n    \w[\w ]*\n    -{3,}\n|\Z)", doc, re.S)
    assert m, f"{fun.__name__} has no Other Parameters section"
    return re.findall(r"^    (\w+) :", m.group(1), re.M)


@pytest.mark.parametrize("fun", OPERATORS, ids=lambda f: f.__name__)
def test_every_option_documented_on_each_operator(fun):
    names = _other_parameters(fun)
    assert sorted(names) == sorted(EVERY_OPTION), fun.__name__
    doc = fun.__doc__ or ""
    # numpydoc's order: the section sits after Returns and before Raises
    assert doc.index("\n    Returns\n") < doc.index("\n    Other Parameters\n") < doc.index("\n    Raises\n")


def test_multivariate_documents_the_options_it_takes():
    names = _other_parameters(softsort.multivariate_cdf_quantile_maps)
    assert sorted(names) == sorted(set(_validate.OPTION_NAMES) - {"epsilon", "squashing_fun"})
    x = np.random.default_rng(0).normal(size=(8, 2))
    for name in names:  # each documented option is accepted (at its default)
        softsort.multivariate_cdf_quantile_maps(x, **{name: _validate._SOLVER_OPTIONS[name]})


def test_documented_defaults_are_the_defaults():
    doc = softsort.sort.__doc__ or ""
    for name, default in {**_validate._SOLVER_OPTIONS, "epsilon": _validate.DEFAULT_EPSILON}.items():
        line = re.search(rf"^    {name} : .*, default (.*)$", doc, re.M)
        assert line, name
        text = line.group(1)
        if "**" in text:
            base, power = text.split("**")
            shown = int(base) ** int(power)
        else:
            shown = ast.literal_eval(text)
        assert shown == default, (name, text, default)


def test_docs_numpydoc_parses_the_section():
    docscrape = pytest.importorskip("numpydoc.docscrape")
    for fun in OPERATORS:
        parsed = docscrape.FunctionDoc(fun)
        assert [p.name for p in parsed["Other Parameters"]] == [n for n in _other_parameters(fun)]


# Figures of time, speed or memory on the site come from the scripts that measure them
# (benchmarks/results/*, included by the pages, and the gallery's output); a page's own text
# states settings, not measurements. These are the settings that look like figures.
_SETTINGS = ("4x larger step", "downsized 4x", "default 1 GiB", "128 MiB by default", "10 % of the pixels", ":width:")
# a number with a unit of time, memory, share or ratio ("1000 x 10" is a shape, not a ratio)
_FIGURE = re.compile(r"\b\d+(?:\.\d+)?\s?(?:s|ms|us|µs|min|minutes|seconds|hours|MiB|MB|GiB|GB|%|x(?!\s*\d))(?![\w-])")


def test_docs_pages_type_no_measured_figures():
    import pathlib

    docs = pathlib.Path(__file__).resolve().parents[1] / "docs"
    if not docs.is_dir():
        pytest.skip("no docs/ beside tests/ (installed-package run)")
    pages = sorted(docs.glob("*.rst")) + sorted((docs.parent / "examples").glob("*.py"))
    found = []
    for page in pages:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            text = line
            if any(allowed in text for allowed in _SETTINGS):
                continue
            if page.suffix == ".py" and ("print(" in text or text.lstrip().startswith("#")):
                continue  # the gallery prints what it measures while the docs are built
            found += [f"{page.name}:{number}: {m.group(0)!r} in {line.strip()[:80]!r}" for m in _FIGURE.finditer(text)]
    assert not found, "\n".join(found)
