"""
Simulated CSST-like fields turned into an on-disk training set.

Every field goes through the same inference-side path that ``classify()``
runs (sky positions -> each band's WCS -> `~astro_starglx.features.extract_inputs`),
so the network is trained on exactly the inputs it will later see.

On-disk format
--------------
A directory holding, per split (``train``, ``val``, ``test``), plain ``.npy``
files opened as memory maps::

    dataset.json               provenance, counts, bands, stamp size, feature names
    {split}_stamps.npy         (N, C, H, W) float32, background-subtracted, image units
    {split}_noise.npy          (N, C) float32 per-pixel noise
    {split}_features.npy       (N, C, F) float32 catalog features (NaN = not measured)
    {split}_labels.npy         (N,) int8, 0 = star, 1 = galaxy
    {split}_flags.npy          (N,) uint16 `~astro_starglx.flags.ClassFlag` bits
    {split}_catalog.ecsv       truth per source: id, field, ra, dec, label, mag_<band>,
                               redshift, hlr
    shards/field_NNNNN.npz     one finished field each (kept for resume; safe to delete)

Why ``.npy`` memory maps rather than HDF5: they need no extra dependency,
give zero-copy random access through the OS page cache (a training batch is a
random gather of rows), and are trivially written atomically. Fields are
simulated in parallel worker processes and each finished field is written as
its own shard first, so an interrupted build resumes where it stopped.
"""

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .csst import CSST_BANDS, CSST_PIXEL_SCALE

