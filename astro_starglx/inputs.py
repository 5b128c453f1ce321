"""
Model inputs from a catalog and its images: the one input extraction shared
by `~astro_starglx.StarGalaxyClassifier.classify` and the training-set
builder.

``catalog + images -> per-band pixel positions (pixel_positions) -> zero
points, stamps, noise, features (extract_inputs)``. CSST bands sit on
different detectors, so a sky position is converted through each band's WCS
separately; pixel columns are used only when the caller says the bands share
one grid.

The arguments are validated here, once; the cores of the modules below
(`astro_starglx.cutouts`, `astro_starglx.background`,
`astro_starglx.features`) trust them. numpy + astropy + photutils, no torch.
"""

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from ._validation import (
    as_pixel_scale,
    as_positions,
    as_zeropoint,
    check_bands,
    check_catalog,
    check_feature_stamps,
    check_mapping,
    check_nddata,
    check_real,
    check_size,
)
from .background import background_noise, image_noise_or_nan
from .cutouts import cut_band, saturation_level, stamp_origin
from .csst_io import ZEROPOINT_KEYWORDS, is_readable, read_image
from .features import FEATURE_NAMES, PSF_FEATURE_NAMES, measure_band, psf_features
from .flags import ClassFlag

__all__ = [
    "SourceInputs",
    "blend_flags",
    "match_band",
    "match_band_keys",
    "model_images",
    "extract_inputs",
    "get_zeropoint",
    "pixel_positions",
    "sky_column_names",
    "unit_zeropoint",
    "SKY_COLUMN_ALIASES",
]

log = logging.getLogger(__name__)


_MAG_INDEX = FEATURE_NAMES.index("mag")

# The AB magnitude system's zero-magnitude flux density (Oke & Gunn 1983).
_AB_FLUX_JY = 3631.0


@dataclass(frozen=True)
class SourceInputs:
    """
    Raw model inputs for N sources in C bands (see :ref:`internals`).

    Attributes
    ----------
    stamps : `~numpy.ndarray`, shape (N, C, H, W), float32
        Local-background-subtracted stamps in image units, NaN where there
        is no data (off image, masked, band missing).
    noise : `~numpy.ndarray`, shape (N, C), float32
        Per-pixel background standard deviation in image units.
    features : `~numpy.ndarray`, shape (N, C, F), float32
        Catalog features in `~astro_starglx.features.FEATURE_NAMES` order,
        NaN where not measurable.
    offsets : `~numpy.ndarray`, shape (N, C, 2), float32
        Source position inside its stamp, x then y (NaN if not finite).
    flags : `~numpy.ndarray`, shape (N,), uint16
        `~astro_starglx.flags.ClassFlag` bits OR-ed over the bands.
    """

    stamps: np.ndarray
    noise: np.ndarray
    features: np.ndarray
    offsets: np.ndarray
    flags: np.ndarray


# --------------------------------------------------------------------------
# positions


def _column_values(catalog, name, *, angle):
    """
    A position column as (N,) float64, masked and non-finite -> NaN.

    With ``angle``, in degrees: a Quantity or a column unit is converted,
    no unit means degrees. Pixel columns are read as numbers. A NaN row is a
    per-source problem (flagged ``OFF_IMAGE`` downstream), not an error.
    """
    column = catalog[name]
    unit = getattr(column, "unit", None)
    mask = None
    if hasattr(column, "unmasked"):  # a QTable's masked Quantity (astropy Masked)
        mask, column = np.asarray(column.mask), column.unmasked
    try:
        values = np.ma.asarray(getattr(column, "value", column), dtype=float)
    except (TypeError, ValueError) as exc:
        kind = "degrees or an angle Quantity" if angle else "pixels"
        msg = (f"column {name!r} must hold numbers ({kind}), got dtype "
               f"{np.asarray(column).dtype}; parse sexagesimal strings with "
               "SkyCoord(ra, dec, unit=(u.hourangle, u.deg)) and pass them as a SkyCoord "
               "column (coord_column)")
        raise ValueError(msg) from exc
    if values.ndim != 1:
        first = f"; row 0 holds {values[0].tolist()}" if len(values) else ""
        msg = (f"column {name!r} must be 1-D (one position per source), got shape "
               f"{values.shape}{first}: give one column per coordinate")
        raise ValueError(msg)
    values = np.ma.filled(values, np.nan)
    if mask is not None:
        values = np.where(mask, np.nan, values)
    if angle and unit is not None and unit != u.dimensionless_unscaled and unit != u.deg:
        if not unit.is_equivalent(u.deg):
            msg = (f"column {name!r} has unit {unit}, which is not an angle; give sky "
                   "positions in degrees (no unit) or as angle Quantities, e.g. "
                   f"catalog[{name!r}] = values * u.deg")
            raise ValueError(msg)
        values = u.Quantity(values, unit).to_value(u.deg)
    return np.where(np.isfinite(values), values, np.nan)


