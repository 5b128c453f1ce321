"""
Shared private checkers for the public boundary (as photutils'
``utils/_parameters.py``).

Each checker returns the normalised value or raises `ValueError` with a
message that names the parameter, what was expected, what came and, where
there is one, the fix.
"""

import math
import operator
import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["check_real", "check_count", "check_bool", "check_choice", "check_range",
           "check_catalog", "check_mapping", "check_bands", "check_size",
           "as_positions", "as_image_array", "uncertainty_power", "check_nddata", "as_zeropoint",
           "as_stamps", "as_per_source", "as_pixel_scale", "check_feature_stamps"]


def _is_int(value):
    return (isinstance(value, (int, np.integer))
            and not isinstance(value, (bool, np.bool_)))


def check_real(name, value, *, low=None, high=None, low_open=False, high_open=False,
               hint=""):
    """
    A finite real scalar within optional bounds, as a float.

    ``low_open``/``high_open`` make a bound strict. ``hint`` is appended to
    the message (e.g. ``"; e.g. psf_beta=3.0"``).
    """
    try:
        ok = np.ndim(value) == 0 and not isinstance(value, str) and math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if ok:
        val = float(value)
        if low is not None and (val < low or (low_open and val == low)):
            ok = False
        if high is not None and (val > high or (high_open and val == high)):
            ok = False
    if not ok:
        bound = ""
        if low is not None:
            bound = f" {'>' if low_open else '>='} {low}"
        if high is not None:
            bound += f"{' and' if bound else ''} {'<' if high_open else '<='} {high}"
        msg = f"{name} must be a finite number{bound}, got {value!r}{hint}"
        raise ValueError(msg)
    return float(value)


def check_count(name, value, *, allow_none=False, low=0, hint=""):
    """A Python or numpy integer >= ``low`` (or None if allowed), as an int."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < low:
        expected = f"{'None or ' if allow_none else ''}an integer >= {low}"
        msg = f"{name} must be {expected}, got {value!r}{hint}"
        raise ValueError(msg)
    return int(value)


def check_bool(name, value):
    """True or False (Python or numpy), as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        msg = f"{name} must be True or False, got {value!r}"
        raise ValueError(msg)
    return bool(value)


def check_choice(name, value, choices):
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        msg = f"{name} must be one of {tuple(choices)}, got {value!r}"
        raise ValueError(msg)
    return value


def check_range(name, value, *, low=None, high=None, strict=False, hint=""):
    """
    A ``(lo, hi)`` pair of finite numbers with ``lo <= hi`` (``lo < hi`` if
    ``strict``), both within optional bounds, as a tuple of floats.
    """
    try:
        lo, hi = (float(v) for v in value)
        ok = (not isinstance(value, str) and math.isfinite(lo) and math.isfinite(hi)
              and (lo < hi if strict else lo <= hi)
              and (low is None or lo >= low) and (high is None or hi <= high))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        order = "lo < hi" if strict else "lo <= hi"
        bound = ""
        if low is not None or high is not None:
            bound = f" within [{low if low is not None else '-inf'}, " \
                    f"{high if high is not None else 'inf'}]"
        msg = (f"{name} must be a (lo, hi) pair of finite numbers with {order}{bound}, "
               f"got {value!r}{hint}")
        raise ValueError(msg)
    return lo, hi


# --------------------------------------------------------------------------
# catalogs, images, stamps and positions (inputs, cutouts, background,
# features, classifier). astropy is imported inside the functions that need
# it: numpy-only modules may import this one.


def check_catalog(catalog):
    """An astropy Table (TypeError otherwise, with the way to make one from what was given)."""
    from astropy.table import Table

    if not isinstance(catalog, Table):
        if hasattr(catalog, "to_numpy"):
            hint = "use Table.from_pandas(df)"
        elif isinstance(catalog, (str, os.PathLike)):
            hint = "read the file first: Table.read(path)"
        elif isinstance(catalog, Mapping) or getattr(getattr(catalog, "dtype", None), "names",
                                                     None):
            hint = "wrap it: Table(catalog)"
        else:
            hint = "build one with Table({'ra': ..., 'dec': ...}) or read one with Table.read"
        msg = f"catalog must be an astropy Table, got {type(catalog).__name__} ({hint})"
        raise TypeError(msg)
    return catalog


def check_mapping(name, value, *, what, hint=""):
    """A mapping (TypeError otherwise: ``{name} must be a mapping {what}, got ...``)."""
    if not isinstance(value, Mapping):
        msg = f"{name} must be a mapping {what}, got {type(value).__name__}{hint}"
        raise TypeError(msg)
    return value


def check_bands(name, bands):
    """A non-empty sequence of band names that repeats none; returned as given."""
    if isinstance(bands, str) or not isinstance(bands, Sequence) or len(bands) == 0:
        msg = f"{name} must be a non-empty sequence of band names, got {bands!r}"
        raise ValueError(msg)
    if len(set(bands)) != len(bands):
        msg = f"{name} must not repeat a band, got {list(bands)!r}"
        raise ValueError(msg)
    return bands


