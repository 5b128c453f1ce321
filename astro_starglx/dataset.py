"""
Simulated CSST-like fields, or your own labelled images, as an on-disk training set.

Every field goes through the same inference-side path that ``classify()``
runs (sky positions -> each band's WCS -> `~astro_starglx.inputs.extract_inputs`),
so the network is trained on exactly the inputs it will later see. The
settings of a data set are one frozen `DatasetConfig`, recorded in its
``dataset.json``; each field's simulator settings are a
`~astro_starglx.simulate.SimConfig` drawn from it.

On-disk format
--------------
A directory holding, per split (``train``, ``val``, ``test``), plain ``.npy``
files opened as memory maps::

    dataset.json               settings (config), provenance, counts, feature names,
                               each field's simulator settings (field_conditions)
    {split}_stamps.npy         (N, C, H, W) float32, background-subtracted, image units
    {split}_noise.npy          (N, C) float32 per-pixel noise
    {split}_features.npy       (N, C, F) float32 catalog features (NaN = not measured)
    {split}_labels.npy         (N,) int8, 0 = star, 1 = galaxy
    {split}_flags.npy          (N,) uint16 `~astro_starglx.flags.ClassFlag` bits
    {split}_catalog.ecsv       truth per source: id, field, ra, dec, label, flags,
                               mag_<band>, psf_fwhm_<band>, redshift, hlr, psf_scale,
                               neighbour_sep
    shards/field_NNNNN.npz     one finished field each (kept for resume; safe to delete)

`make_labelled_dataset` writes the same format from your own images and a
labelled catalog (``dataset.json`` then says ``"source": "labelled"``; its
shards are one per field and split).

Why ``.npy`` memory maps rather than HDF5: they need no extra dependency,
give zero-copy random access through the OS page cache (a training batch is a
random gather of rows), and are trivially written atomically. Fields are
simulated in parallel worker processes and each finished field is written as
its own shard first, so an interrupted build resumes where it stopped.
"""

import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._optional import atomic_write
from ._validation import (
    config_record,
    resolve_config,
    check_bool,
    check_count,
    check_range,
    check_real,
)
from .csst import CSST_BANDS, CSST_PIXEL_SCALE

__all__ = ["DatasetConfig", "make_dataset", "load_dataset", "SplitData", "simulate_inputs",
           "SPLITS", "FEATURE_ARRAYS", "LabelledDatasetConfig",
           "make_labelled_dataset", "SPLIT_MODES"]

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


def _positive_range(name, value, *, hint=""):
    lo, hi = check_range(name, value, low=0.0, hint=hint)
    if lo <= 0:
        msg = f"{name} must be a (lo, hi) pair of positive numbers, got {value!r}{hint}"
        raise ValueError(msg)
    return lo, hi


