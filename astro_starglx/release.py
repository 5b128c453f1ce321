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

__all__ = ["register_weights", "simulated_depth", "with_depth"]

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


def simulated_depth(meta, *, n_fields=2, size=2048, seed=0):
    """
    The ``depth`` meta of a model trained on the simulator's CSST-like fields.

    The 5-sigma point-source depth per band of ``n_fields`` nominal
    simulated fields (`~astro_starglx.simulate.SimConfig` defaults at the
    model's bands and pixel scale), measured as
    `~astro_starglx.StarGalaxyClassifier.classify` measures a user's images
    for ``match_depth``: the PSF from each field's own point sources, the
    noise from its pixels (`~astro_starglx.background.point_source_depths`);
    the median over the fields. Needs the ``sim`` extra (GalSim).

    Parameters
    ----------
    meta : `~astro_starglx.meta.ModelMeta`
        The model's meta (PSF-aware: ``meta.psf`` gives the nominal PSF).
    n_fields, size, seed : int, optional
        Number of fields, their side in pixels and the first field's seed.

    Returns
    -------
    depth : dict of str to float
        ``{band: AB magnitude}``, rounded to 0.001 mag.
    """
    import numpy as np

    from .background import point_source_depths
    from .inputs import get_zeropoint, pixel_positions
    from .psf import resolve_psf
    from .simulate import SimConfig, simulate_field

    if meta.psf is None:
        msg = f"model {meta.name!r} does not read the PSF; depth matching needs a PSF-aware model"
        raise ValueError(msg)
    found = {}
    for k in range(n_fields):
        config = SimConfig(shape=(size, size), bands=tuple(meta.bands),
                           pixel_scale=float(meta.pixel_scale))
        images, truth = simulate_field(config, seed=seed + k)
        x, y = pixel_positions(truth, images, ra_column="ra", dec_column="dec",
                               coord_column=None, x_column="x", y_column="y",
                               shared_grid=False)
        positions = {band: (x[band], y[band]) for band in images}
        estimates = resolve_psf(images, positions, pixel_scale=meta.pixel_scale,
                                nominal_fwhm=meta.psf["nominal_fwhm"])
        depths = point_source_depths(images, estimates, positions,
                                     pixel_scale=meta.pixel_scale,
                                     zeropoints={band: get_zeropoint(image, band)
                                                 for band, image in images.items()})
        for band, depth in depths.items():
            found.setdefault(band, []).append(depth)
    return {band: round(float(np.median(found[band])), 3) for band in meta.bands
            if band in found}


def with_depth(path, output, *, name, n_fields=2, size=2048, seed=0):
    """
    A copy of a weights file whose meta records `simulated_depth` (release step).

    The tensors are unchanged (so are the probabilities on the model's own
    pixel scale); the meta gets ``depth``, the new ``name`` and, in its
    recipe, the call that measured the depth and the file it came from.

    Parameters
    ----------
    path : str or os.PathLike
        The source ``.safetensors`` file.
    output : str or os.PathLike
        The new file.
    name : str
        The new model's name.
    n_fields, size, seed : int, optional
        Passed to `simulated_depth`.

    Returns
    -------
    output : `~pathlib.Path`
    """
    from .weights import load_model, save_weights

    loaded = load_model(Path(path), device="cpu")
    depth = simulated_depth(loaded.meta, n_fields=n_fields, size=size, seed=seed)
    recipe = {**loaded.meta.recipe,
              "depth": (f"astro_starglx.release.simulated_depth(meta, n_fields={n_fields}, "
                        f"size={size}, seed={seed})"),
              "derived_from": {"name": loaded.name, "sha256": loaded.sha256}}
    meta = loaded.meta.replace(name=name, depth=depth, recipe=recipe)
    output = Path(output)
    save_weights(output, loaded.network.state_dict(), meta)
    log.info("wrote %s: %s with depth %s", output, name, depth)
    return output


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
    parser.add_argument("--with-depth", metavar="OUTPUT", default=None,
                        help="first write FILE's tensors with the depth of simulated nominal "
                             "fields in the meta to OUTPUT (named --name), and register that")
    args = parser.parse_args(argv)
    if args.with_depth:
        if not args.name:
            parser.error("--with-depth needs --name (the new model's name)")
        args.file = with_depth(args.file, args.with_depth, name=args.name)
    entry = register_weights(args.file, bundled=args.bundled, name=args.name,
                             default=args.default)
    print(f"registered {entry.name} ({entry.filename}, sha256 {entry.sha256})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
