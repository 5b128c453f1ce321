"""
Bit flags reported per source in the ``class_flags`` column.

Flags describe problems with one source; they never drop a row and never
raise. A source may carry several flags at once (bitwise OR). The values are
stable across releases so that catalogs written by one version can be read
by another.
"""

import enum

__all__ = ["ClassFlag", "describe_flags"]


class ClassFlag(enum.IntFlag):
    """
    Per-source quality flags.

    ============  =====  ======================================================
    name          value  meaning
    ============  =====  ======================================================
    OFF_IMAGE         1  the stamp does not overlap the image in at least one
                         band, or the source's position (``ra``/``dec``,
                         SkyCoord or ``x``/``y``) is masked or not finite; if
                         it is off every band, ``p_star``/``p_galaxy`` are
                         masked
    PARTIAL           2  the stamp is partly outside the image in at least one
                         band (outside pixels are filled, not extrapolated)
    MASKED            4  the stamp holds masked (``mask`` True) or non-finite
                         pixels in at least one band
    BAND_MISSING      8  a band the model reads is absent from ``images`` or
                         has no usable pixels for this source; the model sees
                         zeros in its place
    NO_FEATURES      16  the photometry aperture of a band with data holds
                         missing pixels, so its catalog features could not be
                         measured and were replaced by the training-set mean
                         (a mere non-detection is not flagged)
    SATURATED        32  an unmasked pixel of the central 5 x 5 of the stamp
                         in at least one band is at or above the band's
                         ``SATURATE`` header keyword (image units), or is
                         ``+inf`` (also a value beyond the float32 range);
                         mask bits are not read as saturation
    BLENDED          64  another catalog source with at least a tenth of this
                         one's flux lies inside the stamp (reference band)
    OUT_OF_RANGE    128  the local PSF FWHM of a band lies outside the range
                         the model was trained on (see the model's
                         ``meta.psf``), or so does the shape of its profile
                         (models that read ``psf_gamma``), or the PSF could
                         not be measured and the nominal one was assumed
    ============  =====  ======================================================
    """

    OFF_IMAGE = 1
    PARTIAL = 2
    MASKED = 4
    BAND_MISSING = 8
    NO_FEATURES = 16
    SATURATED = 32
    BLENDED = 64
    OUT_OF_RANGE = 128


def describe_flags(value):
    """
    Names of the flags set in ``value``.

    Parameters
    ----------
    value : int
        A ``class_flags`` value.

    Returns
    -------
    names : list of str
        Flag names, lowest bit first.

    Examples
    --------
    >>> from astro_starglx.flags import describe_flags
    >>> describe_flags(6)
    ['PARTIAL', 'MASKED']
    """
    value = int(value)
    return [flag.name for flag in ClassFlag if value & flag.value]
