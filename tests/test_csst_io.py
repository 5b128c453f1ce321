"""Tests of astro_starglx.csst_io: the CSST L1 reader on a synthetic L1-like file set."""

import mmap

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, InverseVariance
from astropy.wcs import WCS

from astro_starglx.csst_io import csst_l1_paths, read_csst_l1

SHAPE = (40, 50)
STEM = "CSST_MSC_MS_SCIE_20270101_10000001_08_L1_V01"


def _header(**cards):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [25.0, 20.0]
    wcs.wcs.cdelt = [-0.074 / 3600.0, 0.074 / 3600.0]
    header = wcs.to_header()
    header.update(cards)
    return header


@pytest.fixture
def l1_files(tmp_path):
    """img (in extension 1, behind an empty primary), wht and flg files of one chip."""
    rng = np.random.default_rng(0)
    data = rng.normal(0.0, 0.05, SHAPE).astype(np.float32)
    wht = np.full(SHAPE, 400.0, dtype=np.float32)
    wht[0, 0] = 0.0  # no data there
    flg = np.zeros(SHAPE, dtype=np.int32)
    flg[5, 5] = 1      # bit 0
    flg[6, 6] = 4      # bit 2
    primary = fits.PrimaryHDU(header=fits.Header([("FILTER", "r"), ("EXPTIME", 150.0)]))
    fits.HDUList([primary, fits.ImageHDU(data, _header(BUNIT="e/s", PHOTZP=25.9))]).writeto(
        tmp_path / f"{STEM}_img_0.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(wht, _header())]).writeto(
        tmp_path / f"{STEM}_wht_0.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flg, _header())]).writeto(
        tmp_path / f"{STEM}_flg_0.fits")
    return tmp_path / f"{STEM}_img_0.fits", data


def test_paths_beside():
    paths = csst_l1_paths(f"/d/{STEM}_img_0.fits")
    assert paths["wht"].name == f"{STEM}_wht_0.fits"
    assert paths["flg"].name == f"{STEM}_flg_0.fits"
    assert csst_l1_paths("a_img.fits")["flg"].name == "a_flg.fits"
    with pytest.raises(ValueError, match="holds no '_img_' tag"):
        csst_l1_paths("image.fits")


def test_read_l1(l1_files):
    path, data = l1_files
    image = read_csst_l1(path)
    assert isinstance(image, CCDData)
    np.testing.assert_array_equal(image.data, data)
    assert isinstance(image.uncertainty, InverseVariance)
    assert image.uncertainty.array[1, 1] == 400.0
    assert image.unit.to_string() in ("electron / s", "e / s")
    # every flg bit is bad by default; wht = 0 is bad too
    assert image.mask[5, 5] and image.mask[6, 6] and image.mask[0, 0]
    assert image.mask.sum() == 3
    assert image.meta["MAGZERO"] == 25.9  # from PHOTZP
    assert image.meta["FILTER"] == "r"  # the primary header is merged
    assert image.wcs.has_celestial
    assert image.wcs.world_to_pixel_values(150.0, 2.0) == pytest.approx((24.0, 19.0))
    # memory-mapped: the data and the weights live in the files, not in copies
    for array in (image.data, image.uncertainty.array):
        chain, base = [], array
        while base is not None:
            chain.append(base)
            base = getattr(base, "base", None)
        assert any(isinstance(obj, (np.memmap, mmap.mmap)) for obj in chain)


def test_read_l1_overrides(l1_files):
    path, _ = l1_files
    image = read_csst_l1(path, zeropoint=24.0, flag_bits=0b100, unit="adu/s")
    assert image.meta["MAGZERO"] == 24.0
    assert not image.mask[5, 5] and image.mask[6, 6]
    assert str(image.unit) == "adu / s"
    bare = read_csst_l1(path, weight_path=None, flag_path=None, zeropoint_keywords=["NOPE"])
    assert bare.uncertainty is None and bare.mask is None
    assert "MAGZERO" not in bare.meta


