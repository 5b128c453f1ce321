"""
The PSF of each band: given, read from the header, or measured.

The classifier needs the FWHM of each band's point-spread function. For each
band it is taken, in this order, from

1. an explicit ``psf=`` argument (`psf_from_argument`): a FWHM in arcsec, an
   angular or pixel `~astropy.units.Quantity`, a 2-D PSF image or an image
   PSF model such as `photutils.psf.ImagePSF`;
2. the image header (`psf_from_header`): the keywords of
   `PSF_HEADER_KEYWORDS`, checked against the field's own stars: a header
   value more than `HEADER_TOLERANCE` (20 %) off the measured FWHM is
   reported and not used (a seeing monitor's value, or a FWHM in other
   units than assumed);
3. the field's own point sources (`measure_psf`): the stellar locus of the
   bright, isolated catalog sources and a joint fit of their profiles;
4. the model's nominal PSF when fewer than ``min_stars`` usable stars are
   found, flagged with ``fell_back=True``.

`resolve_psf` applies that order to every band of a call and returns one
`PSFEstimate` per band.

Every FWHM here is that of the *effective* PSF, the optical PSF convolved
with the pixel: what stars on the image show, what PSF models such as
PSFEx or `photutils.psf.ImagePSF` hold, and what the simulator's
``PSFFWHM`` keyword states ("with pixel").
"""

import logging
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np

from ._validation import check_bool, check_count, check_real

__all__ = [
    "HEADER_TOLERANCE",
    "PSF_HEADER_KEYWORDS",
    "PSF_SOURCES",
    "PSFEstimate",
    "measure_psf",
    "profile_stamps",
    "psf_from_argument",
    "header_disagreement",
    "psf_from_header",
    "resolve_psf",
]

log = logging.getLogger(__name__)

#: Where a `PSFEstimate` came from, in the order `resolve_psf` tries them.
PSF_SOURCES = ("argument", "header", "measured", "nominal")

#: Header keywords read by `psf_from_header`, in priority order, with the unit
#: assumed when the card's comment does not start with a unit in square
#: brackets (FITS standard 4.0, sec. 4.3.2): ``PSFFWHM`` (this package's
#: simulator), ``PSF_FWHM`` (ESO Phase 3 products), ``SEEING`` (common
#: observatory usage), ``FWHM`` (pixels, as in the NOIRLab DECam/Mosaic
#: Community Pipeline headers read by the Legacy Surveys).
PSF_HEADER_KEYWORDS = (
    ("PSFFWHM", "arcsec"),
    ("PSF_FWHM", "arcsec"),
    ("SEEING", "arcsec"),
    ("FWHM", "pixel"),
)

#: A header FWHM more than this fraction away from the one measured on the
#: field's own stars is not used (`resolve_psf`). The measurement's median
#: error is 1-2 % (docs/psf.rst), while header values are often the
#: atmospheric seeing (a guider's or a seeing monitor's, narrower than the
#: delivered PSF) or in other units than assumed (FWHM in arcsec, not
#: pixels); the models were trained on measured PSFs.
HEADER_TOLERANCE = 0.2

_SIGMA_TO_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
_PIXEL_UNITS = ("pix", "pixel", "pixels", "px")
_ARCSEC_UNITS = ("arcsec", "arcsecond", "arcseconds", '"', "asec")
# Profile fit region, in units of the Gaussian-fit FWHM. On simulated r and y
# fields (Airy x jitter, Gaussian, Moffat 2.5 and 5, at 0.7-1.8x nominal
# width) the largest |error| per family was: 1.0 -> 1.0/1.7/1.8/1.4 %,
# 1.25 -> 1.6/1.4/0.5/0.8 %, 1.5 -> 2.2/1.5/0.8/0.6 %, 2.0 -> 2.6/1.5/1.0/
# 0.6 % (Airy cores prefer small regions, Moffat wings larger ones).
_FIT_RADIUS = 1.25
# Fractional error floor of each star's pixels (relative to its peak): PSF
# mismatch and source noise, so that the brightest stars do not dominate.
_ERROR_FLOOR = 0.03
# Bounds of the profile shape gamma in the joint fit (`_profile`): Moffat
# beta >= 1.1 through a Gaussian (0) to an Airy-like core (-0.5).
_GAMMA_RANGE = (-0.5, 0.9)


@dataclass(frozen=True)
class PSFEstimate:
    """
    The PSF used for one band, and where it came from.

    Attributes
    ----------
    fwhm : float
        FWHM of the effective (pixel-convolved) PSF, arcsec; with a spatial
        model, its value at the image centre.
    source : {"argument", "header", "measured", "nominal"}
        Where the value came from (`PSF_SOURCES`).
    n_stars : int
        Number of stars the measurement used (0 unless measured).
    plane : tuple of float or None
        ``(a, b, c)``, arcsec: the FWHM varies as ``a + b * u + c * v`` with
        ``u, v`` the pixel coordinates scaled to [-1, 1] across the image
        (``u = 2 x / (nx - 1) - 1``); `None` for a constant PSF.
    shape : tuple of int or None
        ``(ny, nx)`` of the image the plane refers to.
    fell_back : bool
        `True` when the measurement found too few stars and the nominal PSF
        was used instead.
    band : str or None
        Band name.
    scatter : float or None
        Robust standard deviation of the stars' FWHMs about the model,
        arcsec (measured estimates only).
    detail : str
        Provenance in words: the header keyword, the argument's type, or the
        measurement's summary.
    header_fwhm : float or None
        The FWHM a header keyword stated, arcsec, when it disagreed with
        the field's own stars by more than `HEADER_TOLERANCE` and the
        measurement was used instead (`resolve_psf`); else `None`.
    gamma : float or None
        Shape of the PSF's radial profile, from the joint profile fit to the
        field's stars (or to a PSF image given as the argument): the profile
        is ``(1 + (2**gamma - 1) * 4 r**2 / fwhm**2) ** (-1 / gamma)``, a
        Moffat profile of index ``beta = 1 / gamma`` for ``gamma > 0``
        (wings), a Gaussian at 0, a core of lighter shoulders than a
        Gaussian (Airy-like) below 0; fitted in [-0.5, 0.9]. A header's
        FWHM that agrees with the stars keeps the stars' shape. `None`
        where no profile was fitted (a FWHM given as a number, a header not
        checked against stars, the nominal fallback).
    """

    fwhm: float
    source: str
    n_stars: int = 0
    plane: tuple | None = None
    shape: tuple | None = None
    fell_back: bool = False
    band: str | None = None
    scatter: float | None = None
    detail: str = ""
    header_fwhm: float | None = None
    gamma: float | None = None

    def __post_init__(self):
        check_real("fwhm", self.fwhm, low=0.0, low_open=True, hint="; give it in arcsec")
        if self.gamma is not None:
            check_real("gamma", self.gamma, low=_GAMMA_RANGE[0], high=_GAMMA_RANGE[1],
                       hint="; the profile shape of _profile (Moffat beta = 1 / gamma), "
                            "or None")
        if self.header_fwhm is not None:
            check_real("header_fwhm", self.header_fwhm, low=0.0, low_open=True,
                       hint="; give it in arcsec, or None")
        if self.source not in PSF_SOURCES:
            msg = f"source must be one of {PSF_SOURCES}, got {self.source!r}"
            raise ValueError(msg)
        if self.plane is not None and (self.shape is None or len(self.plane) != 3):
            msg = ("plane must be (a, b, c) and needs the image shape; got "
                   f"plane={self.plane!r}, shape={self.shape!r}")
            raise ValueError(msg)

    def at(self, x, y):
        """
        The FWHM at pixel positions.

        Parameters
        ----------
        x, y : float or array-like
            0-based pixel positions in this band (broadcast together).
            Positions off the image take the value at the nearest edge.

        Returns
        -------
        fwhm : float or `~numpy.ndarray`
            FWHM, arcsec, of the shape of ``x`` and ``y`` broadcast.
        """
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        if self.plane is None:
            out = np.full(x.shape, float(self.fwhm))
        else:
            a, b, c = self.plane
            ny, nx = self.shape
            u = np.clip(2.0 * x / max(nx - 1, 1) - 1.0, -1.0, 1.0)
            v = np.clip(2.0 * y / max(ny - 1, 1) - 1.0, -1.0, 1.0)
            out = a + b * u + c * v
        return out if out.ndim else float(out)

    def to_dict(self):
        """
        The estimate as a JSON-serialisable dict (for a table's ``meta``).

        Returns
        -------
        record : dict
            The attributes, with tuples as lists and numbers as Python types.
        """
        record = asdict(self)
        for key in ("plane", "shape"):
            if record[key] is not None:
                record[key] = [v.item() if hasattr(v, "item") else v for v in record[key]]
        for key in ("fwhm", "scatter", "header_fwhm", "gamma"):
            if record[key] is not None:
                record[key] = float(record[key])
        record["n_stars"] = int(record["n_stars"])
        record["fell_back"] = bool(record["fell_back"])
        return record


