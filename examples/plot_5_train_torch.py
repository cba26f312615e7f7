"""
Learning through soft ranks (PyTorch)
=====================================

The experiment of the JAX example with PyTorch: the same data pipeline, batches, CNN
architecture, losses and optimizers (``torch.optim.AdamW`` / ``torch.optim.Adam``);
gradients of ``softsort.ranks`` flow through autograd. The soft 0/1 loss:

.. code-block:: python

    soft_ranks = softsort.ranks(logits, axis=-1)
    true_rank = torch.sum(F.one_hot(labels, C) * soft_ranks, dim=1)
    loss = torch.mean(torch.relu(C - 1 - true_rank))

The same run is ``python -m softsort train --framework torch``.
"""

import datetime
import os
import platform
import time

from softsort.tutorial import training

t = time.perf_counter()
metrics = training.run("torch", data="digits", progress=False)
print(f"total {time.perf_counter() - t:.1f} s")
# when and where these figures were measured: while the documentation was built
print(f"measured {datetime.date.today()} on {platform.machine()} {platform.system()}, {os.cpu_count()} logical CPUs")

# %%
# Dashed: training set, solid: held-out set.
fig = training.plot_curves(metrics, title="PyTorch, scikit-learn digits")
