"""OTT-JAX's solver vocabulary, translated into softsort's own options.

Code ported from ``ott.tools.soft_sort`` passes keywords of OTT-JAX's ``Sinkhorn`` solver
(``lse_mode``, ``momentum=acceleration.Momentum(...)``, ``implicit_diff=ImplicitDiff(...)``
or ``None``, ...). :func:`translate` turns each one that softsort can honour into the
softsort option with the same effect, and refuses the others with an error naming the
softsort option to use instead; nothing is silently ignored unless it cannot change any
softsort output. The table of keywords is ``docs/migration.rst``.

OTT-JAX is never imported: its objects are recognised by their attribute names (duck
typing), so softsort works, and these objects are understood, whether OTT-JAX is
installed or not.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, cast

#: OTT-JAX keywords that are handled here (softsort's own options pass through untouched).
OTT_KEYWORDS = (
    "lse_mode",
    "anderson",
    "use_danskin",
    "parallel_dual_updates",
    "recenter_potentials",
    "progress_fn",
    "initializer",
    "norm_error",
)
#: Attributes by which an OTT-JAX ``acceleration.Momentum`` is recognised.
_MOMENTUM_ATTRS = ("start", "value", "error_threshold")
#: Attributes by which an OTT-JAX ``implicit_differentiation.ImplicitDiff`` is recognised.
_IMPLICIT_ATTRS = ("solver_kwargs", "symmetric", "precondition_fun")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_bool(value: Any) -> bool:
    # numpy.bool_ is not a bool subclass; OTT-JAX flags are plain Python values.
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def _flag(fname: str, name: str, value: Any) -> bool:
    if not _is_bool(value):
        msg = f"{fname}() option {name!r} must be True or False, got {_short(value)}"
        raise TypeError(msg)
    return bool(value)


def _momentum(fname: str, momentum: Any) -> Any:
    """OTT-JAX's ``Momentum(start, error_threshold, value)`` as softsort's ``momentum``.

    OTT-JAX: with ``start == 0`` every step is over-relaxed by the fixed ``value``; with
    ``start > 0`` steps use ``value`` up to iteration ``start`` and from there the
    adaptive factor ``2 / (1 + sqrt(1 - kappa))`` (``kappa``: the measured contraction
    per iteration), once the error is below ``error_threshold``. softsort has a fixed
    factor (``momentum=value``) and the same adaptive factor (``momentum="adaptive"``),
    which it estimates from its first two checks, at every epsilon. Over-relaxation changes the path to
    the fixed point, not the fixed point: both stop at the same ``threshold``.
    """
    if not all(hasattr(momentum, attr) for attr in _MOMENTUM_ATTRS):
        return momentum  # softsort's own value ("adaptive" or a number): checked by options()
    start, value, error_threshold = momentum.start, momentum.value, momentum.error_threshold
    if _is_bool(start) or not isinstance(start, numbers.Integral) or int(start) < 0:
        msg = f"{fname}() option 'momentum': OTT-JAX Momentum.start must be an integer >= 0, got {_short(start)}"
        raise ValueError(msg)
    if _is_bool(value) or not isinstance(value, numbers.Real) or not 1.0 <= cast(float, value) < 2.0:
        msg = (
            f"{fname}() option 'momentum': Momentum(value={value!r}) is not supported; softsort over-relaxes "
            "by a factor in [1, 2) (1 = plain Sinkhorn): pass momentum=<factor in [1, 2)> or momentum='adaptive'"
        )
        raise ValueError(msg)
    if start == 0:
        return float(value)
    if value != 1.0:
        msg = (
            f"{fname}() option 'momentum': Momentum(start={start}, value={value!r}) (a fixed factor up to "
            f"iteration {start}, adaptive after) is not supported; pass momentum={float(value)!r} (that factor "
            "throughout) or momentum='adaptive' (softsort's adaptive factor)"
        )
        raise ValueError(msg)
    if not (
        isinstance(error_threshold, numbers.Real) and math.isinf(error_threshold) and cast(float, error_threshold) > 0
    ):
        msg = (
            f"{fname}() option 'momentum': Momentum(error_threshold={error_threshold!r}) is not supported; "
            "softsort's adaptive factor starts after its second convergence check: pass momentum='adaptive'"
        )
        raise ValueError(msg)
    # Plain steps, then the adaptive factor: softsort's "adaptive" (it decides itself when
    # the factor is estimated; the iteration `start` is not reproduced, the result is).
    return "adaptive"


def _implicit_diff(fname: str, implicit: Any) -> Any:
    """OTT-JAX's ``implicit_diff`` (``None`` or an ``ImplicitDiff``) as softsort's flag."""
    if implicit is None:
        return False  # OTT-JAX: None = differentiate by unrolling the iterations
    if _is_bool(implicit) or not any(hasattr(implicit, attr) for attr in _IMPLICIT_ATTRS):
        return implicit  # softsort's own True/False (anything else: options() refuses it)
    if getattr(implicit, "solver", None) is not None:
        msg = (
            f"{fname}() option 'implicit_diff': a custom linear solver (ImplicitDiff(solver=...)) is not "
            "supported; softsort solves the implicit system itself: pass implicit_diff=True and choose "
            "implicit_solver='dense' or 'cg'"
        )
        raise TypeError(msg)
    if getattr(implicit, "solver_kwargs", None):
        msg = (
            f"{fname}() option 'implicit_diff': ImplicitDiff(solver_kwargs={_short(implicit.solver_kwargs)}) "
            "is not supported; pass implicit_diff=True and choose implicit_solver='dense' or 'cg'"
        )
        raise TypeError(msg)
    if getattr(implicit, "precondition_fun", None) is not None:
        msg = (
            f"{fname}() option 'implicit_diff': ImplicitDiff(precondition_fun=...) is not supported; "
            "pass implicit_diff=True (softsort's implicit_solver preconditions itself)"
        )
        raise TypeError(msg)
    # `symmetric` tells OTT-JAX's linear solver what the system looks like; softsort's
    # solver does not use it, and the gradient does not depend on it.
    return True


def _refuse(fname: str, name: str, value: Any, instead: str) -> None:
    msg = f"{fname}() option {name!r}={_short(value)} (OTT-JAX) is not supported by softsort; {instead}"
    raise TypeError(msg)


def translate(fname: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options of a call with OTT-JAX's solver keywords replaced by softsort's own.

    softsort options pass through unchanged (``options()`` checks them); an OTT-JAX
    keyword is either translated, dropped where it cannot change any output, or refused.
    """
    if not any(k in given for k in (*OTT_KEYWORDS, "momentum", "implicit_diff")):
        return given
    out = {k: v for k, v in given.items() if k not in OTT_KEYWORDS}
    if "lse_mode" in given:
        # OTT-JAX: log-domain (True) or kernel (False) iterations. softsort always takes one
        # log-domain step and then kernel steps with log-domain absorption of large
        # scalings: both values give the same iterates' fixed point and are accepted.
        _flag(fname, "lse_mode", given["lse_mode"])
    if given.get("anderson") is not None:
        _refuse(fname, "anderson", given["anderson"], "use momentum='adaptive' (over-relaxation) to accelerate")
    if given.get("use_danskin") is not None:
        # OTT-JAX: stops gradients of the potentials in reg_ot_cost only; no softsort output
        # is such a cost (plans and operators are differentiated in full).
        _flag(fname, "use_danskin", given["use_danskin"])
    if "parallel_dual_updates" in given and _flag(fname, "parallel_dual_updates", given["parallel_dual_updates"]):
        _refuse(fname, "parallel_dual_updates", True, "softsort alternates the updates (OTT-JAX's default, False)")
    if "recenter_potentials" in given and _flag(fname, "recenter_potentials", given["recenter_potentials"]):
        _refuse(
            fname,
            "recenter_potentials",
            True,
            "the plan does not depend on it; for centred potentials use transport_for_sort(...) and "
            "subtract the mean of .f from .f and add it to .g",
        )
    if given.get("progress_fn") is not None:
        _refuse(
            fname,
            "progress_fn",
            given["progress_fn"],
            "transport_for_sort(...) returns the error at every check (.errors) and the iterations run (.iterations)",
        )
    if given.get("initializer") is not None:
        _refuse(fname, "initializer", given["initializer"], "use init='auto', 'dual' or 'zeros'")
    if "norm_error" in given and (_is_bool(given["norm_error"]) or given["norm_error"] != 1):
        _refuse(fname, "norm_error", given["norm_error"], "softsort's threshold is on the L1 error (norm_error=1)")
    if "momentum" in given:
        if given["momentum"] is None:  # OTT-JAX's default: softsort's default too
            del out["momentum"]
        else:
            out["momentum"] = _momentum(fname, given["momentum"])
    if "implicit_diff" in given:
        out["implicit_diff"] = _implicit_diff(fname, given["implicit_diff"])
    return out
