"""Public multivariate CDF and quantile maps: validation, the reference sample, dispatch.

The math is in :mod:`softsort._core._multivariate` (reference sample, estimator) and the
shared solver (:mod:`softsort._core._transport`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from . import _compat
from . import _validate as check
from ._api import _report
from ._core import _multivariate as mv
from ._core._transport import transport
from ._docs import solver_options
from .backends import get_backend

__all__ = ["CdfQuantileMaps", "multivariate_cdf_quantile_maps"]

_FNAME = "multivariate_cdf_quantile_maps"


class CdfQuantileMaps(NamedTuple):
    """What :func:`multivariate_cdf_quantile_maps` returns (a NamedTuple: a JAX pytree).

    Attributes
    ----------
    inputs
        The input points, ``(n, d)`` (in the compute dtype).
    targets
        The reference points, ``(m, d)``.
    f, g
        Dual potentials on the inputs ``(n,)`` and on the reference points ``(m,)``,
        arrays (OTT-JAX's ``DualPotentials.f`` and ``.g`` are functions). Differentiable
        with respect to the inputs and the reference points (implicitly).
    epsilon
        The regularization used, a 0-d array.
    input_weights, target_weights
        The weights of the two measures, ``(n,)`` and ``(m,)``.
    converged
        0-d boolean: the solver reached its threshold.
    """

    inputs: Any
    targets: Any
    f: Any
    g: Any
    epsilon: Any
    input_weights: Any
    target_weights: Any
    converged: Any

    def transport(self, vec: Any, forward: bool = True) -> Any:
        """Map points through the CDF map (``forward=True``) or the quantile map.

        Parameters
        ----------
        vec : array
            Points ``(b, d)`` (a single point ``(d,)`` is read as ``(1, d)``, as OTT-JAX
            does): in the inputs' space for the CDF map, in the reference measure's
            space (the unit cube by default) for the quantile map.
        forward : bool
            ``True``: the CDF map, inputs' space -> reference space. ``False``: the
            quantile map, reference space -> inputs' space.

        Returns
        -------
        array
            ``(b, d)``, in the dtype of the stored inputs.

        Raises
        ------
        ValueError
            ``vec`` not 1-D or 2-D, of another dimension ``d``, or holding non-finite values.
        TypeError
            ``vec`` not an array of the inputs' library; ``forward`` not a bool.
        """
        fname = "transport"
        if not isinstance(forward, bool):
            msg = f"{fname}() argument 'forward' must be True or False, got {check._short(forward)}"
            raise TypeError(msg)
        xp = check.namespace(fname, vec=vec, inputs=self.inputs)
        backend = get_backend(xp)
        d = self.inputs.shape[-1]
        if vec.ndim == 1:
            vec = xp.reshape(vec, (1, vec.shape[0]))
        if vec.ndim != 2 or vec.shape[-1] != d:
            msg = f"{fname}() argument 'vec' must have shape (b, {d}) (points of dimension {d}), got {tuple(vec.shape)}"
            raise ValueError(msg)
        check.compute_dtype(fname, "vec", xp, vec)
        check.finite(fname, "vec", backend, vec)
        dtype = self.inputs.dtype
        vec = vec if vec.dtype == dtype else xp.astype(vec, dtype)
        if forward:
            return mv.entropic_map(backend, vec, self.targets, self.g, self.epsilon)
        return mv.entropic_map(backend, vec, self.inputs, self.f, self.epsilon)


def _cost_fn(cost_fn: Any) -> None:
    """Only the squared Euclidean cost (OTT-JAX's default and ``costs.SqEuclidean()``)."""
    if cost_fn is None or cost_fn == "sqeuclidean" or type(cost_fn).__name__ == "SqEuclidean":
        return
    msg = (
        f"{_FNAME}() argument 'cost_fn' supports the squared Euclidean cost only (None, 'sqeuclidean' "
        f"or OTT-JAX's costs.SqEuclidean()), got {check._short(cost_fn)}"
    )
    raise ValueError(msg)


def _solver_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """softsort's solver options from ``**kwargs``.

    The one place where OTT-JAX's Sinkhorn keywords (``lse_mode``, ``min_iterations``, ...)
    are to be translated into softsort's (``softsort._ott_compat``, added separately), as
    for every operator. ``epsilon`` is an argument of its own here, and there is nothing to
    squash.
    """
    for name in ("epsilon", "squashing_fun"):
        if name in kwargs:
            msg = f"{_FNAME}() got an unexpected keyword argument {name!r}"
            raise TypeError(msg)
    return dict(kwargs)


def _reference_sample(
    backend: Any, target_sampler: Any, rng: Any, m: int, d: int, dtype: Any, dev: Any, like: Any
) -> Any:
    xp = backend.xp
    if target_sampler is None:
        return mv.halton(xp, m, d, dtype, dev)
    if not callable(target_sampler):
        msg = f"{_FNAME}() argument 'target_sampler' must be callable (rng, shape) -> array, got {target_sampler!r}"
        raise TypeError(msg)
    if rng is None:
        # OTT-JAX falls back on jax.random.key(0); softsort does not make framework keys.
        msg = f"{_FNAME}() argument 'rng' is required with a 'target_sampler' (e.g. jax.random.key(0))"
        raise TypeError(msg)
    targets = target_sampler(rng, (m, d))
    check.namespace(_FNAME, inputs=like, targets=targets)
    if tuple(targets.shape) != (m, d):
        msg = f"{_FNAME}() 'target_sampler' must return an array of shape {(m, d)}, got {tuple(targets.shape)}"
        raise ValueError(msg)
    check.compute_dtype(_FNAME, "targets", xp, targets)
    targets = targets if targets.dtype == dtype else xp.astype(targets, dtype)
    check.finite(_FNAME, "targets", backend, targets)
    return targets


@solver_options(exclude=("epsilon", "squashing_fun", "straight_through"))
def multivariate_cdf_quantile_maps(
    inputs: Any,
    target_sampler: Callable[[Any, tuple[int, int]], Any] | None = None,
    rng: Any = None,
    num_target_samples: int | None = None,
    cost_fn: Any = None,
    epsilon: Any = None,
    input_weights: Any = None,
    target_weights: Any = None,
    **kwargs: Any,
) -> CdfQuantileMaps:
    r"""Multivariate CDF and quantile maps of a sample, by entropic optimal transport.

    Examples
    --------
    >>> import numpy as np, softsort
    >>> rs = np.random.default_rng(0)
    >>> x = 0.3 * rs.normal(size=(256, 2)) + np.array([2.0, -1.0])
    >>> maps = softsort.multivariate_cdf_quantile_maps(x)
    >>> np.round(maps.transport(np.array([[2.0, -1.0]])), 1)  # the centre -> the cube's centre
    array([[0.5, 0.5]])
    >>> np.round(maps.transport(np.array([[0.5, 0.5]]), forward=False), 1)  # and back
    array([[ 2., -1.]])

    Parameters
    ----------
    inputs : array
        Points ``(n, d)`` of the measure (any array API library).
    target_sampler : callable, optional
        ``target_sampler(rng, (m, d)) -> array`` drawing the reference sample, e.g.
        ``jax.random.uniform`` (any library's sampler, wrapped to this signature). Default:
        the first ``m`` points of the Halton sequence in ``[0, 1)^d`` (deterministic, the
        same on every backend; OTT-JAX draws ``jax.random.uniform`` instead). For the maps
        to be CDF and quantile maps the reference measure should be centred on
        ``(1/2, ..., 1/2)`` and supported on ``[0, 1]^d``.
    rng : optional
        Passed to ``target_sampler`` (required with it; unused without).
    num_target_samples : int, optional
        Number ``m`` of reference points (default ``n``).
    cost_fn : optional
        ``None`` (or ``"sqeuclidean"``, or OTT-JAX's ``costs.SqEuclidean()``): the squared
        Euclidean cost, the only one supported.
    epsilon : float or 0-d array, optional
        Entropic regularization, in units of the cost. Default (OTT-JAX's for a point
        cloud): ``0.05`` times the standard deviation of the ``n x m`` cost matrix.
    input_weights, target_weights : array, optional
        Weights ``(n,)`` and ``(m,)`` (positive, summing to one); default uniform.
    **kwargs
        Solver options, listed under Other Parameters (``epsilon`` is an argument of its own
        here, and there is nothing to squash).

    Returns
    -------
    CdfQuantileMaps
        ``maps.transport(points, forward=True)`` maps points ``(b, d)`` of the inputs'
        space to the reference space (the multivariate CDF), ``forward=False`` maps
        reference points back (the quantile map). Also holds the potentials, epsilon and
        a ``converged`` flag. Differentiable (JAX, PyTorch) with respect to the points,
        the inputs and a sampled reference.

    Raises
    ------
    ValueError
        ``inputs`` not 2-D, empty or non-finite; a cost other than squared Euclidean;
        invalid weights, ``epsilon`` or sampler output.
    TypeError
        A non-array, arrays of two libraries, an unknown option, a sampler without ``rng``.

    Notes
    -----
    Chernozhukov et al. (2017) define multivariate quantiles by optimal transport to a
    reference measure on the cube. With the entropic potentials ``(f, g)`` of the problem
    between ``inputs`` ``x_i`` (weights ``a``) and the reference ``y_j`` (weights ``b``),
    the plan being ``P_ij = exp((f_i + g_j - |x_i - y_j|^2) / eps)``, the CDF map is the
    entropic map estimator (Pooladian & Niles-Weed, 2021)

    .. math:: T(x) = \sum_j y_j \frac{\exp((g_j - |x - y_j|^2)/\varepsilon)}
              {\sum_k \exp((g_k - |x - y_k|^2)/\varepsilon)}
              = x - \tfrac12 \nabla f^c(x),

    the barycentric projection of the plan at the inputs, and the quantile map is the same
    with the roles of the two samples exchanged. With uniform weights (the default) this
    is OTT-JAX 0.6's ``DualPotentials.transport``; with non-uniform ``target_weights``
    OTT-JAX weighs the reference points once more by ``b_j`` (its soft c-transform
    multiplies potentials that already include ``log b``), which softsort does not.
    """
    xp = check.namespace(_FNAME, inputs=inputs, input_weights=input_weights, target_weights=target_weights)
    backend = get_backend(xp)
    options = _solver_options(kwargs)
    check.options(_FNAME, options)  # unknown or bad options fail before any work
    _cost_fn(cost_fn)
    if inputs.ndim != 2:
        msg = f"{_FNAME}() argument 'inputs' must be a 2-D array (n, d) of points, got shape {tuple(inputs.shape)}"
        raise ValueError(msg)
    n, d = inputs.shape
    if n == 0 or d == 0:
        msg = f"{_FNAME}() argument 'inputs' needs at least one point of dimension >= 1, got shape {(n, d)}"
        raise ValueError(msg)
    dtype, _ = check.compute_dtype(_FNAME, "inputs", xp, inputs)
    dev = _compat.device(inputs)
    check.finite(_FNAME, "inputs", backend, inputs)
    x = inputs if inputs.dtype == dtype else xp.astype(inputs, dtype)
    m = n if num_target_samples is None else check.as_int(_FNAME, "num_target_samples", num_target_samples, 1)
    y = _reference_sample(backend, target_sampler, rng, m, d, dtype, dev, inputs)
    a = mv.ones_like_weights(xp, n, x)
    if input_weights is not None:
        a = check.weights(_FNAME, "input_weights", backend, input_weights, dtype, dev, size=n)
    b = mv.ones_like_weights(xp, m, x)
    if target_weights is not None:
        b = check.weights(_FNAME, "target_weights", backend, target_weights, dtype, dev, size=m)
    if epsilon is None:
        eps = mv.default_epsilon(backend, x, y)
    else:
        eps = check.epsilon_array(_FNAME, backend, epsilon, dtype, dev)
    # The solver's path (start, over-relaxation) follows the epsilon actually used.
    _, _, config = check.options(_FNAME, {**options, "epsilon": eps if epsilon is None else epsilon})
    t = transport(backend, config, x[None, ...], a[None, :], b[None, :], xp.reshape(eps, (1,)), y[None, ...])
    converged = _report(_FNAME, backend, t, config)
    return CdfQuantileMaps(x, y, t.f[0, :], t.g[0, :], eps, a, b, converged[0])