@dataclass(frozen=True)
class DatasetConfig:
    """
    The settings of a simulated training set (frozen, validated on creation).

    `make_dataset` records them in ``dataset.json`` (``info["config"]``,
    via `dataclasses.asdict`), so that a data set can be rebuilt from its
    record: ``make_dataset(path, DatasetConfig(**info["config"]))``.

    Parameters
    ----------
    n_stars, n_galaxies : int
        Total sources (before companions, see ``neighbour_fraction``); the
        defaults are the paper's 32,371 and 93,525.
    seed : int
        Data seed: field ``i`` is simulated with a seed derived from it.
    stamp_size : int
        Stamp side in pixels.
    field_size : int
        Field side in pixels; the number of fields follows from the source
        count (about 1000 sources per 2048 x 2048 field, at least 3 fields).
    detect : bool
        Cut stamps at photutils detections matched to the truth (within
        ``match_radius``) instead of at (jittered) truth positions.
    split_fractions : tuple of float
        Fractions of fields for train, validation and test. Splits never
        share a field.
    bands : tuple of str
        Bands to simulate and store.
    pixel_scale : float
        Pixel scale in arcsec.
    mag_range : tuple of float
        r-band magnitude range of the simulated sources.
    psf_scale_range : tuple of float
        Each field's PSF size is scaled by a factor drawn uniformly from this
        range, so that the model learns robustness to PSF-width differences.
    psf_models : tuple of str
        PSF families (`~astro_starglx.simulate.PSF_MODELS`); each field
        draws one uniformly, so the model does not learn one PSF's shape.
    psf_beta_range : tuple of float
        Range of the Moffat index of fields with a Moffat PSF.
    psf_gradient_range : tuple of float
        Each field's PSF gradient across the field
        (`~astro_starglx.simulate.SimConfig.psf_gradient`) is drawn uniformly
        from this range.
    psf_ellipticity_range : tuple of float
        Each field's PSF ellipticity
        (`~astro_starglx.simulate.SimConfig.psf_ellipticity`, in [0, 0.9)) is
        drawn uniformly from this range, with its angle uniform in [0, 180)
        degrees. The default (0, 0) keeps round PSFs, as every data set made
        before the setting existed had (so their recorded recipes still make
        the same fields); (0, 0.2) covers the elongated PSFs of real optics.
    exptime_scale_range : tuple of float
        Each field's exposure times are scaled by a factor drawn
        log-uniformly from this range (noise-level augmentation: the default
        moves depths by about -1.2 to +1.0 mag;
        `~astro_starglx.simulate.exptime_scale_for_depth` gives the factor
        of a depth change).
    galaxy_size_range : tuple of float
        Each field's galaxy sizes are scaled by a factor drawn log-uniformly
        from this range.
    sersic_fraction : float
        Fraction of galaxies drawn as single Sersic profiles (index 0.5-4)
        rather than bulge + disk.
    knot_fraction : float
        Fraction of every disk's light in star-forming knots
        (`~astro_starglx.simulate.SimConfig.knot_fraction`); 0, the default,
        keeps the smooth disks every earlier data set had.
    colour_scatter : float
        Per-band magnitude scatter (mag) added to every source off the
        SED loci.
    neighbour_fraction : float
        Fraction of sources given a close companion (blends), see
        `~astro_starglx.simulate.SimConfig`.
    neighbour_separation : tuple of float
        Separation range of companions, arcsec.
    position_jitter : float
        Standard deviation in pixels of the centroid error applied to truth
        positions.
    wcs_jitter : float
        Pointing offset of each band's WCS, arcsec (bands are not
        pixel-aligned).
    rotation_jitter : float
        Rotation of each band's WCS, degrees.
    match_radius : float
        Detection-truth match radius, arcsec, with ``detect=True``.

    Raises
    ------
    ValueError
        If a setting is invalid; the message names it.
    """

    n_stars: int = 32371
    n_galaxies: int = 93525
    seed: int = 0
    stamp_size: int = 25
    field_size: int = 2048
    detect: bool = False
    split_fractions: tuple = (0.8, 0.1, 0.1)
    bands: tuple = CSST_BANDS
    pixel_scale: float = CSST_PIXEL_SCALE
    mag_range: tuple = (17.0, 26.0)
    psf_scale_range: tuple = (0.65, 1.9)
    psf_models: tuple = ("airy", "moffat", "gaussian")
    psf_beta_range: tuple = (2.5, 5.0)
    psf_gradient_range: tuple = (-0.4, 0.4)
    psf_ellipticity_range: tuple = (0.0, 0.0)
    exptime_scale_range: tuple = (0.18, 5.0)
    galaxy_size_range: tuple = (0.7, 1.3)
    sersic_fraction: float = 0.3
    knot_fraction: float = 0.0
    colour_scatter: float = 0.05
    neighbour_fraction: float = 0.1
    neighbour_separation: tuple = (0.5, 2.0)
    position_jitter: float = 0.3
    wcs_jitter: float = 0.5
    rotation_jitter: float = 0.02
    match_radius: float = 0.2

    def __post_init__(self):
        from .simulate import PSF_MODELS

        n_stars = check_count("n_stars", self.n_stars, hint="; e.g. n_stars=1000")
        n_galaxies = check_count("n_galaxies", self.n_galaxies, hint="; e.g. n_galaxies=3000")
        if n_stars + n_galaxies == 0:
            msg = "n_stars + n_galaxies must be positive, got 0 sources"
            raise ValueError(msg)
        _check_fractions(self.split_fractions)  # as given; the split normalises them
        fractions = tuple(float(f) for f in self.split_fractions)
        models = (self.psf_models,) if isinstance(self.psf_models, str) else self.psf_models
        try:
            models = tuple(models)
        except TypeError:
            models = ()
        if not models or any(m not in PSF_MODELS for m in models):
            msg = (f"psf_models must be a non-empty subset of {PSF_MODELS}, "
                   f"got {self.psf_models!r}")
            raise ValueError(msg)
        values = {
            "n_stars": n_stars, "n_galaxies": n_galaxies,
            "seed": check_count("seed", self.seed),
            "stamp_size": check_count("stamp_size", self.stamp_size, low=2),
            "field_size": check_count("field_size", self.field_size, low=16),
            "detect": check_bool("detect", self.detect),
            "split_fractions": fractions,
            "psf_scale_range": _positive_range("psf_scale_range", self.psf_scale_range),
            "psf_models": models,
            "psf_beta_range": check_range("psf_beta_range", self.psf_beta_range, low=1.1),
            "psf_gradient_range": check_range("psf_gradient_range", self.psf_gradient_range,
                                              low=-1.0, high=1.0),
            "psf_ellipticity_range": check_range("psf_ellipticity_range",
                                                 self.psf_ellipticity_range, low=0.0,
                                                 high=0.89,
                                                 hint="; e.g. psf_ellipticity_range=(0, 0.2)"),
            "exptime_scale_range": _positive_range("exptime_scale_range",
                                                   self.exptime_scale_range),
            "galaxy_size_range": _positive_range("galaxy_size_range", self.galaxy_size_range),
            "position_jitter": check_real("position_jitter", self.position_jitter, low=0.0),
            "match_radius": check_real("match_radius", self.match_radius, low=0.0,
                                       low_open=True),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)
        # The simulator validates (and normalises) the settings it shares.
        sim = self.field_config()
        for name in ("bands", "pixel_scale", "mag_range", "sersic_fraction", "knot_fraction",
                     "colour_scatter", "neighbour_fraction", "neighbour_separation",
                     "wcs_jitter", "rotation_jitter"):
            object.__setattr__(self, name, getattr(sim, name))

    def field_config(self, **overrides):
        """
        The `~astro_starglx.simulate.SimConfig` of a field before its
        per-field draws (``overrides`` replace its fields).
        """
        from .simulate import SimConfig

        settings = {
            "shape": (self.field_size, self.field_size), "bands": self.bands,
            "pixel_scale": self.pixel_scale, "mag_range": self.mag_range,
            "wcs_jitter": self.wcs_jitter, "rotation_jitter": self.rotation_jitter,
            "sersic_fraction": self.sersic_fraction, "knot_fraction": self.knot_fraction,
            "colour_scatter": self.colour_scatter,
            "neighbour_fraction": self.neighbour_fraction,
            "neighbour_separation": self.neighbour_separation,
        }
        return SimConfig(**{**settings, **overrides})

    def record(self):
        """The settings as a JSON-friendly dict (`dataclasses.asdict`, tuples
        as lists): ``dataset.json``'s ``config``."""
        return config_record(self)


