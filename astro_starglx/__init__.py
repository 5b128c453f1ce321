"""
astro_starglx: star-galaxy classification in multi-band survey images.

The model follows Han et al. (2026, arXiv:2604.10086): a ResNet over the
multi-band cutout stack fused with a bidirectional LSTM over the per-band
photometric catalog.

>>> from astro_starglx import StarGalaxyClassifier
>>> clf = StarGalaxyClassifier()   # no I/O until the first classify()

The public names are imported lazily (PEP 562), so that ``import
astro_starglx.model`` does not pull in astropy and ``import
astro_starglx.cutouts`` does not pull in torch: the dependency direction of
the design holds per module.
"""

import importlib

try:
    from ._version import version as __version__
except ImportError:  # not installed from a checkout with setuptools_scm
    __version__ = "0.0.0"

__all__ = ["StarGalaxyClassifier", "StarGalaxyWarning", "ClassFlag", "describe_flags",
           "fine_tune", "__version__"]

_LAZY = {
    "StarGalaxyClassifier": "classifier",
    "StarGalaxyWarning": "classifier",
    "ClassFlag": "flags",
    "describe_flags": "flags",
    "fine_tune": "adapt",
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__():
    return sorted(set(globals()) | set(__all__))