# ----------------------------------------------------------------------------------
# validation helpers


def _name(band):
    return "psf" if band is None else f"psf[{band!r}]"


def _positive(name, value, *, hint):
    return check_real(name, value, low=0.0, low_open=True, hint=hint)


# ----------------------------------------------------------------------------------
# fitting cores (trust their input)


def _stamp_offsets(half):
    d = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    return dy.ravel(), dx.ravel()


def _stamps(shape, ix, iy, dy, dx):
    """
    ``take(array, fill)``: the (N, P) pixels at (iy + dy, ix + dx) of an
    array of ``shape``, ``fill`` off the image. The flat indices are computed
    once for the data, mask and noise arrays (random access into a large
    image is the measurement's main cost).
    """
    ny, nx = shape
    xx = ix[:, None] + dx
    yy = iy[:, None] + dy
    inside = (xx >= 0) & (xx < nx) & (yy >= 0) & (yy < ny)
    flat = np.where(inside, yy * nx + xx, 0)
    everywhere = bool(inside.all())

    def take(array, fill):
        values = np.ravel(array).take(flat)
        return values if everywhere else np.where(inside, values, fill)

    return take


def _fit_gaussians(v, ddx, ddy, w, s0, n_iter=12):
    """
    Vectorised Levenberg-Marquardt fit of sampled circular Gaussians.

    ``v`` (N, P) background-subtracted values at offsets ``ddx``, ``ddy``
    from each source's position, ``w`` (N, P) weights (0 = unused). Returns
    (N, 4) parameters ``(x0, y0, amplitude, sigma)`` (offsets and sigma in
    pixels) and the (N,) weighted residual sums. The model is sampled at
    pixel centres, not integrated, so that ``sigma`` describes the effective
    (pixel-convolved) PSF that the pixels sample.
    """
    n = v.shape[0]
    p = np.zeros((n, 4))
    p[:, 2] = np.maximum(np.max(np.where(w > 0, v, -np.inf), axis=1), 1e-30)
    p[:, 3] = s0
    lam = np.full(n, 1e-2)

    def profile(q):
        r2 = (ddx - q[:, :1]) ** 2 + (ddy - q[:, 1:2]) ** 2
        return np.exp(-0.5 * r2 / q[:, 3:4] ** 2), r2

    e, r2 = profile(p)
    chi2 = np.sum(w * (v - p[:, 2:3] * e) ** 2, axis=1)
    eye = np.eye(4)
    for _ in range(n_iter):
        m = p[:, 2:3] * e
        s2 = p[:, 3:4] ** 2
        jac = np.stack([m * (ddx - p[:, :1]) / s2, m * (ddy - p[:, 1:2]) / s2, e,
                        m * r2 / (s2 * p[:, 3:4])], axis=2)
        jwt = (jac * w[:, :, None]).transpose(0, 2, 1)
        hess = jwt @ jac
        grad = (jwt @ (v - m)[:, :, None])[:, :, 0]
        diag = np.diagonal(hess, axis1=1, axis2=2)[:, :, None] + 1e-12
        damped = hess + lam[:, None, None] * eye * diag
        step = np.linalg.solve(damped, grad[:, :, None])[:, :, 0]
        trial = p + step
        trial[:, :2] = np.clip(trial[:, :2], -2.0, 2.0)
        trial[:, 3] = np.clip(trial[:, 3], 0.15, 30.0)
        e_new, r2_new = profile(trial)
        chi2_new = np.sum(w * (v - trial[:, 2:3] * e_new) ** 2, axis=1)
        better = chi2_new <= chi2
        p[better], chi2[better] = trial[better], chi2_new[better]
        e = np.where(better[:, None], e_new, e)
        r2 = np.where(better[:, None], r2_new, r2)
        lam = np.where(better, lam * 0.3, lam * 10.0)
    return p, chi2


def _profile(r2, fwhm, gamma):
    """
    Unit-peak circular q-Gaussian, ``(1 + c x) ** (-1 / gamma)`` with
    ``x = 4 r2 / fwhm**2`` and ``c = 2**gamma - 1`` (half maximum at x = 1):
    a Moffat profile of index beta = 1/gamma for gamma > 0, a Gaussian at
    gamma = 0, and a profile of compact support, with lighter shoulders
    than a Gaussian (like an Airy core), for gamma < 0.
    """
    x = 4.0 * r2 / fwhm**2
    if abs(gamma) < 1e-6:
        return np.exp(-math.log(2.0) * x)
    c = math.expm1(gamma * math.log(2.0))
    return np.exp(-np.log1p(np.maximum(c * x, -1.0 + 1e-15)) / gamma)


