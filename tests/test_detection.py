"""Tests of astro_starglx.detection: completeness and purity on simulated fields, deblending."""

import copy

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.nddata import CCDData
from astropy.wcs import WCS
from synthetic_sources import moffat

from astro_starglx.detection import detect_sources

pytest.importorskip("skimage")  # photutils' deblending needs scikit-image


@pytest.fixture(scope="module")
def field():
    simulate = pytest.importorskip("astro_starglx.simulate")
    return simulate.simulate_field(shape=(256, 256), bands=("g", "r", "i"), n_stars=25,
                                   n_galaxies=35, mag_range=(19.0, 25.5), wcs_jitter=0.4,
                                   seed=11)


def _match(found, truth, radius=0.3):
    """(truth matched, detection matched) within ``radius`` arcsec."""
    t = SkyCoord(truth["ra"], truth["dec"], unit="deg")
    d = SkyCoord(found["ra"], found["dec"], unit="deg")
    _, sep_t, _ = t.match_to_catalog_sky(d)
    _, sep_d, _ = d.match_to_catalog_sky(t)
    return sep_t.arcsec < radius, sep_d.arcsec < radius


def test_completeness_and_purity_on_a_simulated_field(field):
    images, truth = field
    before = {band: image.data.copy() for band, image in images.items()}
    found = detect_sources(images)
    truth_ok, found_ok = _match(found, truth)
    bright = truth["mag_r"] < 23.5
    assert truth_ok[bright].mean() >= 0.95  # complete to r = 23.5
    assert found_ok.mean() >= 0.9  # few spurious detections
    assert set(found.colnames) >= {"id", "x", "y", "ra", "dec", "flux", "snr", "area"}
    assert found["ra"].unit == "deg"
    assert found.meta["detection"]["reference"] == "r"
    for band, image in images.items():  # inputs never modified
        np.testing.assert_array_equal(image.data, before[band])


def test_positions_are_sky_positions_across_band_grids(field):
    """Detections through the reference WCS land on the truth whatever the band's grid."""
    images, truth = field
    found = detect_sources(images, reference="g")
    truth_ok, _ = _match(found, truth, radius=0.1)
    assert truth_ok[truth["mag_r"] < 22].mean() >= 0.9


def test_the_stack_does_not_depend_on_the_threads(field, monkeypatch):
    """Bands resampled in 1 or 2 threads are added in band order: the same table."""
    from astro_starglx import detection

    images, _ = field
    monkeypatch.setattr(detection, "_stack_threads", lambda: 1)
    serial = detect_sources(images)
    monkeypatch.setattr(detection, "_stack_threads", lambda: 2)
    threaded = detect_sources(images)
    assert len(serial) > 20
    for name in serial.colnames:
        np.testing.assert_array_equal(threaded[name], serial[name])


def test_stack_threads_keep_to_the_callers_budget(monkeypatch):
    """One thread in a one-thread Dask worker (torch's count, or OMP_NUM_THREADS), never > 2."""
    import sys

    from astro_starglx import detection

    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert detection._stack_threads() == 1
        torch.set_num_threads(8)
        assert detection._stack_threads() == 2
    finally:
        torch.set_num_threads(before)
    monkeypatch.delitem(sys.modules, "torch")  # torch not loaded: the environment decides
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert detection._stack_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= detection._stack_threads() <= 2


def test_shifted_bands_take_the_diagonal_map_rotated_ones_the_full_one(field, monkeypatch):
    """A pure shift between grids is resampled as scale + shift; a rotation is not."""
    from astro_starglx import detection

    images, _ = field
    ref_wcs = images["r"].wcs.celestial
    shape = images["r"].data.shape
    calls = []
    import scipy.ndimage

    original = scipy.ndimage.affine_transform

    def spy(array, matrix, *args, **kwargs):
        calls.append(np.ndim(matrix))
        return original(array, matrix, *args, **kwargs)

    monkeypatch.setattr(scipy.ndimage, "affine_transform", spy)
    data, ivar = detection._on_reference_grid("g", images["g"], "r", ref_wcs, shape)
    assert calls == [1, 1]  # wcs_jitter shifts the grids
    rotated = copy.deepcopy(images["g"])
    angle = np.deg2rad(0.5)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if rotated.wcs.wcs.has_cd():
        rotated.wcs.wcs.cd = turn @ rotated.wcs.wcs.cd
    else:
        rotated.wcs.wcs.pc = turn @ rotated.wcs.wcs.get_pc()
    calls.clear()
    detection._on_reference_grid("g", rotated, "r", ref_wcs, shape)
    assert calls == [2, 2]
    # the diagonal map resamples as the full one does, to rounding
    matrix, offset = detection._affine_to(ref_wcs, images["g"].wcs.celestial, shape)
    full, _ = detection._band_weight(images["g"])
    np.testing.assert_allclose(data, original(full, matrix, offset, output_shape=shape,
                                              order=1, cval=0.0), rtol=1e-4, atol=1e-4)


def _two_stars(separation):
    shape = (64, 64)
    data = moffat(shape, 28.0, 32.0, 400.0) + moffat(shape, 28.0 + separation, 32.0, 300.0)
    data = data + np.random.default_rng(1).normal(0.0, 0.05, shape)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, -5.0]
    wcs.wcs.crpix = [32.0, 32.0]
    wcs.wcs.cdelt = [-0.074 / 3600.0, 0.074 / 3600.0]
    return CCDData(data.astype(np.float32), unit="adu", wcs=wcs,
                   uncertainty=None, meta={"FILTER": "r"})


