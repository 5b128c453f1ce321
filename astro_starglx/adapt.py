"""
Adapt a released model to your own survey: labelled inputs, fine-tuning, priors.

The released models were trained on CSST-like simulations. On another survey
(another pixel scale, PSF, depth, band set, star fraction) they still rank
objects well but their threshold, calibration and priors are CSST's.
`fine_tune` takes a few hundred of your own labelled objects and writes a
model for your images::

    catalog + images + labels -> labelled_inputs (as classify() extracts them)
        -> seeded stratified folds (stratified_folds)
        -> one fit per fold from the base model's weights (or from scratch, or
           no training): out-of-fold predictions of every labelled source
        -> temperature (and, without training, threshold) fitted on them
        -> the same fit on all labelled sources: the written model
        -> <output>/<name>.safetensors, read by StarGalaxyClassifier(path)

`reweight_prior` (from `astro_starglx.metrics`, re-exported here) moves
probabilities to another star fraction (a Galactic latitude changes it by
orders of magnitude); ``classify(..., star_fraction=...)`` applies it.
"""

import dataclasses
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.utils.exceptions import AstropyUserWarning

from ._validation import check_bool, check_catalog, check_choice, check_count, check_real
from .metrics import reweight_prior

__all__ = [
    "FINE_TUNE_MODES",
    "InputSpec",
    "LabelledInputs",
    "fine_tune",
    "fine_tune_inputs",
    "labelled_inputs",
    "parse_labels",
    "reweight_prior",
    "stratified_folds",
    "stratified_split",
]

log = logging.getLogger(__name__)

#: What `fine_tune` trains: all weights from the base model, all weights from
#: a random initialisation, or nothing (only temperature and threshold).
FINE_TUNE_MODES = ("fine-tune", "scratch", "calibrate")

#: Learning rate of each training mode when ``lr=None``. Fine-tuning: 1e-3 gave
#: a higher accuracy at r < 21 than 3e-4 with up to 1,000 labels on the SDSS-like
#: simulation (100, 300, 1,000 labels, ten draws each: 97.0 against 96.4, 97.6
#: against 97.5, 98.3 against 98.2 %) and the same within noise with 3,000 (five
#: draws: 98.9 against 99.0 %; notes of issue 12); from scratch, the release recipe's.
_DEFAULT_LR = {"fine-tune": 1e-3, "scratch": 2e-3}

# The decision threshold of a trained model (modes "fine-tune" and "scratch"). Its
# loss is class-balanced, so p_galaxy = 0.5 is the decision of equal priors; a
# threshold fitted on the held-out labels (equal star and galaxy recall) was lower
# in accuracy at r < 21 and over all magnitudes with every number of labels on the
# SDSS-like simulation (e.g. 300 labels, ten draws: 97.6 against 97.3 % at r < 21,
# 87.8 against 86.2 % over all; 3,000 labels: 98.9 against 98.6 %): equal recalls
# over all magnitudes are set by the faint sources and give away bright galaxies,
# and with a few hundred labels the fitted value is mostly noise.
_TRAINED_THRESHOLD = 0.5

# "calibrate" trains nothing: the base network's threshold is refitted to your labels,
# as the one that classifies the most of them right. Equal recalls instead lowered the
# accuracy at r < 21 below that of the released model's own threshold (rbim-lite-v12,
# depth matched, SDSS-like simulation, ten draws each of 100, 300 and 1,000 labels:
# 90.6-90.9 % against 94.2 %, most right 93.9-94.9 %).
_CALIBRATE_CRITERION = "accuracy"

# The PSF range a fine-tuned PSF-aware model is valid for: the FWHMs seen in
# the user's data, widened by this factor on each side.
_PSF_WIDENING = 1.15

# Fields (or bands) whose pixel scales differ by more than this cannot share
# one model: the meta holds one pixel scale (the classifier's own tolerance).
_SCALE_TOLERANCE = 0.1

# Bounds of the temperature fitted on a small validation set: a few hundred
# labels are often perfectly separated, which drives the unbounded fit to
# T -> 0 (probabilities of exactly 0 and 1).
_TEMPERATURE_BOUNDS = (0.1, 10.0)

# Magnitude-dependent thresholds (fine_tune's magnitude_thresholds): the bright half of
# the validation sources (by the r-band ``mag`` feature) gets its own threshold if it
# holds at least this many stars and galaxies; the faint half keeps the single one.
_MIN_PER_BIN = 5

# Self-training keeps the unlabelled sources whose calibrated p_galaxy is at
# most this far from 0 or 1. On the SDSS-like simulation (300 labels, three
# draws) 0.1 took 53-81 % of 4,000 unlabelled sources, at 91-97 % label
# purity, and raised the accuracy at r < 21 from 94.9 to 96.8 % on average
# (benchmarks/label_study.py --modes self-train; docs/adapt.rst).
_PSEUDO_CUT = 0.1

_LABEL_HINT = ("'star'/'galaxy' strings (any case), 0/1 integers (1 = galaxy) or booleans "
               "(True = galaxy)")


# ---------------------------------------------------------------------------
# labels and splits


def parse_labels(values, *, column="label", allow_missing=False):
    """
    Star/galaxy labels as 0 (star) and 1 (galaxy).

    Parameters
    ----------
    values : array_like or `~astropy.table.Column`
        ``"star"``/``"galaxy"`` strings (any case, surrounding blanks
        ignored), 0/1 integers (or floats equal to 0 and 1), or booleans
        (True = galaxy).
    column : str, optional
        The column's name, used in error messages.
    allow_missing : bool, optional
        Read masked values, NaN, None and blank strings as "no label"
        (-1) instead of refusing them.

    Returns
    -------
    labels : `~numpy.ndarray`
        ``(N,)`` int8, 0 = star, 1 = galaxy (-1 = no label, with
        ``allow_missing``).

    Raises
    ------
    ValueError
        If a value is none of those (the message names the column and the
        bad values), a value is masked or NaN (without ``allow_missing``),
        or ``values`` is not 1-D.

    Examples
    --------
    >>> from astro_starglx.adapt import parse_labels
    >>> parse_labels(["Star", "GALAXY", " star "]).tolist()
    [0, 1, 0]
    >>> parse_labels([True, False]).tolist()
    [1, 0]
    >>> parse_labels(["star", "", "galaxy"], allow_missing=True).tolist()
    [0, -1, 1]
    """
    check_bool("allow_missing", allow_missing)
    mask = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else None
    arr = np.asarray(np.ma.getdata(values))
    if arr.ndim != 1:
        msg = (f"label column {column!r} must be 1-D (one label per source), got shape "
               f"{arr.shape}")
        raise ValueError(msg)
    missing = np.zeros(arr.shape, dtype=bool)
    if mask is not None and np.shape(mask) == arr.shape:
        missing |= mask
    if missing.any() and not allow_missing:
        rows = np.flatnonzero(missing)
        msg = (f"label column {column!r} has {rows.size} masked value(s) (rows "
               f"{_rows(rows)}); keep only the labelled rows, e.g. "
               f"catalog[~catalog[{column!r}].mask], or let fine_tune learn from the "
               "unlabelled ones too (self_training=True)")
        raise ValueError(msg)
    if arr.dtype.kind == "O":
        if allow_missing:
            values_list = arr.tolist()
            missing |= np.array([v is None for v in values_list], dtype=bool)
            numbers = all(isinstance(v, (int, float, np.number)) and not isinstance(v, str)
                          for v, gone in zip(values_list, missing) if not gone)
            filler = np.nan if numbers else ""  # None in numbers: NaN, in strings: blank
            arr = np.array([filler if gone else v for v, gone in zip(values_list, missing)],
                           dtype=float if numbers else None)
        arr = np.asarray(arr.tolist())
        if arr.ndim != 1:
            msg = f"label column {column!r} must hold one label per row, got nested objects"
            raise ValueError(msg)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int8)
    kind = arr.dtype.kind
    if kind == "S":
        arr = np.char.decode(arr, "ascii", errors="replace")
        kind = "U"
    if kind == "U":
        text = np.char.lower(np.char.strip(arr))
        if allow_missing:
            missing |= text == ""
        galaxy = text == "galaxy"
        bad = ~(galaxy | (text == "star"))
        labels = galaxy
    elif kind == "b":
        bad = np.zeros(arr.shape, dtype=bool)
        labels = arr
    elif kind in "iuf":
        if allow_missing and kind == "f":
            missing |= np.isnan(arr)
        bad = ~((arr == 0) | (arr == 1))
        labels = arr == 1
    else:
        msg = f"label column {column!r} must hold {_LABEL_HINT}, got dtype {arr.dtype}"
        raise ValueError(msg)
    bad &= ~missing
    if bad.any():
        rows = np.flatnonzero(bad)
        examples = sorted({str(v) for v in arr[bad].tolist()})[:5]
        msg = (f"label column {column!r} must hold {_LABEL_HINT}; got {examples} in "
               f"{rows.size} row(s) (rows {_rows(rows)}). Map other classes first (e.g. "
               f"QSO to 'star' or drop them) and drop unlabelled rows")
        raise ValueError(msg)
    return np.where(missing, -1, labels.astype(np.int8)).astype(np.int8)