def profile_stamps(fwhm, gamma, *, size):
    """
    Centred point sources of the fitted profile shape, sampled on pixels.

    The profile of `PSFEstimate` (``fwhm``, ``gamma``) as the joint fit of
    `measure_psf` describes stars: values at pixel centres of the effective
    (pixel-convolved) PSF, unit peak, centred at ``((size - 1) / 2,
    (size - 1) / 2)``.

    Parameters
    ----------
    fwhm : array-like
        FWHM in pixels, shape (K,).
    gamma : float
        Profile shape (see `PSFEstimate.gamma`); 0 is a Gaussian.
    size : int
        Stamp side in pixels.

    Returns
    -------
    stamps : `~numpy.ndarray`
        (K, size, size) float64.
    """
    fwhm = np.atleast_1d(np.asarray(fwhm, dtype=float))
    gamma = check_real("gamma", gamma, low=_GAMMA_RANGE[0], high=_GAMMA_RANGE[1])
    size = check_count("size", size, low=1)
    d = np.arange(size) - (size - 1) / 2.0
    r2 = d[:, None] ** 2 + d[None, :] ** 2
    return np.stack([_profile(r2, f, gamma) for f in fwhm])


def _fit_profile(v, r2, w, star, fwhm0):
    """
    Joint fit of one circular profile (`_profile`) to many stars' pixels.

    ``v``, ``r2`` and ``w`` are the values, squared distances (pixels) from
    the star's centre and weights of the fitted pixels, ``star`` the index
    of each pixel's star. The shape (FWHM, and gamma in [-0.5, 0.9]: from
    Moffat beta = 1.1 through a Gaussian to an Airy-like core) is shared;
    each star's amplitude is solved linearly inside the residual function
    (variable projection). Returns the FWHM (units of ``sqrt(r2)``), gamma.

    Why not Gaussians: on simulated 1024 x 1024 r-band fields (Airy, Moffat
    2.5 and 5, Gaussian; 0.7-1.8x nominal) the median of per-star Gaussian
    fits is off by -2 to +14 % (Moffat wings), and `photutils.psf.fit_fwhm`
    (a pixel-integrated Gaussian, so the FWHM without the pixel) by -15 to
    +10 %, in 120-220 ms for 21 stars; this fit is within 1.8 % there, in
    2-10 ms.
    """
    from scipy.optimize import least_squares

    sw = np.sqrt(w)
    n = int(star.max()) + 1

    def residuals(q):
        f = _profile(r2, q[0], q[1])
        amp = (np.bincount(star, w * v * f, minlength=n)
               / np.maximum(np.bincount(star, w * f * f, minlength=n), 1e-300))
        return sw * (v - amp[star] * f)

    bounds = ([0.05 * fwhm0, _GAMMA_RANGE[0]], [20.0 * fwhm0, _GAMMA_RANGE[1]])
    fit = least_squares(residuals, [fwhm0, 0.2], bounds=bounds, x_scale=[fwhm0, 0.1],
                        xtol=1e-6, ftol=1e-8)
    return float(fit.x[0]), float(fit.x[1])


def _image_profile(image, scale_y, scale_x):
    """FWHM (native pixels) and gamma of a noiseless PSF image sampled every scale_y, scale_x."""
    ny, nx = image.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    iy, ix = np.unravel_index(int(np.argmax(image)), image.shape)
    ddx = ((xx - ix) * scale_x).ravel()[None, :]
    ddy = ((yy - iy) * scale_y).ravel()[None, :]
    v = image.ravel()[None, :]
    # Half-maximum pixel count: a first size to set the fit region.
    s0 = max(math.sqrt(np.count_nonzero(image >= 0.5 * image.max()) * scale_x * scale_y
                       / math.pi) * 2.0 / _SIGMA_TO_FWHM, 0.3)
    w = (ddx**2 + ddy**2 <= (3.0 * s0 * _SIGMA_TO_FWHM) ** 2).astype(float)
    p, _ = _fit_gaussians(v, ddx, ddy, w, s0, n_iter=30)
    r2 = (ddx - p[0, 0]) ** 2 + (ddy - p[0, 1]) ** 2
    fwhm_g = p[0, 3] * _SIGMA_TO_FWHM
    fit = r2 <= (_FIT_RADIUS * fwhm_g) ** 2
    return _fit_profile(v[fit], r2[fit], np.ones(np.count_nonzero(fit)),
                        np.zeros(np.count_nonzero(fit), dtype=int), fwhm_g)


# ----------------------------------------------------------------------------------
# argument and header


def psf_from_argument(value, *, band=None, pixel_scale):
    """
    The PSF of a band from a user-supplied value.

    Parameters
    ----------
    value : float, `~astropy.units.Quantity`, 2-D `~numpy.ndarray` or image PSF model
        * a number: the FWHM in arcsec;
        * a scalar `~astropy.units.Quantity`: an angle (any angular unit) or
          a number of pixels (``u.pix``);
        * a 2-D array: an image of the effective (pixel-convolved) PSF
          sampled at the image's pixel scale, centred anywhere in the array;
        * an object with a 2-D ``data`` array and an ``oversampling``
          attribute (e.g. `photutils.psf.ImagePSF`): an effective PSF
          sampled ``oversampling`` times finer than the image's pixels.

        The FWHM of an image is measured by fitting a circular profile of
        free shape (Moffat, Gaussian or Airy-like core) to the pixels within
        1.25 FWHM of its peak: within 1.1 % of the true FWHM for Gaussian,
        Moffat (beta 2.5-4) and Airy PSFs of 1.4-3.2 pixels, at 1x, 2x and
        4x sampling. (`photutils.psf.fit_fwhm` is off by up to 13 %, as it
        fits a pixel-integrated Gaussian; a half-maximum area by up to 19 %.)
    band : str or None, optional
        Band name, used in messages and stored in the result.
    pixel_scale : float
        Pixel scale of the band's image, arcsec per pixel.

    Returns
    -------
    estimate : `PSFEstimate`
        With ``source="argument"``.

    Raises
    ------
    TypeError
        If ``value`` is none of the above.
    ValueError
        If it is not finite and positive, a Quantity of other units, or an
        image that is not 2-D, has non-finite pixels or no positive peak.

    Examples
    --------
    >>> from astropy import units as u
    >>> from astro_starglx.psf import psf_from_argument
    >>> round(psf_from_argument(2 * u.pix, band="r", pixel_scale=0.074).fwhm, 4)
    0.148
    """
    from astropy import units as u

    name = _name(band)
    example = "psf=0.15" if band is None else f"psf={{{band!r}: 0.15}}"
    hint = (f"; pass the FWHM in arcsec (e.g. {example} or 0.15 * u.arcsec), a 2-D "
            "PSF image or a photutils ImagePSF")
    pixel_scale = _positive("pixel_scale", pixel_scale, hint="; give it in arcsec per pixel")
    if isinstance(value, u.Quantity):
        if value.unit.physical_type == "angle":
            fwhm = _positive(name, value.to_value(u.arcsec), hint=hint)
        elif value.unit == u.pix:
            fwhm = _positive(name, value.value, hint=hint) * pixel_scale
        else:
            msg = f"{name} has unit {value.unit!r}; expected an angle or pixels{hint}"
            raise ValueError(msg)
        return PSFEstimate(fwhm, "argument", band=band, detail="Quantity")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return PSFEstimate(_positive(name, value, hint=hint), "argument", band=band,
                           detail="FWHM in arcsec")
    if isinstance(value, np.ndarray):
        data, (ov_y, ov_x), kind = value, (1.0, 1.0), "PSF image"
    elif hasattr(value, "data") and hasattr(value, "oversampling"):
        data, kind = np.asarray(value.data), type(value).__name__
        ov = np.broadcast_to(np.asarray(value.oversampling, dtype=float), (2,))
        ov_y, ov_x = float(ov[0]), float(ov[1])
    else:
        msg = (f"{name} must be a number, a Quantity or a PSF image, "
               f"got {type(value).__name__}{hint}")
        raise TypeError(msg)
    if data.ndim != 2 or min(data.shape) < 3:
        msg = f"{name} must be a 2-D PSF image of at least 3 x 3 pixels, got shape {data.shape}"
        raise ValueError(msg)
    data = np.asarray(data, dtype=float)
    if not np.all(np.isfinite(data)) or data.max() <= 0:
        msg = (f"{name} must be a PSF image of finite pixels with a positive peak; "
               "replace NaN pixels by 0 before passing it")
        raise ValueError(msg)
    fwhm_pix, gamma = _image_profile(data, 1.0 / ov_y, 1.0 / ov_x)
    return PSFEstimate(fwhm_pix * pixel_scale, "argument", band=band, gamma=gamma,
                       detail=f"{kind} ({data.shape[1]}x{data.shape[0]}, "
                              f"oversampling {ov_x:g}x{ov_y:g})")