__all__ = ["make_dataset", "load_dataset", "SplitData", "simulate_inputs", "detect_sources",
           "SPLITS", "FEATURE_ARRAYS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Per-source arrays stored for each split.
FEATURE_ARRAYS = ("stamps", "noise", "features", "labels", "flags")
_LABELS = {"star": 0, "galaxy": 1}

# Sources per 2048 x 2048 field: ~170 objects/arcmin^2 to r ~ 26 over the
# field's 6.3 arcmin^2, the order of deep-field counts at CSST depth.
_SOURCES_PER_FIELD_2048 = 1000


@dataclass(frozen=True)
class SplitData:
    """
    One split of an on-disk data set.

    Attributes
    ----------
    stamps : `~numpy.ndarray`
        ``(N, C, H, W)`` float32 memory map.
    noise : `~numpy.ndarray`
        ``(N, C)`` float32.
    features : `~numpy.ndarray`
        ``(N, C, F)`` float32.
    labels : `~numpy.ndarray`
        ``(N,)`` int8, 0 = star, 1 = galaxy.
    flags : `~numpy.ndarray`
        ``(N,)`` uint16.
    catalog : `~astropy.table.Table`
        Truth and provenance per source.
    info : dict
        The data set's ``dataset.json``.
    """

    stamps: np.ndarray
    noise: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    flags: np.ndarray
    catalog: object
    info: dict

    def __len__(self):
        return len(self.labels)


def detect_sources(images, *, band="r", nsigma=1.5, n_pixels=5, fwhm=2.0):
    """
    Detect sources on one band with photutils image segmentation.

    Parameters
    ----------
    images : dict
        ``{band: CCDData}``.
    band : str, optional
        Detection band.
    nsigma : float, optional
        Per-pixel detection threshold in units of the background noise, on
        the image smoothed by a Gaussian of ``fwhm`` pixels.
    n_pixels : int, optional
        Minimum number of connected pixels.
    fwhm : float, optional
        Smoothing kernel FWHM in pixels (about the CSST PSF).

    Returns
    -------
    coords : `~astropy.coordinates.SkyCoord`
        Sky centroids of the detections.
    """
    from astropy.convolution import convolve
    from photutils.segmentation import SourceCatalog, make_2dgaussian_kernel
    from photutils.segmentation import detect_sources as _detect

    from .features import image_noise

    image = images[band]
    data = np.asarray(image.data, dtype=float)
    mask = None if image.mask is None else np.asarray(image.mask, bool)
    background = np.nanmedian(data if mask is None else data[~mask])
    data = data - background
    kernel = make_2dgaussian_kernel(fwhm, size=int(2 * round(1.5 * fwhm) + 1))
    convolved = convolve(data, kernel, mask=mask)
    sigma = image_noise(image)
    # Smoothing lowers the noise by the kernel's effective area.
    threshold = nsigma * sigma * np.sqrt(np.sum(kernel.array ** 2))
    segm = _detect(convolved, threshold, n_pixels=n_pixels, mask=mask)
    if segm is None:
        from astropy.coordinates import SkyCoord

        return SkyCoord([], [], unit="deg")
    cat = SourceCatalog(data, segm, convolved_data=convolved, wcs=image.wcs, mask=mask)
    return cat.sky_centroid


def simulate_inputs(field_seed, *, field_id, n_stars, n_galaxies, field_size, stamp_size,
                    pixel_scale, bands, detect, psf_scale, position_jitter, mag_range,
                    wcs_jitter=0.5, match_radius=0.2, **variation):
    """
    Simulate one field and extract the model inputs of its sources.

    The positions the inputs are cut at are the truth sky positions (moved by
    a Gaussian ``position_jitter`` in pixels, as a real catalog's centroids
    are) or, with ``detect=True``, photutils detections matched to the truth
    within ``match_radius`` arcsec (unmatched detections have no label and
    are dropped). ``variation`` holds further `~astro_starglx.simulate.simulate_field`
    keywords (``psf_model``, ``psf_beta``, ``exptime_scale``,
    ``galaxy_size_scale``, ``sersic_fraction``, ``colour_scatter``).

    Returns
    -------
    arrays : dict
        ``stamps``, ``noise``, ``features``, ``labels``, ``flags`` and the
        truth columns (``id``, ``field``, ``ra``, ``dec``, ``mag_<band>``,
        ``redshift``, ``hlr``) as numpy arrays.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    from .features import extract_inputs
    from .positions import pixel_positions
    from .simulate import simulate_field

    rng = np.random.default_rng(field_seed)
    images, truth = simulate_field(shape=(field_size, field_size), n_stars=n_stars,
                                   n_galaxies=n_galaxies, bands=bands,
                                   pixel_scale=pixel_scale, mag_range=mag_range,
                                   psf_scale=psf_scale, wcs_jitter=wcs_jitter,
                                   rotation_jitter=0.02, seed=field_seed, **variation)
    true_coords = SkyCoord(truth["ra"], truth["dec"], unit="deg")
    if detect:
        det = detect_sources(images, band="r" if "r" in images else bands[0])
        idx, sep, _ = det.match_to_catalog_sky(true_coords) if len(det) else ([], [], [])
        keep = np.asarray(sep.to_value(u.arcsec) < match_radius) if len(det) else []
        # One detection per truth source: the nearest wins.
        order = np.argsort(sep.to_value(u.arcsec)) if len(det) else []
        seen, rows, det_rows = set(), [], []
        for i in order:
            if keep[i] and idx[i] not in seen:
                seen.add(idx[i])
                rows.append(idx[i])
                det_rows.append(i)
        truth = truth[np.asarray(rows, dtype=int)]
        positions = Table({"ra": det.ra.deg[det_rows], "dec": det.dec.deg[det_rows]})
    else:
        shift = rng.normal(0.0, position_jitter * pixel_scale / 3600.0, size=(2, len(truth)))
        dec = np.asarray(truth["dec"]) + shift[1]
        ra = np.asarray(truth["ra"]) + shift[0] / np.cos(np.deg2rad(dec))
        positions = Table({"ra": ra, "dec": dec})
    x, y = pixel_positions(positions, images, ra_column="ra", dec_column="dec",
                           coord_column=None, x_column="x", y_column="y", shared_grid=False)
    inputs = extract_inputs(images, x, y, bands=bands, size=stamp_size,
                            pixel_scale=pixel_scale)
    n = len(truth)
    arrays = {
        "stamps": inputs.stamps, "noise": inputs.noise, "features": inputs.features,
        "labels": np.array([_LABELS[str(v)] for v in truth["label"]], dtype=np.int8),
        "flags": inputs.flags,
        "id": np.asarray(truth["id"]), "field": np.full(n, field_id, dtype=np.int32),
        "ra": np.asarray(positions["ra"]), "dec": np.asarray(positions["dec"]),
        "redshift": np.asarray(truth["redshift"], dtype=np.float32),
        "hlr": np.asarray(truth["hlr"], dtype=np.float32),
        "psf_scale": np.full(n, psf_scale, dtype=np.float32),
    }
    for band in bands:
        arrays[f"mag_{band}"] = np.asarray(truth[f"mag_{band}"], dtype=np.float32)
    return arrays


def _field_task(task):
    """Worker: simulate one field and write its shard atomically."""
    path = Path(task.pop("path"))
    arrays = simulate_inputs(**task)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return str(path)


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        msg = f"{name} must be a non-negative int, got {value!r}"
        raise ValueError(msg)


def make_dataset(output, *, n_stars=32371, n_galaxies=93525, seed=0, n_workers=2,
                 stamp_size=25, field_size=2048, detect=False,
                 split_fractions=(0.8, 0.1, 0.1), psf_scale_range=(0.75, 1.5),
                 psf_models=("airy", "moffat", "gaussian"), psf_beta_range=(2.5, 5.0),
                 exptime_scale_range=(0.5, 2.0), galaxy_size_range=(0.8, 1.25),
                 sersic_fraction=0.3, colour_scatter=0.05, position_jitter=0.3,
                 mag_range=(17.0, 26.0), bands=CSST_BANDS, pixel_scale=CSST_PIXEL_SCALE,
                 progress=False):
    """
    Simulate CSST-like fields and write a training set split by field.

    Parameters
    ----------
    output : path-like
        Output directory (created; an existing partial build is resumed).
    n_stars, n_galaxies : int, optional
        Total sources; the defaults are the paper's 32,371 and 93,525.
    seed : int, optional
        Data seed: field ``i`` is simulated with a seed derived from it.
    n_workers : int, optional
        Worker processes simulating fields in parallel.
    stamp_size : int, optional
        Stamp side in pixels.
    field_size : int, optional
        Field side in pixels; the number of fields follows from the source
        count (about 1000 sources per 2048 x 2048 field).
    detect : bool, optional
        Cut stamps at photutils detections matched to the truth instead of
        at (jittered) truth positions.
    split_fractions : tuple of float, optional
        Fractions of fields for train, validation and test. Splits never
        share a field.
    psf_scale_range : tuple of float, optional
        Each field's PSF size is scaled by a factor drawn uniformly from this
        range, so that the model learns robustness to PSF-width differences.
    psf_models : sequence of str, optional
        PSF families (`~astro_starglx.simulate.PSF_MODELS`); each field
        draws one uniformly, so the model does not learn one PSF's shape.
    psf_beta_range : tuple of float, optional
        Range of the Moffat index of fields with a Moffat PSF.
    exptime_scale_range : tuple of float, optional
        Each field's exposure times are scaled by a factor drawn
        log-uniformly from this range (noise-level augmentation: the default
        moves depths by -0.4 to +0.4 mag).
    galaxy_size_range : tuple of float, optional
        Each field's galaxy sizes are scaled by a factor drawn log-uniformly
        from this range.
    sersic_fraction : float, optional
        Fraction of galaxies drawn as single Sersic profiles (index 0.5-4)
        rather than bulge + disk.
    colour_scatter : float, optional
        Per-band magnitude scatter (mag) added to every source off the
        SED loci.
    position_jitter : float, optional
        Standard deviation in pixels of the centroid error applied to truth
        positions.
    mag_range : tuple of float, optional
        r-band magnitude range of the simulated sources.
    bands : sequence of str, optional
        Bands to simulate and store.
    pixel_scale : float, optional
        Pixel scale in arcsec.
    progress : bool, optional
        Show a progress bar.

    Returns
    -------
    path : `~pathlib.Path`
        The data set directory.
    """
    _check_positive("n_stars", n_stars)
    _check_positive("n_galaxies", n_galaxies)
    if n_stars + n_galaxies == 0:
        msg = "n_stars + n_galaxies must be positive, got 0 sources"
        raise ValueError(msg)
    if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        msg = (f"split_fractions must be three non-negative fractions (train, val, test), "
               f"got {split_fractions!r}")
        raise ValueError(msg)
    if not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        msg = f"n_workers must be a positive int, got {n_workers!r}"
        raise ValueError(msg)
    output = Path(output)
    shards = output / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    per_field = max(1, round(_SOURCES_PER_FIELD_2048 * (field_size / 2048) ** 2))
    n_fields = max(3, int(np.ceil((n_stars + n_galaxies) / per_field)))
    stars = np.diff(np.linspace(0, n_stars, n_fields + 1).round().astype(int))
    galaxies = np.diff(np.linspace(0, n_galaxies, n_fields + 1).round().astype(int))
    rng = np.random.default_rng(seed)
    field_seeds = rng.integers(0, 2**31 - 1, size=n_fields)
    psf_scales = rng.uniform(*psf_scale_range, size=n_fields)
    split_of_field = _assign_splits(n_fields, split_fractions, rng)
    # Per-field variations, drawn after the seeds and splits, so that a data
    # seed keeps its fields and splits whatever the variations.
    from .simulate import PSF_MODELS

    if not len(psf_models) or any(m not in PSF_MODELS for m in psf_models):
        msg = f"psf_models must be a non-empty subset of {PSF_MODELS}, got {psf_models!r}"
        raise ValueError(msg)
    variations = [
        {"psf_model": str(model), "psf_beta": float(beta),
         "exptime_scale": float(np.exp(log_t)), "galaxy_size_scale": float(np.exp(log_s)),
         "sersic_fraction": float(sersic_fraction), "colour_scatter": float(colour_scatter)}
        for model, beta, log_t, log_s in zip(
            rng.choice(list(psf_models), size=n_fields),
            rng.uniform(*psf_beta_range, size=n_fields),
            rng.uniform(*np.log(exptime_scale_range), size=n_fields),
            rng.uniform(*np.log(galaxy_size_range), size=n_fields))
    ]

    tasks = []
    for i in range(n_fields):
        path = shards / f"field_{i:05d}.npz"
        if path.exists():
            continue
        tasks.append(dict(path=str(path), field_seed=int(field_seeds[i]), field_id=i,
                          n_stars=int(stars[i]), n_galaxies=int(galaxies[i]),
                          field_size=field_size, stamp_size=stamp_size,
                          pixel_scale=pixel_scale, bands=tuple(bands), detect=detect,
                          psf_scale=float(psf_scales[i]), position_jitter=position_jitter,
                          mag_range=tuple(mag_range), **variations[i]))
    log.info("%d fields (%d to simulate), %d sources per field", n_fields, len(tasks),
             per_field)
    from tqdm.auto import tqdm

    with tqdm(total=n_fields, initial=n_fields - len(tasks), disable=not progress,
              unit="field", desc="make-dataset") as bar:
        if n_workers == 1:
            for task in tasks:
                _field_task(task)
                bar.update()
        else:
            import multiprocessing

            # "spawn": workers start clean, whatever the parent process has
            # imported or threaded (torch, dask).
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
                for _ in pool.map(_field_task, tasks):
                    bar.update()

    info = {
        "format": "astro_starglx-dataset-1",
        "bands": list(bands), "stamp_size": stamp_size, "pixel_scale": pixel_scale,
        "feature_names": None, "n_fields": n_fields, "seed": seed,
        "field_size": field_size, "detect": detect, "position_jitter": position_jitter,
        "psf_scale_range": list(psf_scale_range), "psf_models": list(psf_models),
        "psf_beta_range": list(psf_beta_range),
        "exptime_scale_range": list(exptime_scale_range),
        "galaxy_size_range": list(galaxy_size_range), "sersic_fraction": sersic_fraction,
        "colour_scatter": colour_scatter, "mag_range": list(mag_range),
        "split_fractions": list(split_fractions),
        "field_conditions": [{"psf_scale": float(psf_scales[i]), **variations[i]}
                             for i in range(n_fields)],
        "fields": {split: [int(i) for i in np.flatnonzero(split_of_field == k)]
                   for k, split in enumerate(SPLITS)},
        "class_names": ["star", "galaxy"],
    }
    from . import __version__
    from .features import FEATURE_NAMES

    info["feature_names"] = list(FEATURE_NAMES)
    info["package_version"] = __version__
    info["counts"] = _consolidate(output, info)
    (output / "dataset.json").write_text(json.dumps(info, indent=2))
    return output


def _assign_splits(n_fields, fractions, rng):
    """Split index (0 train, 1 val, 2 test) of each field; every split non-empty."""
    fractions = np.asarray(fractions, float) / np.sum(fractions)
    counts = np.floor(fractions * n_fields).astype(int)
    for k in range(3):
        if fractions[k] > 0 and counts[k] == 0:
            counts[k] = 1
    counts[0] = n_fields - counts[1] - counts[2]
    labels = np.repeat(np.arange(3), counts)
    return labels[rng.permutation(n_fields)]


def _consolidate(output, info):
    """Concatenate the shards of each split into memory-mappable .npy files."""
    from astropy.table import Table, vstack

    counts = {}
    for split in SPLITS:
        fields = info["fields"][split]
        shard_files = [output / "shards" / f"field_{i:05d}.npz" for i in fields]
        sizes = []
        for f in shard_files:
            with np.load(f) as z:
                sizes.append(len(z["labels"]))
        n = int(sum(sizes))
        counts[split] = n
        first = np.load(shard_files[0]) if shard_files else None
        tables = []
        mmaps = {}
        for name in FEATURE_ARRAYS:
            if first is None:
                continue
            shape = (n,) + first[name].shape[1:]
            tmp = output / f"{split}_{name}.tmp.npy"
            mmaps[name] = (np.lib.format.open_memmap(tmp, mode="w+", dtype=first[name].dtype,
                                                     shape=shape), tmp)
        start = 0
        for f, size in zip(shard_files, sizes):
            with np.load(f) as z:
                for name, (mm, _) in mmaps.items():
                    mm[start:start + size] = z[name]
                cols = {k: z[k] for k in z.files if k not in FEATURE_ARRAYS}
                cols["label"] = np.where(z["labels"] == 1, "galaxy", "star")
                cols["flags"] = z["flags"]
                tables.append(Table(cols))
            start += size
        if first is not None:
            first.close()
        for name, (mm, tmp) in mmaps.items():
            mm.flush()
            del mm
            os.replace(tmp, output / f"{split}_{name}.npy")
        catalog = vstack(tables) if tables else Table()
        catalog.meta["split"] = split
        catalog.write(output / f"{split}_catalog.ecsv", overwrite=True)
    return counts


def load_dataset(path, split, *, in_memory=False):
    """
    Open one split of a data set written by `make_dataset`.

    Parameters
    ----------
    path : path-like
        Data set directory.
    split : {"train", "val", "test"}
        Which split.
    in_memory : bool, optional
        Read the arrays into memory instead of memory-mapping them.

    Returns
    -------
    data : `SplitData`
    """
    from astropy.table import Table

    path = Path(path)
    if split not in SPLITS:
        msg = f"split must be one of {SPLITS}, got {split!r}"
        raise ValueError(msg)
    info_file = path / "dataset.json"
    if not info_file.exists():
        msg = (f"{path} is not an astro_starglx data set (no dataset.json); build one with "
               "`astro-starglx make-dataset DIR`")
        raise FileNotFoundError(msg)
    info = json.loads(info_file.read_text())
    mode = None if in_memory else "r"
    arrays = {name: np.load(path / f"{split}_{name}.npy", mmap_mode=mode)
              for name in FEATURE_ARRAYS}
    catalog = Table.read(path / f"{split}_catalog.ecsv")
    return SplitData(catalog=catalog, info=info, **arrays)
