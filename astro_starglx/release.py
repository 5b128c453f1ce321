"""
Release steps for maintainers: registry entries for newly trained weights.

Users never need this module; `astro_starglx.weights` only reads the
registry. A release trains with ``astro-starglx train``, puts the file where
it will be found (``astro_starglx/data/`` when bundled, ``release/weights/``
otherwise, served at `~astro_starglx.weights.DEFAULT_BASE_URL`) and calls
`register_weights` (or ``python -m astro_starglx.release FILE``).
"""

import argparse
import json
import logging
from pathlib import Path

from ._optional import atomic_write
from . import weights as _weights
from .weights import (DEFAULT, _entry_to_weights, _read_registry, _sha256,
                      read_meta)

__all__ = ["register_weights"]

log = logging.getLogger(__name__)

_REGISTRY_FORMAT = 1


def register_weights(path, *, bundled, registry_path=None, name=None, default=False):
    """
    Add or update a registry entry from a weights file (release step).

    The sha256 and meta are read from the file, so the file stays the single
    source of truth. Put the file where it will be found: ``astro_starglx/data/``
    for ``bundled=True``, ``release/weights/`` at the repository root (served
    at `DEFAULT_BASE_URL`) otherwise.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file written by `save_weights`.
    bundled : bool
        Whether the file ships inside the package.
    registry_path : str or os.PathLike or None
        Registry JSON to update (created if absent, with default
        ``"rbim-lite"``); None for the package's registry.
    name : str or None
        Entry name; default ``meta["name"]``.
    default : bool, optional
        Make this entry the registry's default model (what
        ``StarGalaxyClassifier()`` loads).

    Returns
    -------
    weights : `Weights`
        The new entry.

    Raises
    ------
    ValueError
        If the file is not a ``.safetensors`` weights file, its meta is
        invalid, or it has no name.
    """
    path = Path(path)
    if not isinstance(bundled, bool):
        msg = f"bundled must be True or False, got {bundled!r}"
        raise TypeError(msg)
    if path.suffix != ".safetensors":
        msg = f"registered weights must be .safetensors files, got {path.name!r}"
        raise ValueError(msg)
    meta = read_meta(path)
    name = meta.name if name is None else name
    if not isinstance(name, str) or not name or name == DEFAULT:
        msg = (f"{path} has no usable meta['name'] ({name!r}); pass name=... "
               f"(any string but {DEFAULT!r})")
        raise ValueError(msg)
    registry_path = Path(_weights._REGISTRY_PATH if registry_path is None else registry_path)
    if registry_path.exists():
        registry = _read_registry(registry_path)
    else:
        registry = {"format_version": _REGISTRY_FORMAT, "default": "rbim-lite", "models": {}}
    entry = {"filename": path.name, "sha256": _sha256(path), "bundled": bundled,
             "meta": meta.to_dict()}
    weights = _entry_to_weights(name, entry, registry_path)
    reused = [other for other, old in registry["models"].items()
              if old.get("filename") == path.name and old.get("sha256") != entry["sha256"]]
    if reused:
        # Caches and mirrors keyed by file name would then hold a file with the old hash.
        log.warning("file name %s was registered before (as %s) with another sha256; "
                    "caches holding the old file will refuse it. Give retrained weights a "
                    "new file name, e.g. %s-v2.safetensors.", path.name, reused, path.stem)
    registry["models"][name] = entry
    if default:
        registry["default"] = name
    registry["models"] = dict(sorted(registry["models"].items()))
    text = json.dumps(registry, indent=2, allow_nan=False) + "\n"
    with atomic_write(registry_path, "w", encoding="utf-8") as fh:
        fh.write(text)
    log.info("registered weights %r (%s, sha256 %s) in %s", name, path.name, entry["sha256"],
             registry_path)
    return weights


def main(argv=None):
    """``python -m astro_starglx.release FILE [--bundled] [--name NAME]``."""
    parser = argparse.ArgumentParser(prog="python -m astro_starglx.release",
                                     description="register a weights file in the package "
                                                 "registry (maintainers)")
    parser.add_argument("file", help="the .safetensors file")
    parser.add_argument("--bundled", action="store_true",
                        help="the file ships inside the package (default: downloaded)")
    parser.add_argument("--name", default=None, help="registry name (default: meta name)")
    parser.add_argument("--default", action="store_true",
                        help="make it the default model (default: keep the current one)")
    args = parser.parse_args(argv)
    entry = register_weights(args.file, bundled=args.bundled, name=args.name,
                             default=args.default)
    print(f"registered {entry.name} ({entry.filename}, sha256 {entry.sha256})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
