"""The solver options' documentation, written once and added to every operator's docstring.

Each operator takes the same ``**options``; :func:`solver_options` inserts one numpydoc
"Other Parameters" section listing them, so every operator's page documents every option
(tests/test_docs.py checks that each name of ``_validate.OPTION_NAMES`` is there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# One entry per option, in numpydoc form (name : type, then the text indented by 4).
_ENTRIES = {
    "epsilon": """\
epsilon : float or 0-d array, default 1e-2
    Entropic regularization (a number or a 0-d array of the input's library; may be
    traced under ``jax.jit``). Checked in the compute dtype to lie in
    ``[machine epsilon, 1 / machine epsilon]``, e.g. ``[1.2e-7, 8.4e6]`` in float32, else
    ``ValueError``: below, the solver's potentials in units of epsilon outgrow the dtype's
    precision; above, the result is the ``epsilon -> inf`` limit.""",
    "squashing_fun": """\
squashing_fun : callable, optional
    Maps ``(..., n)`` values into [0, 1] along the last axis; it must return a finite array
    of the library, shape and dtype it receives. Default ``sigmoid((x - mean) / (std +
    1e-10 * min(1, s)))`` with ``s = max|x - mean|``: OTT-JAX's for rows with ``s >= 1``,
    scale-free below.""",
    "threshold": """\
threshold : float, default 1e-3
    Sinkhorn stops when the L1 error of the returned plan's target marginal is below it
    (its input marginal is exact).""",
    "max_iterations": """\
max_iterations : int, default 2000
    Cap on Sinkhorn iterations; a problem that has not converged by then is returned with a
    :class:`ConvergenceWarning`.""",
    "min_iterations": """\
min_iterations : int, default 0
    No problem stops before this many iterations.""",
    "inner_iterations": """\
inner_iterations : int, default 10
    Iterations between convergence checks (at most ``max_iterations``).""",
    "implicit_diff": """\
implicit_diff : bool, default True
    ``True``: gradients by implicit differentiation (one linear solve at the fixed point);
    ``False``: by differentiating through the iterations.""",
    "implicit_solver": """\
implicit_solver : {"auto", "dense", "cg"}, default "auto"
    Solver of the implicit linear system: dense up to 128 unknowns, conjugate gradients
    beyond (``"auto"``), or the one named.""",
    "momentum": """\
momentum : "adaptive" or float, default "adaptive"
    Over-relaxation of the Sinkhorn steps: ``"adaptive"`` estimates a factor per problem
    after two plain checks, at every epsilon; a number in ``[1, 2)`` is a fixed factor
    (``1``: plain Sinkhorn, OTT-JAX's default).""",
    "init": """\
init : {"auto", "dual", "zeros"}, default "auto"
    Starting potentials: ``"dual"``, the exact dual of the unregularized 1-D problem;
    ``"zeros"``, OTT-JAX's start; ``"auto"``: ``"dual"`` below epsilon ``5e-3`` and, above
    it, where there are at least as many targets as inputs (sort, ranks), else ``"zeros"``
    (quantiles, top-k, few targets). ``init="zeros", momentum=1.0`` is OTT-JAX's path.
    (Multivariate maps always start from zeros.)""",
    "memory_budget": """\
memory_budget : int, default 2**30
    Bytes of working memory per call, counted as 6 arrays of ``n x m`` per problem; larger
    batches run in chunks of rows. A single problem over the budget is solved and read
    block by block, its plan never stored (reverse-mode derivatives only;
    ``transport_for_sort``, ``straight_through=True`` and ``implicit_diff=False`` then raise
    ``ValueError``). The returned arrays come on top (twice while chunks are joined). Under
    ``jax.jit`` the compiler schedules the chunks (see the math page).""",
    "newton": """\
newton : bool, default False
    ``True``: problems with at most 64 targets still running after 100 Sinkhorn iterations
    go on with safeguarded Newton steps on the dual (one small linear solve per step), so
    that near-ties and tight thresholds converge: rows of at most 64 values reach any
    threshold ``>= 1e-9`` in float64 within 200 iterations. Same fixed point, same
    gradients (implicit differentiation only; ignored with ``implicit_diff=False``). Off
    by default: under ``jax.jit`` it about doubles the solve's compile time.""",
    "straight_through": """\
straight_through : bool, default False
    ``True``: the value of the exact ``epsilon -> 0`` operator, computed without Sinkhorn,
    with the derivatives of the soft one.""",
}

# The ``**options`` entry of each operator says where the options are; this completes it.
_MARK = "Solver options, listed under Other Parameters."
_OTT = (
    " OTT-JAX's Sinkhorn keywords (``lse_mode``, ``momentum=Momentum(...)``,"
    " ``implicit_diff=None`` or ``ImplicitDiff(...)``, ...) are translated into these or refused"
    " with the option to use instead (table in the migration guide)."
)


def options_section(exclude: tuple[str, ...] = ()) -> str:
    """The "Other Parameters" section (unindented) listing every option not in ``exclude``."""
    entries = "\n".join(text for name, text in _ENTRIES.items() if name not in exclude)
    return f"Other Parameters\n----------------\n{entries}\n"


def solver_options(exclude: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorator: add the options section to a docstring, before its Raises (or Notes, Examples) section."""

    def add(fun: F) -> F:
        doc = (fun.__doc__ or "").replace(_MARK, _MARK + _OTT, 1)
        indent = " " * 4
        section = "".join(indent + line if line.strip() else line for line in options_section(exclude).splitlines(True))
        for header in ("Raises", "Warns", "See Also", "Notes", "References", "Examples"):
            mark = f"\n{indent}{header}\n{indent}{'-' * len(header)}\n"
            # the first of these sections that comes after "Returns" (Examples may open a docstring)
            start = doc.find(f"\n{indent}Returns\n")
            at = doc.find(mark, max(start, 0))
            if at >= 0:
                fun.__doc__ = doc[: at + 1] + section + "\n" + doc[at + 1 :]
                return fun
        fun.__doc__ = doc.rstrip() + "\n\n" + section
        return fun

    return add