def _comment_unit(comment):
    """The unit named in square brackets at the start of a header comment, or None."""
    match = re.match(r"\s*\[([^\]]*)\]", comment or "")
    return match.group(1).strip().lower() if match else None


def psf_from_header(header, *, pixel_scale, band=None):
    """
    The PSF of a band from its image header.

    The keywords of `PSF_HEADER_KEYWORDS` are tried in order; the first with
    a positive finite value is used:

    ========== ============== =============================================
    keyword    default unit   convention
    ========== ============== =============================================
    PSFFWHM    arcsec         astro_starglx simulator (PSF with the pixel)
    PSF_FWHM   arcsec         ESO Phase 3 data products
    SEEING     arcsec         common observatory usage
    FWHM       pixel          NOIRLab Community Pipeline (DECam, Mosaic)
    ========== ============== =============================================

    A unit in square brackets at the start of the card's comment, as the
    FITS standard recommends (``[arcsec]``, ``["]``, ``[pix]``,
    ``[pixel]``), overrides the default unit; a card with another unit or a
    value that is not a positive number is skipped (logged).

    Parameters
    ----------
    header : `~astropy.io.fits.Header` or dict-like
        The band's header (``CCDData.meta``). A plain dict has no comments,
        so default units apply.
    pixel_scale : float
        Pixel scale, arcsec per pixel (to convert pixel values).
    band : str or None, optional
        Band name, stored in the result.

    Returns
    -------
    estimate : `PSFEstimate` or None
        With ``source="header"`` and the keyword in ``detail``; `None` when
        no keyword gives a usable value.

    Examples
    --------
    >>> from astropy.io import fits
    >>> from astro_starglx.psf import psf_from_header
    >>> header = fits.Header()
    >>> header["FWHM"] = (2.0, "[pix] median FWHM of stars")
    >>> estimate = psf_from_header(header, pixel_scale=0.074)
    >>> round(estimate.fwhm, 4), estimate.detail
    (0.148, 'FWHM [pix]')
    """
    pixel_scale = _positive("pixel_scale", pixel_scale, hint="; give it in arcsec per pixel")
    if header is None:
        return None
    comments = getattr(header, "comments", None)
    for key, default_unit in PSF_HEADER_KEYWORDS:
        if key not in header:
            continue
        value = header[key]
        comment = comments[key] if comments is not None else ""
        unit = _comment_unit(comment) or default_unit
        try:
            ok = (not isinstance(value, (bool, str)) and math.isfinite(float(value))
                  and float(value) > 0)
        except (TypeError, ValueError):
            ok = False
        if not ok or unit not in _PIXEL_UNITS + _ARCSEC_UNITS:
            log.warning("band %s: header %s = %r [%s] is not a positive FWHM in arcsec or "
                        "pixels; skipped", band, key, value, unit)
            continue
        fwhm = float(value) * (pixel_scale if unit in _PIXEL_UNITS else 1.0)
        return PSFEstimate(fwhm, "header", band=band, detail=f"{key} [{unit}]")
    return None


# ----------------------------------------------------------------------------------
# measurement

_MIN_PLANE_STARS = 30
# Plane kept when its gradient is significant (chi2 of the two slopes, 2 dof,
# above 13.8: p < 0.001) and matters (FWHM change from centre to edge >= 2 %).
_PLANE_CHI2 = 13.8
_PLANE_MIN_CHANGE = 0.02


def _noise_std(sigma, take):
    """Standard deviations of the pixels ``take(array, fill)`` for a ``sigma`` input."""
    from astropy.nddata import (InverseVariance, NDUncertainty, StdDevUncertainty,
                                VarianceUncertainty)

    known = (InverseVariance, StdDevUncertainty, VarianceUncertainty)
    if sigma is None or (isinstance(sigma, NDUncertainty) and not isinstance(sigma, known)):
        return None
    if np.ndim(sigma) == 0 and not isinstance(sigma, NDUncertainty):
        return float(sigma)
    array = sigma.array if isinstance(sigma, NDUncertainty) else sigma
    values = take(np.asarray(array), np.nan).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        if isinstance(sigma, InverseVariance):
            values = 1.0 / np.sqrt(values)
        elif isinstance(sigma, VarianceUncertainty):
            values = np.sqrt(values)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _check_measure_inputs(data, x, y, mask, sigma, name):
    from astropy.nddata import NDUncertainty

    data = np.asarray(data)
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.number):
        msg = f"{name}: data must be a 2-D numeric image, got {data.dtype} of shape {data.shape}"
        raise ValueError(msg)
    x = np.atleast_1d(np.asarray(x, dtype=float))
    y = np.atleast_1d(np.asarray(y, dtype=float))
    if x.ndim != 1 or x.shape != y.shape:
        msg = (f"{name}: x and y must be 1-D arrays of the same length (pixel positions), "
               f"got shapes {x.shape} and {y.shape}")
        raise ValueError(msg)
    if mask is not None and np.shape(mask) != data.shape:
        msg = f"{name}: mask must have the image's shape {data.shape}, got {np.shape(mask)}"
        raise ValueError(msg)
    shape = np.shape(sigma.array if isinstance(sigma, NDUncertainty) else sigma)
    if sigma is not None and shape == ():
        check_real(f"{name}: sigma", sigma, low=0.0, low_open=True,
                   hint="; give the background noise (standard deviation) or None")
    elif sigma is not None and shape != data.shape:
        msg = (f"{name}: sigma must be a scalar or an array of the image's shape {data.shape}, "
               f"got shape {shape}")
        raise ValueError(msg)
    return data, x, y