def _resolve_config(config, overrides):
    return resolve_config(DatasetConfig, config, overrides, what="data set")


def simulate_inputs(sim_config, *, seed, field_id, stamp_size, detect, position_jitter,
                    match_radius=0.2):
    """
    Simulate one field and extract the model inputs of its sources.

    The positions the inputs are cut at are the truth sky positions (moved by
    a Gaussian ``position_jitter`` in pixels, as a real catalog's centroids
    are) or, with ``detect=True``, the detections of
    `astro_starglx.detection.detect_sources` (what ``classify-tiles`` runs
    when a tile has no catalog) matched to the truth within ``match_radius``
    arcsec (unmatched detections have no label and are dropped).

    Parameters
    ----------
    sim_config : `~astro_starglx.simulate.SimConfig`
        The field's simulator settings.
    seed : int
        The field's seed (simulation and position jitter).
    field_id : int
        Stored with every source.
    stamp_size : int
        Stamp side in pixels.
    detect : bool
        Cut at detections instead of truth positions.
    position_jitter : float
        Centroid error, pixels.
    match_radius : float, optional
        Detection-truth match radius, arcsec.

    Returns
    -------
    arrays : dict
        ``stamps``, ``noise``, ``features``, ``labels``, ``flags`` and the
        truth columns (``id``, ``field``, ``ra``, ``dec``, ``mag_<band>``,
        ``redshift``, ``hlr``, ``psf_scale``, ``psf_fwhm_<band>``,
        ``neighbour_sep``) as numpy arrays.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    from .features import FEATURE_NAMES, PSF_FEATURE_NAMES
    from .inputs import blend_flags, extract_inputs, pixel_positions
    from .psf import resolve_psf
    from .simulate import simulate_field

    bands = sim_config.bands
    pixel_scale = sim_config.pixel_scale
    rng = np.random.default_rng(seed)
    images, truth = simulate_field(sim_config, seed=seed)
    true_coords = SkyCoord(truth["ra"], truth["dec"], unit="deg")
    if detect:
        from .detection import detect_sources

        found = detect_sources(images)
        det = SkyCoord(found["ra"], found["dec"], unit="deg")
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
    # The PSF exactly as classify() finds it on images without PSF keywords:
    # measured from the field's own sources, so that training sees the
    # estimator's noise and failures rather than the simulator's truth.
    estimates = resolve_psf(
        {band: _without_psf_keywords(image) for band, image in images.items()},
        {band: (x[band], y[band]) for band in images}, pixel_scale=pixel_scale,
        nominal_fwhm=nominal_fwhm(bands, pixel_scale=pixel_scale))
    inputs = extract_inputs(images, x, y, bands=bands, size=stamp_size,
                            pixel_scale=pixel_scale,
                            feature_names=FEATURE_NAMES + PSF_FEATURE_NAMES, psf=estimates)
    ref = "r" if "r" in images else bands[0]
    flags = inputs.flags | blend_flags(images[ref], x[ref], y[ref], size=stamp_size)
    n = len(truth)
    arrays = {
        "stamps": inputs.stamps, "noise": inputs.noise, "features": inputs.features,
        "labels": np.array([_LABELS[str(v)] for v in truth["label"]], dtype=np.int8),
        "flags": flags,
        "psf_fell_back": np.full(n, any(est.fell_back for est in estimates.values())),
        "id": np.asarray(truth["id"]), "field": np.full(n, field_id, dtype=np.int32),
        "ra": np.asarray(positions["ra"]), "dec": np.asarray(positions["dec"]),
        "redshift": np.asarray(truth["redshift"], dtype=np.float32),
        "hlr": np.asarray(truth["hlr"], dtype=np.float32),
        "psf_scale": np.full(n, sim_config.psf_scale, dtype=np.float32),
        "neighbour_sep": np.asarray(truth["neighbour_sep"], dtype=np.float32),
    }
    for band in bands:
        arrays[f"mag_{band}"] = np.asarray(truth[f"mag_{band}"], dtype=np.float32)
        arrays[f"psf_fwhm_{band}"] = np.asarray(truth[f"psf_fwhm_{band}"], dtype=np.float32)
        arrays[f"psf_est_{band}"] = np.asarray(estimates[band].at(x[band], y[band]),
                                               dtype=np.float32)
        gamma = estimates[band].gamma
        arrays[f"psf_gamma_{band}"] = np.full(n, np.nan if gamma is None else gamma,
                                              dtype=np.float32)
    return arrays


# Header keywords that state a PSF (astro_starglx.psf reads them first).
_PSF_KEYWORDS = ("PSFFWHM", "PSF_FWHM", "SEEING", "FWHM", "PSFR80", "PSFSCALE", "PSFMODEL",
                 "PSFBETA", "PSFGRAD")


def _without_psf_keywords(image):
    """A shallow NDData view of ``image`` whose header states no PSF."""
    from astropy.nddata import NDData

    meta = {k: v for k, v in dict(image.meta).items() if k.upper() not in _PSF_KEYWORDS}
    return NDData(image.data, mask=image.mask, uncertainty=image.uncertainty, wcs=image.wcs,
                  meta=meta, unit=image.unit)


def nominal_fwhm(bands, *, pixel_scale):
    """
    The simulator's nominal PSF FWHM per band (arcsec, pixel included).

    Parameters
    ----------
    bands : sequence of str
    pixel_scale : float

    Returns
    -------
    fwhm : dict
        ``{band: arcsec}``.
    """
    from .simulate import band_model

    return {band: float(band_model(band, pixel_scale=pixel_scale).psf_size()[0])
            for band in bands}


def _field_task(task):
    """Worker: simulate one field and write its shard atomically."""
    task = dict(task)
    path = Path(task.pop("path"))
    arrays = simulate_inputs(task.pop("sim"), **task)
    with atomic_write(path, "wb") as fh:
        np.savez(fh, **arrays)
    return str(path)


def _field_plan(config):
    """Each field's seed, split and `SimConfig` (the per-field draws)."""
    per_field = max(1, round(_SOURCES_PER_FIELD_2048 * (config.field_size / 2048) ** 2))
    n_fields = max(3, int(np.ceil((config.n_stars + config.n_galaxies) / per_field)))
    stars = np.diff(np.linspace(0, config.n_stars, n_fields + 1).round().astype(int))
    galaxies = np.diff(np.linspace(0, config.n_galaxies, n_fields + 1).round().astype(int))
    rng = np.random.default_rng(config.seed)
    field_seeds = rng.integers(0, 2**31 - 1, size=n_fields)
    psf_scales = rng.uniform(*config.psf_scale_range, size=n_fields)
    split_of_field = _assign_splits(n_fields, config.split_fractions, rng)
    # Per-field variations, drawn after the seeds and splits (and the newer
    # ones after the older), so that a data seed keeps its fields and splits.
    models = rng.choice(list(config.psf_models), size=n_fields)
    betas = rng.uniform(*config.psf_beta_range, size=n_fields)
    log_t = rng.uniform(*np.log(config.exptime_scale_range), size=n_fields)
    log_s = rng.uniform(*np.log(config.galaxy_size_range), size=n_fields)
    gradients = rng.uniform(*config.psf_gradient_range, size=n_fields)
    ellipticities = rng.uniform(*config.psf_ellipticity_range, size=n_fields)
    angles = rng.uniform(0.0, 180.0, size=n_fields)
    sims = [config.field_config(
        n_stars=int(stars[i]), n_galaxies=int(galaxies[i]), psf_scale=float(psf_scales[i]),
        psf_model=str(models[i]), psf_beta=float(betas[i]),
        exptime_scale=float(np.exp(log_t[i])), galaxy_size_scale=float(np.exp(log_s[i])),
        psf_gradient=float(gradients[i]), psf_ellipticity=float(ellipticities[i]),
        psf_angle=float(angles[i])) for i in range(n_fields)]
    return [int(s) for s in field_seeds], split_of_field, sims, per_field


