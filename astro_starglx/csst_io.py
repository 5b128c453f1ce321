"""
Read FITS images, CSST survey-camera L1 chips included, into `~astropy.nddata.CCDData`.

`read_image` reads any FITS image (a path, an HDU or an HDU list) the way
`~astro_starglx.StarGalaxyClassifier.classify` accepts it in place of a
`~astropy.nddata.CCDData`; CSST L1 files go to `read_csst_l1`.

A CSST L1 single-chip product is three FITS files side by side, told apart
by a tag in the file name::

    CSST_MSC_MS_SCIE_..._08_L1_V01_img_....fits   image, e-/s
    CSST_MSC_MS_SCIE_..._08_L1_V01_wht_....fits   weight = inverse variance
    CSST_MSC_MS_SCIE_..._08_L1_V01_flg_....fits   bit flags (0 = good)

`read_csst_l1` reads the image with its ``wht`` as an
`~astropy.nddata.InverseVariance` uncertainty and its ``flg`` bits as the
mask. The pixel arrays are memory-mapped: nothing is read until a pixel is
touched, so a worker holding many chips only pays for what it cuts out.

What is documented and what is assumed
--------------------------------------
We could not find a public, citable specification of the CSST L1 header
keywords or of the meaning of each ``flg`` bit. This reader therefore
assumes only what every FITS image has, and makes the rest overridable:

- the image is the first HDU with a 2-D data array (CSST L1 puts it in
  extension 1 behind an empty primary HDU; both layouts are read), and the
  header is the primary header updated by that HDU's header;
- the WCS is the standard FITS WCS of that header (`astropy.wcs.WCS`, SIP
  distortion included when present);
- the zero point is the ``zeropoint=`` argument, else the first of
  ``zeropoint_keywords`` present (by default those of
  `ZEROPOINT_KEYWORDS`: ``MAGZERO``, ``PHOTZP``,
  ``MAGZP``, ``MAGZPT``, ``ZP``); it is stored as ``MAGZERO`` in the returned
  header, which is how `~astro_starglx.StarGalaxyClassifier` reads it;
- every ``flg`` bit marks a bad pixel unless ``flag_bits`` says which bits
  do (e.g. ``flag_bits=0b1111`` to ignore the higher bits);
- the unit is ``BUNIT``, else ``electron/s`` (L1 images are in e-/s).
"""

import logging
import re
import warnings
from pathlib import Path

import numpy as np

__all__ = ["ZEROPOINT_KEYWORDS", "read_image", "read_csst_l1", "csst_l1_paths"]

log = logging.getLogger(__name__)

#: Header keywords searched, in order, for a band's AB zero point.
ZEROPOINT_KEYWORDS = ("MAGZERO", "PHOTZP", "MAGZP", "MAGZPT", "ZP")

_TAG = re.compile(r"_img(?=[_.])")


def csst_l1_paths(path):
    """
    The ``img``, ``wht`` and ``flg`` file paths of one CSST L1 chip.

    Parameters
    ----------
    path : path-like
        The ``_img_`` file (its name holds ``_img_`` or ends in ``_img.fits``).

    Returns
    -------
    paths : dict
        ``{"img": Path, "wht": Path, "flg": Path}``; the ``wht`` and ``flg``
        files may not exist.

    Raises
    ------
    ValueError
        If the file name does not hold the ``_img`` tag.

    Examples
    --------
    >>> from astro_starglx.csst_io import csst_l1_paths
    >>> csst_l1_paths("chip_08_L1_img_v1.fits")["wht"].name
    'chip_08_L1_wht_v1.fits'
    """
    path = Path(path)
    matches = list(_TAG.finditer(path.name))
    if not matches:
        msg = (f"path {str(path)!r} is not a CSST L1 image name: it holds no '_img_' tag, so "
               "its '_wht_' and '_flg_' files cannot be found; pass weight_path= and "
               "flag_path= explicitly (or None to read without them)")
        raise ValueError(msg)
    start, end = matches[-1].span()
    name = path.name
    return {tag: path.with_name(f"{name[:start]}_{tag}{name[end:]}")
            for tag in ("img", "wht", "flg")}


def _image_hdu(hdul, path):
    for hdu in hdul:
        if hdu.is_image and hdu.header.get("NAXIS", 0) == 2:
            return hdu
    msg = f"{path}: no HDU holds a 2-D image (NAXIS = 2)"
    raise ValueError(msg)


