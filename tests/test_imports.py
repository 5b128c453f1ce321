"""The dependency direction of DESIGN.md, checked in fresh interpreters."""

import subprocess
import sys

import pytest

# module -> packages it must never pull in
FORBIDDEN = {
    "astro_starglx.model": ("astropy", "photutils"),
    "astro_starglx.preprocess": ("astropy", "photutils", "torch"),
    "astro_starglx.metrics": ("astropy", "photutils", "torch"),
    "astro_starglx.weights": ("astropy", "photutils"),
    "astro_starglx.meta": ("torch", "astropy", "photutils"),
    "astro_starglx.inference": ("astropy", "photutils"),
    "astro_starglx.release": ("astropy",),
    "astro_starglx.cutouts": ("torch",),
    "astro_starglx.centroids": ("torch", "photutils"),
    "astro_starglx.cosmic_rays": ("torch", "astroscrappy"),
    "astro_starglx.background": ("torch",),
    "astro_starglx.features": ("torch",),
    "astro_starglx.inputs": ("torch",),
    "astro_starglx.psf": ("torch", "astropy", "photutils", "scipy"),
    "astro_starglx.adapt": ("galsim",),
    # astropy too: numpy-only modules (preprocess, metrics) may use its checkers
    "astro_starglx._validation": ("torch", "astropy", "photutils"),
    "astro_starglx.simulate": ("torch", "galsim"),
    "astro_starglx.simulate.instrument": ("torch", "galsim"),
    "astro_starglx.simulate.population": ("torch", "galsim"),
    "astro_starglx.simulate.field": ("torch", "galsim"),
    "astro_starglx.simulate.inject": ("torch", "galsim"),
    "astro_starglx.simulate.report": ("torch", "galsim", "matplotlib"),
    "astro_starglx.dataset": ("torch", "galsim"),
    "astro_starglx.flags": ("torch", "astropy"),
    "astro_starglx.detection": ("torch", "dask"),
    "astro_starglx.csst_io": ("torch", "dask"),
    "astro_starglx.survey": ("torch", "dask", "distributed"),
}


def _loaded_after_import(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_dependency_direction(module):
    loaded = _loaded_after_import(module)
    assert not loaded & set(FORBIDDEN[module])


def test_top_level_import_is_light():
    """Importing the package loads neither torch, galsim, dask nor matplotlib."""
    loaded = _loaded_after_import("astro_starglx")
    assert not loaded & {"torch", "galsim", "dask", "matplotlib", "pooch"}