def check_size(name, size):
    """A positive integer number of pixels (Python or numpy int, not bool), as an int."""
    if not _is_int(size) or size < 1:
        msg = (f"{name} must be a positive integer number of pixels (odd or even), got "
               f"{size!r}; pass for example {name}=25")
        raise ValueError(msg)
    return operator.index(size)


def as_positions(x, y):
    """Pixel positions as two 1-D float64 arrays of one length (scalars: length 1)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 0:
        x = x.reshape(1)
    if y.ndim == 0:
        y = y.reshape(1)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        msg = ("x and y must be 1-D arrays of the same length (pixel positions of the "
               f"sources), got shapes {x.shape} and {y.shape}")
        raise ValueError(msg)
    return x, y


def as_image_array(name, data):
    """
    A 2-D real (or bool) array with at least one pixel, not copied; a masked
    array gives its ``data``.
    """
    data = np.asanyarray(data)
    if isinstance(data, np.ma.MaskedArray):
        data = data.data
    if data.ndim != 2:
        msg = f"{name} must be a 2-D image array, got an array of shape {data.shape}"
        raise ValueError(msg)
    if np.issubdtype(data.dtype, np.complexfloating):
        # numpy would drop the imaginary part silently (with a ComplexWarning)
        msg = (f"{name} must hold real numbers, got complex dtype {data.dtype}; pass the "
               "real part (data.real) or the modulus (np.abs(data)), whichever is the image")
        raise TypeError(msg)
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        msg = f"{name} must hold numbers, got dtype {data.dtype}"
        raise ValueError(msg)
    if 0 in data.shape:
        msg = (f"{name} must have at least one row and one column of pixels, got shape "
               f"{data.shape}; drop empty bands from the mapping")
        raise ValueError(msg)
    return data


#: Zero points beyond this many AB magnitudes are refused: flux densities in
#: erg s-1 cm-2 Hz-1 give -48.6, counts and e-/s 20-35; 1e30 is a mistake.
ZEROPOINT_LIMIT = 100.0


def as_zeropoint(source, value, band):
    """
    A zero point (a real number of AB magnitudes, within +-`ZEROPOINT_LIMIT`) as a float.

    ``source`` says where it came from (``"zeropoints['r']"``, ``"header keyword
    MAGZERO of band 'r'"``) and ``band`` is used in the fix. A dimensionless
    or magnitude `~astropy.units.Quantity` gives its value; bools, strings,
    complex and non-finite values are refused.
    """
    number = getattr(value, "value", value)
    unit = getattr(value, "unit", None)
    ok = (np.ndim(number) == 0 and not isinstance(number, (bool, np.bool_, str, bytes))
          and isinstance(number, (int, float, np.integer, np.floating)))
    if ok and unit is not None:
        ok = unit.physical_type in ("dimensionless", "unknown") or "mag" in str(unit)
    if ok:
        ok = math.isfinite(float(number)) and abs(float(number)) <= ZEROPOINT_LIMIT
    if not ok:
        msg = (f"the zero point from {source} must be a finite real number of AB magnitudes "
               f"within +-{ZEROPOINT_LIMIT:g} (the magnitude of a source of one image unit "
               f"in total; typically 20-35 for counts or e-/s), got {value!r} of type "
               f"{type(value).__name__}; pass for example zeropoints={{{band!r}: 25.0}}")
        raise ValueError(msg)
    return float(number)


def uncertainty_power(uncertainty):
    """Power of sigma an uncertainty holds: 1 StdDev, 2 Variance, -2 InverseVariance, else None."""
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    for kind, power in ((StdDevUncertainty, 1), (VarianceUncertainty, 2), (InverseVariance, -2)):
        if isinstance(uncertainty, kind):
            return power
    return None


def uncertainty_scale(image):
    """
    ``(power, scale)`` of an NDData's uncertainty: the power of sigma it holds
    (`uncertainty_power`) and the factor that converts its values to the
    data's unit to that power (1.0 when either has no unit). Raises astropy's
    ``UnitConversionError`` for units that do not convert (`check_nddata`
    turns that into a message naming the image).
    """
    unc = image.uncertainty
    power = uncertainty_power(unc)
    data_unit = getattr(image, "unit", None)
    if power is None or unc.unit is None or data_unit is None:
        return power, 1.0
    return power, unc.unit.to(data_unit**power)


def check_nddata(name, image):
    """
    An NDData band that `astro_starglx.cutouts.extract_band` can cut: returns its data.

    Checks that ``image`` has ``data`` and ``uncertainty`` (TypeError), that
    the data are a 2-D numeric array, that ``mask`` and ``uncertainty`` have
    its shape, and that the uncertainty is a StdDev, Variance or
    InverseVariance (TypeError) whose unit converts to the data's.
    """
    from astropy import units as u

    if not hasattr(image, "data") or not hasattr(image, "uncertainty"):
        msg = (f"{name} must be an astropy NDData or CCDData, got {type(image).__name__}; "
               "wrap a bare array as CCDData(array, unit='adu')")
        raise TypeError(msg)
    data = as_image_array(f"{name}.data", image.data)
    if data.dtype == bool:
        msg = (f"{name}.data must hold pixel values, got a boolean array; a boolean array is "
               "a mask (pass it as mask=, True = bad), an image of counts needs "
               "data.astype(np.float32)")
        raise TypeError(msg)
    if image.mask is not None and np.shape(image.mask) != data.shape:
        msg = (f"{name}.mask must have the shape of {name}.data {data.shape}, got "
               f"{np.shape(image.mask)}; give a boolean array of that shape (True = bad "
               "pixel; an integer bit mask: non-zero = bad), or mask=None")
        raise ValueError(msg)
    if image.mask is not None:
        mask_dtype = np.asanyarray(image.mask).dtype
        if not (mask_dtype == bool or np.issubdtype(mask_dtype, np.number)):
            msg = (f"{name}.mask must be a boolean or integer (bit) mask, got dtype "
                   f"{mask_dtype}; for example mask=(flags != 0)")
            raise TypeError(msg)
    unc = image.uncertainty
    if unc is None:
        return data
    if np.shape(unc.array) != data.shape:
        msg = (f"{name}.uncertainty must have the shape of {name}.data {data.shape}, got "
               f"{np.shape(unc.array)}")
        raise ValueError(msg)
    unc_dtype = np.asanyarray(unc.array).dtype
    if not (np.issubdtype(unc_dtype, np.number) or unc_dtype == bool) \
            or np.issubdtype(unc_dtype, np.complexfloating):
        msg = (f"{name}.uncertainty must hold real numbers, got dtype {unc_dtype}; "
               "give the standard deviation, variance or inverse variance as a real array")
        raise TypeError(msg)
    power = uncertainty_power(unc)
    if power is None:
        msg = (f"{name}.uncertainty must be a StdDevUncertainty, VarianceUncertainty or "
               f"InverseVariance, got {type(unc).__name__}; wrap the array, for example "
               "CCDData(..., uncertainty=InverseVariance(weight_map))")
        raise TypeError(msg)
    try:
        uncertainty_scale(image)
    except u.UnitConversionError as exc:
        msg = (f"{name}.uncertainty has unit {unc.unit}, which cannot be converted to "
               f"{image.unit**power} as a {type(unc).__name__} of data in {image.unit} must be")
        raise ValueError(msg) from exc
    return data


def as_stamps(name, stamps):
    """(N, H, W) numeric stamps as float32 (not copied if already float32)."""
    stamps = np.asarray(stamps)
    if stamps.ndim != 3:
        msg = f"{name} must have shape (N, H, W), got shape {stamps.shape}"
        raise ValueError(msg)
    if not np.issubdtype(stamps.dtype, np.number):
        msg = f"{name} must hold numbers, got dtype {stamps.dtype}"
        raise ValueError(msg)
    return stamps.astype(np.float32, copy=False)


def as_per_source(name, value, n):
    """A scalar or (n,) array as a new (n,) float64 array (callers may write to it)."""
    arr = np.array(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        msg = f"{name} must be a scalar or have shape ({n},), got shape {arr.shape}"
        raise ValueError(msg)
    return arr


def as_pixel_scale(pixel_scale):
    """Pixel scale in arcsec per pixel, from a positive float or an angle Quantity."""
    from astropy import units as u

    if isinstance(pixel_scale, u.Quantity):
        try:
            value = pixel_scale.to_value(u.arcsec / u.pix, equivalencies=u.dimensionless_angles())
        except u.UnitConversionError:
            try:
                value = pixel_scale.to_value(u.arcsec)
            except u.UnitConversionError:
                value = None
    else:
        try:
            value = float(pixel_scale)
        except (TypeError, ValueError):
            value = None
    if value is None or not np.isfinite(value) or value <= 0:
        msg = (f"pixel_scale must be a positive number of arcsec per pixel, got "
               f"{pixel_scale!r}; pass the model's meta['pixel_scale'], for example "
               "pixel_scale=0.074")
        raise ValueError(msg)
    return float(value)


def check_feature_stamps(height, width):
    """Stamps of at least 2 x 2 pixels: the smallest on which features are measured."""
    if min(height, width) < 2:
        msg = (f"stamps must be at least 2 x 2 pixels to measure features, got "
               f"{height} x {width}")
        raise ValueError(msg)


def config_record(config):
    """A frozen settings dataclass as a JSON-friendly dict (`~dataclasses.asdict`,
    tuples as lists)."""
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def resolve_config(cls, config, overrides, *, what, example=""):
    """
    ``config`` (an instance of the frozen dataclass ``cls``, or None for the
    defaults) with ``overrides`` replaced; unknown names raise a TypeError
    listing the valid ones.
    """
    from dataclasses import fields, replace

    names = [f.name for f in fields(cls)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        msg = f"unknown {what} settings {unknown}; {cls.__name__} has {names}"
        raise TypeError(msg)
    if config is None:
        return cls(**overrides)
    if not isinstance(config, cls):
        msg = f"config must be a {cls.__name__} or None, got {type(config).__name__}{example}"
        raise TypeError(msg)
    return replace(config, **overrides) if overrides else config