#: Column pairs taken for ``ra``/``dec`` when a catalog has no ``ra``/``dec``
#: columns and the defaults were asked for (matched case aside, in this order):
#: any-case ra/dec, names with the unit or the equinox, VizieR's ICRS and J2000
#: names, SExtractor's (``X_WORLD``/``Y_WORLD`` are RA/Dec with a celestial WCS).
SKY_COLUMN_ALIASES = (("ra", "dec"), ("ra_deg", "dec_deg"), ("ra_j2000", "dec_j2000"),
                      ("ra_icrs", "de_icrs"), ("raj2000", "dej2000"),
                      ("alpha_j2000", "delta_j2000"), ("alphawin_j2000", "deltawin_j2000"),
                      ("x_world", "y_world"))


def sky_column_names(catalog, ra_column="ra", dec_column="dec"):
    """
    The catalog's right ascension and declination column names.

    ``ra_column``/``dec_column`` when the catalog has both. Otherwise, if
    they are the defaults ``"ra"``/``"dec"``, the first pair of
    `SKY_COLUMN_ALIASES` that the catalog has (matched case aside: ``RA``/
    ``DEC``, ``RA_ICRS``/``DE_ICRS``, ``ALPHA_J2000``/``DELTA_J2000``, ...),
    logged at INFO.

    Returns
    -------
    names : tuple of str or None
        ``(ra_name, dec_name)``, or None if no pair is found.

    Examples
    --------
    >>> from astropy.table import Table
    >>> sky_column_names(Table({"ALPHA_J2000": [150.0], "DELTA_J2000": [2.0]}))
    ('ALPHA_J2000', 'DELTA_J2000')
    """
    found = _find_sky_columns(catalog, ra_column, dec_column)
    _log_alias(found, ra_column, dec_column)
    return found


def _log_alias(names, ra_column, dec_column):
    """Log that the sky columns ``names`` stand in for ``ra_column``/``dec_column``."""
    if names is not None and names != (ra_column, dec_column):
        log.info("catalog has no 'ra'/'dec' columns: using %r/%r", *names)


def _find_sky_columns(catalog, ra_column, dec_column):
    """`sky_column_names` without its log line."""
    names = catalog.colnames
    if ra_column in names and dec_column in names:
        return ra_column, dec_column
    if (ra_column, dec_column) != ("ra", "dec"):
        return None
    lower = {}
    for name in names:
        lower.setdefault(name.lower(), name)
    for ra_alias, dec_alias in SKY_COLUMN_ALIASES:
        if ra_alias in lower and dec_alias in lower:
            return lower[ra_alias], lower[dec_alias]
    return None


def _sky_positions(catalog, ra_column, dec_column):
    """SkyCoord of the rows with finite ra and dec, and the (N,) bool mask of those rows."""
    ra = _column_values(catalog, ra_column, angle=True)
    dec = _column_values(catalog, dec_column, angle=True)
    outside = np.flatnonzero(np.abs(dec) > 90.0)
    if outside.size:
        row = outside[0]
        msg = (f"column {dec_column!r} has {outside.size} value(s) outside [-90, 90] degrees "
               f"(first at row {row}: {float(dec[row])!r} deg); check its unit (a column in "
               "radians needs unit='rad', one without a unit is read as degrees) and that ra "
               "and dec are not swapped")
        raise ValueError(msg)
    finite = np.isfinite(ra) & np.isfinite(dec)
    return SkyCoord(ra[finite], dec[finite], unit="deg"), finite


def _skycoord_column(catalog, coord_column):
    """The SkyCoord column's rows with finite coordinates and their (N,) bool mask, or None."""
    if coord_column is not None:
        if coord_column not in catalog.colnames:
            msg = (f"coord_column {coord_column!r} is not in the catalog; available columns: "
                   f"{catalog.colnames}")
            raise ValueError(msg)
        coords = catalog[coord_column]
        if not isinstance(coords, SkyCoord):
            msg = (f"coord_column {coord_column!r} must hold a SkyCoord, got "
                   f"{type(coords).__name__}")
            raise TypeError(msg)
    else:
        found = [name for name in catalog.colnames if isinstance(catalog[name], SkyCoord)]
        if len(found) != 1:
            return None
        coord_column, coords = found[0], catalog[found[0]]
    if coords.ndim != 1:
        first = f"; row 0 holds {coords[0]}" if len(coords) else ""
        msg = (f"SkyCoord column {coord_column!r} must be 1-D (one position per source), got "
               f"shape {coords.shape}{first}")
        raise ValueError(msg)
    if not len(coords):
        return coords, np.zeros(0, dtype=bool)
    finite = np.isfinite(coords.spherical.lon.deg) & np.isfinite(coords.spherical.lat.deg)
    return coords[finite], finite


