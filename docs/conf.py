"""Sphinx configuration: numpydoc API reference and an executed sphinx-gallery."""

from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # softsort (its tutorial included) from the checkout

import softsort  # noqa: E402

project = "softsort"
author = "softsort developers"
copyright = "softsort developers"
version = release = softsort.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
html_static_path = ["_static"]
# furo: code and output scroll instead of being cut, and figures can take the page's width
# (custom.css widens the content column so that multi-panel figures stay readable).
html_theme = "furo"
html_title = f"softsort {release}"
html_css_files = ["custom.css"]

autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    # SOFTSORT_GALLERY_PATTERN=/plot_[123] executes the fast examples only (not the training)
    "filename_pattern": os.environ.get("SOFTSORT_GALLERY_PATTERN", "/plot_"),
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "capture_repr": (),
    "write_computation_times": False,
}
