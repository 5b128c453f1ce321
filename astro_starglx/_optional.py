"""
Optional imports and atomic file writes (private).

Heavy or optional dependencies (galsim, matplotlib, dask, ...) are imported
inside the functions that need them through `import_optional`, whose error
names the extra to install. `atomic_write` writes a file so that readers
never see a partial one (pooch's approach: temporary file in the same
folder, moved into place on success).
"""

import contextlib
import importlib
import os
import uuid
from pathlib import Path

__all__ = ["import_optional", "atomic_write"]


def import_optional(module, extra, *, feature=None, hint=""):
    """
    Import an optional dependency, or raise an ImportError naming its extra.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"galsim"`` or ``"matplotlib.figure"``.
    extra : str
        The ``astro_starglx`` extra that installs it, e.g. ``"sim"``.
    feature : str, optional
        What needs it, for the message (default ``"this feature"``).
    hint : str, optional
        Text appended to the message, e.g. ``" or pass plot=False"``.

    Returns
    -------
    module : module
        The imported module.

    Raises
    ------
    ImportError
        If the module cannot be imported; the message says
        ``pip install "astro_starglx[extra]"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        msg = (f"{feature or 'this feature'} needs {package}, which is not installed; "
               f'install it with pip install "astro_starglx[{extra}]"{hint}')
        raise ImportError(msg) from err


@contextlib.contextmanager
def atomic_write(path, mode="w", **kwargs):
    """
    Open a temporary file next to ``path``; move it onto ``path`` on success.

    If the ``with`` block raises, the temporary file is removed and ``path``
    is left as it was.

    Parameters
    ----------
    path : path-like
        Destination file.
    mode : {"w", "wb"}, optional
        Text or binary mode.
    **kwargs
        Passed to `open` (e.g. ``encoding``).

    Yields
    ------
    file : file object
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        msg = f'mode must be "w" or "wb", got {mode!r}'
        raise ValueError(msg)
    path = Path(path)
    # A fresh name opened exclusively ("x"), so that the file gets the
    # umask's permissions (tempfile.mkstemp would give 0600).
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
