"""Sphinx configuration of cybn's documentation: Markdown pages (MyST) and the API
reference generated from the docstrings (autodoc, numpydoc sections through napoleon).

    python -m sphinx -W -b html docs docs/_build/html
"""

import cybn

project = "cybn"
author = "the cybn developers"
release = version = cybn.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon",
              "sphinx.ext.mathjax"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]

myst_heading_anchors = 3
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False}

html_theme = "alabaster"
html_static_path: list = []
