"""
Regularization path
===================

Soft-sorted values and soft ranks of ``x = [1, 5, 4, 8, 12]`` for ``epsilon`` on a log
grid from ``1e-3`` to ``10``. As ``epsilon`` grows every sorted value tends to the mean
of ``x`` and every rank to ``(n - 1) / 2``; the lines never cross, because soft sort and
soft ranks are monotone for every ``epsilon``.
"""

import numpy as np

from softsort.tutorial import demo

eps, sorted_values, ranks = demo.regularization_path()
order = np.argsort(demo.X)
print("sorted values increase at every epsilon:", bool((np.diff(sorted_values, axis=1) > 0).all()))
print("ranks keep the order of x at every epsilon:", bool((np.diff(ranks[:, order], axis=1) > 0).all()))

# %%
fig = demo.plot_regularization_path()
