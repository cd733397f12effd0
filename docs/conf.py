"""Sphinx configuration of the sktransfer documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``. The gallery
examples run during the build: their figures illustrate the user guide, and an
example that fails fails the build. The test suite runs this build once
(``tests/test_examples.py``) and checks what each example saved and printed.
Nothing here reaches the network: there is no intersphinx.
"""

import sys
from pathlib import Path

import sktransfer

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "sktransfer"
author = "the sktransfer developers"
copyright = "the sktransfer developers"
version = release = sktransfer.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "sktransfer_docs",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_theme = "alabaster"
html_theme_options = {"description": "Transfer learning for images, the scikit-learn way"}
html_static_path = []

# --- API reference ---
autosummary_generate = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc sections already give the types
numpydoc_show_class_members = False  # the class template lists members itself
numpydoc_class_members_toctree = False

# --- Gallery ---
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "ExampleTitleSortKey",
    "doc_module": ("sktransfer",),
    "backreferences_dir": "generated/backreferences",
    "reference_url": {"sktransfer": None},
    "abort_on_example_error": True,
    "write_computation_times": False,
    "download_all_examples": False,
    "remove_config_comments": True,
}
