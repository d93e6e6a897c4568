"""Sphinx configuration of the course website (``make html``).

``tools/build_site.py`` stages the sources (executed lessons, the landing page, the API pages)
in a build folder next to a copy of this file and runs Sphinx there; see its docstring.
The stack is Jupyter Book 1's (Sphinx + myst-nb + sphinx-book-theme), used directly.
"""

project = "vitlab"
author = "the vitlab authors"
copyright = "2026, the vitlab authors"

extensions = [
    "myst_nb",                # notebooks and MyST markdown
    "sphinx.ext.autodoc",     # the API reference, from vitlab's docstrings
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",    # "[source]" links next to every documented object
    "sphinx.ext.mathjax",
    # MathJax 3 served from the site's own _static/mathjax (it sets mathjax_path), not from a CDN: equations
    # are typeset with no network (tests/test_site.py loads a lesson with the network cut off).
    "sphinx-mathjax-offline",
]

root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# The notebooks arrive already executed (or deliberately not, for a fast structural build):
# tools/build_site.py runs them from notebooks/, where their relative paths hold.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "sphinx_book_theme"
html_title = "vitlab: a Vision Transformer from scratch"
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,
}
html_last_updated_fmt = "%Y-%m-%d"
# No calls to the network when a page loads: every script, MathJax included, is served with the site.
html_copy_source = False
html_static_path = ["_static"]
html_css_files = ["vitlab.css"]
