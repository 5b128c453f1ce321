"""Tests of astro_starglx.simulate.instrument (bands, PSF, noise model, depths)."""

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest

from astro_starglx.csst import CSST_BAND_INFO, CSST_BANDS
from astro_starglx.simulate import band_model, csst_bandpass, exptime_scale_for_depth

HAS_GALSIM = importlib.util.find_spec("galsim") is not None
requires_galsim = pytest.mark.skipif(not HAS_GALSIM, reason="needs galsim (the sim extra)")


@requires_galsim
def test_band_models():
    models = [band_model(b) for b in CSST_BANDS]
    for band, model in zip(CSST_BANDS, models):
        assert model.r80 == pytest.approx(CSST_BAND_INFO[band].r80, abs=0.002)
        assert model.sky_rate > 0
        assert 0.4 < model.aperture_fraction < 0.8
        assert 0.05 < model.aperture_radius < 0.15
        assert model.aperture_npix < math.pi * (model.aperture_radius / model.pixel_scale) ** 2
    assert np.all(np.diff([m.fwhm for m in models]) > 0)
    assert np.all(np.diff([m.lam_over_diam for m in models]) > 0)
    bandpass = csst_bandpass("g")
    assert bandpass.blue_limit < 400 < 550 < bandpass.red_limit
    # 1 e-/s at the zero point: a flat f_nu source of AB magnitude ZP.
    import galsim

    sed = galsim.SED(lambda w: 1.0, wave_type="nm", flux_type="fnu")
    sed = sed.withMagnitude(models[2].zeropoint, bandpass)
    area = math.pi * 100.0**2
    assert sed.calculateFlux(bandpass) * area == pytest.approx(1.0, rel=1e-6)


def test_band_model_errors():
    with pytest.raises(ValueError, match="band holds unknown band names"):
        band_model("w")
    with pytest.raises(ValueError, match="pixel_scale"):
        band_model("r", pixel_scale=0.0)
    with pytest.raises(ValueError, match="obscuration"):
        band_model("r", obscuration=-0.1)
    with pytest.raises(ValueError, match="band holds unknown band names"):
        csst_bandpass("w")


@requires_galsim
def test_band_model_unreachable_depth():
    with pytest.raises(ValueError, match="band i: the depth 25.9 cannot be reached"):
        band_model("i", pixel_scale=0.05, obscuration=0.5)


@requires_galsim
@pytest.mark.parametrize("psf_model", ["airy", "moffat", "gaussian"])
@pytest.mark.parametrize("psf_scale", [0.7, 1.8])
def test_psf_size_is_measured_on_the_psf_drawn(psf_model, psf_scale):
    # The FWHM (pixel included) from GalSim's profile sampling on a finer grid
    # than psf_size's own measurement (the square pixel makes the profile
    # non-circular at the 1 % level, so grids differ by that much); not
    # psf_scale times the nominal FWHM, since the pixel does not dilate.
    import galsim

    model = band_model("r")
    fwhm, r80 = model.psf_size(psf_scale=psf_scale, psf_model=psf_model, psf_beta=2.5)
    psf = model.psf(psf_scale=psf_scale, psf_model=psf_model, psf_beta=2.5)
    pixel = galsim.Pixel(model.pixel_scale)
    profile = galsim.Convolve(psf, pixel)
    reference = profile.calculateFWHM(scale=model.pixel_scale / 20, size=1024)
    assert fwhm == pytest.approx(reference, rel=0.02)
    if psf_model == "airy":
        assert abs(fwhm - psf_scale * model.fwhm) > 0.005
        assert r80 == pytest.approx(psf_scale * model.r80, rel=0.2)
    assert (fwhm < model.fwhm) == (psf_scale < 1)


@requires_galsim
def test_nominal_psf_size_is_the_band_model():
    model = band_model("g")
    assert model.psf_size() == (model.fwhm, model.r80)


@requires_galsim
def test_exptime_scale_for_depth_inverts_the_noise_model():
    from astro_starglx.simulate.instrument import _noise_model_depth, _scaled_exposure

    for band in ("NUV", "r", "y"):
        model = band_model(band)
        # The noise model gives back the table's depth at the nominal exposure.
        assert _noise_model_depth(model, model.exptime) == pytest.approx(model.depth, abs=1e-9)
        for change in (-1.0, -0.5, 0.5):
            scale = exptime_scale_for_depth(change, band=band)
            scaled = _scaled_exposure(model, scale)
            assert scaled.depth == pytest.approx(model.depth + change, abs=1e-6)
    # Read noise makes the depth move faster than the sky-limited 1.25 log10.
    assert 10 ** (-0.8) < exptime_scale_for_depth(-1.0) < 0.3
    assert 10 ** 0.4 > exptime_scale_for_depth(0.5) > 1.9
    with pytest.raises(ValueError, match="depth_change must be a finite number"):
        exptime_scale_for_depth(5.0)


def test_import_is_lazy_and_works_without_galsim():
    code = ("import sys; import astro_starglx.simulate; import astro_starglx.simulate.report; "
            "assert 'galsim' not in sys.modules and 'torch' not in sys.modules; "
            "sys.modules['galsim'] = None; import importlib; "
            "importlib.reload(astro_starglx.simulate.instrument)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_band_model_without_galsim_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "galsim", None)
    with pytest.raises(ImportError, match=r'pip install "astro_starglx\[sim\]"'):
        # A pixel scale no other test uses: not in the band-model cache.
        band_model("r", pixel_scale=0.0731)
