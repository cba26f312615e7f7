"""The transport plan as a linear operator: what the read-outs and the backward use of it.

Every read-out needs the plan only through products with a few vectors (``P @ v``,
``P^T @ u``, its column sums), and every derivative of a read-out with respect to the plan
is a sum of a few outer products. So the read-outs (:mod:`._readouts`) are written once
against this small interface, and the plan behind it is either an array (:class:`DensePlan`)
or made block by block from the potentials, never whole (:mod:`._blocked`), when one
problem's ``n x m`` plan exceeds ``memory_budget``.

Shapes: the plan is (B, n, m); a right operand (B, m) or (B, m, k), a left one (B, n) or
(B, n, k); products keep the operand's form.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class LowRank(NamedTuple):
    """A cotangent of the plan held as ``left @ right^T``: left (B, n, k), right (B, m, k)."""

    left: Any
    right: Any

    def dense(self, xp: Any) -> Any:
        """The (B, n, m) array (the dense path's backward takes the cotangent whole)."""
        return self.left @ xp.matrix_transpose(self.right)


def lowrank(xp: Any, left: Any, right: Any) -> LowRank:
    """``sum_k left[..., :, k] right[..., :, k]^T``; 2-D operands (B, n), (B, m) are one term."""
    if left.ndim == 2:
        left = left[..., None]
    if right.ndim == 2:
        right = right[..., None]
    return LowRank(left, right)


def combined(xp: Any, *terms: LowRank) -> LowRank:
    """The sum of low-rank cotangents (their factors side by side)."""
    left = xp.concat([t.left for t in terms], axis=-1)
    right = xp.concat([xp.broadcast_to(t.right, (*t.left.shape[:-2], *t.right.shape[-2:])) for t in terms], axis=-1)
    return LowRank(left, right)


def matvec(mat: Any, vec: Any) -> Any:
    """``mat @ vec`` for a batch, ``mat`` (B, n, m), ``vec`` (B, m), written with the array API only.

    The read-outs' products; the Sinkhorn loop and the implicit solve use the adapter's
    ``Backend.matvec`` (a faster path on some libraries).
    """
    return (mat @ vec[..., None])[..., 0]


def vecmat(vec: Any, mat: Any) -> Any:
    """``vec @ mat`` for a batch, ``vec`` (B, n), ``mat`` (B, n, m)."""
    return (vec[..., None, :] @ mat)[..., 0, :]


class DensePlan:
    """The plan as an array (the usual path): products are matrix products.

    With ``backend``, matrix-vector products of the implicit solve take the adapter's fast
    path (``Backend.matvec``/``vecmat``).
    """

    def __init__(self, xp: Any, plan: Any, backend: Any = None) -> None:
        self.xp = xp
        self.array = plan
        self.backend = backend
        self.n, self.m = plan.shape[-2], plan.shape[-1]
        self.batch = tuple(plan.shape[:-2])
        self._matvec = matvec if backend is None else backend.matvec
        self._vecmat = vecmat if backend is None else backend.vecmat

    def apply(self, right: Any) -> Any:
        """``P @ right``."""
        return self._matvec(self.array, right) if right.ndim == self.array.ndim - 1 else self.array @ right

    def apply_t(self, left: Any) -> Any:
        """``P^T @ left``."""
        if left.ndim == self.array.ndim - 1:
            return self._vecmat(left, self.array)
        return self.xp.matrix_transpose(self.array) @ left

    def col_sums(self) -> Any:
        return self._sum(self.array, -2)

    def row_sums(self) -> Any:
        return self._sum(self.array, -1)

    def _sum(self, x: Any, axis: int) -> Any:
        return self.xp.sum(x, axis=axis) if self.backend is None else self.backend.sum(x, axis)

    # -- what the implicit solve (:func:`._implicit._marginal_solve`) asks of a plan --------
    def transposed(self) -> DensePlan:
        return DensePlan(self.xp, self.xp.matrix_transpose(self.array), self.backend)

    def gram(self, w: Any) -> Any:
        """``P^T diag(w) P``, (B, m, m) (the adapter's ``Backend.gram``: a faster path on some)."""
        if self.backend is not None:
            return self.backend.gram(self.array, w)
        return self.xp.matrix_transpose(self.array) @ (self.array * w[..., :, None])

    def gram_apply(self, v: Any, w: Any) -> Any:
        """``P^T (w * (P v))`` for ``v`` (B, m), ``w`` (B, n)."""
        return self._vecmat(w * self._matvec(self.array, v), self.array)

    def weighted_sq_col_sums(self, w: Any) -> Any:
        """``sum_i w_i P_ij**2``, (B, m)."""
        return self.xp.sum(self.array * self.array * w[..., :, None], axis=-2)

    def apply_t_and_col_sums(self, left: Any) -> tuple[Any, Any]:
        """``(P^T @ left, P^T @ 1)`` (the blocked plan makes both in one pass)."""
        return self.apply_t(left), self.col_sums()


def as_plan(xp: Any, plan: Any) -> Any:
    """An operator for ``plan``: arrays are wrapped, operators (blocked plans) pass through."""
    return plan if hasattr(plan, "apply_t_and_col_sums") else DensePlan(xp, plan)


def dense_cotangent(xp: Any, cot: Any) -> Any:
    """A cotangent of the plan as an array (a low-rank one is multiplied out)."""
    return cot.dense(xp) if isinstance(cot, LowRank) else cot
