"""Pure array-API math: no framework is imported here.

Every function takes the adapter (``backend``, see :mod:`softsort.backends`) as its first
argument and reads ``backend.xp`` for array operations. Public documentation lives in
:mod:`softsort._api`; functions here point back to it.
"""