def make_dataset(output, config=None, *, n_workers=2, progress=False, max_fields=None,
                 **overrides):
    """
    Simulate CSST-like fields and write a training set split by field.

    Parameters
    ----------
    output : path-like
        Output directory (created; an existing partial build is resumed).
    config : `DatasetConfig` or None, optional
        The settings; ``None`` for the defaults.
    n_workers : int, optional
        Worker processes simulating fields in parallel.
    progress : bool, optional
        Show a progress bar.
    max_fields : int or None, optional
        Build only the first ``max_fields`` fields of the set's plan (the
        same fields, seeds and splits as the whole set; a quick set, or one
        cut short by a deadline). Rerunning without it adds the other fields
        and rewrites the set whole. Recorded in ``dataset.json``.
    **overrides
        `DatasetConfig` fields that replace those of ``config``, e.g.
        ``make_dataset(path, n_stars=100, n_galaxies=300, field_size=512)``.

    Returns
    -------
    path : `~pathlib.Path`
        The data set directory. Its ``dataset.json`` holds the settings
        (``config``, and for readers of format 1 the same keys at the top
        level), ``n_fields``, ``field_conditions`` (each field's full
        `~astro_starglx.simulate.SimConfig` record and ``seed``), the fields
        of each split, ``counts``, ``feature_names``, ``class_names`` and
        ``package_version``.

    Raises
    ------
    ValueError
        If a setting or ``n_workers`` is invalid; the message names it.
    TypeError
        If an override is not a `DatasetConfig` field.
    """
    config = _resolve_config(config, overrides)
    if (isinstance(n_workers, (bool, np.bool_)) or not isinstance(n_workers, (int, np.integer))
            or n_workers < 1):
        msg = f"n_workers must be a positive int, got {n_workers!r}"
        raise ValueError(msg)
    output = Path(output)
    shards = output / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    field_seeds, split_of_field, sims, per_field = _field_plan(config)
    n_fields = len(sims)
    if max_fields is not None:
        if (isinstance(max_fields, bool) or not isinstance(max_fields, (int, np.integer))
                or max_fields < 3):
            msg = f"max_fields must be None or an int >= 3, got {max_fields!r}"
            raise ValueError(msg)
        n_fields = min(n_fields, int(max_fields))
        missing = [s for k, s in enumerate(SPLITS) if not np.any(split_of_field[:n_fields] == k)]
        if missing:
            msg = (f"the first max_fields={max_fields} fields hold no {missing} field; "
                   "raise max_fields")
            raise ValueError(msg)
    tasks = []
    for i in range(n_fields):
        path = shards / f"field_{i:05d}.npz"
        if path.exists():
            continue
        tasks.append({"path": str(path), "sim": sims[i], "seed": field_seeds[i],
                      "field_id": i, "stamp_size": config.stamp_size, "detect": config.detect,
                      "position_jitter": config.position_jitter,
                      "match_radius": config.match_radius})
    log.info("%d fields (%d to simulate), %d sources per field", n_fields, len(tasks),
             per_field)
    _run_tasks(tasks, n_fields, n_workers=n_workers, progress=progress)

    from . import __version__
    from .features import FEATURE_NAMES, PSF_FEATURE_NAMES

    record = config.record()
    info = {
        "format": "astro_starglx-dataset-1",
        **record,
        "config": record,
        "n_fields": n_fields,
        "feature_names": list(FEATURE_NAMES + PSF_FEATURE_NAMES),
        "nominal_fwhm": nominal_fwhm(config.bands, pixel_scale=config.pixel_scale),
        "max_fields": max_fields,
        "field_conditions": [{**sim.record(), "seed": seed}
                             for sim, seed in zip(sims[:n_fields], field_seeds[:n_fields])],
        "fields": {split: [int(i) for i in np.flatnonzero(split_of_field[:n_fields] == k)]
                   for k, split in enumerate(SPLITS)},
        "class_names": ["star", "galaxy"],
        "package_version": __version__,
    }
    info["counts"] = _consolidate(output, info)
    with atomic_write(output / "dataset.json", "w") as fh:
        fh.write(json.dumps(info, indent=2))
    return output