def _check_celestial_wcs(band, wcs):
    """A 2-D celestial WCS for sky -> pixel conversion, or a ValueError naming the band."""
    if wcs is None:
        msg = (f"images[{band!r}] has no WCS but sky positions are used; attach one "
               f"(CCDData(..., wcs=WCS(header))) or give pixel columns with "
               "shared_grid=True")
        raise ValueError(msg)
    low = getattr(wcs, "low_level_wcs", wcs)
    classes = getattr(low, "world_axis_object_classes", {}) or {}
    celestial = any(isinstance(spec[0], type) and issubclass(spec[0], SkyCoord)
                    for spec in classes.values())
    n_pixel = getattr(low, "pixel_n_dim", None)
    n_world = getattr(low, "world_n_dim", None)
    if not (celestial and n_pixel == 2 and n_world == 2):
        types = getattr(low, "world_axis_physical_types", None)
        msg = (f"images[{band!r}].wcs must be a 2-D celestial WCS to convert sky positions, "
               f"got {n_pixel} pixel and {n_world} world axes (types {types}); give the "
               "band's celestial image WCS (e.g. WCS(header).celestial) or pixel columns "
               "with shared_grid=True")
        raise ValueError(msg)


def pixel_positions(catalog, images, *, ra_column, dec_column, coord_column, x_column,
                    y_column, shared_grid):
    """
    Per-band pixel positions of every catalog source.

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        Sources with ``ra_column``/``dec_column``, a
        `~astropy.coordinates.SkyCoord` column, or pixel columns. Sky columns
        in a unit (a `~astropy.units.Quantity` column, or a column's
        ``unit``: ``deg``, ``rad``, ``hourangle``, ``arcsec``, ...) are
        converted; without a unit they are degrees.
    images : dict
        ``{band: NDData}``; each band's ``wcs`` (2-D, celestial) converts sky
        positions.
    ra_column, dec_column, coord_column, x_column, y_column : str or None
        Column names (``coord_column=None`` uses the table's only SkyCoord
        column, if any).
    shared_grid : bool
        Use the pixel columns for every band.

    Returns
    -------
    x, y : dict
        ``{band: (N,) float64}`` 0-based pixel positions in each band; NaN
        for sources whose position is masked or not finite (a per-source
        problem: `extract_inputs` flags them ``OFF_IMAGE``).

    Raises
    ------
    TypeError
        If ``catalog`` is not a Table or ``coord_column`` holds no SkyCoord.
    ValueError
        Missing, non-numeric or 2-D position columns; sky
        columns in a unit that is not an angle, or a declination outside
        [-90, 90] degrees (the message names the first bad row); a band
        without a 2-D celestial WCS.

    Examples
    --------
    >>> import astropy.units as u
    >>> from astropy.nddata import NDData
    >>> from astropy.table import QTable
    >>> from astropy.wcs import WCS
    >>> wcs = WCS(naxis=2)
    >>> wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    >>> wcs.wcs.crval = [150.0, 2.0]  # 10 h, 2 deg at FITS pixel (51, 41): 0-based (50, 40)
    >>> wcs.wcs.crpix = [51, 41]
    >>> wcs.wcs.cdelt = [-0.074 / 3600, 0.074 / 3600]
    >>> catalog = QTable({"ra": [10.0] * u.hourangle, "dec": [2.0] * u.deg})
    >>> x, y = pixel_positions(catalog, {"r": NDData([[0.0]], wcs=wcs)}, ra_column="ra",
    ...                        dec_column="dec", coord_column=None, x_column="x",
    ...                        y_column="y", shared_grid=False)
    >>> round(float(x["r"][0]), 6), round(float(y["r"][0]), 6)
    (50.0, 40.0)
    """
    check_catalog(catalog)
    has_xy = x_column in catalog.colnames and y_column in catalog.colnames
    names = None if shared_grid else _find_sky_columns(catalog, ra_column, dec_column)
    use_pixels = shared_grid or (len(images) == 1 and has_xy and names is None)
    if use_pixels:
        if not has_xy:
            msg = (f"shared_grid=True needs pixel columns x_column={x_column!r} and "
                   f"y_column={y_column!r}; available columns: {catalog.colnames}")
            raise ValueError(msg)
        xs = _column_values(catalog, x_column, angle=False)
        ys = _column_values(catalog, y_column, angle=False)
        return {b: xs for b in images}, {b: ys for b in images}
    found = _skycoord_column(catalog, coord_column)
    if found is None:
        if names is None:
            hint = ""
            if has_xy:
                hint = (f" The catalog has pixel columns {x_column!r}/{y_column!r}: pass "
                        "shared_grid=True if all bands share one pixel grid.")
            msg = (f"catalog has no sky positions: expected columns ra_column={ra_column!r} "
                   f"and dec_column={dec_column!r}, or a SkyCoord column (coord_column); "
                   f"available columns: {catalog.colnames}.{hint}")
            raise ValueError(msg)
        _log_alias(names, ra_column, dec_column)  # only where those columns are used
        found = _sky_positions(catalog, *names)
    coords, finite = found
    for band, image in images.items():
        _check_celestial_wcs(band, image.wcs)
    xs, ys = {}, {}
    for band, image in images.items():
        # Rows without a finite position keep NaN pixels: OFF_IMAGE downstream.
        xs[band] = np.full(len(finite), np.nan)
        ys[band] = np.full(len(finite), np.nan)
        if len(coords) == 0:
            continue
        px, py = image.wcs.world_to_pixel(coords)
        xs[band][finite] = np.asarray(px, dtype=float)
        ys[band][finite] = np.asarray(py, dtype=float)
    return xs, ys


