"""Static solver configuration: hashable, so JAX can treat it as a compile-time constant."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Options of the Sinkhorn solve and of its implicit backward (see :func:`softsort.sort`).

    ``epsilon`` is not here: it may be a traced value, so it travels as an array.
    """

    threshold: float = 1e-3
    max_iterations: int = 2000
    inner_iterations: int = 10
    implicit_diff: bool = True
    #: Iterate in kernel space between log-domain steps (see _sinkhorn._kernel_block).
    kernel_steps: bool = True
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

    @property
    def num_checks(self) -> int:
        """How many convergence checks fit in ``max_iterations`` (size of the error log)."""
        return -(-self.max_iterations // self.inner_iterations)