def _read_array(path, *, what, shape):
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        data = _image_hdu(hdul, path).data
    if data.shape != shape:
        msg = (f"{what} file {path} holds an image of shape {data.shape}, but the image is "
               f"{shape}; pass the {what} file of the same chip")
        raise ValueError(msg)
    return data


def _companion(value, default, name):
    if isinstance(value, str) and value == "auto":
        if default is None:
            return None
        if not default.is_file():
            msg = (f"{name}='auto': {default} does not exist beside the image; pass "
                   f"{name}=PATH if it lies elsewhere, or {name}=None to read without it")
            raise FileNotFoundError(msg)
        return default
    if value is None:
        return None
    value = Path(value)
    if not value.is_file():
        msg = f"{name}={str(value)!r} does not exist"
        raise FileNotFoundError(msg)
    return value


def _header_unit(bunit, path):
    """The BUNIT keyword as a unit; ``e/s``, ``e-/s`` and ``nanomaggies`` are understood."""
    from astropy import units as u

    if bunit is None or not str(bunit).strip():
        return u.electron / u.s
    text = str(bunit).strip()
    electrons = re.sub(r"(?i)\be-?(?=\s*(/|$))|electrons", "electron", text)
    # SDSS writes "nanomaggies" in some products; astropy knows the singular
    for candidate in (text, re.sub(r"(?i)maggies\b", "maggy", electrons)):
        try:
            return u.Unit(candidate)
        except ValueError:
            continue
    msg = (f"{path}: BUNIT = {text!r} is not a unit astropy understands; pass unit=, e.g. "
           "unit='electron/s'")
    raise ValueError(msg)


_READABLE = "a CCDData/NDData, a FITS file path, or an astropy.io.fits HDU or HDUList"


def is_readable(value):
    """Whether `read_image` reads ``value`` (a path, an image HDU or an HDU list)."""
    import os

    from astropy.io import fits

    return isinstance(value, (str, os.PathLike, fits.HDUList, fits.PrimaryHDU,
                              fits.ImageHDU, fits.CompImageHDU))


def _pick_hdu(hdul, hdu, what):
    if hdu is None:
        return _image_hdu(hdul, what)
    try:
        picked = hdul[hdu]
    except (IndexError, KeyError) as exc:
        msg = f"{what}: hdu={hdu!r} does not exist (the file has {len(hdul)} HDUs)"
        raise ValueError(msg) from exc
    if not (picked.is_image and picked.header.get("NAXIS", 0) == 2):
        msg = (f"{what}: hdu={hdu!r} holds no 2-D image (a {type(picked).__name__} with "
               f"NAXIS = {picked.header.get('NAXIS', 0)}); pass the HDU of the image")
        raise ValueError(msg)
    return picked


def _image_unit(unit, header, what):
    """``unit``, else BUNIT (``e/s`` read as electron/s), else adu."""
    from astropy import units as u

    if unit is not None:
        return u.Unit(unit)
    if str(header.get("BUNIT", "")).strip():
        return _header_unit(header["BUNIT"], what)
    return u.adu


def _reader_unit(unit, header, what):
    """
    `_image_unit` for `CCDData.read`, or None where astropy reads BUNIT as
    that unit itself: the reader logs a line for every file read with a unit
    given beside BUNIT, one per band and tile in a survey run.
    """
    from astropy import units as u

    wanted = _image_unit(unit, header, what)
    try:
        same = u.Unit(str(header.get("BUNIT", "")).strip() or None) == wanted
    except (ValueError, TypeError):
        same = False
    return None if same else wanted