# --------------------------------------------------------------------------
# zero points


def _find_zeropoint(image, band, zeropoints):
    value, source = None, None
    if zeropoints is not None and band in zeropoints:
        value, source = zeropoints[band], f"zeropoints[{band!r}]"
    else:
        meta = getattr(image, "meta", None) or {}
        keys = {str(key).upper(): key for key in meta.keys()}
        for keyword in ZEROPOINT_KEYWORDS:
            if keyword in keys:
                value = meta[keys[keyword]]
                source = f"header keyword {keyword} of band {band!r}"
                break
        else:
            if "FLUXMAG0" in keys:  # the flux of magnitude 0 (HSC / LSST calexps)
                raw = meta[keys["FLUXMAG0"]]
                value = _fluxmag0_zeropoint(raw)
                source = f"header keyword FLUXMAG0 = {raw!r} of band {band!r} (2.5 log10 of it)"
    if source is None:
        unit = getattr(image, "unit", None)
        value = unit_zeropoint(unit)
        if value is not None:
            source = f"the unit {unit} of band {band!r}"
    if source is None:
        msg = (f"no photometric zero point for band {band!r}: magnitude features need one. "
               f"Pass zeropoints={{{band!r}: value}} (the AB magnitude of a source of one image "
               f"unit in total), set the MAGZERO keyword in the image header "
               f"({', '.join(ZEROPOINT_KEYWORDS[1:])} are read too), or give an image "
               "calibrated in a flux density unit (e.g. nJy or nanomaggy)")
        raise ValueError(msg)
    return as_zeropoint(source, value, band)


