"""
Vectorised square cutouts ("stamps") around many sources at once.

The pixels are exactly those of `astropy.nddata.Cutout2D` in
``mode="partial"``: the stamp of a source at ``(x, y)`` starts at pixel
``(ceil(x - size / 2), ceil(y - size / 2))`` (astropy's
`~astropy.nddata.utils.overlap_slices` rule; for an even ``size`` the half
pixel is rounded up), pixels outside the image are filled, and a stamp that
does not overlap the image at all is all fill.

Why this is hand-written: `~astropy.nddata.Cutout2D` and
`~astropy.nddata.utils.extract_array` cut one object per call. A Python loop
over ``Cutout2D`` costs about 60 microseconds per source (measured, 25 x 25
stamps), 0.6 s per 10,000 sources and band; the gather below cuts 10,000
stamps of 25 x 25 pixels from a 4096 x 4096 image in about 25 ms. The tests
check it pixel for pixel against ``Cutout2D``.
"""

import logging
import operator
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

from .flags import ClassFlag

__all__ = ["BandStamps", "cutout_origin", "extract_band", "extract_cutouts"]

log = logging.getLogger(__name__)

# Positions beyond this many pixels are off any image; clipping them keeps the
# integer conversion of absurd (but finite) positions such as 1e30 defined.
_MAX_POSITION = 2.0**40


@dataclass(frozen=True)
class BandStamps:
    """
    Stamps of one band cut around N sources.

    Attributes
    ----------
    data : `~numpy.ndarray`, shape (N, size, size), float32
        Pixel values in image units; NaN outside the image and where the
        image is masked or has no weight.
    sigma : `~numpy.ndarray`, shape (N, size, size), float32, or `None`
        Per-pixel standard deviation in image units (NaN where ``data`` is
        NaN), or `None` when the image has no ``uncertainty``.
    flags : `~numpy.ndarray`, shape (N,), uint16
        `~astro_starglx.flags.ClassFlag` bits: ``OFF_IMAGE``, ``PARTIAL`` and
        ``MASKED`` (the in-image part of the stamp holds masked, zero-weight
        or non-finite pixels).
    """

    data: np.ndarray
    sigma: np.ndarray | None
    flags: np.ndarray


def _validate_size(size):
    if isinstance(size, (bool, np.bool_)):
        size_int = None
    else:
        try:
            size_int = operator.index(size)
        except TypeError:
            size_int = None
    if size_int is None or size_int < 1:
        msg = (
            f"size must be a positive integer number of pixels (odd or even), got {size!r}; "
            "pass for example size=25"
        )
        raise ValueError(msg)
    return size_int