def read_image(source, *, hdu=None, unit=None):
    """
    Read one band's FITS image into a `~astropy.nddata.CCDData`.

    This is what `~astro_starglx.StarGalaxyClassifier.classify` does with a
    band given as a file path or an HDU instead of a CCDData.

    Parameters
    ----------
    source : path-like, `~astropy.io.fits.HDUList` or image HDU
        A FITS file, an open HDU list, or one image HDU (primary, image or
        compressed image). A CSST L1 ``_img_`` file whose ``_wht_`` and
        ``_flg_`` files lie beside it is read with them by `read_csst_l1`.
    hdu : int, str or None, optional
        The HDU holding the image; ``None`` for the first one with a 2-D
        data array.
    unit : str, `~astropy.units.Unit` or None, optional
        Image unit; ``None`` for the ``BUNIT`` keyword, else ``adu`` (the
        classification reads stamps in noise units and magnitudes through
        the zero point, so the unit's name does not change the result).

    Returns
    -------
    image : `~astropy.nddata.CCDData`
        From a file: memory-mapped data, with the ``UNCERT`` and ``MASK``
        extensions that `~astropy.nddata.CCDData.write` writes, when
        present. The header (the primary header updated by the image HDU's)
        as ``meta``, so that ``MAGZERO`` and PSF keywords are found; the
        celestial WCS of that header (None without one).

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that does not exist.
    ValueError
        If there is no 2-D image, ``hdu`` does not exist, or ``BUNIT`` is
        not a unit (pass ``unit=``).
    TypeError
        If ``source`` is none of the above.

    Examples
    --------
    >>> import numpy as np
    >>> from astropy.io import fits
    >>> from astro_starglx.csst_io import read_image
    >>> image = read_image(fits.PrimaryHDU(np.zeros((4, 5), np.float32)))
    >>> image.shape, str(image.unit)
    ((4, 5), 'adu')
    """
    import os

    from astropy.io import fits
    from astropy.nddata import CCDData
    from astropy.wcs import WCS, FITSFixedWarning

    if not is_readable(source):
        msg = f"source must be a FITS file path or HDU, got {type(source).__name__}"
        raise TypeError(msg)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            msg = f"{str(path)!r}: the image file does not exist"
            raise FileNotFoundError(msg)
        if _TAG.search(path.name) and hdu is None and all(
                p.is_file() for p in csst_l1_paths(path).values()):
            return read_csst_l1(path, unit=unit)
        with fits.open(path, memmap=True) as hdul:
            picked = _pick_hdu(hdul, hdu, str(path))
            index = hdul.index_of(picked)
            primary = hdul[0].header.copy() if index else fits.Header()
            header = primary.copy()
            header.update(picked.header)
        ccd = CCDData.read(path, hdu=index, unit=_reader_unit(unit, header, path), memmap=True)
        skip = {"SIMPLE", "EXTEND", "COMMENT", "HISTORY", "BITPIX", "NAXIS", ""}
        for key in primary:  # e.g. a zero point or PSF keyword kept in the primary header
            if key not in skip and key not in ccd.meta:
                ccd.meta[key] = primary[key]
        return ccd
    what = type(source).__name__
    hdul = source if isinstance(source, fits.HDUList) else fits.HDUList([source])
    picked = _pick_hdu(hdul, hdu, what)
    header = hdul[0].header.copy() if hdul.index_of(picked) else fits.Header()
    header.update(picked.header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    return CCDData(picked.data, unit=_image_unit(unit, header, what),
                   wcs=wcs.celestial if wcs.has_celestial else None, meta=header)


def read_csst_l1(path, *, weight_path="auto", flag_path="auto", zeropoint=None,
                 flag_bits=None, zeropoint_keywords=None, unit=None):
    """
    Read one CSST L1 chip image with its weight and flag maps.

    Parameters
    ----------
    path : path-like
        The ``_img_`` FITS file.
    weight_path, flag_path : "auto", path-like or None, optional
        The ``wht`` (inverse variance) and ``flg`` (bit flags) files:
        ``"auto"`` finds them beside ``path`` by replacing its ``_img``
        tag (see `csst_l1_paths`), and raises if they are not there; a path
        reads that file; ``None`` reads without it (no uncertainty, or no
        flag mask).
    zeropoint : float or None, optional
        AB magnitude of one image unit; overrides the header.
    flag_bits : int or None, optional
        Which ``flg`` bits mark a bad pixel; ``None`` for every bit (the bit
        meanings of CSST L1 are not publicly documented: see the module
        notes). Pixels with ``wht <= 0`` or a non-finite value are masked too.
    zeropoint_keywords : sequence of str or None, optional
        Header keywords searched, in order, for the zero point; ``None``
        for `ZEROPOINT_KEYWORDS`.
    unit : str, `~astropy.units.Unit` or None, optional
        Image unit; ``None`` for ``BUNIT`` (``e/s`` and ``e-/s`` read as
        electron/s), else ``electron/s``.

    Returns
    -------
    image : `~astropy.nddata.CCDData`
        Memory-mapped ``data`` (as stored, e.g. float32), ``uncertainty``
        an `~astropy.nddata.InverseVariance` (the ``wht`` map, memory-mapped)
        or None, ``mask`` (True = bad) or None, the celestial ``wcs``, and
        the merged header as ``meta`` with ``MAGZERO`` set when a zero point
        was found and ``L1IMG``/``L1WHT``/``L1FLG`` naming the files read.
        Without a zero point the header is returned as it is, and
        classification will say so and ask for ``zeropoints=``.

    Raises
    ------
    FileNotFoundError
        If ``path`` or a named (or ``"auto"``) weight or flag file is missing.
    ValueError
        If a file holds no 2-D image, the maps differ in shape from the
        image, the header has no celestial WCS, ``"auto"`` is asked of a
        file name without the ``_img`` tag, or ``flag_bits`` is not a
        non-negative int.
    TypeError
        If ``zeropoint`` is not a real number.

    Examples
    --------
    >>> from astro_starglx.csst_io import read_csst_l1
    >>> image = read_csst_l1("chip_img_01.fits", zeropoint=26.1)  # doctest: +SKIP
    >>> image.uncertainty.uncertainty_type  # doctest: +SKIP
    'ivar'
    """
    from astropy.io import fits
    from astropy.nddata import CCDData, InverseVariance
    from astropy.wcs import WCS, FITSFixedWarning

    path = Path(path)
    if not path.is_file():
        msg = f"path={str(path)!r}: the CSST L1 image file does not exist"
        raise FileNotFoundError(msg)
    if flag_bits is not None and (isinstance(flag_bits, bool)
                                  or not isinstance(flag_bits, (int, np.integer))
                                  or flag_bits < 0):
        msg = (f"flag_bits must be None (every bit is bad) or a non-negative int bit mask, "
               f"got {flag_bits!r}; e.g. flag_bits=0b101 for bits 0 and 2")
        raise ValueError(msg)
    if zeropoint is not None and (isinstance(zeropoint, bool) or not isinstance(
            zeropoint, (int, float, np.integer, np.floating)) or not np.isfinite(zeropoint)):
        msg = f"zeropoint must be a finite real number (AB mag) or None, got {zeropoint!r}"
        raise TypeError(msg)
    auto = any(isinstance(v, str) and v == "auto" for v in (weight_path, flag_path))
    siblings = csst_l1_paths(path) if auto else {}
    weight_file = _companion(weight_path, siblings.get("wht"), "weight_path")
    flag_file = _companion(flag_path, siblings.get("flg"), "flag_path")

    with fits.open(path, memmap=True) as hdul:
        hdu = _image_hdu(hdul, path)
        header = hdul[0].header.copy() if hdu is not hdul[0] else fits.Header()
        header.update(hdu.header)
        data = hdu.data
    for key in ("SIMPLE", "EXTEND", "XTENSION", "PCOUNT", "GCOUNT"):
        header.remove(key, ignore_missing=True, remove_all=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header)
    if not wcs.has_celestial:
        msg = (f"{path}: the header has no celestial WCS (CTYPE1/2, CRVAL, CD or PC); CSST "
               "L1 images carry one. Is this an L0 (raw) file?")
        raise ValueError(msg)

    keywords = ZEROPOINT_KEYWORDS if zeropoint_keywords is None else tuple(zeropoint_keywords)
    if zeropoint is None:
        for key in keywords:
            if key in header:
                zeropoint = header[key]
                break
    if zeropoint is not None:
        header["MAGZERO"] = (float(zeropoint), "AB mag of 1 image unit (astro_starglx)")
    else:
        log.info("%s: no zero point in the header (searched %s); pass zeropoint=", path,
                 list(keywords))

    mask = ~np.isfinite(data)
    uncertainty = None
    header["L1IMG"] = path.name
    if weight_file is not None:
        wht = _read_array(weight_file, what="weight_path", shape=data.shape)
        mask |= ~(wht > 0)
        # copy=False: astropy's default deep-copies the array, which read the
        # whole memory-mapped map into memory (7 x 340 MB on a chip, 4 s)
        uncertainty = InverseVariance(wht, copy=False)
        header["L1WHT"] = weight_file.name
    if flag_file is not None:
        flg = _read_array(flag_file, what="flag_path", shape=data.shape)
        bits = flg if flag_bits is None else np.bitwise_and(flg, int(flag_bits))
        mask |= bits != 0
        header["L1FLG"] = (flag_file.name, "bits read as bad: "
                           f"{'all' if flag_bits is None else int(flag_bits)}")
    unit = unit if unit is not None else _header_unit(header.get("BUNIT"), path)
    return CCDData(data, unit=unit, uncertainty=uncertainty,
                   mask=mask if mask.any() else None, wcs=wcs.celestial, meta=header)
