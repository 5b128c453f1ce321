"""
CSST-like multi-band image simulator.

`simulate_field` draws a field of stars and galaxies in the seven CSST
survey-camera bands (NUV, u, g, r, i, z, y) with GalSim and returns one
`~astropy.nddata.CCDData` per band (e-/s, with its own TAN WCS, inverse
variance and saturation mask) plus a truth `~astropy.table.Table`. Its
settings are one frozen `SimConfig`.

This is a *CSST-like* simulator written for this package, to train and test
star-galaxy classifiers. It is **not** the official CSST image simulation
(which is also built on GalSim but models the real optics, detectors, focal
plane and calibration). Cosmic rays, detector defects, bleeding trails and
distortion are not modelled.

The subpackage, one job per module:

* `astro_starglx.simulate.instrument`: bands, bandpasses, PSF, noise model
  and depth calibration (`band_model`, `SimBand`);
* `astro_starglx.simulate.population`: stars and galaxies (magnitudes, SEDs,
  profiles);
* `astro_starglx.simulate.field`: `SimConfig` and `simulate_field`, and the
  header keywords of the images;
* `astro_starglx.simulate.inject`: `inject_point_sources`;
* `astro_starglx.simulate.report`: `~astro_starglx.simulate.report.sim_report`,
  the realism report measured from the pixels.

GalSim is an optional dependency (the ``sim`` extra); it is imported only when
a function needs it.
"""

from .field import SimConfig, simulate_field
from .inject import inject_point_sources
from .instrument import (
    PSF_MODELS,
    SIM_APERTURE_DIAMETER,
    SIM_DARK_CURRENT,
    SIM_FULL_WELL,
    SIM_OBSCURATION,
    SIM_READ_NOISE,
    SIM_THROUGHPUT,
    SimBand,
    band_model,
    csst_bandpass,
    exptime_scale_for_depth,
)
from .population import (
    SIM_DENSITY,
    SIM_GALAXY_COUNT_SLOPE,
    SIM_REFERENCE_BAND,
    SIM_STAR_COUNT_SLOPE,
    SIM_STAR_FRACTION,
)

__all__ = [
    "SimConfig",
    "SimBand",
    "band_model",
    "csst_bandpass",
    "exptime_scale_for_depth",
    "simulate_field",
    "inject_point_sources",
    "SIM_APERTURE_DIAMETER",
    "SIM_OBSCURATION",
    "SIM_THROUGHPUT",
    "SIM_READ_NOISE",
    "SIM_DARK_CURRENT",
    "SIM_FULL_WELL",
    "SIM_DENSITY",
    "SIM_STAR_FRACTION",
    "SIM_STAR_COUNT_SLOPE",
    "SIM_GALAXY_COUNT_SLOPE",
    "SIM_REFERENCE_BAND",
    "PSF_MODELS",
]