def _rows(rows):
    return f"{rows[:5].tolist()}{' ...' if rows.size > 5 else ''}"


def stratified_split(labels, *, val_fraction, seed):
    """
    A seeded train/validation split that keeps the class fractions.

    Each class is shuffled with ``numpy.random.default_rng(seed)`` and
    ``round(val_fraction * n_class)`` of its members (at least 1, at most
    all but 1) go to validation.

    Parameters
    ----------
    labels : array_like
        ``(N,)`` 0 (star) / 1 (galaxy).
    val_fraction : float
        Fraction of each class in the validation split, in (0, 1).
    seed : int
        Seed of the shuffle.

    Returns
    -------
    train, val : `~numpy.ndarray`
        Sorted int64 row indices, disjoint, together all rows.

    Raises
    ------
    ValueError
        If ``val_fraction`` is not in (0, 1), or a class has fewer than 2
        members (both splits need both classes).

    Examples
    --------
    >>> import numpy as np
    >>> from astro_starglx.adapt import stratified_split
    >>> labels = np.array([0] * 10 + [1] * 30)
    >>> train, val = stratified_split(labels, val_fraction=0.3, seed=0)
    >>> np.bincount(labels[val]).tolist(), np.bincount(labels[train]).tolist()
    ([3, 9], [7, 21])
    """
    val_fraction = check_real("val_fraction", val_fraction, low=0.0, high=1.0,
                              low_open=True, high_open=True, hint="; e.g. val_fraction=0.3")
    labels = np.asarray(labels)
    counts = np.bincount(labels.astype(np.int64), minlength=2) if labels.size else np.zeros(2)
    if labels.ndim != 1 or counts.size != 2 or counts.min() < 2:
        msg = (f"labels must hold at least 2 stars and 2 galaxies (both splits need both "
               f"classes), got {int(counts[0])} stars and {int(counts[1])} galaxies; label "
               "more objects of the rarer class")
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(np.clip(round(val_fraction * members.size), 1, members.size - 1))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_folds(labels, *, folds, seed):
    """
    Seeded stratified folds for cross-fitting: every row held out exactly once.

    Each class is shuffled with ``numpy.random.default_rng(seed)`` and dealt
    round-robin into ``folds`` parts, so every fold holds both classes in
    about their overall fractions. (Written here rather than taken from
    scikit-learn's ``StratifiedKFold``, the same rule, to keep scikit-learn
    out of the dependencies for twelve lines.)

    Parameters
    ----------
    labels : array_like
        ``(N,)`` 0 (star) / 1 (galaxy).
    folds : int
        Number of folds, at least 2 and at most the number of members of
        the rarer class.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    splits : list of tuple
        ``folds`` pairs ``(train, held_out)`` of sorted int64 row indices;
        the held-out parts are disjoint and together all rows.

    Raises
    ------
    ValueError
        If ``folds`` is below 2 or a class has fewer than ``folds`` members.

    Examples
    --------
    >>> import numpy as np
    >>> from astro_starglx.adapt import stratified_folds
    >>> labels = np.array([0] * 10 + [1] * 20)
    >>> [np.bincount(labels[held_out]).tolist()
    ...  for _, held_out in stratified_folds(labels, folds=5, seed=0)]
    [[2, 4], [2, 4], [2, 4], [2, 4], [2, 4]]
    """
    folds = check_count("folds", folds, low=2)
    labels = np.asarray(labels)
    counts = np.bincount(labels.astype(np.int64), minlength=2) if labels.size else np.zeros(2)
    if labels.ndim != 1 or counts.size != 2 or counts.min() < folds:
        msg = (f"labels must hold at least folds={folds} stars and galaxies (every fold "
               f"holds out both classes), got {int(counts[0])} stars and "
               f"{int(counts[1])} galaxies; use fewer folds or label more objects of the "
               "rarer class")
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(labels.size, dtype=np.int64)
    offset = 0
    for cls in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == cls))
        # continue the round-robin where the other class stopped: equal fold sizes
        fold_of[members] = (offset + np.arange(members.size)) % folds
        offset += members.size
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k))
            for k in range(folds)]


# ---------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class LabelledInputs:
    """
    Model inputs and labels of a user's labelled sources (see `labelled_inputs`).

    The arrays have the attributes `astro_starglx.training.fit` reads.

    Attributes
    ----------
    stamps : `~numpy.ndarray`
        ``(N, C, H, W)`` float32, C in the model's band order (NaN for bands
        the images lack).
    noise : `~numpy.ndarray`
        ``(N, C)`` float32.
    features : `~numpy.ndarray`
        ``(N, C, F)`` float32, in the model's feature order.
    labels : `~numpy.ndarray`
        ``(N,)`` int8, 0 = star, 1 = galaxy (-1 = unlabelled, from
        ``labelled_inputs(..., allow_unlabelled=True)``).
    flags : `~numpy.ndarray`
        ``(N,)`` uint16 `~astro_starglx.flags.ClassFlag` bits (cutout,
        band-missing and blend bits, as ``classify()`` sets them).
    field : `~numpy.ndarray`
        ``(N,)`` int32, the index of each source's field (0 for one field).
    row : `~numpy.ndarray`
        ``(N,)`` int64, its row in that field's catalog.
    psf_fwhm : `~numpy.ndarray`
        ``(N, C)`` float32 PSF FWHM at each source, arcsec (NaN for models
        that do not read the PSF and for missing bands).
    pixel_scale : float
        Arcsec per pixel of the images, at which the inputs were extracted.
    bands : tuple of str
        The model's bands (axis C).
    n_dropped : int
        Labelled sources left out because no band has pixels at their
        position.
    feature_scale : float
        The features' angular scale (`~astro_starglx.meta.ModelMeta.feature_scale`)
        they were measured at; a model fine-tuned on them records it.
    magnitude_offset : tuple of float or None
        Per field, the shift of the zero points that matched the images'
        depth to the model's (``meta.depth``), as ``classify()`` matches
        them (its ``match_depth``); None where no depth was matched.
    """

    stamps: np.ndarray
    noise: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    flags: np.ndarray
    field: np.ndarray
    row: np.ndarray
    psf_fwhm: np.ndarray
    pixel_scale: float
    bands: tuple
    n_dropped: int = 0
    feature_scale: float = 1.0
    magnitude_offset: tuple | None = None

    def __len__(self):
        return len(self.labels)

    def take(self, index):
        """
        The sources at ``index`` (an integer or boolean array), as new `LabelledInputs`.

        Returns
        -------
        subset : `LabelledInputs`
        """
        arrays = {name: getattr(self, name)[index] for name in _PER_SOURCE}
        return dataclasses.replace(self, **arrays)