def test_read_l1_classifies(l1_files, tiny_weights_file):
    """The reader's output goes straight into classify() (one band of a 7-band model)."""
    from astropy.table import Table

    from astro_starglx import StarGalaxyClassifier, StarGalaxyWarning

    path, _ = l1_files
    image = read_csst_l1(path)
    catalog = Table({"ra": [150.0], "dec": [2.0]})
    with pytest.warns(StarGalaxyWarning, match="BAND_MISSING"):
        out = StarGalaxyClassifier(tiny_weights_file, device="cpu").classify(
            catalog, {"r": image})
    assert len(out) == 1 and np.isfinite(out["p_galaxy"][0])


def test_read_l1_errors(l1_files, tmp_path):
    path, _ = l1_files
    with pytest.raises(FileNotFoundError, match="the CSST L1 image file does not exist"):
        read_csst_l1(tmp_path / "none_img_0.fits")
    with pytest.raises(ValueError, match="flag_bits must be None"):
        read_csst_l1(path, flag_bits=-1)
    with pytest.raises(TypeError, match="zeropoint must be a finite real number"):
        read_csst_l1(path, zeropoint="25")
    with pytest.raises(FileNotFoundError, match="flag_path='nope.fits' does not exist"):
        read_csst_l1(path, flag_path="nope.fits")
    (tmp_path / f"{STEM}_wht_0.fits").unlink()
    with pytest.raises(FileNotFoundError, match=r"weight_path='auto': .*_wht_0.fits does not"):
        read_csst_l1(path)
    fits.ImageHDU(np.ones((3, 3), np.float32)).writeto(tmp_path / "w.fits")
    with pytest.raises(ValueError, match=r"weight_path file .* shape \(3, 3\)"):
        read_csst_l1(path, weight_path=tmp_path / "w.fits")
    plain = tmp_path / "plain.fits"
    fits.writeto(plain, np.zeros(SHAPE, np.float32))
    with pytest.raises(ValueError, match="holds no '_img_' tag"):
        read_csst_l1(plain)
    with pytest.raises(ValueError, match="no celestial WCS"):
        read_csst_l1(plain, weight_path=None, flag_path=None)
    odd = tmp_path / "odd_img.fits"
    fits.writeto(odd, np.zeros(SHAPE, np.float32), _header(BUNIT="furlongs"))
    with pytest.raises(ValueError, match="BUNIT = 'furlongs' is not a unit .* pass unit="):
        read_csst_l1(odd, weight_path=None, flag_path=None)
    assert str(read_csst_l1(odd, weight_path=None, flag_path=None, unit="adu").unit) == "adu"
    table = tmp_path / "t_img.fits"
    fits.PrimaryHDU().writeto(table)
    with pytest.raises(ValueError, match="no HDU holds a 2-D image"):
        read_csst_l1(table, weight_path=None, flag_path=None)


# --------------------------------------------------------------------------
# read_image: any FITS image, as classify() reads a path or HDU


def test_read_image_round_trips_ccddata(tmp_path):
    """What CCDData.write writes comes back: data, WCS, uncertainty, mask, header."""
    from astropy.nddata import StdDevUncertainty

    from astro_starglx.csst_io import read_image

    rng = np.random.default_rng(1)
    data = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[3, 4] = True
    ccd = CCDData(data, unit="electron/s", wcs=WCS(_header()),
                  uncertainty=StdDevUncertainty(np.full(SHAPE, 2.0, np.float32)), mask=mask,
                  meta={"MAGZERO": 25.5, "FILTER": "g"})
    path = tmp_path / "g.fits"
    ccd.write(path)
    from astropy import log

    fits.setval(path, "BUNIT", value="electron/s", ext=0)  # as written by hand, no spaces
    with log.log_to_list() as records:  # BUNIT is the unit: nothing to say, once per file
        image = read_image(path)
    assert not records
    with log.log_to_list() as records:  # another unit given: astropy says so
        assert str(read_image(path, unit="nJy").unit) == "nJy"
    assert any("using the unit nJy" in record.getMessage() for record in records)
    np.testing.assert_array_equal(image.data, data)
    np.testing.assert_array_equal(image.mask, mask)
    assert isinstance(image.uncertainty, StdDevUncertainty)
    np.testing.assert_array_equal(image.uncertainty.array, 2.0)
    assert str(image.unit) == "electron / s" and image.header["MAGZERO"] == 25.5
    np.testing.assert_allclose(image.wcs.pixel_to_world_values(3.0, 7.0),
                               ccd.wcs.pixel_to_world_values(3.0, 7.0))
    assert read_image(str(path)).shape == SHAPE  # str and Path alike


