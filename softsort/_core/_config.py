"""Static solver configuration: hashable, so JAX can treat it as a compile-time constant."""

from __future__ import annotations

import dataclasses
from typing import Any

#: ``init="auto"`` starts from the exact dual (:mod:`._dual`) below this epsilon, and above
#: it where there are at least as many targets as inputs (sort, ranks); otherwise (few
#: targets: quantiles, top-k) from zero: there each target's plan is blurred over many
#: inputs, zero starts about as close, and the dual's sorts and searches of all n inputs
#: cost more than the iterations they save (measured on the benchmark's W5 and W6, and on
#: OTT-JAX's quantile tests with ``benchmarks/ott_accuracy.py``).
DUAL_START_BELOW = 5e-3


def resolve_init(init: str, n: int, m: int) -> str:
    """The start of a solve with ``n`` inputs and ``m`` targets: "dual", "zeros" or, for an
    epsilon given per problem, "auto" (the dual where ``epsilon < DUAL_START_BELOW``).

    ``init`` as validated: "dual", "zeros", "auto", or "by_targets" (a number epsilon at
    least ``DUAL_START_BELOW``: decided by ``n`` and ``m`` alone).
    """
    if init in ("auto", "by_targets") and m >= n:
        return "dual"
    return "zeros" if init == "by_targets" else init


def smallest_epsilon(xp: Any, dtype: Any) -> float:
    """The smallest ``epsilon`` the solver accepts in ``dtype``: its machine epsilon.

    The solver works with costs and potentials in units of epsilon; for inputs squashed
    into [0, 1] they reach ``1 / epsilon``. Below the machine epsilon their spacing exceeds
    one unit, so a kernel entry ``exp(f + g - C)`` is rounding noise by factors of ``e``
    and more (a float32 potential of 1e12 is spaced 65536 units apart): measured, plans
    with NaN or misplaced mass at float64 ``epsilon = 1e-20``, float32 ``1e-12``. Above it
    (swept from this value to 0.1, n = 3..50) every returned plan converged. Values:
    about 1.2e-7 in float32, 2.2e-16 in float64.
    """
    return float(xp.finfo(dtype).eps)


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Options of the Sinkhorn solve and of its implicit backward (see :func:`softsort.sort`).

    ``epsilon`` is not here: it may be a traced value, so it travels as an array.
    """

    threshold: float = 1e-3
    max_iterations: int = 2000
    #: No problem stops before this many iterations (OTT-JAX's ``min_iterations``): the
    #: convergence check only stops a row once ``it >= min_iterations``.
    min_iterations: int = 0
    inner_iterations: int = 10
    implicit_diff: bool = True
    #: Starting potentials: "dual" (exact unregularized 1-D dual, see _dual), "zeros",
    #: "auto" or "by_targets" (see resolve_init).
    init: str = "auto"
    #: Iterate in kernel space after a first log-domain step (see _sinkhorn._kernel_steps).
    kernel_steps: bool = True
    #: The public ``newton`` option: rows with at most ``_newton.NEWTON_MAX_TARGETS``
    #: targets still running after ``_newton.NEWTON_AFTER`` iterations continue with Newton
    #: steps on the semi-dual (implicit differentiation only; see
    #: :mod:`softsort._core._newton`). Off by default: under jax.jit it doubles the solve's
    #: compile time, and it made G1 about 10% slower (docs/performance.rst).
    newton: bool = False
    #: "adaptive" over-relaxation, or a fixed factor in [1, 2) (1 = plain Sinkhorn).
    momentum: str | float = "adaptive"
    #: "auto" (dense up to ``dense_limit`` unknowns, conjugate gradients beyond: for n = m =
    #: 1000 CG takes 28 ms against 343 ms dense, same accuracy), "dense", "cg".
    implicit_solver: str = "auto"
    dense_limit: int = 128
    #: Bytes one call may use; larger batches are solved in chunks of rows.
    memory_budget: int = 2**30
    cg_tol: float = 1e-6
    cg_max_iterations: int = 500
    #: Some input or target weights are zero (``mask=``): the solver then starts those
    #: entries at their own update (``_sinkhorn._zero_weight_start``). Set by the pipeline.
    zero_weights: bool = False

    @property
    def block(self) -> int:
        """Steps between two convergence checks: ``inner_iterations``, at most ``max_iterations``.

        A block longer than ``max_iterations`` would run (and, eagerly, pay for) steps that
        the ``max_iterations`` cut then discards: 4 s instead of 1 ms for
        ``inner_iterations=10**6``.
        """
        return max(1, min(self.inner_iterations, self.max_iterations))

    @property
    def num_checks(self) -> int:
        """How many convergence checks fit in ``max_iterations`` (size of the error log)."""
        return -(-self.max_iterations // self.block)