@dataclass(frozen=True)
class InputSpec:
    """
    What `labelled_inputs` extracts when no model reads it yet (a data set).

    `astro_starglx.dataset.make_labelled_dataset` passes one instead of a
    model's meta; its attributes are the meta's that extraction reads.

    Attributes
    ----------
    bands : tuple of str
        Bands, in order (axis C).
    stamp_size : int
        Stamp side, pixels.
    feature_names : tuple of str
        Catalog features per band.
    psf : dict or None
        ``{"nominal_fwhm": {band: arcsec}}`` to measure the PSF (the
        fallback where it cannot be measured), or None.
    name : str
        Name used in messages.
    allow_missing_bands : bool
        Accept fields without some of ``bands`` (their stamps are NaN).
    """

    bands: tuple
    stamp_size: int
    feature_names: tuple
    psf: dict | None = None
    name: str = "the data set"
    allow_missing_bands: bool = True


_PER_SOURCE = ("stamps", "noise", "features", "labels", "flags", "field", "row", "psf_fwhm")


def _as_fields(catalog, images, zeropoints, psf):
    """``[(catalog, images, zeropoints, psf)]``, one per field."""
    from astropy.table import Table

    if isinstance(catalog, Table):
        return [(catalog, images, zeropoints, psf)]
    if isinstance(catalog, (str, bytes)) or not isinstance(catalog, Sequence):
        check_catalog(catalog)  # raises, with a hint for pandas frames
    if isinstance(images, Mapping) or not isinstance(images, Sequence):
        msg = (f"catalog is a sequence of {len(catalog)} tables (one per field), so images "
               f"must be a sequence of as many {{band: CCDData}} mappings, got "
               f"{type(images).__name__}")
        raise TypeError(msg)
    if len(images) != len(catalog) or not catalog:
        msg = (f"catalog and images must have one entry per field, got {len(catalog)} "
               f"catalogs and {len(images)} images")
        raise ValueError(msg)

    def per_field(name, value, is_shared):
        if value is None or is_shared(value):
            return [value] * len(catalog)
        if len(value) != len(catalog):
            msg = (f"{name} must be one value for all fields or a sequence with one per "
                   f"field ({len(catalog)}), got {len(value)}")
            raise ValueError(msg)
        return list(value)

    zps = per_field("zeropoints", zeropoints,
                    lambda v: isinstance(v, Mapping) or not isinstance(v, (list, tuple)))
    psfs = per_field("psf", psf, lambda v: not isinstance(v, (list, tuple)))
    return list(zip(catalog, images, zps, psfs))


def _field_images(images, meta, where):
    """``{band: NDData}`` of the model's bands present, mapped by name."""
    from .inputs import model_images

    images = model_images(images, meta.bands, allow_missing=meta.allow_missing_bands,
                          model=meta.name, name=where)
    missing = [band for band in meta.bands if band not in images]
    if missing:
        log.info("%s: bands %s are missing; the model sees them as dropped bands", where,
                 missing)
    return images


def _image_scale(image):
    """Arcsec per pixel from a celestial FITS WCS or a PIXSCALE keyword, else None."""
    from astropy import units as u
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    wcs = image.wcs
    if isinstance(wcs, WCS) and wcs.has_celestial:
        celestial = wcs.celestial
        scales = proj_plane_pixel_scales(celestial)
        unit = u.Unit(celestial.wcs.cunit[0] or "deg")
        return float((np.sqrt(np.prod(scales)) * unit).to_value(u.arcsec))
    value = (image.meta or {}).get("PIXSCALE")
    return None if value is None else float(value)


def _field_scale(images, pixel_scale, where):
    if pixel_scale is not None:
        return pixel_scale
    scales = {band: _image_scale(image) for band, image in images.items()}
    unknown = [band for band, scale in scales.items() if scale is None]
    if unknown:
        msg = (f"{where}: no pixel scale for band(s) {unknown} (no celestial WCS, no "
               "PIXSCALE keyword); pass pixel_scale=<arcsec per pixel>")
        raise ValueError(msg)
    values = np.array(list(scales.values()))
    if values.max() / values.min() - 1.0 > _SCALE_TOLERANCE:
        msg = (f"{where}: the bands' pixel scales differ ({scales} arcsec), but one model "
               "reads one pixel scale; resample the bands to a common grid or pass "
               "pixel_scale= to override")
        raise ValueError(msg)
    return float(np.median(values))


def _one_field(catalog, images, labels, *, meta, zeropoints, psf, pixel_scale, ra_column,
               dec_column, feature_scale, match_depth=None, refine_positions=True):
    """
    Inputs of one field, as classify() extracts them (plus the PSF at each
    source), the feature scale used (``"auto"`` resolved on this field) and
    the magnitude offset of the depth matching (None: none applied).
    """
    from .background import image_noise
    from .inputs import blend_flags, extract_inputs, match_band_keys, pixel_positions

    # keyed like the images may be (e.g. 'HSC-R'): the same names as they map to
    if isinstance(zeropoints, Mapping):
        zeropoints = match_band_keys(zeropoints, meta.bands, "zeropoints")
    if isinstance(psf, Mapping):
        psf = match_band_keys(psf, meta.bands, "psf")
    x, y = pixel_positions(catalog, images, ra_column=ra_column, dec_column=dec_column,
                           coord_column=None, x_column="x", y_column="y", shared_grid=False)
    if refine_positions and len(catalog):
        from .centroids import refine_catalog_positions, window_fwhm

        model_scale = getattr(meta, "pixel_scale", pixel_scale)
        fwhm = window_fwhm((getattr(meta, "psf", None) or {}).get("nominal_fwhm"),
                           dict.fromkeys(images, pixel_scale), model_scale=model_scale)
        x, y, _ = refine_catalog_positions(images, x, y, psf_fwhm=fwhm, pixel_scale=pixel_scale)
    estimates = {}
    if meta.psf is not None and len(catalog):
        from .psf import header_disagreement, resolve_psf

        # The model's nominal PSF in its own pixels, as classify() starts from it:
        # on another survey's pixels its FWHM in arcsec is a fraction of a pixel
        # (0.13" at 0.396"/px), too small to start the star selection from. (A
        # data set's InputSpec states its nominal PSF for these images already.)
        ratio = pixel_scale / getattr(meta, "pixel_scale", pixel_scale)
        estimates = resolve_psf(images, {band: (x[band], y[band]) for band in images},
                                psf=psf, pixel_scale=pixel_scale,
                                nominal_fwhm={band: fwhm * ratio for band, fwhm
                                              in meta.psf["nominal_fwhm"].items()})
        fell_back = [band for band, est in estimates.items() if est.fell_back]
        if fell_back:
            msg = (f"too few usable point sources to measure the PSF of band(s) {fell_back}; "
                   "their PSF features assume the model's nominal PSF, which is not your "
                   "survey's. Pass psf={band: fwhm_arcsec} if you know it.")
            warnings.warn(msg, AstropyUserWarning, stacklevel=4)
        disagreement = header_disagreement(estimates)
        if disagreement:
            warnings.warn(disagreement, AstropyUserWarning, stacklevel=4)
    n = len(catalog)
    psf_fwhm = np.full((n, len(meta.bands)), np.nan, dtype=np.float32)
    for c, band in enumerate(meta.bands):
        if band in estimates:
            psf_fwhm[:, c] = estimates[band].at(x[band], y[band])
    if feature_scale == "auto":
        feature_scale = _auto_feature_scale(meta, pixel_scale)
    zeropoints, offset = _matched_zeropoints(
        images, estimates, {band: (x[band], y[band]) for band in images}, meta=meta,
        zeropoints=zeropoints, pixel_scale=pixel_scale, feature_scale=feature_scale,
        match_depth=match_depth)
    image_sigma = {band: image_noise(image) for band, image in images.items()
                   if image.uncertainty is None}
    inputs = extract_inputs(images, x, y, bands=meta.bands, size=meta.stamp_size,
                            pixel_scale=pixel_scale, zeropoints=zeropoints,
                            image_sigma=image_sigma, feature_names=meta.feature_names,
                            psf=estimates, feature_scale=feature_scale)
    ref = "r" if "r" in images else next(iter(images))
    flags = inputs.flags | blend_flags(images[ref], x[ref], y[ref], size=meta.stamp_size)
    return {"stamps": inputs.stamps, "noise": inputs.noise, "features": inputs.features,
            "labels": labels, "flags": flags, "row": np.arange(n, dtype=np.int64),
            "psf_fwhm": psf_fwhm}, feature_scale, offset


