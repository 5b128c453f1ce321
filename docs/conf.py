# Sphinx configuration (sphinx-astropy).
import datetime

try:
    from sphinx_astropy.conf.v2 import *  # noqa: F401,F403
except ImportError:  # pragma: no cover
    extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.intersphinx"]

from astro_starglx import __version__

project = "astro_starglx"
author = "astro_starglx developers"
copyright = f"{datetime.date.today().year}, {author}"
version = release = __version__
exclude_patterns = ["_build"]
extensions = list(extensions) + ["sphinx_automodapi.automodapi"] \
    if "sphinx_automodapi.automodapi" not in extensions else extensions
