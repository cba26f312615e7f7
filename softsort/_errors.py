"""Exceptions and warnings raised by softsort."""

from __future__ import annotations


class ConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``max_iterations`` with a marginal error above ``threshold``.

    The result is still returned; :func:`softsort.transport_for_sort` reports per-problem
    errors and a ``converged`` flag. Raise ``max_iterations`` or ``epsilon``, or loosen
    ``threshold``.
    """