def _matched_zeropoints(images, estimates, positions, *, meta, zeropoints, pixel_scale,
                        feature_scale, match_depth):
    """
    The zero points with ``classify()``'s depth matching, and the offset (or
    None when it does not apply).

    It applies, as for a model of this ``pixel_scale`` and ``feature_scale``
    in ``classify()``, when the base model records ``meta.depth`` and the
    features are measured on another pixel frame than the images' own
    (``feature_scale`` not 1): the model then reads magnitudes whose
    relation to signal-to-noise is the base model's.
    """
    from .background import depth_offset
    from .inputs import get_zeropoint

    depth = getattr(meta, "depth", None)
    wanted = (abs(feature_scale - 1.0) > _SCALE_TOLERANCE if match_depth is None
              else match_depth)
    if not wanted or depth is None or not estimates:
        return zeropoints, None
    zps = {band: get_zeropoint(image, band, zeropoints) for band, image in images.items()}
    offset, measured = depth_offset(images, estimates, positions, depth=depth,
                                    pixel_scale=pixel_scale, zeropoints=zps)
    if offset is None:
        return zeropoints, None
    log.info("depth matching: magnitudes shifted by %+.2f mag (depths %s, the model's %s)",
             offset, measured, {band: depth[band] for band in measured})
    return {band: zp + offset for band, zp in zps.items()}, round(offset, 4)


def _auto_feature_scale(meta, pixel_scale):
    """
    ``feature_scale="auto"``: the ratio of the images' pixel scale to the
    model's (1 within 10 %), so that the features' apertures hold as many of
    your pixels as they held of the model's, as the stamps do.

    Measured on the SDSS-like simulation (300 labels, four paired draws of
    the labels, `benchmarks.label_study`): 97.0 % correct at r < 21 against
    95.5 % for the apertures in units of the PSF (the earlier rule); 100
    labels 96.3 against 91.8 %, 1,000 labels 98.1 against 98.2 % (three
    draws each). In units of the PSF, the features said "nominal PSF" while
    the stamps showed one 1.9 times as wide in pixels.
    """
    ratio = pixel_scale / getattr(meta, "pixel_scale", pixel_scale)
    if abs(ratio - 1.0) <= _SCALE_TOLERANCE:
        return 1.0
    log.info("feature_scale='auto': %.3g (the pixel scale ratio)", ratio)
    return float(f"{ratio:.3g}")


def labelled_inputs(catalog, images, *, meta, label_column="label", zeropoints=None,
                    psf=None, pixel_scale=None, ra_column="ra", dec_column="dec",
                    feature_scale=None, allow_unlabelled=False, match_depth=None,
                    refine_positions=True):
    """
    Model inputs and labels of your own labelled sources, as ``classify()`` sees them.

    Stamps, noise and features are extracted with the functions
    ``StarGalaxyClassifier.classify`` uses (`~astro_starglx.inputs`), at
    the model's bands (mapped by name: bands your images lack are NaN, as
    the band dropout of training makes them), stamp size and feature names,
    but at the pixel scale of *your* images, so that apertures keep their
    size in arcsec. Sources without pixels in any band are left out (logged).

    Parameters
    ----------
    catalog : `~astropy.table.Table` or sequence of Table
        Sources with sky positions (``ra_column``/``dec_column`` or a
        `~astropy.coordinates.SkyCoord` column) and labels; a sequence holds
        one table per field. Never modified.
    images : mapping, `~astropy.nddata.CCDData` or sequence
        ``{band: CCDData}`` as for ``classify()`` (each band with its own
        WCS), or a sequence of them, one per field.
    meta : `~astro_starglx.meta.ModelMeta`, dict or `InputSpec`
        The model's meta (``load_model(...).meta``), or what to extract
        for a data set.
    label_column : str, optional
        Column of labels: ``"star"``/``"galaxy"`` (any case), 0/1 (1 =
        galaxy) or booleans (True = galaxy).
    zeropoints : mapping, sequence of mapping, or None, optional
        ``{band: AB zero point}`` (for all fields, or one per field); else
        the images' ``MAGZERO`` keywords.
    psf : value, mapping, sequence or None, optional
        The PSF per band for PSF-aware models, as for ``classify()`` (a
        list or tuple gives one per field).
    pixel_scale : float or None, optional
        Arcsec per pixel of your images; ``None`` reads each band's
        celestial WCS (or ``PIXSCALE`` keyword).
    ra_column, dec_column : str, optional
        Names of the sky position columns
        (with the defaults, ``RA``/``DEC`` and the other names of
        `~astro_starglx.inputs.SKY_COLUMN_ALIASES` are found too).
    feature_scale : float, "auto" or None, optional
        The features' angular scale (`~astro_starglx.meta.ModelMeta.feature_scale`):
        None takes the model's (1 for an `InputSpec`); ``"auto"`` (what
        `fine_tune` uses) keeps 1 at the model's own pixel scale and
        otherwise takes the ratio of your pixel scale (the first field's) to
        the model's: apertures as many of your pixels wide as they were of
        the model's, like the stamps.
    allow_unlabelled : bool, optional
        Keep rows without a label (masked, NaN, None or blank) with label
        -1, for `fine_tune`'s ``self_training``; otherwise they are refused.
    match_depth : bool or None, optional
        Shift the zero points of each field so that its 5-sigma depth is the
        model's (``meta.depth``), as ``classify()`` does (its
        ``match_depth``): ``None`` (default) where the features are
        measured on another pixel frame than the images' own
        (``feature_scale`` not 1, e.g. ``"auto"`` on another survey's
        pixels) and the model records its depth. The offsets are the
        result's ``magnitude_offset``.
    refine_positions : bool, optional
        Move the catalog's positions to their sources' windowed centroids
        first, as ``classify()`` does by default (its ``refine_positions``;
        `astro_starglx.centroids`), so that a model is fine-tuned and
        evaluated on stamps cut as it will be run.

    Returns
    -------
    inputs : `LabelledInputs`
        Its ``feature_scale`` is the scale used.

    Raises
    ------
    TypeError
        If a catalog is not a Table or the images not NDData (mappings).
    ValueError
        If ``label_column`` is missing or holds other values, the images
        hold none of the model's bands (or lack bands a model without band
        dropout needs), a pixel scale is unknown or differs between bands or
        fields by more than 10 %, or a zero point is missing.
    """
    from .meta import ModelMeta

    if not isinstance(meta, InputSpec):
        meta = ModelMeta.from_dict(meta)
    if not isinstance(label_column, str):
        msg = f"label_column must be a column name (str), got {label_column!r}"
        raise TypeError(msg)
    if pixel_scale is not None:
        pixel_scale = check_real("pixel_scale", pixel_scale, low=0.0, low_open=True,
                                 hint="; give it in arcsec per pixel")
    if feature_scale is None:
        feature_scale = getattr(meta, "feature_scale", 1.0)
    elif not (isinstance(feature_scale, str) and feature_scale == "auto"):
        feature_scale = check_real("feature_scale", feature_scale, low=0.0, low_open=True,
                                   hint="; or 'auto', or None for the model's")
    if match_depth is not None:
        check_bool("match_depth", match_depth)
    check_bool("refine_positions", refine_positions)
    fields = _as_fields(catalog, images, zeropoints, psf)
    many = len(fields) > 1 or not _is_table(catalog)
    parts, scales, offsets = [], [], []
    for i, (cat, imgs, zps, field_psf) in enumerate(fields):
        where = f"images[{i}]" if many else "images"
        check_catalog(cat)
        if label_column not in cat.colnames:
            msg = (f"label_column {label_column!r} is not in the catalog"
                   f"{f' of field {i}' if many else ''}; available columns: {cat.colnames}")
            raise ValueError(msg)
        labels = parse_labels(cat[label_column], column=label_column,
                              allow_missing=allow_unlabelled)
        imgs = _field_images(imgs, meta, where)
        scale = _field_scale(imgs, pixel_scale, where)
        scales.append(scale)
        # "auto" is resolved on the first field: one model reads one scale
        part, feature_scale, offset = _one_field(
            cat, imgs, labels, meta=meta, zeropoints=zps, psf=field_psf, pixel_scale=scale,
            ra_column=ra_column, dec_column=dec_column, feature_scale=feature_scale,
            match_depth=match_depth, refine_positions=refine_positions)
        part["field"] = np.full(len(cat), i, dtype=np.int32)
        parts.append(part)
        offsets.append(offset)
    if max(scales) / min(scales) - 1.0 > _SCALE_TOLERANCE:
        msg = (f"the fields' pixel scales differ ({[round(s, 4) for s in scales]} arcsec), "
               "but one model reads one pixel scale; fine-tune one model per pixel scale")
        raise ValueError(msg)
    arrays = {name: np.concatenate([p[name] for p in parts]) for name in _PER_SOURCE}
    usable = np.isfinite(arrays["stamps"]).any(axis=(1, 2, 3))
    n_dropped = int((~usable).sum())
    if n_dropped:
        log.info("left out %d of %d labelled sources without pixels in any band (off the "
                 "images)", n_dropped, usable.size)
    matched = [o for o in offsets if o is not None]
    if matched and len(matched) < len(offsets):
        # one model applies one rule: a field whose depth could not be measured
        # (no PSF, no noise) gets the median offset of the others, added to its
        # magnitudes (a zero point enters them additively)
        fill = round(float(np.median(matched)), 4)
        if "mag" in meta.feature_names:
            rows = np.isin(arrays["field"], [i for i, o in enumerate(offsets) if o is None])
            arrays["features"][rows, :, list(meta.feature_names).index("mag")] += fill
        offsets = [fill if o is None else o for o in offsets]
        log.info("depth matching: fields without a measured depth take the median offset")
    inputs = LabelledInputs(**arrays, pixel_scale=float(np.median(scales)),
                            bands=tuple(meta.bands), n_dropped=n_dropped,
                            feature_scale=float(feature_scale),
                            magnitude_offset=tuple(offsets) if matched else None)
    return inputs.take(usable) if n_dropped else inputs