def _row_median(values):
    """Median of each row ignoring NaN (NaN for empty rows); np.nanmedian on
    small rows goes through masked arrays and cost 3x the whole measurement."""
    ordered = np.sort(values, axis=1)  # NaN sort last
    n = np.count_nonzero(~np.isnan(values), axis=1)
    lo = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[:, None], axis=1)[:, 0]
    hi = np.take_along_axis(ordered, np.maximum(n // 2, 0)[:, None], axis=1)[:, 0]
    return np.where(n > 0, 0.5 * (lo + hi), np.nan)


def _ring_offsets(half):
    """Integer offsets of the ring half - 2.5 < r <= half (local background)."""
    dy, dx = _stamp_offsets(half)
    r = np.hypot(dy, dx)
    ring = (r > half - 2.5) & (r <= half)
    return dy[ring], dx[ring]


#: Step (a)'s statistics are computed for at most this many times
#: ``max_candidates`` isolated sources, the brightest by a 5-pixel S/N (peak
#: above the median of 4 ring pixels, over the noise there): the statistics
#: read ~280 pixels around every source. On the CSST chip of
#: ``benchmarks/bench_survey.py`` (20,000 sources, 7 bands of 9232 x 9216
#: memory-mapped pixels) the 7 bands took 3.6 s before, 1.3 s with it, and
#: gave the same estimates (as on GalSim fields, Airy/Moffat/Gaussian).
#: Fewer than ``max_candidates`` clean sources in the pool: all are used.
_POOL = 4


def _candidates(data, x, y, *, mask, sigma, f0, saturation, max_candidates, snr_min):
    """Step (a)-(b): bright, clean, isolated sources: indices, backgrounds, noise, S/N."""
    from scipy.spatial import cKDTree

    half = max(4, math.ceil(3.5 * f0))
    on = np.flatnonzero(np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (y > -0.5)
                        & (x < data.shape[1] - 0.5) & (y < data.shape[0] - 0.5))
    good = np.isfinite(x) & np.isfinite(y)
    tree = cKDTree(np.column_stack([x[good], y[good]]))
    n_near = tree.query_ball_point(np.column_stack([x[on], y[on]]), r=half, return_length=True)
    isolated = on[n_near <= 1]
    args = (data, x, y, mask, sigma, f0, half, saturation, max_candidates, snr_min)
    if isolated.size <= _POOL * max_candidates:
        return _candidate_stats(isolated, *args)
    pool = np.sort(isolated[_brightest(data, x[isolated], y[isolated], sigma, half,
                                       _POOL * max_candidates)])
    found = _candidate_stats(pool, *args)
    if found[0].size < max_candidates:  # the pool held too few clean ones: all of them
        found = _candidate_stats(isolated, *args)
    return found


def _brightest(data, x, y, sigma, half, count):
    """Indices of the ``count`` sources of highest peak S/N (a cheap ranking for step a)."""
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    take = _stamps(data.shape, ix, iy, np.array([0, 0, 0, -half, half]),
                   np.array([0, -half, half, 0, 0]))
    v = take(data, np.nan).astype(float)
    with np.errstate(all="ignore"):
        peak = v[:, 0] - np.median(v[:, 1:], axis=1)
        noise = _noise_std(sigma, take)
        if noise is not None and np.ndim(noise):
            peak = peak / noise[:, 0]
    score = np.where(np.isfinite(peak), peak, -np.inf)
    return np.argsort(-score, kind="stable")[:count]


def _candidate_stats(on, data, x, y, mask, sigma, f0, half, saturation, max_candidates,
                     snr_min):
    """Step (a)-(b) for the isolated sources ``on``."""
    ix, iy = np.rint(x[on]).astype(int), np.rint(y[on]).astype(int)
    bool_mask = None if mask is None else np.asarray(mask, dtype=bool)

    def values(take):
        v = take(data, np.nan).astype(float)
        bad = ~np.isfinite(v)
        if bool_mask is not None:
            bad |= take(bool_mask, True)
        return np.where(bad, np.nan, v)

    take_ring = _stamps(data.shape, ix, iy, *_ring_offsets(half))
    ring_v = values(take_ring)
    core_dy, core_dx = _stamp_offsets(math.ceil(2.0 * f0) + 1)
    core_v = values(_stamps(data.shape, ix, iy, core_dy, core_dx))
    rr = np.hypot(ix[:, None] + core_dx - x[on, None], iy[:, None] + core_dy - y[on, None])
    # Sources with all-bad rings or cores give NaN statistics, rejected below.
    # (No warnings.catch_warnings here: it is process-wide, and classify()
    # runs other work in threads meanwhile; the statistics below do not warn.)
    with np.errstate(all="ignore"):
        bkg = _row_median(ring_v)
        noise = _noise_std(sigma, take_ring)
        if noise is None:
            noise = 1.4826 * _row_median(np.abs(ring_v - bkg[:, None]))
        elif np.ndim(noise):
            noise = _row_median(noise)
        else:
            noise = np.full(on.size, noise)
        clean = (~np.any(np.isnan(core_v) & (rr <= 2.0 * f0 + 1.0), axis=1)
                 & np.isfinite(bkg) & (noise > 0))
        if saturation is not None:
            # np.nanmax warns on all-NaN rows; -inf there compares the same
            clean &= ~(np.max(np.where(np.isnan(core_v), -np.inf, core_v), axis=1)
                       >= 0.8 * saturation)
        aperture = rr <= max(1.5, f0)
        flux = np.nansum(np.where(aperture, core_v - bkg[:, None], 0.0), axis=1)
        snr = flux / (noise * np.sqrt(np.count_nonzero(aperture, axis=1)))
    keep = np.flatnonzero(clean & (snr >= snr_min))
    keep = keep[np.argsort(-snr[keep])][:max_candidates]
    return on[keep], bkg[keep], noise[keep], snr[keep]


def _weighted_median(values, weights):
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return values[order][np.searchsorted(cum, 0.5 * cum[-1])]


def _locus(size, snr, u, v):
    """Step (d): indices of the stellar locus, the narrow clump of the smallest sizes."""
    logs = np.log(size)
    # Noise of log(size): 1.1-1.2 / SNR measured for simulated stars of S/N
    # 10-50, with a floor for source noise.
    err = np.hypot(1.2 / snr, 0.005)
    kernel = np.maximum(err, 0.02)
    grid = np.linspace(logs.min() - 0.1, logs.max() + 0.1, 400)
    # Normalised kernels as wide as each size's noise: faint sources cannot
    # make narrow peaks of their own.
    density = (np.exp(-0.5 * ((grid[:, None] - logs) / kernel) ** 2) / kernel).sum(axis=1)
    peaks = np.flatnonzero((density[1:-1] >= density[:-2]) & (density[1:-1] > density[2:])) + 1
    counts = np.count_nonzero(np.abs(grid[peaks, None] - logs) < 2.0 * kernel, axis=1)
    # Nothing real is smaller than the PSF: the locus is the smallest-size peak
    # (of >= 3 sources and >= 10 % of the highest density), even when galaxies
    # outnumber the stars; too few stars there then means a fallback, not a
    # fit to compact galaxies.
    eligible = peaks[(counts >= 3) & (density[peaks] >= 0.1 * density.max())]
    if eligible.size == 0:
        return np.zeros(0, dtype=int)
    model, width = np.full(logs.size, grid[eligible[0]]), 0.02
    design = np.column_stack([np.ones_like(u), u, v])
    trial = np.linspace(0.01, 0.1, 37)[:, None]
    for _ in range(8):
        tol = np.hypot(width, err)
        members = np.abs(logs - model) < 2.5 * tol
        if np.count_nonzero(members) >= _MIN_PLANE_STARS:
            # The locus may slope across the image (PSF variation).
            wts = 1.0 / tol[members]
            coef = np.linalg.lstsq(design[members] * wts[:, None], logs[members] * wts,
                                   rcond=None)[0]
            model = design @ coef
        elif members.any():
            model[:] = _weighted_median(logs[members], 1.0 / tol[members] ** 2)
        below = members & (logs < model)
        if np.count_nonzero(below) >= 3:
            # Remaining width from the small side only, which galaxies cannot
            # reach: the width at which the deviations, in units of their
            # expected scatter, have a half-normal's median.
            z = np.median((model[below] - logs[below]) / np.hypot(trial, err[below]), axis=1)
            width = float(trial[min(np.searchsorted(-z, -0.6745), trial.size - 1), 0])
    return np.flatnonzero(np.abs(logs - model) < 2.5 * np.hypot(width, err))


def _plane(u, v, f):
    """Step (f): iteratively 3-sigma-clipped plane fit; (a, b, c), scatter, kept."""
    design = np.column_stack([np.ones_like(u), u, v])
    use = np.ones(u.size, dtype=bool)
    for _ in range(5):
        coef = np.linalg.lstsq(design[use], f[use], rcond=None)[0]
        resid = f - design @ coef
        scatter = max(1.4826 * np.median(np.abs(resid[use])), 1e-12)
        new = np.abs(resid) < 3.0 * scatter
        if np.array_equal(new, use) or new.sum() < _MIN_PLANE_STARS:
            break
        use = new
    cov = scatter**2 * np.linalg.inv(design[use].T @ design[use])
    slope = coef[1:]
    chi2 = float(slope @ np.linalg.solve(cov[1:, 1:], slope))
    change = float(np.hypot(*slope) / coef[0]) if coef[0] > 0 else np.inf
    kept = (chi2 > _PLANE_CHI2 and change >= _PLANE_MIN_CHANGE
            and coef[0] > abs(slope).sum())
    return tuple(float(c) for c in coef), scatter, kept, chi2


def _sizes(data, mask, x, y, bkg, f0):
    """Step (c): sampled-Gaussian fits (x0, y0, amplitude, sigma) of the candidates."""
    half = max(2, math.ceil(max(3.0, 2.0 * f0)))
    dy, dx = _stamp_offsets(half)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    take = _stamps(data.shape, ix, iy, dy, dx)
    v = take(data, np.nan).astype(float) - bkg[:, None]
    ddx, ddy = ix[:, None] + dx - x[:, None], iy[:, None] + dy - y[:, None]
    w = (np.hypot(ddx, ddy) <= half) & np.isfinite(v)
    if mask is not None:
        w &= ~take(np.asarray(mask, dtype=bool), True)
    return _fit_gaussians(np.where(w, v, 0.0), ddx, ddy, w.astype(float), f0 / _SIGMA_TO_FWHM)[0]


def _profile_fwhm(data, mask, sigma_i, xc, yc, amp, fwhm_g, scale):
    """
    Step (e): joint profile fit of the locus stars (pixels). ``scale`` is
    each star's FWHM relative to the reference (the plane of step f, or 1):
    distances are divided by it, so that stars of different widths share one
    profile. Returns the reference FWHM and gamma.
    """
    half = math.ceil(3.0 * fwhm_g * scale.max()) + 3
    dy, dx = _stamp_offsets(half)
    ix, iy = np.rint(xc).astype(int), np.rint(yc).astype(int)
    take = _stamps(data.shape, ix, iy, dy, dx)
    v = take(data, np.nan).astype(float)
    bad = ~np.isfinite(v)
    if mask is not None:
        bad |= take(np.asarray(mask, dtype=bool), True)
    r2 = (ix[:, None] + dx - xc[:, None]) ** 2 + (iy[:, None] + dy - yc[:, None]) ** 2
    ring = (r2 > (half - 2.5) ** 2) & (r2 <= half**2) & ~bad
    with np.errstate(all="ignore"):
        bkg = _row_median(np.where(ring, v, np.nan))
    bkg = np.where(np.isfinite(bkg), bkg, 0.0)
    r2 = r2 / scale[:, None] ** 2
    fit = (r2 <= (_FIT_RADIUS * fwhm_g) ** 2) & ~bad
    star = np.nonzero(fit)[0]
    w = 1.0 / (sigma_i[star] ** 2 + (_ERROR_FLOOR * amp[star]) ** 2)
    return _fit_profile((v - bkg[:, None])[fit], r2[fit], w, star, fwhm_g)


def _fit_stars(data, mask, xc, yc, p, noise, spatial, pixel_scale):
    """Steps (e)-(f) on the locus stars: FWHM (arcsec), plane, shape, scatter, detail, gamma."""
    size = p[:, 3] * _SIGMA_TO_FWHM
    ref, rel, plane, shape, detail = np.median(size), size / np.median(size), None, None, ""
    if spatial and size.size >= _MIN_PLANE_STARS:
        ny, nx = data.shape
        u, v = 2.0 * xc / max(nx - 1, 1) - 1.0, 2.0 * yc / max(ny - 1, 1) - 1.0
        coef, _, kept, chi2 = _plane(u, v, size)
        detail = f", plane chi2 {chi2:.3g}"
        if kept:
            # Stars' widths relative to the centre's, from the Gaussian sizes.
            plane, shape, ref = coef, (int(ny), int(nx)), coef[0]
            rel = size / (coef[0] + coef[1] * u + coef[2] * v)
    scale = size / ref / rel  # 1, or the plane's relative width at each star
    fwhm_pix, gamma = _profile_fwhm(data, mask, noise, xc, yc, p[:, 2], ref, scale)
    fwhm = fwhm_pix * pixel_scale
    if plane is not None:
        plane = tuple(float(c * fwhm / ref) for c in plane)
    # Stars' scatter about the model, in arcsec.
    scatter = 1.4826 * float(np.median(np.abs(rel - np.median(rel)))) * fwhm
    detail = f"{size.size} stars, profile gamma {gamma:.3g}{detail}"
    return fwhm, plane, shape, scatter, detail, gamma


def measure_psf(data, x, y, *, pixel_scale, nominal_fwhm, sigma=None, mask=None,
                saturation=None, min_stars=5, spatial=True, max_candidates=300,
                snr_min=10.0, band=None):
    """
    Measure the PSF FWHM of an image from its catalogued point sources.

    The approach of SExtractor's and PSFEx's star selection (details and
    measured accuracy in the "PSF" page of the docs):

    a. local background, noise and aperture S/N of every source (vectorised);
    b. candidates: S/N >= ``snr_min``, no bad or near-saturated pixel near
       the centre, no other source within 3.5 nominal FWHM; the
       ``max_candidates`` of highest S/N (with more than 4 times as many
       isolated sources, step (a) looks at the 4 x ``max_candidates`` of
       highest peak S/N only: the same stars on the simulated fields and
       CSST chips measured, at 1/3 of the time on a chip);
    c. a size for each: a vectorised fit of a sampled circular Gaussian;
    d. the stellar locus: the smallest-size peak of the density of log size
       (point sources are the smallest objects), each size smoothed by its
       noise; members within 2.5 times their noise and the locus's width,
       measured on its small side (galaxies only lie on the large side);
    e. the FWHM: one circular profile of free shape (Moffat, Gaussian or
       Airy-like core) fitted jointly to the locus stars within 1.25 FWHM;
    f. with ``spatial`` and >= 30 stars, a clipped plane fit to the stars'
       FWHMs, kept when significant (slopes' chi-square > 13.8, p < 0.001)
       and changing the FWHM by >= 2 % from centre to edge; the fit of (e)
       then scales each star by the plane and gives the centre's FWHM;
    g. fewer than ``min_stars`` stars: ``nominal_fwhm``, ``fell_back=True``.

    Parameters
    ----------
    data : `~numpy.ndarray`
        2-D image, background-subtracted or not (a local background is
        removed).
    x, y : array-like
        Catalog pixel positions in this image (0-based, pixel centres at
        integers), shape (N,). NaN and off-image positions are skipped.
    pixel_scale : float
        Arcsec per pixel.
    nominal_fwhm : float
        Nominal FWHM, arcsec: sets the stamp sizes and is the fallback.
    sigma : float, `~numpy.ndarray`, `~astropy.nddata.NDUncertainty` or None, optional
        Background noise: standard deviation (scalar or per pixel), or an
        uncertainty (``StdDevUncertainty``, ``VarianceUncertainty``,
        ``InverseVariance``) of the image's shape. `None` measures it from
        the rings around the sources.
    mask : `~numpy.ndarray` of bool or None, optional
        True for bad pixels (image shape).
    saturation : float or None, optional
        Saturation level in image units (``SATURATE``).
    min_stars : int, optional
        Fewest stars for a measurement. 5 (with ``snr_min=10``) measures the
        NUV band of 39 of 40 simulated 1024 x 1024 fields (about 9 stars
        each) within 4.1 %; 8 (with ``snr_min=30``) measured none.
    spatial : bool, optional
        Fit (and keep if significant) a plane across the image.
    max_candidates : int, optional
        Most candidates sized in step (c) (speed).
    snr_min : float, optional
        Least aperture S/N of a candidate (stars of S/N 10 weigh little in
        the profile fit but help find the locus; at 5, faint galaxies spoil
        it).
    band : str or None, optional
        Band name, for messages and the result.

    Returns
    -------
    estimate : `PSFEstimate`
        ``source="measured"``, or ``"nominal"`` with ``fell_back=True``.
    """
    name = "measure_psf" if band is None else f"band {band!r}"
    pixel_scale = _positive("pixel_scale", pixel_scale, hint="; give it in arcsec per pixel")
    nominal_fwhm = _positive("nominal_fwhm", nominal_fwhm, hint="; give it in arcsec")
    if saturation is not None:
        saturation = _positive("saturation", saturation, hint="; give it in image units, or None")
    min_stars = check_count("min_stars", min_stars, low=3)
    max_candidates = check_count("max_candidates", max_candidates, low=1)
    snr_min = check_real("snr_min", snr_min, low=0.0)
    spatial = check_bool("spatial", spatial)
    data, x, y = _check_measure_inputs(data, x, y, mask, sigma, name)
    f0 = nominal_fwhm / pixel_scale
    idx, bkg, noise, snr = _candidates(data, x, y, mask=mask, sigma=sigma, f0=f0,
                                       saturation=saturation, max_candidates=max_candidates,
                                       snr_min=snr_min)
    stars = np.zeros(0, dtype=int)
    if idx.size >= min_stars:
        p = _sizes(data, mask, x[idx], y[idx], bkg, f0)
        # An effective PSF is at least as wide as the pixel (FWHM >= 0.9 pixel
        # with noise): smaller sizes are artefacts or failed fits.
        ok = np.flatnonzero((p[:, 2] > 0) & (p[:, 3] * _SIGMA_TO_FWHM >= 0.9) & (p[:, 3] < 29.9)
                            & (np.abs(p[:, :2]) < 1.9).all(axis=1))
        if ok.size >= min_stars:
            ny, nx = data.shape
            u = 2.0 * x[idx[ok]] / max(nx - 1, 1) - 1.0
            v = 2.0 * y[idx[ok]] / max(ny - 1, 1) - 1.0
            stars = ok[_locus(p[ok, 3] * _SIGMA_TO_FWHM, snr[ok], u, v)]
    if stars.size < min_stars:
        log.info("%s: %d usable stars (< min_stars=%d); nominal FWHM %.4g arcsec used",
                 name, stars.size, min_stars, nominal_fwhm)
        return PSFEstimate(nominal_fwhm, "nominal", n_stars=int(stars.size), fell_back=True,
                           band=band, detail=f"{stars.size} usable stars < min_stars={min_stars}")
    xc, yc = x[idx[stars]] + p[stars, 0], y[idx[stars]] + p[stars, 1]
    fwhm, plane, shape, scatter, detail, gamma = _fit_stars(
        data, mask, xc, yc, p[stars], noise[stars], spatial, pixel_scale)
    log.debug("%s: FWHM %.4g arcsec from %s", name, fwhm, detail)
    return PSFEstimate(float(fwhm), "measured", n_stars=int(stars.size), plane=plane,
                       shape=shape, band=band, scatter=float(scatter), detail=detail,
                       gamma=float(gamma))


# ----------------------------------------------------------------------------------
# per-call resolution


def _per_band(value, band):
    return value.get(band) if isinstance(value, Mapping) else value


def _image_pixel_scale(image, band, pixel_scale):
    value = _per_band(pixel_scale, band)
    if value is None:
        meta = getattr(image, "meta", None) or {}
        wcs = getattr(image, "wcs", None)
        if "PIXSCALE" in meta:
            value = meta["PIXSCALE"]
        elif wcs is not None and getattr(wcs, "has_celestial", False):
            from astropy import units as u

            celestial = wcs.celestial
            scale = math.sqrt(abs(np.linalg.det(celestial.pixel_scale_matrix)))
            value = (scale * u.Unit(celestial.wcs.cunit[0] or "deg")).to_value(u.arcsec)
        else:
            msg = (f"band {band!r}: no pixel scale; pass pixel_scale=<arcsec per pixel> "
                   "(or {band: value}), or give the image a celestial WCS or a PIXSCALE "
                   "header keyword")
            raise ValueError(msg)
    return _positive(f"pixel_scale[{band!r}]", value, hint="; give it in arcsec per pixel")


def resolve_psf(images, positions, *, psf=None, pixel_scale=None, nominal_fwhm,
                min_stars=5, spatial=True, max_candidates=300, snr_min=10.0,
                check_header=True):
    """
    The PSF of every band: argument, else header, else measured, else nominal.

    A header's PSF is checked against the field's own stars: where the
    measurement uses at least ``2 * min_stars`` stars and differs from it
    by more than `HEADER_TOLERANCE` (20 %), the measurement is used, and
    the estimate keeps the header's value in ``header_fwhm`` (callers
    warn).

    Parameters
    ----------
    images : mapping of str to `~astropy.nddata.NDData`
        ``{band: image}`` (e.g. `~astropy.nddata.CCDData`). ``data``,
        ``mask`` (True = bad), ``uncertainty`` (any of StdDev, Variance,
        InverseVariance) and ``meta`` (the header; ``SATURATE`` in image
        units is honoured) are used. Images are not modified.
    positions : mapping of str to tuple of array-like
        ``{band: (x, y)}``: the catalog's 0-based pixel positions in each
        band's image. Needed for the bands that are measured.
    psf : None, a value, or mapping of str to value, optional
        One value for all bands, or ``{band: value}`` (bands left out, or
        with `None`, fall through to the header). Values as in
        `psf_from_argument`.
    pixel_scale : float, mapping of str to float, or None, optional
        Arcsec per pixel; `None` reads each image's ``PIXSCALE`` keyword or
        its celestial WCS.
    nominal_fwhm : float or mapping of str to float
        The model's nominal FWHM per band, arcsec: the fallback and the
        measurement's starting scale.
    min_stars, spatial, max_candidates, snr_min
        Passed to `measure_psf`.
    check_header : bool, optional
        Measure the bands whose header states a PSF too, and check the
        header against it (for bands with ``positions``); False trusts the
        header.

    Returns
    -------
    estimates : dict of str to `PSFEstimate`
        In the order of ``images``. Estimates with ``fell_back=True`` or a
        ``header_fwhm`` are the caller's to report (once per call).

    Raises
    ------
    TypeError, ValueError
        For invalid ``images``, ``psf`` or ``positions`` (naming the band and
        the fix).
    """
    check_bool("check_header", check_header)
    if not isinstance(images, Mapping) or not images:
        msg = (f"images must be a non-empty mapping {{band: NDData}}, got "
               f"{type(images).__name__}; e.g. images={{'r': ccd}}")
        raise TypeError(msg)
    if isinstance(psf, Mapping):
        unknown = sorted(set(psf) - set(images))
        if unknown:
            msg = (f"psf has bands {unknown} that are not in images ({list(images)}); "
                   "check the band names")
            raise ValueError(msg)
    from astropy.nddata import NDData

    estimates = {}
    for band, image in images.items():
        if not isinstance(image, NDData):
            msg = f"images[{band!r}] must be an NDData or CCDData, got {type(image).__name__}"
            raise TypeError(msg)
        scale = _image_pixel_scale(image, band, pixel_scale)
        value = _per_band(psf, band)
        if value is not None:
            estimates[band] = psf_from_argument(value, band=band, pixel_scale=scale)
            continue
        header = getattr(image, "meta", None)
        estimate = psf_from_header(header, pixel_scale=scale, band=band)
        has_positions = isinstance(positions, Mapping) and band in positions
        if estimate is not None and not (check_header and has_positions):
            estimates[band] = estimate
            continue
        if not has_positions:
            msg = (f"positions has no entry for band {band!r}, needed to measure its PSF; "
                   f"pass positions={{{band!r}: (x, y)}} or psf={{{band!r}: fwhm_arcsec}}")
            raise ValueError(msg)
        x, y = positions[band]
        saturation = (header or {}).get("SATURATE")
        try:
            saturation = float(saturation) if float(saturation) > 0 else None
        except (TypeError, ValueError):
            saturation = None
        measured = measure_psf(
            image.data, x, y, pixel_scale=scale,
            nominal_fwhm=_positive(f"nominal_fwhm[{band!r}]", _per_band(nominal_fwhm, band),
                                   hint="; give it in arcsec"),
            sigma=image.uncertainty, mask=image.mask,
            saturation=saturation,
            min_stars=min_stars, spatial=spatial, max_candidates=max_candidates,
            snr_min=snr_min, band=band)
        estimates[band] = (measured if estimate is None
                           else _checked_header(estimate, measured, min_stars))
    return estimates


def header_disagreement(estimates):
    """
    One sentence naming the bands whose header PSF was not used, or None.

    Parameters
    ----------
    estimates : mapping of str to `PSFEstimate`
        From `resolve_psf`.

    Returns
    -------
    message : str or None
        For the caller's warning (once per call).
    """
    ignored = [f"{band} {est.header_fwhm:.3f} against {est.fwhm:.3f}"
               for band, est in estimates.items() if est.header_fwhm is not None]
    if not ignored:
        return None
    return (f"The header's PSF FWHM differs by more than {HEADER_TOLERANCE:.0%} from the one "
            f"measured on the field's own stars (arcsec: {'; '.join(ignored)}), so the "
            "measured PSF was used; pass psf={band: fwhm_arcsec} to impose a value.")


def _checked_header(header, measured, min_stars):
    """The header's estimate, or the measured one where they disagree (`HEADER_TOLERANCE`)."""
    if measured.fell_back:
        return header
    if (measured.n_stars < 2 * min_stars
            or abs(measured.fwhm / header.fwhm - 1.0) <= HEADER_TOLERANCE):
        # the header's width, the stars' profile shape
        return replace(header, gamma=measured.gamma)
    log.info("band %s: the header's PSF (%s, %.3f arcsec) is %.0f %% off the %.3f arcsec "
             "measured on %d stars; using the measurement", header.band, header.detail,
             header.fwhm, 100.0 * (header.fwhm / measured.fwhm - 1.0), measured.fwhm,
             measured.n_stars)
    return replace(measured, header_fwhm=header.fwhm,
                   detail=f"{measured.detail}; header {header.detail} = {header.fwhm:.3f} "
                          "arcsec disagreed, not used")
