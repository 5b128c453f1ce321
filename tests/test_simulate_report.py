"""Tests of astro_starglx.simulate.report (realism report measured from simulated images)."""

import importlib.util
import sys

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData
from astropy.table import Table

from astro_starglx.csst import CSST_BAND_INFO, CSST_BANDS
from astro_starglx.simulate.report import SimReportWarning, sim_report

HAS_GALSIM = importlib.util.find_spec("galsim") is not None
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
pytestmark = pytest.mark.skipif(not HAS_GALSIM, reason="needs galsim (the sim extra)")

FIGURES = ("sim_report_psf_depth.png", "sim_report_locus.png", "sim_report_size_mag.png",
           "sim_report_counts.png")


@pytest.fixture(scope="module")
def field():
    from astro_starglx.simulate import simulate_field

    return simulate_field(shape=(384, 384), n_stars=70, n_galaxies=50,
                          mag_range=(17.5, 25.5), seed=7)


@pytest.fixture(scope="module")
def report(field, tmp_path_factory):
    images, truth = field
    outdir = tmp_path_factory.mktemp("report")
    before = {b: im.data.copy() for b, im in images.items()}
    truth_before = truth.copy()
    table = sim_report(images, truth, outdir=outdir, plot=HAS_MPL)
    for band, image in images.items():
        np.testing.assert_array_equal(image.data, before[band])
    assert truth.colnames == truth_before.colnames
    np.testing.assert_array_equal(truth["ra"], truth_before["ra"])
    return table, outdir


def test_depths_psf_and_zero_points(report):
    table, _ = report
    assert list(table["band"]) == list(CSST_BANDS)
    for row in table:
        info = CSST_BAND_INFO[row["band"]]
        assert row["depth_design"] == info.depth
        # Measured from the pixels: empty-aperture noise and the wht map.
        assert abs(row["depth_empty"] - info.depth) < 0.2, row["band"]
        assert abs(row["depth_wht"] - info.depth) < 0.2, row["band"]
        assert row["r80"] == pytest.approx(info.r80, abs=0.01), row["band"]
        assert 0.09 < row["fwhm"] < 0.18
        assert row["n_psf_stars"] >= 3
        # Aperture-corrected star magnitudes agree with the truth (to the
        # light beyond 2 arcsec, ~1 %, and the noise of a few PSF stars).
        assert abs(row["zp_offset"]) < 0.06, row["band"]
    assert table["r80"].unit == u.arcsec and table["depth_empty"].unit == u.mag
    # The PSF grows with wavelength.
    assert np.corrcoef(table["wave_eff"], table["r80"])[0, 1] > 0.8


def test_files_and_sources(report, field):
    table, outdir = report
    _, truth = field
    back = Table.read(outdir / "sim_report_bands.ecsv")
    np.testing.assert_allclose(back["depth_empty"], table["depth_empty"])
    sources = Table.read(outdir / "sim_report_sources.ecsv")
    assert len(sources) == len(truth)
    np.testing.assert_array_equal(sources["id"], truth["id"])
    stars = sources["label"] == "star"
    # Stars' measured colours follow their true colours.
    good = stars & (sources["snr_g"] > 20) & (sources["snr_r"] > 20)
    assert good.sum() > 10
    diff = (sources["mag_g"] - sources["mag_r"]) - (sources["mag_true_g"] - sources["mag_true_r"])
    assert np.median(np.abs(diff[good])) < 0.05
    # Stars are small and all alike; measured galaxies are larger.
    r50 = np.asarray(sources["r50"])
    star_r50 = r50[stars & np.isfinite(r50)]
    gal_r50 = r50[~stars & np.isfinite(r50)]
    assert star_r50.size > 10 and gal_r50.size >= 3
    assert 0.05 < np.median(star_r50) < 0.1
    assert np.median(gal_r50) > np.median(star_r50)
    if HAS_MPL:
        for name in FIGURES:
            assert (outdir / name).stat().st_size > 1000


def test_plot_false_works_without_matplotlib(field, tmp_path, monkeypatch):
    images, truth = field
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    sub = {b: images[b] for b in ("g", "r")}
    table = sim_report(sub, truth, outdir=tmp_path, plot=False, n_empty=200)
    assert list(table["band"]) == ["g", "r"]
    assert not any(tmp_path.glob("*.png"))
    with pytest.raises(ImportError, match=r'pip install "astro_starglx\[plot\]"'):
        sim_report(sub, truth, outdir=tmp_path, plot=True)


def test_warns_once_without_psf_stars(tmp_path):
    from astro_starglx.simulate import simulate_field

    images, truth = simulate_field(shape=(96, 96), n_stars=0, n_galaxies=2, bands=("r",),
                                   seed=2)
    with pytest.warns(SimReportWarning, match="could not measure") as record:
        table = sim_report(images, truth, outdir=tmp_path, plot=False, n_empty=100)
    assert len(record) == 1
    assert np.isnan(table["depth_empty"][0]) and table["n_psf_stars"][0] == 0


def test_invalid_inputs(field, tmp_path):
    images, truth = field
    with pytest.raises(ValueError, match="images must be a non-empty mapping"):
        sim_report(images["r"], truth, outdir=tmp_path)
    with pytest.raises(ValueError, match="no celestial WCS"):
        sim_report({"r": CCDData(np.zeros((8, 8)), unit="electron/s")}, truth, outdir=tmp_path)
    no_zp = images["r"].copy()
    from astro_starglx.inputs import ZEROPOINT_KEYWORDS

    for key in ZEROPOINT_KEYWORDS:
        no_zp.meta.pop(key, None)
    with pytest.raises(ValueError, match="MAGZERO"):
        sim_report({"r": no_zp}, truth, outdir=tmp_path)
    with pytest.raises(ValueError, match="truth must be an astropy Table"):
        sim_report(images, dict(truth), outdir=tmp_path)
    with pytest.raises(ValueError, match="truth lacks the columns"):
        sim_report(images, truth["id", "ra", "dec"], outdir=tmp_path)
    with pytest.raises(ValueError, match="n_empty"):
        sim_report(images, truth, outdir=tmp_path, n_empty=10)
    with pytest.raises(ValueError, match="reference_band"):
        sim_report(images, truth, outdir=tmp_path, reference_band="w")
