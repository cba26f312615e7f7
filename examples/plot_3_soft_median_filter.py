"""
Soft median filter
==================

Salt-and-pepper noise (10 % of the pixels set to black or white) on a real photo,
scikit-learn's ``china.jpg`` in grayscale and downsized 4x, then cleaned by a 3x3 median
filter: the hard median (``scipy.ndimage.generic_filter(noisy, np.median, size=3)``) and
soft medians ``softsort.quantile(patch, 0.5, epsilon=...)`` at ``epsilon = 0.01`` (close to
the hard median) and ``epsilon = 1`` (close to a mean filter, which smears the noise).

``generic_filter`` calls its function once per pixel, which for a soft median is one
small Sinkhorn solve per pixel. softsort solves any batch of problems in one batched
Sinkhorn, so :func:`softsort.tutorial.demo.soft_median_filter` extracts the 3x3 patches
with ``numpy.lib.stride_tricks.sliding_window_view`` (same ``"reflect"`` border as
``generic_filter``) and calls :func:`softsort.quantile` once on a ``(H, W, 9)`` array.
On a small crop we check that both give the same image.
"""

import datetime
import os
import platform
import time

import numpy as np
from scipy import ndimage

import softsort
from softsort.tutorial import demo

photo = demo.load_photo(downsample=4)
noisy = demo.salt_and_pepper(photo, fraction=0.1, seed=0)
print("image", photo.shape)

# %%
# ``generic_filter`` with a soft median, on a 24 x 24 crop, against the batched version
# (with a tight ``threshold``: a batch stops when all its problems converge, so the two
# agree to about ``threshold``):
crop = noisy[40:64, 60:84]
opts = {"epsilon": 0.01, "threshold": 1e-9, "max_iterations": 20000}
t = time.perf_counter()
per_pixel = ndimage.generic_filter(crop, lambda patch: softsort.quantile(patch, 0.5, **opts)[0], size=3)
t_generic = time.perf_counter() - t
t = time.perf_counter()
batched = demo.soft_median_filter(crop, **opts)
t_batched = time.perf_counter() - t
print(f"max difference {np.abs(per_pixel - batched).max():.2e}")
print(f"generic_filter: {t_generic:.2f} s, one batched call: {t_batched:.3f} s for {crop.size} pixels")

# %%
# The whole image (hard median by ``generic_filter``, soft medians batched):
t = time.perf_counter()
images = demo.median_filters(downsample=4, fraction=0.1, epsilons=(0.01, 1.0), seed=0)
print(f"{time.perf_counter() - t:.2f} s")
# when and where these timings were measured: while the documentation was built
print(f"measured {datetime.date.today()} on {platform.machine()} {platform.system()}, {os.cpu_count()} logical CPUs")
for name, img in images.items():
    print(f"{name:>22s}: mean absolute error to the clean photo {np.abs(img - photo).mean():.4f}")

# %%
fig = demo.plot_median_filter(images=images)