def test_deblending_splits_a_close_pair():
    image = _two_stars(6.0)
    assert len(detect_sources(image, deblend=False)) == 1
    found = detect_sources(image, deblend=True)
    assert len(found) == 2
    assert found["deblended"].all()
    assert sorted(np.round(found["x"])) == [28, 34]


def test_min_snr_drops_noise_peaks_and_keeps_sources():
    # pure noise at a low pixel threshold: many peaks, all of low snr
    image = _two_stars(6.0)
    noise = CCDData(np.random.default_rng(5).normal(0, 1, (128, 128)).astype(np.float32),
                    unit="adu", wcs=image.wcs)
    loose = detect_sources({"r": noise}, nsigma=2.0, min_snr=0)
    assert len(loose) > 5
    kept = detect_sources({"r": noise}, nsigma=2.0, min_snr=5.0)
    assert len(kept) == np.sum(loose["snr"] >= 5.0) < len(loose)
    assert kept.meta["detection"]["min_snr"] == 5.0
    # the bright pair survives the default cut
    assert len(detect_sources(image)) == 2
    with pytest.raises(ValueError, match="min_snr must be a number >= 0"):
        detect_sources(image, min_snr=-1)


def test_a_sky_gradient_is_subtracted_not_detected():
    # Three bands of 768^2 with the sky left in: a level and a gradient of 2
    # sigma across the field, and 30 stars on a grid. A constant sky left the
    # gradient in, which the smoothed 3-band stack turns into sources along
    # the edges (hundreds of false detections).
    shape, sigma = (768, 768), 1.0
    grid = np.arange(64, 768, 128)
    xs, ys = (a.ravel() + 0.3 for a in np.meshgrid(grid, grid[:5]))
    stars = sum(moffat(shape, x, y, 200.0) for x, y in zip(xs, ys))
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] / shape[0]
    wcs = _two_stars(6.0).wcs
    images = {}
    for k, band in enumerate(("g", "r", "i")):
        noise = np.random.default_rng(k).normal(0.0, sigma, shape)
        sky = 40.0 * sigma + 2.0 * sigma * (xx + 0.6 * yy)
        images[band] = CCDData((stars + sky + noise).astype(np.float32), unit="adu", wcs=wcs)
    found = detect_sources(images)
    x_found = np.asarray(found["x"])
    y_found = np.asarray(found["y"])
    near = np.hypot(x_found[:, None] - xs, y_found[:, None] - ys).min(axis=1) < 2.0
    assert near.sum() == len(xs)  # every star, once
    assert (~near).sum() <= 2  # noise peaks at most, no sky
    assert all(images[band].data.dtype == np.float32 for band in images)  # inputs untouched


def test_empty_field_gives_an_empty_table():
    image = _two_stars(6.0)
    image = CCDData(np.random.default_rng(2).normal(0, 1, (64, 64)).astype(np.float32),
                    unit="adu", wcs=image.wcs)
    found = detect_sources({"r": image}, nsigma=50.0)
    assert len(found) == 0
    assert "ra" in found.colnames and "flux" in found.colnames


def test_errors():
    image = _two_stars(6.0)
    with pytest.raises(TypeError, match="images must be a CCDData or a mapping"):
        detect_sources([image])
    with pytest.raises(ValueError, match=r"reference='g' is not one of the bands \['r'\]"):
        detect_sources({"r": image}, reference="g")
    with pytest.raises(ValueError, match=r"bands \['g'\] are not in images"):
        detect_sources({"r": image}, bands=["g"])
    with pytest.raises(ValueError, match="nsigma must be a positive number, got -1"):
        detect_sources(image, nsigma=-1)
    with pytest.raises(ValueError, match="n_pixels must be a positive int, got 2.5"):
        detect_sources(image, n_pixels=2.5)
    bare = copy.deepcopy(image)
    bare.wcs = None
    with pytest.raises(ValueError, match=r"images\['r'\] has no celestial WCS"):
        detect_sources({"r": bare})


def test_inverse_variance_of_each_uncertainty_kind():
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    from astro_starglx.detection import inverse_variance

    sigma = np.array([[0.5, 2.0], [0.0, 1.0]], dtype=np.float32)
    expected = np.array([[4.0, 0.25], [np.inf, 1.0]], dtype=np.float32)
    for unc in (StdDevUncertainty(sigma), VarianceUncertainty(sigma**2)):
        ivar = inverse_variance(unc)
        assert ivar.dtype == np.float32
        np.testing.assert_allclose(ivar, expected, rtol=1e-6)
    given = InverseVariance(np.array([[4.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(inverse_variance(given), [[4.0, 0.0]])
    assert inverse_variance(None) is None


def test_detect_sources_reads_paths(tmp_path):
    """A band given as a FITS path is read (with its header) and detected alike."""
    pytest.importorskip("galsim")
    from astro_starglx.simulate import simulate_field

    images, _ = simulate_field(shape=(96, 96), n_stars=3, n_galaxies=3, bands=("r",),
                               mag_range=(19, 21), seed=5)
    path = tmp_path / "r.fits"
    images["r"].write(path)
    ref = detect_sources(images)
    got = detect_sources({"r": path})
    assert len(got) == len(ref) > 0
    np.testing.assert_allclose(got["ra"], ref["ra"])
