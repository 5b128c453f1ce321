"""
Facts about the CSST survey camera used across the package.

These numbers describe the instrument, not a model: the model's own band list,
stamp size and pixel scale always come from its weights metadata. The
simulator (`astro_starglx.simulate`) and the documentation read them from here.
Sources: CSST survey-camera design papers as summarised in the project's
design notes (5-sigma point-source depths for the wide survey).
"""

__all__ = ["CSST_BANDS", "CSST_PIXEL_SCALE", "CSST_BAND_INFO", "BandInfo"]

from dataclasses import dataclass


@dataclass(frozen=True)
class BandInfo:
    """One CSST survey-camera band.

    Attributes
    ----------
    name : str
        Band name.
    wave_min, wave_max : float
        Approximate band edges in nm (the bands are modelled as top hats).
    depth : float
        Wide-survey 5-sigma point-source depth, AB magnitude.
    n_exposures : int
        Number of exposures per visit.
    exptime : float
        Exposure time of one exposure, seconds.
    r80 : float
        Radius enclosing 80 % of a point source's light, arcsec.
    """

    name: str
    wave_min: float
    wave_max: float
    depth: float
    n_exposures: int
    exptime: float
    r80: float

    @property
    def total_exptime(self):
        """Total exposure time in seconds."""
        return self.n_exposures * self.exptime

    @property
    def wave_eff(self):
        """Mid-band wavelength in nm."""
        return 0.5 * (self.wave_min + self.wave_max)


#: CSST survey-camera bands in wavelength order, as the models read them.
CSST_BANDS = ("NUV", "u", "g", "r", "i", "z", "y")

#: Survey-camera pixel scale, arcsec per pixel.
CSST_PIXEL_SCALE = 0.074

#: Per-band facts, keyed by band name.
CSST_BAND_INFO = {
    "NUV": BandInfo("NUV", 255.0, 320.0, 25.4, 4, 150.0, 0.11),
    "u": BandInfo("u", 320.0, 400.0, 25.4, 2, 150.0, 0.115),
    "g": BandInfo("g", 400.0, 550.0, 26.3, 2, 150.0, 0.12),
    "r": BandInfo("r", 550.0, 690.0, 26.0, 2, 150.0, 0.13),
    "i": BandInfo("i", 690.0, 820.0, 25.9, 2, 150.0, 0.135),
    "z": BandInfo("z", 820.0, 1000.0, 25.2, 2, 150.0, 0.14),
    "y": BandInfo("y", 920.0, 1100.0, 24.4, 4, 150.0, 0.15),
}
