"""
Learning through soft ranks (JAX)
=================================

A small CNN (two conv blocks of 32 and 64 channels, dense 512, 10 classes) trained on
scikit-learn's digits (8x8 images, 1437 for training and 360 held out) with the **soft 0/1
loss** and, for comparison, with cross-entropy. With ``C = 10`` classes the soft 0/1 loss
of a batch is

.. code-block:: python

    soft_ranks = softsort.ranks(logits, axis=-1)              # (batch, C), in [0, C - 1]
    true_rank = jnp.sum(one_hot * soft_ranks, axis=1)
    loss = jnp.mean(jax.nn.relu(C - 1 - true_rank))

zero when the true class has the largest logit: a differentiable count of errors. The
model is a ``flax.linen`` module, the optimizer ``optax``, and the train step is
``jax.jit``-compiled with softsort's implicit-differentiation backward inside.

Settings for digits (the original tutorial ran one epoch of MNIST at batch 1000 with
lr ``5e-4``): 15 epochs, batch 64, AdamW (lr ``2e-3``, weight decay ``1e-4``) for the soft
loss, Adam (lr ``2e-3``) for cross-entropy; evaluation after every epoch. The same run is
``python -m softsort train --framework jax``.
"""

import datetime
import os
import platform
import time

from softsort.tutorial import training

t = time.perf_counter()
metrics = training.run("jax", data="digits", progress=False)
print(f"total {time.perf_counter() - t:.1f} s")
# when and where these figures were measured: while the documentation was built
print(f"measured {datetime.date.today()} on {platform.machine()} {platform.system()}, {os.cpu_count()} logical CPUs")

# %%
# Dashed: training set, solid: held-out set.
fig = training.plot_curves(metrics, title="JAX, scikit-learn digits")
