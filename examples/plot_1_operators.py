"""
Soft operators beside the hard ones
===================================

The soft sort, ranks and median of ``x = [1, 5, 4, 8, 12]`` next to their hard
counterparts, and the soft top-5 of 1000 uniform values (``softsort.sort(x, topk=5)``,
which solves a transport onto only 6 targets). Small ``epsilon`` gives outputs close to
the hard ones; larger ``epsilon`` blends the values together.
"""

# %%
# The table printed by ``python -m softsort demo``:
import numpy as np

import softsort
from softsort.tutorial import demo

print(demo.format_table(demo.operator_table("numpy")))

# %%
# The same calls, one by one:
x = np.array([1.0, 5.0, 4.0, 8.0, 12.0])
print("soft sort   ", softsort.sort(x))
print("eps = 1e-4  ", softsort.sort(x, epsilon=1e-4))
print("eps = 1e-1  ", softsort.sort(x, epsilon=1e-1))
print("soft ranks  ", softsort.ranks(x))
print("soft median ", softsort.quantile(x, 0.5))
u = np.random.default_rng(0).uniform(size=1000)
print("soft top-5  ", softsort.sort(u, topk=5), " hard:", np.sort(u)[-5:])

# %%
# Soft sort increases and keeps the mean of ``x``; soft ranks keep the order of ``x`` and
# sum to ``n (n - 1) / 2``:
print(softsort.sort(x).mean(), x.mean(), softsort.ranks(x).sum())

# %%
# The figure:
fig = demo.plot_operators()
