from types import SimpleNamespace

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import (
    CCDData,
    Cutout2D,
    InverseVariance,
    NDData,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.nddata.utils import NoOverlapError

from astro_starglx.cutouts import (
    BandStamps,
    cut_band,
    cutout_origin,
    extract_band,
    extract_cutouts,
    stamp_origin,
)
from astro_starglx.flags import ClassFlag

NY, NX = 37, 53  # asymmetric and non-square: an x/y swap cannot pass


def distinct_image(dtype=np.float64):
    """Every pixel a different value, 1000 * row + column."""
    yy, xx = np.mgrid[:NY, :NX]
    return (1000 * yy + xx).astype(dtype)


def reference(data, x, y, size, fill_value=np.nan):
    """Stamps and flags from astropy's Cutout2D, one source at a time."""
    stamps = np.full((len(x), size, size), fill_value, dtype=np.float32)
    flags = np.zeros(len(x), dtype=np.uint16)
    for i, (xi, yi) in enumerate(zip(x, y)):
        if not (np.isfinite(xi) and np.isfinite(yi)):
            flags[i] = ClassFlag.OFF_IMAGE
            continue
        try:
            cut = Cutout2D(data, (xi, yi), size, mode="partial", fill_value=fill_value)
        except NoOverlapError:
            flags[i] = ClassFlag.OFF_IMAGE
            continue
        stamps[i] = cut.data
        if cut.data.shape != cut.data[cut.slices_cutout].shape:
            flags[i] = ClassFlag.PARTIAL
    return stamps, flags


def random_positions(rng, n, size):
    """Positions inside, across all four edges and fully off the image."""
    x = rng.uniform(-size, NX + size, n)
    y = rng.uniform(-size, NY + size, n)
    # exact integers and half-integers exercise the ceil rule
    x[: n // 4] = np.round(x[: n // 4] * 2) / 2
    y[: n // 4] = np.round(y[: n // 4] * 2) / 2
    return x, y


@pytest.mark.parametrize("size", [1, 2, 5, 6, 11, 24, 25])
def test_pixels_match_cutout2d(size):
    rng = np.random.default_rng(size)
    data = distinct_image()
    x, y = random_positions(rng, 300, size)
    stamps, flags = extract_cutouts(data, x, y, size=size)
    ref_stamps, ref_flags = reference(data, x, y, size)
    assert stamps.shape == (300, size, size)
    assert stamps.dtype == np.float32
    assert flags.dtype == np.uint16
    np.testing.assert_array_equal(stamps, ref_stamps)
    np.testing.assert_array_equal(flags, ref_flags)
    # the sample did reach every case
    expected = {0, ClassFlag.OFF_IMAGE} | ({ClassFlag.PARTIAL} if size > 1 else set())
    assert set(np.unique(flags)) == expected


@pytest.mark.parametrize("size", [7, 8])
def test_partial_at_each_edge(size):
    data = distinct_image()
    # left, right, bottom (y = 0), top (y = NY - 1), and the four corners
    x = np.array([0.3, NX - 1.2, 20.0, 20.0, -2.0, NX + 1.0, -1.0, NX - 0.5])
    y = np.array([18.0, 18.4, 0.0, NY - 1.0, -2.0, -1.5, NY + 1.0, NY - 0.5])
    stamps, flags = extract_cutouts(data, x, y, size=size)
    ref_stamps, _ = reference(data, x, y, size)
    np.testing.assert_array_equal(stamps, ref_stamps)
    assert np.all(flags == ClassFlag.PARTIAL)
    assert np.all(np.isnan(stamps).any(axis=(1, 2)))
    assert np.all(np.isfinite(stamps).any(axis=(1, 2)))


def test_x_is_column_and_y_is_row():
    data = distinct_image()
    stamps, flags = extract_cutouts(data, [40.0], [5.0], size=3)
    assert flags[0] == 0
    assert stamps[0, 1, 1] == data[5, 40] == 5040
    np.testing.assert_array_equal(stamps[0], data[4:7, 39:42])


def test_fully_off_image_and_non_finite():
    data = distinct_image()
    x = np.array([-10.0, NX + 10.0, 5.0, 5.0, np.nan, 5.0, np.inf, 1e30, -1e300])
    y = np.array([5.0, 5.0, -10.0, NY + 10.0, 5.0, np.nan, 5.0, 5.0, 5.0])
    stamps, flags = extract_cutouts(data, x, y, size=5)
    assert np.all(flags == ClassFlag.OFF_IMAGE)
    assert np.all(np.isnan(stamps))
    stamps0, _ = extract_cutouts(data, x, y, size=5, fill_value=0.0)
    assert np.all(stamps0 == 0)


def test_fill_value_matches_cutout2d():
    rng = np.random.default_rng(1)
    data = distinct_image()
    x, y = random_positions(rng, 100, 9)
    stamps, _ = extract_cutouts(data, x, y, size=9, fill_value=-7.5)
    ref, _ = reference(data, x, y, 9, fill_value=-7.5)
    np.testing.assert_array_equal(stamps, ref)


@pytest.mark.parametrize("size", [4, 5])
def test_cutout_origin_matches_cutout2d(size):
    rng = np.random.default_rng(7)
    data = distinct_image()
    x = rng.uniform(-1, NX, 200)
    y = rng.uniform(-1, NY, 200)
    x[:20] = np.arange(20) + 0.5  # half-integers: astropy rounds up
    x0, y0 = cutout_origin(x, y, size=size)
    assert x0.dtype == np.int64 and y0.dtype == np.int64
    for i in range(len(x)):
        cut = Cutout2D(data, (x[i], y[i]), size, mode="partial")
        assert x0[i] == cut.xmin_original - cut.slices_cutout[1].start
        assert y0[i] == cut.ymin_original - cut.slices_cutout[0].start
        # the source sits within half a pixel of the stamp centre
        centre = (size - 1) / 2
        assert -0.5 < x[i] - x0[i] - centre <= 0.5
        np.testing.assert_allclose(cut.input_position_cutout, (x[i] - x0[i], y[i] - y0[i]))


def test_cutout_origin_non_finite_is_zero():
    x0, y0 = cutout_origin([np.nan, 3.0], [1.0, np.inf], size=5)
    assert x0.tolist() == [0, 0] and y0.tolist() == [0, 0]


def test_no_sources():
    stamps, flags = extract_cutouts(distinct_image(), [], [], size=5)
    assert stamps.shape == (0, 5, 5) and stamps.dtype == np.float32
    assert flags.shape == (0,) and flags.dtype == np.uint16
    # also on an image smaller than the stamp
    stamps, flags = extract_cutouts(np.zeros((3, 3)), [], [], size=25)
    assert stamps.shape == (0, 25, 25)


def test_image_smaller_than_stamp():
    data = np.arange(12.0).reshape(3, 4)
    stamps, flags = extract_cutouts(data, [1.0], [1.0], size=7)
    assert flags[0] == ClassFlag.PARTIAL
    ref = Cutout2D(data, (1.0, 1.0), 7, mode="partial", fill_value=np.nan).data
    np.testing.assert_array_equal(stamps[0], ref)


def test_scalar_positions():
    stamps, flags = extract_cutouts(distinct_image(), 10.0, 10.0, size=3)
    assert stamps.shape == (1, 3, 3)


@pytest.mark.parametrize("dtype", ["<f4", ">f4", ">f8", "<f8", ">i2", "int32", "uint8", "uint16"])
def test_dtypes(dtype):
    rng = np.random.default_rng(3)
    data = (distinct_image() % 200).astype(dtype)  # fits in uint8
    x, y = random_positions(rng, 60, 6)
    stamps, flags = extract_cutouts(data, x, y, size=6)
    assert stamps.dtype == np.float32
    ref, ref_flags = reference(data.astype(np.float64), x, y, 6)
    np.testing.assert_array_equal(stamps, ref)
    np.testing.assert_array_equal(flags, ref_flags)


def test_input_not_mutated():
    rng = np.random.default_rng(4)
    data = rng.normal(size=(NY, NX)).astype(">f4")
    copy = data.copy()
    x, y = random_positions(rng, 50, 5)
    x_copy, y_copy = x.copy(), y.copy()
    stamps, _ = extract_cutouts(data, x, y, size=5)
    stamps[:] = 99.0  # the stamps own their memory
    np.testing.assert_array_equal(data, copy)
    assert data.dtype == np.dtype(">f4")
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(y, y_copy)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "25", None])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size must be a positive integer"):
        extract_cutouts(distinct_image(), [1.0], [1.0], size=size)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        cutout_origin([1.0], [1.0], size=size)


def test_numpy_integer_size():
    stamps, _ = extract_cutouts(distinct_image(), [10.0], [10.0], size=np.int64(5))
    assert stamps.shape == (1, 5, 5)


def test_bad_data_and_positions():
    with pytest.raises(ValueError, match="data must be a 2-D image array"):
        extract_cutouts(np.zeros((2, 3, 4)), [1.0], [1.0], size=3)
    with pytest.raises(ValueError, match="data must hold numbers"):
        extract_cutouts(np.full((3, 3), "a"), [1.0], [1.0], size=3)
    with pytest.raises(ValueError, match="x and y must be 1-D arrays of the same length"):
        extract_cutouts(distinct_image(), [1.0, 2.0], [1.0], size=3)
    with pytest.raises(ValueError, match="x and y must be 1-D arrays"):
        extract_cutouts(distinct_image(), [[1.0]], [[1.0]], size=3)


# --------------------------------------------------------------------------
# extract_band


def test_extract_band_plain_image():
    rng = np.random.default_rng(5)
    data = distinct_image(np.float32)
    image = CCDData(data, unit="adu")
    x, y = random_positions(rng, 80, 5)
    band = extract_band(image, x, y, size=5)
    assert isinstance(band, BandStamps)
    assert band.sigma is None
    stamps, flags = extract_cutouts(data, x, y, size=5)
    np.testing.assert_array_equal(band.data, stamps)
    np.testing.assert_array_equal(band.flags, flags)  # PARTIAL NaN is not MASKED
    with pytest.raises(AttributeError):
        band.data = None  # frozen


def test_extract_band_mask():
    data = distinct_image(np.float32)
    mask = np.zeros(data.shape, dtype=bool)
    mask[10, 20] = True
    mask[1, 5] = True
    image = CCDData(data, unit="adu", mask=mask)
    # covers a masked pixel; far from them; partial and covering one; partial, not covering
    x = np.array([20.0, 40.0, 5.0, 0.0])
    y = np.array([11.0, 30.0, 0.0, 30.0])
    band = extract_band(image, x, y, size=5)
    assert band.flags[0] == ClassFlag.MASKED
    assert np.isnan(band.data[0, 1, 2]) and np.isfinite(band.data[0]).sum() == 24
    assert band.flags[1] == 0
    assert band.flags[2] == ClassFlag.PARTIAL | ClassFlag.MASKED
    assert band.flags[3] == ClassFlag.PARTIAL
    # the image is untouched
    assert np.all(np.isfinite(image.data))
    assert image.mask.sum() == 2


def test_extract_band_integer_bitmask_and_nan_data():
    data = distinct_image(np.float32)
    data[30, 5] = np.nan
    flg = np.zeros(data.shape, dtype=np.int32)
    flg[10, 40] = 4  # a CSST-style flag bit
    image = NDData(data, mask=flg)
    band = extract_band(image, [40.0, 5.0, 25.0], [10.0, 30.0, 20.0], size=3)
    assert band.flags.tolist() == [ClassFlag.MASKED, ClassFlag.MASKED, 0]
    assert np.isnan(band.data[0, 1, 1]) and np.isnan(band.data[1, 1, 1])


def uncertainty_image(kind, values):
    data = np.ones(values.shape, dtype=np.float32)
    return CCDData(data, unit="adu", uncertainty=kind(values))


def test_extract_band_stddev():
    rng = np.random.default_rng(6)
    sigma = rng.uniform(1, 3, (NY, NX))
    band = extract_band(uncertainty_image(StdDevUncertainty, sigma), [20.0], [10.0], size=3)
    np.testing.assert_allclose(band.sigma[0], sigma[9:12, 19:22], rtol=1e-6)
    assert band.sigma.dtype == np.float32
    assert band.flags[0] == 0


def test_extract_band_variance():
    rng = np.random.default_rng(7)
    sigma = rng.uniform(1, 3, (NY, NX))
    image = uncertainty_image(VarianceUncertainty, sigma**2)
    band = extract_band(image, [20.0], [10.0], size=3)
    np.testing.assert_allclose(band.sigma[0], sigma[9:12, 19:22], rtol=1e-6)


def test_extract_band_inverse_variance_zero_weight():
    rng = np.random.default_rng(8)
    sigma = rng.uniform(1, 3, (NY, NX))
    weight = 1.0 / sigma**2
    weight[10, 20] = 0.0  # no data: CSST wht = 0
    image = uncertainty_image(InverseVariance, weight)
    band = extract_band(image, [20.0, 30.0], [10.0, 20.0], size=3)
    expected = sigma[9:12, 19:22].copy()
    expected[1, 1] = np.nan
    np.testing.assert_allclose(band.sigma[0], expected, rtol=1e-6)
    assert np.isnan(band.data[0, 1, 1])
    assert band.flags.tolist() == [ClassFlag.MASKED, 0]
    np.testing.assert_allclose(band.sigma[1], sigma[19:22, 29:32], rtol=1e-6)
    assert image.uncertainty.array[10, 20] == 0.0


def test_extract_band_uncertainty_unit_converted():
    data = np.ones((NY, NX))
    image = CCDData(data, unit=u.Jy, uncertainty=StdDevUncertainty(data * 5.0, unit=u.mJy))
    band = extract_band(image, [10.0], [10.0], size=3)
    np.testing.assert_allclose(band.sigma, 0.005, rtol=1e-6)


def test_extract_band_partial_sigma_is_nan_outside():
    sigma = np.full((NY, NX), 2.0)
    band = extract_band(uncertainty_image(StdDevUncertainty, sigma), [0.0], [0.0], size=3)
    assert band.flags[0] == ClassFlag.PARTIAL
    assert np.isnan(band.sigma[0, 0]).all() and np.isnan(band.sigma[0, :, 0]).all()
    np.testing.assert_allclose(band.sigma[0, 1:, 1:], 2.0)


def test_extract_band_no_sources():
    image = uncertainty_image(StdDevUncertainty, np.ones((NY, NX)))
    band = extract_band(image, [], [], size=5)
    assert band.data.shape == (0, 5, 5) and band.sigma.shape == (0, 5, 5)
    assert band.flags.shape == (0,)


def test_extract_band_errors():
    with pytest.raises(TypeError, match="image must be an astropy NDData"):
        extract_band(np.zeros((5, 5)), [1.0], [1.0], size=3)
    unknown = NDData(np.zeros((5, 5)), uncertainty=np.ones((5, 5)))
    with pytest.raises(TypeError, match="StdDevUncertainty, VarianceUncertainty or InverseVar"):
        extract_band(unknown, [1.0], [1.0], size=3)
    bad_mask = NDData(np.zeros((5, 5)), mask=np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="image.mask must have the shape of image.data"):
        extract_band(bad_mask, [1.0], [1.0], size=3)
    bad_unc = NDData(np.zeros((5, 5)), uncertainty=StdDevUncertainty(np.ones((4, 4))))
    with pytest.raises(ValueError, match="image.uncertainty must have the shape"):
        extract_band(bad_unc, [1.0], [1.0], size=3)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        extract_band(CCDData(np.zeros((5, 5)), unit="adu"), [1.0], [1.0], size=0)


def test_extract_band_does_not_mutate():
    rng = np.random.default_rng(9)
    data = rng.normal(size=(NY, NX)).astype(">f4")
    data[3, 3] = np.nan
    mask = rng.uniform(size=data.shape) < 0.05
    weight = rng.uniform(0, 2, size=data.shape)
    image = CCDData(data, unit="adu", mask=mask, uncertainty=InverseVariance(weight))
    copies = data.copy(), mask.copy(), weight.copy()
    x, y = random_positions(rng, 40, 7)
    extract_band(image, x, y, size=7)
    np.testing.assert_array_equal(image.data, copies[0])
    np.testing.assert_array_equal(image.mask, copies[1])
    np.testing.assert_array_equal(image.uncertainty.array, copies[2])


def test_extract_band_uncertainty_unit_not_convertible():
    # NDData refuses such a pair itself; an NDData-like object is checked here
    data = np.ones((NY, NX))
    image = SimpleNamespace(data=data, mask=None, unit=u.Jy,
                            uncertainty=StdDevUncertainty(data, unit=u.s))
    with pytest.raises(ValueError, match=r"image.uncertainty has unit s, which cannot be "
                                         r"converted to Jy as a StdDevUncertainty"):
        extract_band(image, [10.0], [10.0], size=3)


@pytest.mark.parametrize("kind", [StdDevUncertainty, VarianceUncertainty, InverseVariance])
def test_sigma_matches_represent_as(kind):
    # The conversion is hand-written (see cutouts._to_sigma); astropy's
    # represent_as gives the same numbers for StdDev and Variance and, for
    # InverseVariance, sqrt(1 / w) instead of 1 / sqrt(w): within 2 float32 ulp.
    rng = np.random.default_rng(10)
    values = rng.lognormal(0.0, 3.0, (NY, NX)).astype(np.float32)
    image = CCDData(np.zeros((NY, NX)), unit="adu", uncertainty=kind(values))
    x, y = np.meshgrid(np.arange(2.0, NX - 2.0), np.arange(2.0, NY - 2.0))
    band = extract_band(image, x.ravel(), y.ravel(), size=5)
    with np.errstate(divide="ignore"):
        expected = kind(values).represent_as(StdDevUncertainty).array
    x0, y0 = cutout_origin(x.ravel(), y.ravel(), size=5)
    ref = np.array([expected[j:j + 5, i:i + 5] for i, j in zip(x0, y0)])
    if kind is InverseVariance:
        np.testing.assert_array_max_ulp(band.sigma, ref, maxulp=2)
    else:
        np.testing.assert_array_equal(band.sigma, ref)


def test_cores_equal_the_public_functions():
    rng = np.random.default_rng(11)
    data = rng.normal(size=(NY, NX)).astype(np.float32)
    mask = rng.uniform(size=data.shape) < 0.05
    image = CCDData(data, unit="adu", mask=mask,
                    uncertainty=InverseVariance(rng.uniform(0, 2, size=data.shape)))
    x, y = random_positions(rng, 50, 7)
    public = extract_band(image, x, y, size=7)
    core = cut_band(image, data, x, y, size=7)
    for name in ("data", "sigma", "flags"):
        np.testing.assert_array_equal(getattr(core, name), getattr(public, name))
    for a, b in zip(stamp_origin(x, y, size=7), cutout_origin(x, y, size=7)):
        np.testing.assert_array_equal(a, b)