def _run_tasks(tasks, n_fields, *, n_workers, progress):
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
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx,
                                     initializer=_watch_parent,
                                     initargs=(os.getpid(),)) as pool:
                for _ in pool.map(_field_task, tasks):
                    bar.update()


def _exit_when_orphaned(parent, interval=1.0):
    """Wait while ``parent`` is this process's parent, then end this process."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _watch_parent(parent):
    """
    Worker initializer: end the worker when its `make_dataset` process dies.

    A parent killed by SIGTERM or SIGKILL never shuts its pool down; its
    workers, re-parented, went on simulating the fields queued to them (for
    an hour in one case) and wrote their shards into an output folder that a
    rerun may have started afresh. Shards are written atomically, so a
    worker ended mid-field leaves nothing behind.
    """
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True,
                     name="astro-starglx-parent-watch").start()


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
        with atomic_write(output / f"{split}_catalog.ecsv", "w") as fh:
            catalog.write(fh, format="ascii.ecsv")
    return counts


def load_dataset(path, split, *, in_memory=False):
    """
    Open one split of a data set written by `make_dataset`, or of several at once.

    Parameters
    ----------
    path : path-like or sequence of path-like
        Data set directory; several directories (e.g. two simulation seeds,
        or a simulated set and your own labelled one) give one split that
        concatenates theirs, in the order given. They must share bands,
        stamp size, pixel scale and feature names.
    split : {"train", "val", "test"}
        Which split.
    in_memory : bool, optional
        Read the arrays into memory instead of memory-mapping them (always
        in memory for several data sets).

    Returns
    -------
    data : `SplitData`
        For several data sets, ``catalog`` gains a ``dataset`` column (the
        position of the source's data set in ``path``) and ``info`` is the
        first set's, with ``seed``, ``config`` and ``max_fields`` turned into
        lists over the sets, ``counts`` summed and ``datasets`` listing the
        directories.

    Raises
    ------
    ValueError
        If ``split`` is unknown, ``path`` is an empty sequence, or the data
        sets are not compatible (the message names the setting that differs).
    FileNotFoundError
        If a directory holds no data set.
    """
    if split not in SPLITS:
        msg = f"split must be one of {SPLITS}, got {split!r}"
        raise ValueError(msg)
    if isinstance(path, (str, os.PathLike)):
        return _load_one(Path(path), split, in_memory=in_memory)
    paths = [Path(p) for p in path]
    if not paths:
        msg = "path must name at least one data set directory, got an empty sequence"
        raise ValueError(msg)
    parts = [_load_one(p, split, in_memory=in_memory) for p in paths]
    return parts[0] if len(parts) == 1 else _concatenate(parts, paths, split)


def _load_one(path, split, *, in_memory):
    from astropy.table import Table

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


# What several data sets concatenated by `load_dataset` must share.
_SHARED_INFO = ("bands", "stamp_size", "pixel_scale", "feature_names", "nominal_fwhm")


def _concatenate(parts, paths, split):
    from astropy.table import vstack

    first = parts[0].info
    for part, p in zip(parts[1:], paths[1:]):
        for key in _SHARED_INFO:
            a, b = first.get(key), part.info.get(key)
            same = (np.allclose(list(a.values()), list(b.values()), rtol=1e-6)
                    and list(a) == list(b)) if isinstance(a, dict) and isinstance(b, dict) \
                else a == b
            if not same:
                msg = (f"data sets {paths[0]} and {p} differ in {key} ({a!r} against {b!r}); "
                       "only data sets with the same bands, stamp size, pixel scale, "
                       "feature names and nominal PSF can be combined")
                raise ValueError(msg)
    arrays = {name: np.concatenate([getattr(part, name) for part in parts])
              for name in FEATURE_ARRAYS}
    catalogs = []
    for k, part in enumerate(parts):
        catalog = part.catalog.copy(copy_data=False)
        catalog["dataset"] = np.full(len(catalog), k, dtype=np.int16)
        catalogs.append(catalog)
    info = dict(first)
    info.update({
        "datasets": [str(p) for p in paths],
        "seed": [part.info.get("seed") for part in parts],
        "config": [part.info.get("config") for part in parts],
        "max_fields": [part.info.get("max_fields") for part in parts],
        "counts": {s: sum(part.info.get("counts", {}).get(s, 0) for part in parts)
                   for s in SPLITS},
    })
    info["counts"][split] = len(arrays["labels"])
    return SplitData(catalog=vstack(catalogs, metadata_conflicts="silent"), info=info,
                     **arrays)


# ---------------------------------------------------------------------------
# your own labelled images

#: How `make_labelled_dataset` splits the labelled sources.
SPLIT_MODES = ("auto", "field", "source")

# The fallback PSF FWHM of user images, in pixels, where it cannot be
# measured and is not given: a well-sampled survey image.
_USER_FWHM_PIXELS = 3.0


@dataclass(frozen=True)
class LabelledDatasetConfig:
    """
    The settings of a data set built from your own labelled images (frozen).

    `make_labelled_dataset` records them in ``dataset.json``
    (``info["config"]``, via `dataclasses.asdict`).

    Parameters
    ----------
    bands : tuple of str
        Bands stored, in order (the images' bands by default).
    stamp_size : int
        Stamp side in pixels.
    pixel_scale : float
        Arcsec per pixel of the images.
    label_column : str
        The catalog's label column.
    split_fractions : tuple of float
        Fractions of train, validation and test.
    split_by : {"field", "source"}
        Splits by whole fields (no field in two splits) or by source
        (stratified by class, seeded).
    seed : int
        Seed of the split.
    nominal_fwhm : dict
        The PSF FWHM per band (arcsec) assumed where it is neither given nor
        measurable.
    n_fields : int
        Number of fields (catalog/images pairs).
    """

    bands: tuple
    stamp_size: int
    pixel_scale: float
    label_column: str = "label"
    split_fractions: tuple = (0.6, 0.2, 0.2)
    split_by: str = "source"
    seed: int = 0
    nominal_fwhm: dict | None = None
    n_fields: int = 1

    def record(self):
        """The settings as a JSON-friendly dict (``dataset.json``'s ``config``)."""
        return config_record(self)


def _check_fractions(split_fractions):
    try:
        fractions = tuple(float(f) for f in split_fractions)
        ok = (len(fractions) == 3 and all(math.isfinite(f) and f >= 0 for f in fractions)
              and fractions[0] > 0 and fractions[1] > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        msg = (f"split_fractions must be three non-negative fractions (train, val, test) "
               f"with train and val > 0, got {split_fractions!r}; e.g. (0.6, 0.2, 0.2)")
        raise ValueError(msg)
    total = sum(fractions)
    return tuple(f / total for f in fractions)


def _split_sources(labels, fractions, seed):
    """Split index (0 train, 1 val, 2 test) per source, stratified by class."""
    rng = np.random.default_rng(seed)
    split = np.zeros(len(labels), dtype=np.int8)
    for cls in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n = members.size
        n_val = int(round(fractions[1] * n))
        n_test = int(round(fractions[2] * n))
        # both classes in validation (early stopping, the threshold) when possible
        if n >= 2:
            n_val = max(n_val, 1)
        n_test = min(n_test, max(n - n_val - 1, 0))
        split[members[:n_val]] = 1
        split[members[n_val:n_val + n_test]] = 2
    return split


def make_labelled_dataset(catalog, images, output, *, label_column="label", bands=None,
                          stamp_size=25, zeropoints=None, psf=None, pixel_scale=None,
                          nominal_fwhm=None, split_fractions=(0.6, 0.2, 0.2), split_by="auto",
                          seed=0, ra_column="ra", dec_column="dec", overwrite=False):
    """
    Your own images and labelled catalog as an on-disk data set.

    The sources are extracted exactly as ``classify()`` extracts them
    (`astro_starglx.adapt.labelled_inputs`), at your pixel scale and with
    the PSF measured from each field (or given), and written in the format of
    the simulated sets (see the module docstring, one shard per field and
    split, then the same consolidation), so that ``astro-starglx train`` and
    ``astro-starglx evaluate`` read it. The catalog of each split holds
    ``field``, ``row`` (the source's row in its field's catalog), ``ra``,
    ``dec``, ``label``, ``flags``, ``mag_<band>`` (the catalog's own
    ``mag_<band>`` column if it has one, else the measured aperture
    magnitude), ``psf_fwhm_<band>`` and ``redshift`` (the catalog's, else
    NaN).

    Parameters
    ----------
    catalog : `~astropy.table.Table` or sequence of Table
        Labelled sources with sky positions; a sequence holds one table per
        field. Never modified.
    images : mapping or sequence of mapping
        ``{band: CCDData}`` (each band with its own WCS), or one per field.
    output : path-like
        Output folder (created).
    label_column : str, optional
        ``"star"``/``"galaxy"``, 0/1 (1 = galaxy) or booleans (True =
        galaxy).
    bands : sequence of str or None, optional
        Bands to store, in order; ``None`` takes the first field's image
        bands. A field without a band gets NaN stamps there.
    stamp_size : int, optional
        Stamp side in pixels (the released models read 25).
    zeropoints, psf, pixel_scale
        As in `astro_starglx.adapt.labelled_inputs`.
    nominal_fwhm : float, mapping or None, optional
        PSF FWHM (arcsec, one or per band) assumed where it cannot be
        measured; ``None``: 3 pixels.
    split_fractions : tuple of float, optional
        Fractions of train, validation and test (normalised to sum 1).
    split_by : {"auto", "field", "source"}, optional
        ``"field"`` keeps each field in one split (as the simulated sets
        do); ``"source"`` splits the sources of all fields, stratified by
        class; ``"auto"`` splits by field with at least 5 fields, else by
        source.
    seed : int, optional
        Seed of the split.
    ra_column, dec_column : str, optional
        Sky position columns
        (with the defaults, ``RA``/``DEC`` and the other names of
        `~astro_starglx.inputs.SKY_COLUMN_ALIASES` are found too).
    overwrite : bool, optional
        Replace an existing data set in ``output``.

    Returns
    -------
    path : `~pathlib.Path`
        The data set folder; its ``dataset.json`` holds ``source:
        "labelled"``, the settings (``config``), ``counts`` and the fields
        of each split.

    Raises
    ------
    ValueError
        For an invalid option (named), ``output`` holding a data set without
        ``overwrite=True``, a split left without sources of both classes,
        or the errors of `~astro_starglx.adapt.labelled_inputs`.
    TypeError
        For catalogs that are not Tables or images that are not mappings.
    """
    from .adapt import InputSpec, _as_fields, labelled_inputs
    from .features import FEATURE_NAMES, PSF_FEATURE_NAMES
    from ._validation import check_choice

    stamp_size = check_count("stamp_size", stamp_size, low=2, hint="; e.g. stamp_size=25")
    seed = check_count("seed", seed)
    check_choice("split_by", split_by, SPLIT_MODES)
    check_bool("overwrite", overwrite)
    fractions = _check_fractions(split_fractions)
    output = Path(output)
    if (output / "dataset.json").exists() and not overwrite:
        msg = (f"{output} already holds a data set; pass overwrite=True to replace it, or "
               "choose another output")
        raise ValueError(msg)
    if output.exists() and not output.is_dir():
        msg = f"output must be a folder, got the file {output}"
        raise ValueError(msg)
    fields = _as_fields(catalog, images, zeropoints, psf)
    first = fields[0][1]
    if bands is None:
        bands = tuple(first) if hasattr(first, "keys") else ()
    if isinstance(bands, str) or not bands or not all(isinstance(b, str) for b in bands):
        msg = (f"bands must be a sequence of band names, got {bands!r}; give images as "
               "{band: CCDData} or pass bands=")
        raise ValueError(msg)
    bands = tuple(bands)
    scale = _user_pixel_scale(fields, pixel_scale)
    nominal = _user_nominal_fwhm(nominal_fwhm, bands, scale)
    spec = InputSpec(bands=bands, stamp_size=stamp_size,
                     feature_names=tuple(FEATURE_NAMES + PSF_FEATURE_NAMES),
                     psf={"nominal_fwhm": nominal}, name="make_labelled_dataset")
    data = labelled_inputs(catalog, images, meta=spec, label_column=label_column,
                           zeropoints=zeropoints, psf=psf, pixel_scale=pixel_scale,
                           ra_column=ra_column, dec_column=dec_column)
    n_fields = len(fields)
    mode = split_by if split_by != "auto" else ("field" if n_fields >= 5 else "source")
    if mode == "field":
        if n_fields < 3:
            msg = (f"split_by='field' needs at least 3 fields (train, val, test), got "
                   f"{n_fields}; use split_by='source'")
            raise ValueError(msg)
        field_split = _assign_splits(n_fields, fractions, np.random.default_rng(seed))
        split = field_split[data.field].astype(np.int8)
    else:
        split = _split_sources(data.labels, fractions, seed)
    for k, name in enumerate(SPLITS[:2]):
        counts = np.bincount(data.labels[split == k], minlength=2)
        if counts.min() == 0:
            msg = (f"the {name} split holds {counts[0]} stars and {counts[1]} galaxies; "
                   "both classes are needed: label more sources, or change "
                   "split_fractions or split_by")
            raise ValueError(msg)
    columns = _user_columns(fields, data, bands, ra_column=ra_column, dec_column=dec_column)
    shards = output / "shards"
    if shards.exists():
        for old in shards.glob("field_*.npz"):
            old.unlink()
    shards.mkdir(parents=True, exist_ok=True)
    shard_ids = {s: [] for s in SPLITS}
    shard = 0
    for field in range(n_fields):
        for k, name in enumerate(SPLITS):
            rows = np.flatnonzero((data.field == field) & (split == k))
            if not rows.size:
                continue
            arrays = {key: getattr(data, key)[rows] for key in FEATURE_ARRAYS}
            arrays.update({key: value[rows] for key, value in columns.items()})
            with atomic_write(shards / f"field_{shard:05d}.npz", "wb") as fh:
                np.savez(fh, **arrays)
            shard_ids[name].append(shard)
            shard += 1

    from . import __version__

    config = LabelledDatasetConfig(bands=bands, stamp_size=stamp_size, pixel_scale=scale,
                                   label_column=label_column, split_fractions=fractions,
                                   split_by=mode, seed=seed, nominal_fwhm=nominal,
                                   n_fields=n_fields)
    record = config.record()
    info = {
        "format": "astro_starglx-dataset-1",
        "source": "labelled",
        **record,
        "config": record,
        "n_fields": n_fields,
        "feature_names": list(spec.feature_names),
        "nominal_fwhm": nominal,
        "max_fields": None,
        # shard ids per split (one shard per field and split); the user's
        # field of each source is the catalog's ``field`` column
        "fields": shard_ids,
        "n_dropped": int(data.n_dropped),
        "class_names": ["star", "galaxy"],
        "package_version": __version__,
    }
    info["counts"] = _consolidate(output, info)
    with atomic_write(output / "dataset.json", "w") as fh:
        fh.write(json.dumps(info, indent=2))
    log.info("make_labelled_dataset: %s", info["counts"])
    return output


def _user_pixel_scale(fields, pixel_scale):
    """One pixel scale (arcsec) for all fields: the argument, else the images' WCS."""
    from .adapt import _field_scale

    if pixel_scale is not None:
        return check_real("pixel_scale", pixel_scale, low=0.0, low_open=True,
                          hint="; give it in arcsec per pixel")
    scales = []
    for i, (_, imgs, _, _) in enumerate(fields):
        where = f"images[{i}]" if len(fields) > 1 else "images"
        imgs = dict(imgs) if hasattr(imgs, "keys") else {"image": imgs}
        scales.append(_field_scale(imgs, None, where))
    return float(np.median(scales))


def _user_nominal_fwhm(nominal_fwhm, bands, pixel_scale):
    if nominal_fwhm is None:
        return {band: round(_USER_FWHM_PIXELS * pixel_scale, 4) for band in bands}
    if isinstance(nominal_fwhm, dict):
        missing = [b for b in bands if b not in nominal_fwhm]
        if missing:
            msg = (f"nominal_fwhm must give every band of {list(bands)}, missing {missing}; "
                   "or give one FWHM (arcsec) for all bands")
            raise ValueError(msg)
        return {b: check_real(f"nominal_fwhm[{b!r}]", nominal_fwhm[b], low=0.0,
                              low_open=True, hint=" arcsec") for b in bands}
    value = check_real("nominal_fwhm", nominal_fwhm, low=0.0, low_open=True, hint=" arcsec")
    return {band: value for band in bands}


def _user_columns(fields, data, bands, *, ra_column, dec_column):
    """Per-source catalog columns of the labelled sources (the shards' non-array keys)."""
    from .labels import _positions

    n = len(data)
    ra = np.full(n, np.nan)
    dec = np.full(n, np.nan)
    redshift = np.full(n, np.nan, dtype=np.float32)
    mags = {band: np.full(n, np.nan, dtype=np.float32) for band in bands}
    for i, (cat, _, _, _) in enumerate(fields):
        coords, finite = _positions(cat, ra_column, dec_column)
        field_ra = np.full(len(cat), np.nan)
        field_dec = np.full(len(cat), np.nan)
        field_ra[finite], field_dec[finite] = coords.ra.deg, coords.dec.deg
        sel = data.field == i
        rows = data.row[sel]
        ra[sel], dec[sel] = field_ra[rows], field_dec[rows]
        if "redshift" in cat.colnames:
            redshift[sel] = np.ma.filled(np.ma.asarray(cat["redshift"], dtype=float),
                                         np.nan)[rows]
        for band in bands:
            if f"mag_{band}" in cat.colnames:
                mags[band][sel] = np.ma.filled(
                    np.ma.asarray(cat[f"mag_{band}"], dtype=float), np.nan)[rows]
    # bands without a catalog magnitude: the measured one (feature "mag")
    from .features import FEATURE_NAMES

    j = list(FEATURE_NAMES).index("mag")
    for c, band in enumerate(bands):
        missing = np.isnan(mags[band])
        mags[band][missing] = data.features[missing, c, j]
    columns = {"field": data.field.astype(np.int32), "row": data.row.astype(np.int64),
               "ra": ra, "dec": dec, "redshift": redshift}
    for c, band in enumerate(bands):
        columns[f"mag_{band}"] = mags[band]
        columns[f"psf_fwhm_{band}"] = data.psf_fwhm[:, c].astype(np.float32)
    return columns