def _fluxmag0_zeropoint(value):
    """``2.5 log10(FLUXMAG0)``; NaN (which `as_zeropoint` refuses) unless a positive number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)):
        return math.nan
    return 2.5 * math.log10(value) if math.isfinite(value) and value > 0 else math.nan


def unit_zeropoint(unit):
    """
    The AB zero point of an image calibrated in a flux density unit.

    ``-2.5 log10(1 unit / 3631 Jy)``: 31.4 for nJy, 23.9 for uJy, 22.5 for
    SDSS's nanomaggy. Astropy's ``zero_point_flux`` equivalency relates
    maggies to janskys.

    Parameters
    ----------
    unit : str, `~astropy.units.UnitBase` or None
        An image's unit.

    Returns
    -------
    zeropoint : float or None
        None for ``unit=None`` and for a unit that is not a linear spectral
        flux density (``adu``, ``electron/s``, ``mag(AB)``, a surface
        brightness such as ``MJy/sr``).

    Examples
    --------
    >>> from astro_starglx.inputs import unit_zeropoint
    >>> round(unit_zeropoint("nJy"), 3), round(unit_zeropoint("nanomaggy"), 3)
    (31.4, 22.5)
    >>> unit_zeropoint("electron/s") is None
    True
    """
    if unit is None:
        return None
    try:
        unit = u.Unit(unit)
        if isinstance(unit, u.FunctionUnitBase):  # mag(AB), dex: not a linear flux
            return None
        jansky = (1.0 * unit).to_value(u.Jy,
                                       equivalencies=u.zero_point_flux(_AB_FLUX_JY * u.Jy))
    except (u.UnitsError, ValueError, TypeError):
        return None
    if not (math.isfinite(jansky) and jansky > 0):
        return None
    return -2.5 * math.log10(jansky / _AB_FLUX_JY)


def _check_zeropoints(zeropoints, band):
    if zeropoints is not None:
        check_mapping("zeropoints", zeropoints, what="{band: AB zero point}",
                      hint=f"; pass for example zeropoints={{{band!r}: 25.0}}")


def get_zeropoint(image, band, zeropoints=None):
    """
    AB zero point of one band.

    The zero point is the AB magnitude of a source that gives one image unit
    in total: ``mag = zp - 2.5 log10(flux)``.

    Parameters
    ----------
    image : `~astropy.nddata.NDData`
        The band's image; its ``meta`` (``header`` for CCDData) is searched
        for the keywords of `~astro_starglx.csst_io.ZEROPOINT_KEYWORDS`, in order (``MAGZERO``,
        ``PHOTZP``, ``MAGZP``, ``MAGZPT``, ``ZP``), then for ``FLUXMAG0``
        (the flux of a magnitude-0 source, as in HSC and LSST calexps:
        ``zp = 2.5 log10(FLUXMAG0)``). Without those, an image whose
        ``unit`` is a flux density (``nJy``, ``uJy``, ``nanomaggy``) gives
        the zero point of that unit (`unit_zeropoint`).
    band : str
        Band name, the key looked up in ``zeropoints``.
    zeropoints : mapping, optional
        ``{band: zero point}``; takes precedence over the header and the
        unit.

    Returns
    -------
    zeropoint : float

    Raises
    ------
    TypeError
        If ``zeropoints`` is not a mapping.
    ValueError
        If no zero point is found, or it is not a real number of magnitudes
        within +-100 (NaN, a bool, a string, 1e30).
    """
    _check_zeropoints(zeropoints, band)
    return _find_zeropoint(image, band, zeropoints)


# --------------------------------------------------------------------------
# stamps, noise and features


def _band_positions(values, band, name):
    if isinstance(values, Mapping):
        if band not in values:
            msg = (f"{name} has no positions for band {band!r} (keys: {sorted(values)}); "
                   f"give {name}={{band: array}} for every band in images")
            raise ValueError(msg)
        return values[band]
    return values


def _validated_positions(x, y, present):
    """``{band: (x, y)}`` float64 for the present bands, and the number of sources."""
    positions = {band: as_positions(_band_positions(x, band, "x"),
                                    _band_positions(y, band, "y")) for band in present}
    if present:
        n = positions[present[0]][0].size
    else:
        candidates = list(x.values()) if isinstance(x, Mapping) else [x]
        if not candidates:
            msg = "x holds no positions: cannot tell how many sources there are"
            raise ValueError(msg)
        n = np.atleast_1d(np.asarray(candidates[0])).size
    for band in present:
        if positions[band][0].size != n:
            msg = (f"all bands must have positions for the same N sources: band "
                   f"{present[0]!r} has {n}, band {band!r} has {positions[band][0].size}")
            raise ValueError(msg)
    return positions, n


def _feature_columns(feature_names, psf, present):
    """Column indices into FEATURE_NAMES + PSF_FEATURE_NAMES; checks ``psf``."""
    known = FEATURE_NAMES + PSF_FEATURE_NAMES
    if feature_names is None:
        return list(range(len(FEATURE_NAMES)))
    if isinstance(feature_names, str) or not all(isinstance(f, str) for f in feature_names):
        msg = f"feature_names must be a sequence of feature names, got {feature_names!r}"
        raise TypeError(msg)
    unknown = [f for f in feature_names if f not in known]
    if unknown:
        msg = (f"feature_names holds {unknown}, which astro_starglx cannot measure; "
               f"known features: {list(known)}")
        raise ValueError(msg)
    columns = [known.index(f) for f in feature_names]
    if any(col >= len(FEATURE_NAMES) for col in columns):
        missing = [band for band in present if not isinstance(psf, Mapping) or band not in psf]
        if missing:
            msg = (f"feature_names asks for PSF features but psf has no estimate for bands "
                   f"{missing}; pass psf=astro_starglx.psf.resolve_psf(...)")
            raise ValueError(msg)
    return columns


def extract_inputs(images, x, y, *, bands, size, pixel_scale, zeropoints=None,
                   image_sigma=None, feature_names=None, psf=None, feature_scale=1.0):
    """
    Cut stamps and measure features of N sources in every band.

    This is the one input extraction shared by
    ``StarGalaxyClassifier.classify`` and the training-set builder.

    Parameters
    ----------
    images : mapping
        ``{band: NDData or CCDData}``. Bands of ``bands`` absent from it get
        NaN stamps and features and the ``BAND_MISSING`` flag; other keys are
        ignored.
    x, y : mapping or array_like
        ``{band: (N,) pixel positions}`` in each band's own pixel grid
        (0-based), or one (N,) array used for every band when all bands
        share one pixel grid.
    bands : sequence of str
        Band order of the output axis C (the model's ``meta["bands"]``).
    size : int
        Stamp side in pixels (at least 2).
    pixel_scale : float or `~astropy.units.Quantity`
        Arcsec per pixel of the model (``meta["pixel_scale"]``).
    zeropoints : mapping, optional
        ``{band: AB zero point}``; else read from the header (`get_zeropoint`).
    image_sigma : mapping, optional
        ``{band: per-pixel noise}`` for bands whose image has no uncertainty,
        so that a caller streaming batches computes
        `~astro_starglx.background.image_noise_or_nan` once; otherwise it is
        computed here, once per band and call. NaN (an image with too few
        usable pixels) means: measure each stamp's noise on its border.
    feature_names : sequence of str, optional
        The features to return, in order (the model's
        ``meta.feature_names``): names of
        `~astro_starglx.features.FEATURE_NAMES` and
        `~astro_starglx.features.PSF_FEATURE_NAMES`; default the former.
    psf : mapping, optional
        ``{band: PSFEstimate}`` (`astro_starglx.psf.resolve_psf`), needed for
        the PSF features of the bands present.
    feature_scale : float, optional
        The model's ``meta.feature_scale``: features are measured in
        apertures this many times wider, and the angular ones (``radius``,
        ``psf_fwhm``, ``radius_excess``) divided by it; that is, as on an
        image of ``pixel_scale / feature_scale`` arcsec per pixel.

    Returns
    -------
    inputs : `SourceInputs`
        ``stamps`` (N, C, size, size), ``noise`` (N, C), ``features`` (N, C,
        F), ``offsets`` (N, C, 2), all float32, and ``flags`` (N,) uint16:
        the cutout flags (``OFF_IMAGE``, also for a non-finite position,
        ``PARTIAL``, ``MASKED``, ``SATURATED``) OR-ed over bands,
        ``BAND_MISSING`` where a band is absent or its stamp has no data at
        all (a band with no usable pixels flags every source, with or
        without an uncertainty), ``NO_FEATURES`` where a band with data has
        no measurable magnitude (missing pixels in the aperture).

    Raises
    ------
    TypeError
        If ``images``, ``zeropoints`` or ``image_sigma`` is not a mapping,
        or an image is not an NDData, holds complex numbers or has an
        uncertainty of another kind.
    ValueError
        If ``bands`` is empty or repeats a band, positions are missing or of
        different lengths, a present band has no zero point or one that is
        not a real number within +-100 mag, an image's data (empty), mask or
        uncertainty is malformed, its ``SATURATE`` keyword is not a number,
        or ``size`` or ``pixel_scale`` is invalid.
    """
    check_mapping("images", images, what="{band: CCDData}",
                  hint="; for one band pass images={'r': image}")
    check_bands("bands", bands)
    if image_sigma is not None:
        check_mapping("image_sigma", image_sigma, what="{band: float}")
    size = check_size("size", size)
    feature_scale = check_real("feature_scale", feature_scale, low=0.0, low_open=True,
                               hint="; 1 measures the features as they are defined")
    # the scale the features are measured at (see feature_scale)
    scale = as_pixel_scale(pixel_scale) / feature_scale
    check_feature_stamps(size, size)
    present = [band for band in bands if band in images]
    data = {band: check_nddata(f"images[{band!r}]", images[band]) for band in present}
    positions, n = _validated_positions(x, y, present)
    if present:
        _check_zeropoints(zeropoints, present[0])
    zps = {band: _find_zeropoint(images[band], band, zeropoints) for band in present}
    saturation = {band: saturation_level(images[band], f"images[{band!r}]") for band in present}

    columns = _feature_columns(feature_names, psf, present)

    n_bands = len(bands)
    stamps = np.empty((n, n_bands, size, size), dtype=np.float32)
    noise = np.full((n, n_bands), np.nan, dtype=np.float32)
    features = np.full((n, n_bands, len(columns)), np.nan, dtype=np.float32)
    offsets = np.full((n, n_bands, 2), np.nan, dtype=np.float32)
    flags = np.zeros(n, dtype=np.uint16)
    for c, band in enumerate(bands):
        if band not in images:
            stamps[:, c] = np.nan
            flags |= np.uint16(ClassFlag.BAND_MISSING)
            continue
        image = images[band]
        xb, yb = positions[band]
        cut = cut_band(image, data[band], xb, yb, size=size, saturation=saturation[band])
        sigma = None
        if cut.sigma is None:
            if image_sigma is not None and band in image_sigma:
                sigma = float(image_sigma[band])
            else:
                sigma = image_noise_or_nan(image)
            # An image with too few usable pixels for a whole-image noise:
            # each stamp's own border gives it (a stamp without data is
            # flagged BAND_MISSING below), as with an uncertainty.
            sigma = np.full(n, sigma) if math.isfinite(sigma) else None
        background, band_noise = background_noise(cut.data, cut.sigma, sigma)
        # in place: cut.data is this call's own array (contiguous, unlike
        # stamps[:, c], which keeps the einsums in measure_band fast)
        band_stamps = np.subtract(cut.data, background[:, None, None], out=cut.data)
        stamps[:, c] = band_stamps
        x0, y0 = stamp_origin(xb, yb, size=size)
        band_offsets = np.column_stack([xb - x0, yb - y0])
        band_features = measure_band(band_stamps, band_noise.astype(np.float64),
                                     zeropoint=zps[band], offsets=band_offsets,
                                     pixel_scale=scale)
        no_data = ~np.isfinite(band_stamps).any(axis=(1, 2))
        flags |= cut.flags
        flags[no_data] |= np.uint16(ClassFlag.BAND_MISSING)
        # Missing pixels in the photometry aperture, not a mere non-detection:
        # radius/ellipticity of an undetected source are NaN by definition
        # and common for faint sources, so they do not raise the flag.
        partly = np.isnan(band_features[:, _MAG_INDEX]) & ~no_data
        flags[partly] |= np.uint16(ClassFlag.NO_FEATURES)
        noise[:, c] = band_noise
        if any(col >= len(FEATURE_NAMES) for col in columns):
            band_features = np.concatenate([band_features, psf_features(
                band_features, psf[band].at(xb, yb) / feature_scale, gamma=psf[band].gamma,
                pixel_scale=scale, size=size)], axis=1)
        features[:, c] = band_features[:, columns]
        offsets[:, c] = band_offsets
    return SourceInputs(stamps=stamps, noise=noise, features=features, offsets=offsets,
                        flags=flags)


def blend_flags(image, x, y, *, size, ratio=0.1):
    """
    ``BLENDED`` bits: another source of comparable flux inside the stamp.

    A source is blended when another catalog source lies within the stamp
    (``|dx|, |dy| <= size // 2`` pixels) and has at least ``ratio`` times its
    flux, estimated by a 5 x 5 pixel sum above the image median at the
    rounded positions (cheap, and enough to rank neighbours).

    Parameters
    ----------
    image : `~astropy.nddata.NDData`
        The reference band's image.
    x, y : `~numpy.ndarray`
        ``(N,)`` pixel positions in that image (NaN allowed: never blended).
    size : int
        Stamp side in pixels.
    ratio : float, optional
        Flux ratio above which a neighbour counts.

    Returns
    -------
    flags : `~numpy.ndarray`
        ``(N,)`` uint16, ``ClassFlag.BLENDED`` or 0.
    """
    from scipy.spatial import cKDTree

    data = np.asarray(image.data)
    n = len(x)
    flags = np.zeros(n, dtype=np.uint16)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or data.size == 0:
        return flags
    ny, nx = data.shape
    # Clipped as floats first (positions may be absurd but finite), then
    # each 5 x 5 index again so that images under 5 pixels work too.
    ix = np.clip(np.round(x[ok]), 2, nx - 3).astype(np.int64)
    iy = np.clip(np.round(y[ok]), 2, ny - 3).astype(np.int64)
    # Every k-th row and column counted from both edges: the same pixels in any
    # flip or 90-degree rotation of the image, so the flag does not depend on
    # how the pixel grid is oriented (found by the orientation fuzz property).
    # k = 4 up to 4096^2 pixels, then about 2^20 pixels before the union: on a
    # CSST chip (9232 x 9216) k = 4 took 21 million pixels and 0.3 s of the
    # flag's 0.4 s, for a level that only ranks neighbours.
    step = max(4, math.ceil(math.sqrt(data.size / 2**20)))
    rows = np.union1d(np.arange(0, ny, step), ny - 1 - np.arange(0, ny, step))
    cols = np.union1d(np.arange(0, nx, step), nx - 1 - np.arange(0, nx, step))
    sample = np.asarray(data[np.ix_(rows, cols)], dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    level = float(np.median(sample)) if sample.size else 0.0
    d = np.arange(-2, 3)
    rows_5x5 = np.clip(iy[:, None, None] + d[None, :, None], 0, ny - 1)
    cols_5x5 = np.clip(ix[:, None, None] + d[None, None, :], 0, nx - 1)
    # float64 and errstate: +-3e38 float32 pixels must not overflow (or warn).
    # The 25 values are summed in sorted order, so that the sum (and a ratio
    # at the cut) does not depend on the order in which the pixels are read,
    # which a flip or rotation of the image changes.
    with np.errstate(over="ignore", invalid="ignore"):
        pixels = np.asarray(data[rows_5x5, cols_5x5], dtype=np.float64).reshape(len(ix), -1)
        flux = np.sort(np.nan_to_num(pixels - level), axis=1).sum(axis=1)
    tree = cKDTree(np.column_stack([x[ok], y[ok]]))
    pairs = tree.query_pairs(r=size // 2, p=np.inf, output_type="ndarray")
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        fi, fj = np.maximum(flux[i], 0.0), np.maximum(flux[j], 0.0)
        blended = np.zeros(len(ix), dtype=bool)
        blended[i[fj >= ratio * fi]] = True
        blended[j[fi >= ratio * fj]] = True
        flags[np.flatnonzero(ok)[blended]] = np.uint16(ClassFlag.BLENDED)
    return flags


def match_band(name, bands):
    """
    The model band that a band name from a user's data stands for.

    Survey files name their filters in many ways: ``r``, ``R``, ``HSC-R2``,
    ``SDSS_r``, ``z-band``, DECam's ``"DECam r SDSS c0002 6415.0 1480.0"``.
    The first rule that gives exactly one band is used: the name itself; the
    name with case ignored; a word of the name (the runs of letters between
    other characters) with case ignored.

    Parameters
    ----------
    name : str
        An image mapping's key or a ``FILTER`` keyword's value.
    bands : sequence of str
        The model's bands.

    Returns
    -------
    band : str or None
        One of ``bands``, or `None` when no rule gives exactly one.

    Examples
    --------
    >>> match_band("HSC-I2", ("g", "r", "i"))
    'i'
    >>> match_band("DECam r SDSS c0002 6415.0 1480.0", ("g", "r", "i"))
    'r'
    """
    name = str(name).strip()
    if name in bands:
        return name
    for words in ([name], re.findall(r"[A-Za-z]+", name)):
        found = {band for band in bands for word in words if band.lower() == word.lower()}
        if len(found) == 1:
            return found.pop()
    return None


def match_band_keys(mapping, bands, name):
    """
    ``mapping`` with its keys renamed to the model's bands (`match_band`).

    Keys that are a band already keep it; another key takes the band it
    matches unless that band is a key too. Keys that match no band are kept
    as they are (callers report them).

    Raises
    ------
    ValueError
        If two keys match the same band, naming both.
    """
    bands = list(bands)
    out = {key: value for key, value in mapping.items() if key in bands}
    taken_by = {}
    for key, value in mapping.items():
        if key in bands or not isinstance(key, str):
            out.setdefault(key, value)
            continue
        band = match_band(key, bands)
        if band is None:
            out[key] = value
        elif band in out and band not in taken_by:
            log.info("%s: key %r is taken as band %r, which is given too: ignored", name,
                     key, band)
        elif band in taken_by:
            msg = (f"{name} has keys {taken_by[band]!r} and {key!r} that both name band "
                   f"{band!r}; keep one of them")
            raise ValueError(msg)
        else:
            log.info("%s: key %r taken as the model's band %r", name, key, band)
            out[band] = value
            taken_by[band] = key
    return out


def _filter_band(image, bands):
    """The model band named by the image's ``FILTER`` keyword (`match_band`), or None."""
    value = str((image.meta or {}).get("FILTER", "")).strip()
    return match_band(value, bands) if value else None


def _images_by_filter(images, bands, name):
    """A list of images as ``{band: image}``, each band named by its ``FILTER`` keyword."""
    mapped = {}
    for i, image in enumerate(images):
        band = _filter_band(image, bands)
        if band is None or band in mapped:
            value = (image.meta or {}).get("FILTER")
            why = (f"its FILTER keyword is {value!r}, which names none of the model's bands "
                   f"{bands}" if band is None else f"band {band!r} (FILTER) is given twice")
            msg = (f"{name} is a list, and {name}[{i}] cannot be mapped to a band: {why}; pass "
                   "a mapping {band: image} instead")
            raise ValueError(msg)
        mapped[band] = image
    return mapped


def model_images(images, bands, *, allow_missing, model="the model", name="images"):
    """
    The images of a model's bands, mapped by band name.

    Parameters
    ----------
    images : `~astropy.nddata.NDData` or mapping
        ``{band: CCDData}``, or one image: the model's only band, or the band
        named by its ``FILTER`` keyword; a list of images each of whose
        ``FILTER`` keyword names one of the model's bands (case aside) is
        mapped by it. A FITS file path or an
        `astropy.io.fits` HDU (or HDU list) stands for an image anywhere: it
        is read with `~astro_starglx.csst_io.read_image`.
    bands : sequence of str
        The model's bands, in order.
    allow_missing : bool
        Whether the model copes with absent bands (trained with band dropout).
    model : str, optional
        The model's name, for messages.
    name : str, optional
        The argument's name, for messages.

    Returns
    -------
    images : dict
        ``{band: NDData}`` of the model's bands that are present, in the
        model's order; other keys are ignored (logged).

    Raises
    ------
    TypeError
        If ``images`` is neither an NDData (or a path or HDU) nor a mapping
        of str to those.
    ValueError
        If no band of the model is present, a band is missing from a model
        that needs all, or a single image's band cannot be told; a FITS
        file or HDU without a 2-D image.
    FileNotFoundError
        If a path does not exist.
    """
    from astropy.nddata import NDData

    bands = list(bands)
    hint = ("wrap arrays as CCDData(data, unit='electron/s', wcs=WCS(header)), or give the "
            "FITS file's path")
    if is_readable(images):
        images = read_image(images)
    elif isinstance(images, Mapping):
        images = match_band_keys({band: read_image(image) if is_readable(image) else image
                                  for band, image in images.items()}, bands, name)
    elif isinstance(images, (list, tuple)) and images and all(
            isinstance(im, NDData) or is_readable(im) for im in images):
        images = _images_by_filter([read_image(im) if is_readable(im) else im
                                    for im in images], bands, name)
    if isinstance(images, NDData):
        band = bands[0] if len(bands) == 1 else _filter_band(images, bands)
        if band not in bands:
            msg = (f"{name} is a single image but the model reads bands {bands}; pass a "
                   "mapping {band: CCDData} (or set the image's FILTER keyword to one of "
                   "those bands)")
            raise ValueError(msg)
        images = {band: images}
    elif not isinstance(images, Mapping):
        msg = (f"{name} must be a CCDData/NDData or a mapping {{band: CCDData}}, got "
               f"{type(images).__name__}; {hint}")
        raise TypeError(msg)
    for band, image in images.items():
        if not isinstance(band, str):
            msg = (f"{name} keys must be band names (str), got {band!r} of type "
                   f"{type(band).__name__}; name the mapping's keys after the model's "
                   f"bands {bands}")
            raise TypeError(msg)
        if not isinstance(image, NDData):
            msg = (f"{name}[{band!r}] must be an astropy CCDData or NDData, got "
                   f"{type(image).__name__}; {hint}")
            raise TypeError(msg)
    present = [band for band in bands if band in images]
    missing = [band for band in bands if band not in images]
    unknown = sorted(set(images) - set(bands))
    if not present:
        msg = (f"{name} has bands {sorted(images)} but the model {model!r} reads {bands}; "
               "name the mapping's keys after the model's bands")
        raise ValueError(msg)
    if missing and not allow_missing:
        msg = (f"{name} is missing band(s) {missing} that model {model!r} needs (it reads "
               f"{bands}); add them to the mapping, or use (or fine-tune) a model that "
               "allows missing bands")
        raise ValueError(msg)
    if unknown:
        log.info("%s: ignoring bands the model does not read: %s", name, unknown)
    return {band: images[band] for band in present}