def _validate_positions(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim == 0:
        x = x.reshape(1)
    if y.ndim == 0:
        y = y.reshape(1)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        msg = (
            "x and y must be 1-D arrays of the same length (pixel positions of the "
            f"sources), got shapes {x.shape} and {y.shape}"
        )
        raise ValueError(msg)
    return x, y


def _origin(x, y, size):
    """Stamp origins for validated float64 positions; non-finite -> 0."""
    finite = np.isfinite(x) & np.isfinite(y)
    half = size / 2.0
    # overlap_slices: indices_min = int(np.ceil(pos - small_shape / 2.0))
    x0 = np.ceil(np.clip(np.where(finite, x, 0.0), -_MAX_POSITION, _MAX_POSITION) - half)
    y0 = np.ceil(np.clip(np.where(finite, y, 0.0), -_MAX_POSITION, _MAX_POSITION) - half)
    x0 = np.where(finite, x0, 0.0).astype(np.int64)
    y0 = np.where(finite, y0, 0.0).astype(np.int64)
    return x0, y0, finite


def cutout_origin(x, y, *, size):
    """
    Image pixel of each stamp's ``[0, 0]``.

    The rule is that of `~astropy.nddata.utils.overlap_slices` (and hence
    `~astropy.nddata.Cutout2D`): ``x0 = ceil(x - size / 2)``, and the same for
    ``y``. A source therefore sits at ``(x - x0, y - y0)`` inside its stamp,
    within half a pixel of the stamp centre ``((size - 1) / 2, (size - 1) /
    2)``.

    Parameters
    ----------
    x, y : array_like, shape (N,)
        Pixel positions, 0-based, integers at pixel centres.
    size : int
        Stamp side in pixels (odd or even).

    Returns
    -------
    x0, y0 : `~numpy.ndarray`, shape (N,), int64
        Column and row of each stamp's first pixel. A source with a
        non-finite x or y gets (0, 0) (its offsets stay NaN); positions
        beyond 2**40 pixels are clipped there first.

    Raises
    ------
    ValueError
        If ``size`` is not a positive integer or ``x`` and ``y`` are not 1-D
        arrays of one length.

    Examples
    --------
    >>> from astro_starglx.cutouts import cutout_origin
    >>> x0, y0 = cutout_origin([10.0, 10.5], [3.2, 3.7], size=5)
    >>> x0.tolist(), y0.tolist()
    ([8, 8], [1, 2])
    """
    size = _validate_size(size)
    x, y = _validate_positions(x, y)
    x0, y0, _ = _origin(x, y, size)
    return x0, y0


class _Plan:
    """Where each stamp lies relative to an image of a given shape."""

    def __init__(self, shape, x, y, size):
        ny, nx = shape
        self.shape = shape
        self.size = size
        self.x0, self.y0, finite = _origin(x, y, size)
        x0, y0 = self.x0, self.y0
        overlap = finite & (x0 < nx) & (x0 + size > 0) & (y0 < ny) & (y0 + size > 0)
        inside = overlap & (x0 >= 0) & (y0 >= 0) & (x0 + size <= nx) & (y0 + size <= ny)
        self.inside = np.flatnonzero(inside)
        self.partial = np.flatnonzero(overlap & ~inside)
        self.off = np.flatnonzero(~overlap)
        flags = np.zeros(x.shape, dtype=np.uint16)
        flags[self.partial] = ClassFlag.PARTIAL
        flags[self.off] = ClassFlag.OFF_IMAGE
        self.flags = flags
        # Row and column indices of the partly outside stamps: clipped into
        # the image for the gather, with a validity mask to fill afterwards.
        steps = np.arange(size)
        rows = y0[self.partial, None] + steps
        cols = x0[self.partial, None] + steps
        self.row_ok = (rows >= 0) & (rows < ny)
        self.col_ok = (cols >= 0) & (cols < nx)
        self.rows = np.clip(rows, 0, ny - 1)
        self.cols = np.clip(cols, 0, nx - 1)

    def in_image(self):
        """(N, size, size) bool: True where a stamp pixel lies on the image."""
        n = self.x0.size
        valid = np.zeros((n, self.size, self.size), dtype=bool)
        valid[self.inside] = True
        valid[self.partial] = self.row_ok[:, :, None] & self.col_ok[:, None, :]
        return valid

    def gather(self, array, fill_value, dtype):
        """Cut the stamps of ``array`` (same shape as the image)."""
        n, size = self.x0.size, self.size
        if n == 0:
            return np.empty((0, size, size), dtype=dtype)
        if self.inside.size == n:
            # Fast path (the common case): every stamp lies fully inside.
            windows = np.lib.stride_tricks.sliding_window_view(array, (size, size))
            return windows[self.y0, self.x0].astype(dtype, copy=False)
        out = np.empty((n, size, size), dtype=dtype)
        if self.inside.size:
            windows = np.lib.stride_tricks.sliding_window_view(array, (size, size))
            out[self.inside] = windows[self.y0[self.inside], self.x0[self.inside]]
        if self.partial.size:
            part = array[self.rows[:, :, None], self.cols[:, None, :]].astype(dtype)
            part[~(self.row_ok[:, :, None] & self.col_ok[:, None, :])] = fill_value
            out[self.partial] = part
        out[self.off] = fill_value
        return out


def _validate_data(data, name="data"):
    data = np.asanyarray(data)
    if isinstance(data, np.ma.MaskedArray):
        data = data.data
    if data.ndim != 2:
        msg = f"{name} must be a 2-D image array, got an array of shape {data.shape}"
        raise ValueError(msg)
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        msg = f"{name} must hold numbers, got dtype {data.dtype}"
        raise ValueError(msg)
    return data


def extract_cutouts(data, x, y, *, size, fill_value=np.nan):
    """
    Cut square stamps around many sources at once.

    Parameters
    ----------
    data : array_like, shape (ny, nx)
        The image, any real dtype and byte order (FITS big-endian ``'>f4'``
        is fine); it is neither copied nor converted as a whole. A
        `~numpy.ma.MaskedArray` is read through its ``data`` (use
        `extract_band` to honour a mask).
    x, y : array_like, shape (N,)
        Pixel positions, 0-based, integers at pixel centres.
    size : int
        Stamp side in pixels, odd or even.
    fill_value : float, optional
        Value of stamp pixels outside the image.

    Returns
    -------
    stamps : `~numpy.ndarray`, shape (N, size, size), float32
        ``stamps[i]`` equals ``Cutout2D(data, (x[i], y[i]), size,
        mode="partial", fill_value=fill_value).data`` (as float32); a stamp
        with no overlap, or a non-finite position, is all ``fill_value``.
    flags : `~numpy.ndarray`, shape (N,), uint16
        `~astro_starglx.flags.ClassFlag.OFF_IMAGE` where the stamp does not
        overlap the image (or the position is not finite),
        `~astro_starglx.flags.ClassFlag.PARTIAL` where it overlaps in part.

    Raises
    ------
    ValueError
        If ``size`` is not a positive integer, ``data`` is not a 2-D numeric
        array, or ``x`` and ``y`` are not 1-D arrays of one length.

    Examples
    --------
    >>> import numpy as np
    >>> from astro_starglx.cutouts import extract_cutouts
    >>> image = np.arange(20.0).reshape(4, 5)
    >>> stamps, flags = extract_cutouts(image, [2.0, 0.0], [1.0, 0.0], size=3)
    >>> stamps[0]
    array([[ 1.,  2.,  3.],
           [ 6.,  7.,  8.],
           [11., 12., 13.]], dtype=float32)
    >>> flags.tolist()
    [0, 2]
    """
    size = _validate_size(size)
    data = _validate_data(data)
    x, y = _validate_positions(x, y)
    plan = _Plan(data.shape, x, y, size)
    stamps = plan.gather(data, fill_value, np.float32)
    return stamps, plan.flags


def _uncertainty_to_sigma(image, stamps_unc, data_unit):
    """Convert gathered uncertainty stamps to standard deviations (float32)."""
    unc = image.uncertainty
    if isinstance(unc, StdDevUncertainty):
        power = 1
    elif isinstance(unc, VarianceUncertainty):
        power = 2
    elif isinstance(unc, InverseVariance):
        power = -2
    else:
        msg = (
            "image.uncertainty must be a StdDevUncertainty, VarianceUncertainty or "
            f"InverseVariance, got {type(unc).__name__}; wrap the array, for example "
            "CCDData(..., uncertainty=InverseVariance(weight_map))"
        )
        raise TypeError(msg)
    scale = 1.0
    unc_unit = unc.unit
    if unc_unit is not None and data_unit is not None:
        expected = data_unit**power
        try:
            scale = unc_unit.to(expected)
        except u.UnitConversionError as exc:
            msg = (
                f"image.uncertainty has unit {unc_unit}, which cannot be converted to "
                f"{expected} as a {type(unc).__name__} of data in {data_unit} must be"
            )
            raise ValueError(msg) from exc
    # In place: the gathered stamps are a fresh float32 array.
    sigma = stamps_unc
    if scale != 1.0:
        sigma *= np.float32(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        if power == 1:
            np.copyto(sigma, np.float32(np.nan), where=~(sigma >= 0))
        elif power == 2:
            np.sqrt(sigma, out=sigma)  # negative variance: NaN
        else:
            # Zero weight means no data: 1 / 0 = inf, made NaN below and
            # counted as masked; negative weight: NaN.
            np.sqrt(sigma, out=sigma)
            np.reciprocal(sigma, out=sigma)
    np.copyto(sigma, np.float32(np.nan), where=~np.isfinite(sigma))
    return sigma


def extract_band(image, x, y, *, size):
    """
    Cut data and uncertainty stamps of one `~astropy.nddata.NDData` band.

    Parameters
    ----------
    image : `~astropy.nddata.NDData` or `~astropy.nddata.CCDData`
        The band. ``mask`` True (or non-zero, for integer bit masks) marks bad
        pixels; ``uncertainty`` may be a `~astropy.nddata.StdDevUncertainty`,
        `~astropy.nddata.VarianceUncertainty` or
        `~astropy.nddata.InverseVariance` (CSST ``wht`` maps), converted to
        per-pixel standard deviations (with the uncertainty's unit converted
        to that of the data when both are set). The image is not modified.
    x, y : array_like, shape (N,)
        Pixel positions in this band's pixel grid, 0-based.
    size : int
        Stamp side in pixels, odd or even.

    Returns
    -------
    stamps : `BandStamps`
        ``data`` and ``sigma`` stamps (N, size, size) float32 and ``flags``
        (N,) uint16. Masked, zero-weight and non-finite pixels are NaN in
        both ``data`` and ``sigma`` and set ``MASKED``; pixels outside the
        image are NaN and set ``PARTIAL`` or ``OFF_IMAGE`` (not ``MASKED``).

    Raises
    ------
    TypeError
        If ``image`` is not an NDData or its uncertainty is of another kind.
    ValueError
        As `extract_cutouts`, or if the mask or uncertainty shape differs
        from the data shape.
    """
    if not hasattr(image, "data") or not hasattr(image, "uncertainty"):
        msg = (
            f"image must be an astropy NDData or CCDData, got {type(image).__name__}; "
            "wrap a bare array as CCDData(array, unit='adu')"
        )
        raise TypeError(msg)
    size = _validate_size(size)
    data = _validate_data(image.data, name="image.data")
    x, y = _validate_positions(x, y)
    plan = _Plan(data.shape, x, y, size)
    stamps = plan.gather(data, np.nan, np.float32)

    bad = ~np.isfinite(stamps)
    if image.mask is not None:
        mask = np.asanyarray(image.mask)
        if mask.shape != data.shape:
            msg = (
                f"image.mask must have the shape of image.data {data.shape}, got {mask.shape}"
            )
            raise ValueError(msg)
        if mask.dtype != bool:
            # Integer bit masks (CSST ``flg``): any set bit is bad.
            mask = mask != 0
        bad |= plan.gather(mask, False, bool)

    sigma = None
    if image.uncertainty is not None:
        unc_array = np.asanyarray(image.uncertainty.array)
        if unc_array.shape != data.shape:
            msg = (
                "image.uncertainty must have the shape of image.data "
                f"{data.shape}, got {unc_array.shape}"
            )
            raise ValueError(msg)
        data_unit = getattr(image, "unit", None)
        sigma = _uncertainty_to_sigma(image, plan.gather(unc_array, np.nan, np.float32),
                                      data_unit)
        bad |= np.isnan(sigma)

    # Outside-image pixels are NaN too, but they are PARTIAL, not MASKED.
    if plan.inside.size == x.size:
        bad_inside = bad
    else:
        bad_inside = bad & plan.in_image()
    masked = bad_inside.any(axis=(1, 2))
    flags = plan.flags.copy()
    flags[masked] |= np.uint16(ClassFlag.MASKED)
    np.copyto(stamps, np.float32(np.nan), where=bad)
    if sigma is not None:
        np.copyto(sigma, np.float32(np.nan), where=bad)
    return BandStamps(data=stamps, sigma=sigma, flags=flags)
