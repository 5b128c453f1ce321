"""
Synthetic sources shared by the tests of features, background and inputs
(a helper module, not a test module).
"""

import numpy as np
from astropy.nddata import CCDData

PIXEL_SCALE = 0.074
ZP = 30.0
SIZE = 25


def moffat(shape, x, y, flux, fwhm=0.17 / PIXEL_SCALE, beta=3.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    r2 = (xx - x) ** 2 + (yy - y) ** 2
    return flux * (beta - 1.0) / (np.pi * alpha**2) * (1.0 + r2 / alpha**2) ** -beta


def sersic(shape, x, y, flux, r_e=0.3 / PIXEL_SCALE, n=1.0, q=0.6, theta=0.5):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    dx, dy = xx - x, yy - y
    u_ = dx * np.cos(theta) + dy * np.sin(theta)
    v_ = -dx * np.sin(theta) + dy * np.cos(theta)
    r = np.sqrt(u_**2 + (v_ / q) ** 2)
    b_n = 2.0 * n - 1.0 / 3.0
    profile = np.exp(-b_n * ((r / r_e) ** (1.0 / n) - 1.0))
    # total flux of the analytic profile (2 pi q r_e^2 n e^b Gamma(2n) / b^2n), n = 1
    total = 2.0 * np.pi * q * r_e**2 * np.exp(b_n) / b_n**2
    return flux * profile / total


def make_field(rng, kinds, mags, *, shape=(160, 224), spacing=32, noise=1.0, sky=0.0):
    """A noisy field with one source per grid cell; returns data, x, y."""
    ny, nx = shape
    cells = [(cx, cy) for cy in range(spacing // 2, ny, spacing)
             for cx in range(spacing // 2, nx, spacing)]
    if len(cells) < len(kinds):
        raise RuntimeError("field too small for the sources")
    data = np.full(shape, sky, dtype=np.float64)
    x = np.empty(len(kinds))
    y = np.empty(len(kinds))
    for i, (kind, mag) in enumerate(zip(kinds, mags)):
        x[i] = cells[i][0] + rng.uniform(-0.5, 0.5)
        y[i] = cells[i][1] + rng.uniform(-0.5, 0.5)
        flux = 10 ** (-0.4 * (mag - ZP))
        data += (moffat if kind == "star" else sersic)(shape, x[i], y[i], flux)
    data += rng.normal(0.0, noise, shape)
    return data.astype(np.float32), x, y


def ccd(data, *, zp=ZP, **kwargs):
    return CCDData(data, unit="adu", meta={"MAGZERO": zp}, **kwargs)
