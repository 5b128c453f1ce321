# Sphinx configuration (sphinx-astropy's v2 settings, pydata theme).
#
# The build must pass `sphinx-build -W -b html docs OUT` offline, from the
# `docs` extra alone:
# - intersphinx is off unless ASTRO_STARGLX_INTERSPHINX=1 (a hosted build
#   with network may turn it on); offline, its fetches are warnings;
# - no inheritance diagrams: they need the graphviz `dot` program, which no
#   Python package installs (without it the page shows raw `digraph` text);
# - the example gallery runs its scripts on small simulated fields (seconds);
#   `-D plot_gallery=0` skips running them.
import datetime
import os
import re
import warnings
from pathlib import Path

from sphinx_astropy.conf.v2 import *  # noqa: F401,F403
from sphinx_astropy.conf.v2 import extensions, html_theme_options

from astro_starglx import __version__

project = "astro_starglx"
author = "astro_starglx developers"
copyright = f"{datetime.date.today().year}, {author}"
version = release = __version__
# examples/ holds the gallery's sources; sphinx-gallery writes their pages to
# auto_examples/.
exclude_patterns = ["_build", "examples", "**.ipynb_checkpoints"]

extensions = [*extensions, "sphinx_gallery.gen_gallery"]

if os.environ.get("ASTRO_STARGLX_INTERSPHINX") != "1":
    intersphinx_mapping = {}

automodapi_inheritance_diagram = False
automodsumm_inherited_members = False

# -- HTML ------------------------------------------------------------------------
# A short name in the navbar: the default "<project> <version> documentation"
# ran into the search box.
html_title = "astro_starglx"
html_short_title = "astro_starglx"
html_static_path = ["_static"]
html_css_files = ["astro_starglx.css"]
html_theme_options = {
    **html_theme_options,
    "logo": {"text": "astro_starglx"},
    "navbar_align": "left",
    # Six links wrapped the top bar onto two lines at 1024 px.
    "header_links_before_dropdown": 4,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# No left sidebar on the guide's pages: the top bar links every page, and an
# empty sidebar took a fifth of the width. The API reference and the gallery
# keep it, to move between their many pages. (Names, not a "**" pattern:
# Sphinx warns when two patterns match a page.)
_PAGES = sorted(path.stem for path in Path(__file__).parent.glob("*.rst"))
html_sidebars = {page: [] for page in _PAGES if page != "api"}
html_sidebars["auto_examples/*"] = []
# The right sidebar (the page's sections) likewise, only where there are
# sections: not on the front page nor the gallery, whose code and figures
# need the width. Unlisted pages get none.
html_theme_options["secondary_sidebar_items"] = {
    **{page: ["page-toc", "sourcelink"] for page in _PAGES if page != "index"},
    "api/*": ["page-toc", "sourcelink"],
}

# -- the example gallery ---------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "reset_modules": ("matplotlib",),
    "min_reported_time": 5,
    "show_signature": False,
}


def _one_line_warning(message, category, filename, lineno, line=None):
    # A warning in an example's output reads as the user would see it, without
    # the build machine's file path and source line.
    return f"{category.__name__}: {message}\n"


warnings.formatwarning = _one_line_warning


# -- every public module is in the API reference ----------------------------------
# A module with __all__ that api.rst does not name would be missing from
# the docs without a sound; say it (a warning, so -W fails the build).
# Not named there on purpose: cli (the command line, in the guide) and
# classifier (its public names are documented at the top level).
_NOT_IN_API = {"astro_starglx.cli", "astro_starglx.classifier"}


def _missing_from_api(api_text):
    """Public modules (with ``__all__``) that ``api_text`` has no section for."""
    named = set(re.findall(r"^\.\. automod(?:api|ule):: (\S+)", api_text, flags=re.M))
    package = Path(__file__).parent.parent / "astro_starglx"
    missing = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if any(part.startswith("_") and part != "__init__" for part in parts):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name in named or name in _NOT_IN_API:
            continue
        if re.search(r"^__all__\s*=", path.read_text(), flags=re.M):
            missing.append(name)
    return missing


def _check_api_coverage(app):
    from sphinx.util import logging

    api_text = (Path(__file__).parent / "api.rst").read_text()
    for name in _missing_from_api(api_text):
        logging.getLogger(__name__).warning(
            "public module %s is not in docs/api.rst; add an automodapi section", name)


def setup(app):
    app.connect("builder-inited", _check_api_coverage)
