"""Tests of astro_starglx.cosmic_rays: LACosmic with CSST's settings."""

import sys

import numpy as np
import pytest
from astropy.nddata import CCDData, NDData

from astro_starglx.cosmic_rays import mask_cosmic_rays

pytest.importorskip("galsim")
pytest.importorskip("astroscrappy")


@pytest.fixture(scope="module")
def field():
    """A 256^2 r-band field with bright stars, and 3-pixel hits on 0.3 % of it."""
    from astro_starglx.simulate import simulate_field

    images, truth = simulate_field(shape=(256, 256), bands=("r",), n_stars=25, n_galaxies=25,
                                   mag_range=(18.0, 24.0), seed=3)
    image = images["r"]
    rng = np.random.default_rng(4)
    data = np.array(image.data, dtype=np.float32)
    sigma = float(np.median(1.0 / np.sqrt(image.uncertainty.array)))
    hit = np.zeros(data.shape, dtype=bool)
    n_hits = int(0.003 * data.size / 3)
    y0 = rng.integers(0, data.shape[0] - 3, n_hits)
    x0 = rng.integers(0, data.shape[1] - 3, n_hits)
    amp = sigma * rng.uniform(20, 200, n_hits)
    for k in range(3):
        yy = y0 + k * rng.integers(0, 2, n_hits)
        data[yy, x0 + k] += amp
        hit[yy, x0 + k] = True
    hit_image = CCDData(data, unit=image.unit, wcs=image.wcs, mask=image.mask,
                        uncertainty=image.uncertainty, meta=image.meta)
    return image, hit_image, hit, truth


def _near_stars(truth, shape, radius=1.5):
    yy, xx = np.indices(shape)
    near = np.zeros(shape, dtype=bool)
    for row in truth[(truth["label"] == "star") & (truth["mag_r"] < 21.5)]:
        near |= np.hypot(xx - row["x_r"], yy - row["y_r"]) <= radius
    return near


def test_hits_are_masked_and_star_cores_are_not(field):
    clean, hit_image, hit, truth = field
    out = mask_cosmic_rays(hit_image)
    assert isinstance(out, CCDData)
    from scipy import ndimage

    mask = np.asarray(out.mask)
    assert mask[hit].mean() > 0.9
    assert mask.sum() < 1.5 * hit.sum()  # the hits, grown by a pixel here and there
    # the bright stars' cores are spared (but for the growth of a hit next to one)
    near = _near_stars(truth, mask.shape)
    grown = ndimage.binary_dilation(hit, iterations=2)
    assert near.sum() > 50 and (mask & near & ~grown).sum() <= 0.02 * near.sum()
    assert out.meta["CRMASKED"] == int(mask.sum())
    # the image without hits keeps its stars: (almost) nothing is masked
    quiet = mask_cosmic_rays({"r": clean})["r"]
    assert np.asarray(quiet.mask).sum() < 0.1 * hit.sum()
    assert (np.asarray(quiet.mask) & near).sum() <= 0.02 * near.sum()


def test_inputs_are_kept_and_existing_masks_stay(field):
    _, hit_image, _, _ = field
    before = None if hit_image.mask is None else np.array(hit_image.mask)
    prior = np.zeros(hit_image.shape, dtype=bool)
    prior[:5] = True
    given = NDData(hit_image.data, mask=prior, wcs=hit_image.wcs, unit=hit_image.unit,
                   uncertainty=hit_image.uncertainty, meta={"MAGZERO": 25.0})
    out = mask_cosmic_rays(given)
    assert type(out) is NDData and np.asarray(out.mask)[:5].all()
    assert "CRMASKED" not in given.meta and not prior[5:].any()
    assert out.data is given.data and out.meta["MAGZERO"] == 25.0
    assert (before is None and hit_image.mask is None) or np.array_equal(before,
                                                                         hit_image.mask)


@pytest.mark.parametrize(("kwargs", "match"), [({"objlim": 0}, "objlim must be"),
                                               ({"sigclip": -1}, "sigclip must be"),
                                               ({"niter": 0}, "niter must be")])
def test_bad_settings_name_themselves(field, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mask_cosmic_rays(field[1], **kwargs)


def test_missing_astroscrappy_names_the_extra(field, monkeypatch):
    monkeypatch.setitem(sys.modules, "astroscrappy", None)
    with pytest.raises(ImportError, match=r"astro_starglx\[cosmics\]"):
        mask_cosmic_rays(field[1])