def _is_table(value):
    from astropy.table import Table

    return isinstance(value, Table)


# ---------------------------------------------------------------------------
# fine-tuning


def _jsonable(obj):
    """Plain JSON values, non-finite floats as None (metrics of empty classes)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _psf_meta(base_psf, data, feature_names=()):
    """
    The user's PSF range per band: median FWHM and [min, max] widened, else
    the base's; the base's range of profile shapes widened to the user's.
    """
    if base_psf is None:
        return None
    nominal = dict(base_psf["nominal_fwhm"])
    ranges = dict(base_psf["fwhm_range"])
    for c, band in enumerate(data.bands):
        values = data.psf_fwhm[:, c]
        values = values[np.isfinite(values)]
        if values.size:
            nominal[band] = round(float(np.median(values)), 4)
            ranges[band] = [round(float(values.min()) / _PSF_WIDENING, 4),
                            round(float(values.max()) * _PSF_WIDENING, 4)]
    psf = {"nominal_fwhm": nominal, "fwhm_range": ranges}
    if "gamma_range" in base_psf:
        shapes = {band: list(limits) for band, limits in base_psf["gamma_range"].items()}
        if "psf_gamma" in feature_names:
            column = np.asarray(data.features)[:, :, list(feature_names).index("psf_gamma")]
            for c, band in enumerate(data.bands):
                values = column[:, c][np.isfinite(column[:, c])]
                if values.size:  # the model has now seen these shapes
                    shapes[band] = [round(max(min(shapes[band][0], float(values.min())), -0.5), 4),
                                    round(min(max(shapes[band][1], float(values.max())), 0.9), 4)]
        psf["gamma_range"] = shapes
    return psf


def _check_options(*, mode, epochs, lr, batch_size, folds, val_fraction, patience,
                   refit_normalization, name, seed, reinit_input=False,
                   magnitude_thresholds=False, self_training=False):
    check_choice("mode", mode, FINE_TUNE_MODES)
    check_bool("reinit_input", reinit_input)
    check_bool("magnitude_thresholds", magnitude_thresholds)
    check_bool("self_training", self_training)
    if self_training and mode == "calibrate":
        msg = ("self_training=True trains on pseudo-labelled sources, but mode='calibrate' "
               "trains nothing; use mode='fine-tune' (or 'scratch')")
        raise ValueError(msg)
    if reinit_input and mode != "fine-tune":
        msg = (f"reinit_input=True re-initialises the input layer of the base model, so it "
               f"applies to mode='fine-tune' only, got mode={mode!r}")
        raise ValueError(msg)
    check_count("epochs", epochs, low=1)
    check_count("batch_size", batch_size, low=1)
    check_count("patience", patience, low=1)
    check_count("folds", folds, low=1, hint="; e.g. folds=5 (cross-fitting) or folds=1 (one "
                "split)")
    check_count("seed", seed, low=0)
    check_real("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True,
               high_open=True, hint="; e.g. val_fraction=0.3")
    if lr is not None:
        check_real("lr", lr, low=0.0, low_open=True, hint="; e.g. lr=1e-3")
    if refit_normalization is not None:
        check_bool("refit_normalization", refit_normalization)
    if name is not None and not (isinstance(name, str) and name.strip()
                                 and "/" not in name and "\\" not in name):
        msg = f"name must be None or a non-empty file-name-safe string, got {name!r}"
        raise ValueError(msg)


def _train_config(meta, *, epochs, lr, batch_size, patience, seed):
    from .meta import MODEL_CONFIGS
    from .training import TrainConfig

    recipe_config = meta.recipe.get("config") or {}
    family = recipe_config.get("model")
    return TrainConfig(
        model=family if family in MODEL_CONFIGS else "rbim-lite",
        epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
        # the base model's robustness to a missing band is kept while it adapts
        band_dropout=float(recipe_config.get("band_dropout", 0.05)),
        softening=float(meta.normalization.softening))


def fine_tune(catalog, images, *, output, label_column="label", base="default", seed=0,
              epochs=20, lr=None, batch_size=64, folds=5, val_fraction=0.3, patience=6,
              zeropoints=None, psf=None, pixel_scale=None, device=None,
              refit_normalization=None, mode="fine-tune", name=None, ra_column="ra",
              dec_column="dec", progress=False, reinit_input=False,
              magnitude_thresholds=False, feature_scale="auto", self_training=False):
    """
    Adapt a released model to your own survey with your own labelled objects.

    The labelled sources are extracted as ``classify()`` extracts them
    (`labelled_inputs`). Then, by ``mode``:

    - ``"fine-tune"``: all weights are trained, starting from ``base``;
    - ``"scratch"``: the same architecture is trained from a random
      initialisation on your data only;
    - ``"calibrate"``: no training, the base weights and normalisation are
      kept.

    Training is cross-fitted (``folds``, default 5): the labels are dealt
    into seeded stratified folds (`stratified_folds`); one network per fold,
    trained on the other folds for the whole schedule of ``epochs``,
    predicts the fold it did not see, which gives an out-of-fold prediction
    for every labelled source; the written network is then trained the same
    way on all of them. The probability temperature is fitted on the
    out-of-fold predictions, and the validation report in the meta is theirs.
    A trained model decides at ``p_galaxy`` = 0.5 (its loss is
    class-balanced); ``"calibrate"`` refits the base's threshold to your
    labels (the one that classifies the most of them right). ``folds=1`` is the single-split
    recipe instead: a seeded stratified split (`stratified_split`,
    ``val_fraction`` held out), training early-stopped on the validation
    loss (``patience``), the written network trained on the training part.

    Why cross-fitting: with a few hundred labels a held-out split keeps a
    third of them from training the written network. On the SDSS-like
    simulation (ten draws of 300 labels each,
    accuracy at r < 21 of held-out fields): 97.6 % with one split, early
    stopping and the threshold at 0.5; 98.1 % with every label trained on
    for 20 epochs (the written network of the cross-fit); 1,000 labels:
    98.3 against 98.8 % (``docs/adapt.rst``). It costs
    ``folds + 1`` trainings instead of one (about a minute for 300 labels
    on two CPU cores).

    The model is written with a meta that holds your pixel scale, the PSF
    range of your data (PSF-aware models), the recipe and the validation
    metrics.

    Parameters
    ----------
    catalog : `~astropy.table.Table` or sequence of Table
        Labelled sources with sky positions, as for ``classify()``; a
        sequence holds one table per field.
    images : mapping, `~astropy.nddata.CCDData` or sequence
        ``{band: CCDData}`` (or one per field). Bands are mapped to the
        model's by name; bands the model reads but you lack are treated as
        dropped bands.
    output : path-like
        Directory for the checkpoints, ``train.log``, ``metrics.json`` and
        the weights file ``<name>.safetensors``.
    label_column : str, optional
        ``"star"``/``"galaxy"`` (any case), 0/1 (1 = galaxy) or booleans
        (True = galaxy).
    base : str or path-like, optional
        The model to start from: a registry name or a ``.safetensors`` file.
    seed : int, optional
        Seed of the split, the initialisation, the batch order and the
        augmentation (recorded as the recipe's ``data_seed``).
    epochs : int, optional
        Epochs of each training (the whole cosine schedule when
        cross-fitted; the maximum with ``folds=1``).
    lr : float or None, optional
        Peak learning rate; ``None`` uses 1e-3 to fine-tune and 2e-3 from
        scratch.
    batch_size : int, optional
    folds : int, optional
        Folds of the cross-fit (at most the number of labelled sources of
        the rarer class: fewer are used if there are fewer); 1 for one
        train/validation split with early stopping.
    val_fraction : float, optional
        With ``folds=1``: fraction of each class held out for early stopping
        and calibration.
    patience : int, optional
        With ``folds=1``: epochs without a better validation loss before
        stopping.
    zeropoints, psf, pixel_scale
        As in `labelled_inputs`.
    device : None, str or `torch.device`, optional
        ``None`` picks CUDA when available.
    refit_normalization : bool or None, optional
        Recompute the feature normalisation from your training objects (for
        ``"fine-tune"``; ``"scratch"`` always does, ``"calibrate"`` never).
        ``None`` (default): not where the magnitudes were matched to the
        base model's depth (your survey's pixels, a base that records its
        depth: the features then keep the base's scale, and the training
        starts from what ``classify()`` gives without labels), else yes.
        Measured on the SDSS-like simulation (three draws each,
        ``docs/adapt.rst``): correct at r < 21 keeping the base's
        normalisation against refitting it, 94.6 against 92.5 % with 100
        labels, 96.6 against 96.9 % with 300 and 98.3 against 98.0 % with
        1,000.
    mode : {"fine-tune", "scratch", "calibrate"}, optional
    name : str or None, optional
        Name of the new model (meta and file name); default
        ``"<base name>-ft"``.
    ra_column, dec_column : str, optional
        Names of the sky position columns
        (with the defaults, ``RA``/``DEC`` and the other names of
        `~astro_starglx.inputs.SKY_COLUMN_ALIASES` are found too).
    progress : bool, optional
        Progress bars while training.
    reinit_input : bool, optional
        For ``mode="fine-tune"``: start the input layer (the image encoder's
        first convolution, all bands, and its batch normalisation) from a
        seeded random initialisation instead of the base model's weights,
        the rest from ``base``. Off by default: on the SDSS-like simulation
        it did not help (``docs/label_study.txt``). Bands the base reads
        but your images lack need no re-initialisation either way: their
        pixels are zeros, so their input weights neither act nor learn, and
        the model sees them as the dropped bands of its training.
    magnitude_thresholds : bool, optional
        Give the held-out sources brighter than their median r-band ``mag``
        feature a threshold of equal star and galaxy recall of their own (if
        they hold at least 5 stars and 5 galaxies); fainter sources keep the
        model's threshold. Written as the model's ``thresholds``, which
        ``classify()`` applies per source. Off by default: against the
        threshold of 0.5 of a trained model it lowered the accuracy at
        r < 21 on the SDSS-like simulation (300 labels, ten draws: 97.4
        against 97.6 %; ``docs/adapt.rst``). Needs an ``r`` band and a
        ``mag`` feature; otherwise one threshold.
    feature_scale : "auto", float or None, optional
        The angular scale of the catalog features
        (`~astro_starglx.meta.ModelMeta.feature_scale`), recorded in the new
        model's meta so that ``classify()`` measures them alike. ``"auto"``
        keeps the base model's at its own pixel scale and otherwise takes
        the ratio of your pixel scale to the base model's: apertures and
        moment weight as many of your pixels wide as they were of the
        model's, as the stamps are (`labelled_inputs`). On the SDSS-like
        simulation (0.396"/px, 5.35 times CSST's) this gave 96.3, 97.0 and
        98.1 % correct at r < 21 with 100, 300 and 1,000 labels, against
        91.8, 95.5 and 98.2 % with the apertures in units of the PSF (9.8
        times CSST's; the earlier rule), over three or four paired draws
        (``docs/adapt.rst``). None keeps the base model's scale; a number
        sets it.
    self_training : bool, optional
        Learn from the catalog's unlabelled rows too (label masked, NaN,
        None or blank; without this option they are refused): after the
        first training, the unlabelled sources whose calibrated
        ``p_galaxy`` is within 0.1 of 0 or 1 get that class as a label
        ("pseudo-labels"), and the training (each fold's and the final one)
        is run again from ``base`` on the labelled and pseudo-labelled
        sources; the held-out predictions, temperature and thresholds use
        your labels only.
        Give it your whole source catalog with the labels you have (e.g.
        from `~astro_starglx.labels.gaia_labels`). On the SDSS-like
        simulation with 4,000 unlabelled sources it raised the accuracy at
        r < 21 from 94.9 to 96.8 % with 300 labels and from 97.4 to 98.1 %
        with 1,000 (three label draws, the single-split recipe then the
        default; ``docs/adapt.rst``), at 2 to 15
        times the training time; with 100 labels it lowered it (93.5 to
        92.6 %): use it from a few hundred labels on. With the cross-fit
        it is no longer a clear gain (four draws of 300 labels: 98.5
        against 98.3 % at r < 21, 88.1 both over all magnitudes, at 7 to 11
        times the time).

    Returns
    -------
    path : `~pathlib.Path`
        The written ``.safetensors`` file: ``StarGalaxyClassifier(path)``
        classifies with it.

    Raises
    ------
    ValueError
        For an invalid option (the message names it), labels that are not
        star/galaxy, fewer than 2 labelled stars or galaxies, or the errors
        of `labelled_inputs`.

    Notes
    -----
    Recorded in the meta's ``recipe``: the call, the seed, the base model's
    name and sha256, the number of folds, the numbers of objects the written
    network was trained on (``n_train``), held out from it (``n_val``, 0
    when cross-fitted) and calibrated on (``n_calibration``), the mode and
    the `~astro_starglx.training.TrainConfig`. In ``metrics``: the
    validation report of the new model (out of fold when cross-fitted) and
    of the base model on the same inputs, and the training history of the
    written network. Each fold's checkpoint is kept in
    ``<output>/folds/<k>/``.
    """
    from .inference import resolve_device
    from .weights import load_model

    _check_options(mode=mode, epochs=epochs, lr=lr, batch_size=batch_size, folds=folds,
                   val_fraction=val_fraction, patience=patience,
                   refit_normalization=refit_normalization, name=name, seed=seed,
                   reinit_input=reinit_input, magnitude_thresholds=magnitude_thresholds,
                   self_training=self_training)
    _check_output(output)
    device = resolve_device(device)
    loaded = load_model(base, device=device)
    data = labelled_inputs(catalog, images, meta=loaded.meta, label_column=label_column,
                           zeropoints=zeropoints, psf=psf, pixel_scale=pixel_scale,
                           ra_column=ra_column, dec_column=dec_column,
                           feature_scale=feature_scale, allow_unlabelled=self_training)
    return fine_tune_inputs(data, output=output, base=loaded, seed=seed, epochs=epochs, lr=lr,
                            batch_size=batch_size, folds=folds, val_fraction=val_fraction,
                            patience=patience, device=device,
                            refit_normalization=refit_normalization, mode=mode, name=name,
                            progress=progress, base_label=str(base),
                            reinit_input=reinit_input,
                            magnitude_thresholds=magnitude_thresholds,
                            self_training=self_training)


def _check_output(output):
    output = Path(output)
    if output.exists() and not output.is_dir():
        msg = f"output must be a directory (checkpoints and weights go there), got file {output}"
        raise ValueError(msg)
    return output


def _effective_folds(folds, labels):
    """``folds``, lowered (with a log line) to the number of members of the rarer class."""
    rarer = int(np.bincount(np.asarray(labels, dtype=np.int64), minlength=2).min())
    if folds > 1 and rarer < folds:
        log.info("folds=%d, but only %d labelled sources of the rarer class: %d folds",
                 folds, rarer, max(rarer, 2))
        return max(rarer, 2)
    return folds


def fine_tune_inputs(data, *, output, base="default", seed=0, epochs=20, lr=None,
                     batch_size=64, folds=5, val_fraction=0.3, patience=6, device=None,
                     refit_normalization=None, mode="fine-tune", name=None, progress=False,
                     base_label=None, reinit_input=False, magnitude_thresholds=False,
                     self_training=False):
    """
    `fine_tune` on inputs already extracted (`labelled_inputs`).

    For many runs on one labelled set (e.g. subsets of it, or each
    ``mode``): the extraction, the slow part on large catalogs, is done
    once, and ``data.take(index)`` gives the subsets.

    Parameters
    ----------
    data : `LabelledInputs`
        From `labelled_inputs` with the base model's meta; with
        ``self_training``, sources labelled -1 are the unlabelled ones.
    base : str, path-like or `~astro_starglx.weights.LoadedModel`, optional
        The model to start from (a loaded one is used as it is).
    base_label : str or None, optional
        How the recipe's command names the base (default: its name).
    output, seed, epochs, lr, batch_size, folds, val_fraction, patience, device
        As in `fine_tune`.
    refit_normalization, mode, name, progress, reinit_input, magnitude_thresholds
        As in `fine_tune`.
    self_training : bool, optional
        As in `fine_tune`.

    Returns
    -------
    path : `~pathlib.Path`
        The written ``.safetensors`` file.
    """
    import torch

    from . import metrics
    from .inference import predict_logits, resolve_device
    from .preprocess import compute_normalization
    from .training import decision_report, fit
    from .weights import LoadedModel, load_model, save_weights

    _check_options(mode=mode, epochs=epochs, lr=lr, batch_size=batch_size, folds=folds,
                   val_fraction=val_fraction, patience=patience,
                   refit_normalization=refit_normalization, name=name, seed=seed,
                   reinit_input=reinit_input, magnitude_thresholds=magnitude_thresholds,
                   self_training=self_training)
    if not isinstance(data, LabelledInputs):
        msg = (f"data must be LabelledInputs (from labelled_inputs), got "
               f"{type(data).__name__}")
        raise TypeError(msg)
    unlabelled = data.take(data.labels < 0)
    if len(unlabelled) and not self_training:
        msg = (f"data holds {len(unlabelled)} unlabelled sources (label -1); pass "
               "self_training=True to learn from them, or data.take(data.labels >= 0)")
        raise ValueError(msg)
    data = data.take(data.labels >= 0) if len(unlabelled) else data
    matched = data.magnitude_offset is not None
    if refit_normalization is None:  # keep the base's scale where the depth was matched
        refit_normalization = not matched
    output = _check_output(output)
    device = resolve_device(device)
    loaded = base if isinstance(base, LoadedModel) else load_model(base, device=device)
    base_label = base_label or (loaded.name if isinstance(base, LoadedModel) else str(base))
    meta = loaded.meta
    if tuple(data.bands) != tuple(meta.bands):
        msg = (f"data holds bands {data.bands} but the base model {loaded.name!r} reads "
               f"{meta.bands}; extract them with labelled_inputs(..., meta=<its meta>)")
        raise ValueError(msg)
    folds = _effective_folds(folds, data.labels)
    if folds == 1:  # one split: the model trained on its training part, early-stopped
        splits = [stratified_split(data.labels, val_fraction=val_fraction, seed=seed)]
    else:
        splits = stratified_folds(data.labels, folds=folds, seed=seed)
    log.info("fine_tune (%s) from %s on %d objects (%d stars, %d galaxies), %s", mode,
             loaded.name, len(data), int((data.labels == 0).sum()),
             int((data.labels == 1).sum()),
             f"{len(splits[0][0])} train, {len(splits[0][1])} validation" if folds == 1
             else f"{folds} folds, then all")
    lr = _DEFAULT_LR.get(mode, _DEFAULT_LR["fine-tune"]) if lr is None else float(lr)
    config = _train_config(meta, epochs=epochs, lr=lr, batch_size=batch_size,
                           patience=patience, seed=seed)
    output.mkdir(parents=True, exist_ok=True)
    # the held-out sources whose predictions calibrate the model: the validation part
    # of one split, else every labelled source (out of fold)
    held_out = splits[0][1] if folds == 1 else np.arange(len(data))
    cal = data.take(held_out)
    labelled_train = data.take(splits[0][0]) if folds == 1 else data
    self_info, trained_on = None, labelled_train
    if mode == "calibrate":
        network, normalization = loaded.network, meta.normalization
        cal_logits = predict_logits(network, cal, normalization, device=device)
        history, best_epoch = [], None
    else:
        init_state = ({k: v.detach().clone() for k, v in loaded.network.state_dict().items()}
                      if mode == "fine-tune" else None)
        if reinit_input:
            init_state.update(_input_layer_init(meta.architecture, seed=seed))

        def train_on(sources, val, where, run_seed):
            """fit() from ``init_state`` on ``sources`` (early-stopped on ``val`` if any)."""
            norm = meta.normalization
            if mode == "scratch" or refit_normalization:
                norm = compute_normalization(sources.features,
                                             softening=meta.normalization.softening)
            result = fit(sources, val, config=dataclasses.replace(config, seed=run_seed),
                         output_dir=where, normalization=norm, device=device, resume=False,
                         progress=progress, init_state=init_state,
                         architecture=meta.architecture)
            return result, norm

        def cross_fit(extra):
            """Out-of-fold logits of ``held_out`` and the final fit (plus ``extra``)."""
            logits = np.zeros((len(data), 2), dtype=np.float32)
            for k, (train_idx, val_idx) in enumerate(splits):
                train = data.take(train_idx)
                train = train if extra is None else _concatenate(train, extra)
                val = data.take(val_idx)
                result, norm = train_on(train, val if folds == 1 else None,
                                        output if folds == 1 else output / "folds" / str(k),
                                        seed if folds == 1 else seed + 1 + k)
                logits[val_idx] = predict_logits(result.network, val, norm, device=device)
            if folds > 1:  # the released model: the same recipe on every labelled source
                train = data if extra is None else _concatenate(data, extra)
                result, norm = train_on(train, None, output, seed)
            return result, norm, logits[held_out], train

        result, normalization, cal_logits, trained_on = cross_fit(None)
        network, history, best_epoch = result.network, result.history, result.best_epoch
        if self_training:
            temperature = metrics.fit_temperature(cal_logits, cal.labels.astype(np.int64),
                                                  bounds=_TEMPERATURE_BOUNDS)
            pseudo, self_info = _pseudo_labelled(network, normalization, temperature,
                                                 unlabelled, device=device)
            if len(pseudo):  # again, on the labelled and the pseudo-labelled
                result, normalization, cal_logits, trained_on = cross_fit(pseudo)
                network, best_epoch = result.network, result.best_epoch
                history = history + result.history

    y_val = cal.labels.astype(np.int64)
    temperature = float(metrics.fit_temperature(cal_logits, y_val, bounds=_TEMPERATURE_BOUNDS))
    p_val = metrics.softmax(cal_logits, temperature=temperature)[:, 1]
    if mode == "calibrate":
        threshold = float(np.clip(metrics.best_threshold(y_val, p_val,
                                                         criterion=_CALIBRATE_CRITERION),
                                  1e-4, 1.0 - 1e-4))
    else:
        threshold = _TRAINED_THRESHOLD
    thresholds = (_magnitude_thresholds(meta, y_val, p_val, cal.features, fallback=threshold)
                  if magnitude_thresholds else None)
    base_logits = cal_logits if mode == "calibrate" else predict_logits(
        loaded.network, cal, meta.normalization, device=device)
    p_base = metrics.softmax(base_logits, temperature=meta.temperature)[:, 1]
    name = name or f"{loaded.name}-ft"
    recipe = {
        "command": (f"astro_starglx.fine_tune(catalog, images, base={base_label!r}, "
                    f"mode={mode!r}, seed={seed}, epochs={epochs}, lr={lr}, "
                    f"batch_size={batch_size}, folds={folds}, "
                    f"{f'val_fraction={val_fraction}, patience={patience}, ' if folds == 1 else ''}"
                    f"refit_normalization={refit_normalization}, "
                    f"feature_scale={data.feature_scale:g}"
                    f"{', reinit_input=True' if reinit_input else ''}"
                    f"{', magnitude_thresholds=True' if magnitude_thresholds else ''}"
                    f"{', self_training=True' if self_training else ''})"),
        "data_seed": int(seed),
        "base": {"name": loaded.name, "sha256": loaded.sha256},
        "mode": mode,
        "n_fields": int(data.field.max()) + 1 if len(data) else 0,
        # the labelled sources the written model was trained on, and those held out
        "n_train": int(len(data) - len(held_out)) if folds == 1 else int(len(data)),
        "n_val": int(len(held_out)) if folds == 1 else 0,
        "n_star_train": int((labelled_train.labels == 0).sum()),
        "n_galaxy_train": int((labelled_train.labels == 1).sum()),
        "n_dropped": int(data.n_dropped),
        "folds": int(folds),
        # the sources the temperature and validation report come from
        "n_calibration": int(len(held_out)),
        "val_fraction": float(val_fraction) if folds == 1 else None,
        "refit_normalization": bool(mode == "scratch"
                                    or (mode == "fine-tune" and refit_normalization)),
        "reinit_input": bool(reinit_input),
        "magnitude_offset": (None if data.magnitude_offset is None
                             else float(np.median(data.magnitude_offset))),
        "magnitude_thresholds": bool(magnitude_thresholds),
        "self_training": self_info,
        "config": dataclasses.asdict(config),
        "best_epoch": best_epoch, "epochs_run": len(history),
    }
    new_meta = meta.replace(name=name, pixel_scale=float(data.pixel_scale),
                            feature_scale=float(data.feature_scale),
                            normalization=normalization, threshold=threshold,
                            # never the base's per-magnitude thresholds: fitted to its own
                            # data, they would override the refitted threshold
                            thresholds=thresholds,
                            temperature=temperature, recipe=_jsonable(recipe),
                            psf=_psf_meta(meta.psf, data, meta.feature_names),
                            # the magnitudes were matched to the base's depth: classify()
                            # matches them alike (match_depth); otherwise the base's depth
                            # is its training data's, not your survey's: none recorded
                            depth=meta.depth if matched else None,
                            star_fraction=_prior_star_fraction(mode, config, meta, trained_on))
    results = {
        # at each source's threshold, as classify() decides; out of fold when cross-fitted
        "validation": decision_report(new_meta, y_val, p_val, cal.features)["all"],
        "base_validation": decision_report(meta, y_val, p_base, cal.features)["all"],
        "history": history,
    }
    new_meta = new_meta.replace(metrics=_jsonable(results))
    path = output / f"{name}.safetensors"
    network = network.to(memory_format=torch.contiguous_format)
    save_weights(path, network.state_dict(), new_meta)
    import json

    (output / "metrics.json").write_text(json.dumps(new_meta.metrics, indent=2))
    report = results["validation"]
    log.info("wrote %s: validation recall star %.3f galaxy %.3f at threshold %.3f (base "
             "model: %.3f, %.3f)", path, report["recall_star"], report["recall_galaxy"],
             threshold, results["base_validation"]["recall_star"],
             results["base_validation"]["recall_galaxy"])
    return path


def _concatenate(*parts):
    """One `LabelledInputs` of several (same bands and scales)."""
    return dataclasses.replace(parts[0], **{
        name: np.concatenate([getattr(p, name) for p in parts]) for name in _PER_SOURCE})


def _pseudo_labelled(network, normalization, temperature, unlabelled, *, device):
    """
    The unlabelled sources the network is sure of, labelled with its class.

    Its probabilities are calibrated with ``temperature`` (fitted on held-out
    labelled sources); sources with ``p_galaxy <= _PSEUDO_CUT`` become
    stars and ``>= 1 - _PSEUDO_CUT`` galaxies. Returns them and the record
    for the recipe.
    """
    from . import metrics
    from .inference import predict_logits

    info = {"n_unlabelled": int(len(unlabelled)), "cut": _PSEUDO_CUT, "n_star": 0,
            "n_galaxy": 0}
    if not len(unlabelled):
        log.warning("self_training=True, but every source has a label: nothing to "
                    "pseudo-label")
        return unlabelled, info
    p = metrics.softmax(predict_logits(network, unlabelled, normalization, device=device),
                        temperature=temperature)[:, 1]
    sure = (p <= _PSEUDO_CUT) | (p >= 1.0 - _PSEUDO_CUT)
    pseudo = unlabelled.take(sure)
    pseudo = dataclasses.replace(pseudo, labels=(p[sure] >= 0.5).astype(np.int8))
    info.update(n_star=int((pseudo.labels == 0).sum()), n_galaxy=int((pseudo.labels == 1).sum()))
    log.info("self-training: %d of %d unlabelled sources pseudo-labelled (%d stars, %d "
             "galaxies)", len(pseudo), len(unlabelled), info["n_star"], info["n_galaxy"])
    return pseudo, info


def _magnitude_thresholds(meta, y_val, p_val, features, *, fallback):
    """
    The ``thresholds`` meta entry: the bright half's own balanced threshold, else ``fallback``.

    The halves are split at the median r-band ``mag`` feature of the
    validation sources; the bright half gets its own threshold
    (`~astro_starglx.training.magnitude_thresholds` with one edge) if it holds at least
    `_MIN_PER_BIN` stars and galaxies, the faint half keeps ``fallback``.
    None when the model has no r-band ``mag`` feature, the validation
    sources have no r magnitudes, or the bright half keeps ``fallback``.
    """
    from .training import magnitude_thresholds, r_band_mag

    mag = r_band_mag(meta, features)
    if mag is None or not np.isfinite(mag).any():
        return None
    edge = float(np.median(mag[np.isfinite(mag)]))
    fitted = magnitude_thresholds(meta.replace(threshold=fallback), y_val, p_val, features,
                                  edges=[edge], min_per_class=_MIN_PER_BIN)
    bright = fitted["values"][0]
    if bright == fallback:
        return None
    # the faint half keeps the threshold fitted on all sources
    return {**fitted, "values": [bright, float(fallback)]}


def _input_layer_init(architecture, *, seed):
    """
    Seeded fresh weights of the input layer: the image encoder's first convolution and batch norm.

    Returns ``{state_dict key: tensor}`` for those two modules, as
    ``build_model(architecture)`` initialises them under ``torch.manual_seed(seed)``
    (the global torch RNG is left as it was).
    """
    import torch

    from .model import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_model(architecture)
    encoder = getattr(fresh, "image_encoder", None)
    if encoder is None:
        msg = "reinit_input=True needs a model with an image encoder (this one reads catalogs only)"
        raise ValueError(msg)
    names, conv_seen = [], False
    for name, module in encoder.named_modules():
        if not conv_seen and isinstance(module, torch.nn.Conv2d):
            names.append(name)
            conv_seen = True
        elif conv_seen and isinstance(module, torch.nn.BatchNorm2d):
            names.append(name)
            break
    prefixes = tuple(f"image_encoder.{name}." for name in names)
    return {key: value.detach().clone() for key, value in fresh.state_dict().items()
            if key.startswith(prefixes)}


def _prior_star_fraction(mode, config, meta, train):
    """The star fraction the new model's p_galaxy assumes (`ModelMeta.star_fraction`)."""
    if mode == "calibrate":  # the base network's: a temperature adds no prior
        return meta.prior_star_fraction
    return 0.5 if config.class_balance else float(np.mean(train.labels == 0))