def test_read_image_multi_extension_and_hdus(tmp_path):
    """Image in extension 1: primary keywords kept; HDU, HDUList, hdu= and unit= work."""
    from astro_starglx.csst_io import read_image

    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    primary = fits.PrimaryHDU(header=fits.Header([("MAGZERO", 26.1), ("SEEING", 0.9)]))
    hdul = fits.HDUList([primary, fits.ImageHDU(data, _header(FILTER="r"))])
    path = tmp_path / "mef.fits"
    hdul.writeto(path)
    for source in (path, hdul):
        image = read_image(source)
        np.testing.assert_array_equal(image.data, data)
        assert image.header["MAGZERO"] == 26.1 and image.header["SEEING"] == 0.9
        assert image.header["FILTER"] == "r" and str(image.unit) == "adu"
        assert image.wcs.has_celestial
    assert read_image(path, hdu=1).header["MAGZERO"] == 26.1
    one = read_image(fits.ImageHDU(data, _header(BUNIT="e-/s")))
    assert str(one.unit) == "electron / s" and "MAGZERO" not in one.header
    assert str(read_image(path, unit="nJy").unit) == "nJy"
    # an SDSS-like frame: nanomaggies (plural) read as astropy's nanomaggy
    sdss = read_image(fits.ImageHDU(data, _header(BUNIT="nanomaggies")))
    assert sdss.unit == u.nmgy
    nowcs = read_image(fits.PrimaryHDU(data))
    assert nowcs.wcs is None  # classify() then says the band has no WCS


def test_read_image_reads_l1_with_companions(l1_files):
    """An _img_ file whose wht and flg lie beside it is read as CSST L1."""
    from astro_starglx.csst_io import read_image

    path, data = l1_files
    image = read_image(path)
    assert isinstance(image.uncertainty, InverseVariance)
    assert image.mask[5, 5] and image.header["MAGZERO"] == 25.9


def test_read_image_errors(tmp_path):
    from astro_starglx.csst_io import read_image

    with pytest.raises(FileNotFoundError, match="'nope.fits': the image file does not exist"):
        read_image("nope.fits")
    with pytest.raises(TypeError, match="source must be a FITS file path or HDU, got ndarray"):
        read_image(np.zeros((3, 3)))
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="a", format="E", array=np.ones(2))])]).writeto(table)
    with pytest.raises(ValueError, match="no HDU holds a 2-D image"):
        read_image(table)
    with pytest.raises(ValueError, match=r"hdu=5 does not exist \(the file has 2 HDUs\)"):
        read_image(table, hdu=5)
    with pytest.raises(ValueError,
                       match=r"hdu=1 holds no 2-D image \(a BinTableHDU with NAXIS = 2\)"):
        read_image(table, hdu=1)
    with pytest.raises(ValueError, match=r"ImageHDU: no HDU holds a 2-D image"):
        read_image(fits.ImageHDU(np.zeros((2, 3, 4), np.float32)))
    odd = tmp_path / "odd.fits"
    fits.writeto(odd, np.zeros(SHAPE, np.float32), _header(BUNIT="furlongs"))
    with pytest.raises(ValueError, match="BUNIT = 'furlongs' is not a unit .* pass unit="):
        read_image(odd)
