"""
The bundled models give the probabilities they gave before the re-cut.

``tests/data/pinned_probabilities.json`` holds ``p_galaxy`` of both bundled
models on one small simulated field, computed with the code as it was before
the modules were re-cut (commit f4cb895). Any change to the inference path
(cutouts, background, features, normalisation, network, calibration) that
moves a probability shows here. On the machine that made the file the
agreement is bit-for-bit; the tolerance covers other numpy/GalSim builds.
The file holds float32 arithmetic (``precision="fp32"``); bfloat16, which
``precision="auto"`` picks on CPUs that run it natively, is checked against
it with bfloat16's tolerance.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("galsim")

from astro_starglx import StarGalaxyClassifier  # noqa: E402
from astro_starglx.simulate import simulate_field  # noqa: E402

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_probabilities.json").read_text())


@pytest.fixture(scope="module")
def field():
    spec = PINNED["field"]
    return simulate_field(shape=tuple(spec["shape"]), seed=spec["seed"])


@pytest.mark.parametrize("name", sorted(PINNED["models"]))
def test_bundled_models_keep_their_probabilities(field, name):
    images, truth = field
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flag summaries of edge sources
        # the stamps as cut (no canonical pose) at the positions as given
        # (no refinement), as the code then did
        out = StarGalaxyClassifier(name, device="cpu", symmetrize="none",
                                   precision="fp32").classify(truth, images,
                                                              refine_positions=False)
        half = StarGalaxyClassifier(name, device="cpu", symmetrize="none",
                                    precision="bf16").classify(truth, images,
                                                               refine_positions=False)
        refined = StarGalaxyClassifier(name, device="cpu", symmetrize="none",
                                       precision="fp32").classify(truth, images)
    pinned = PINNED["models"][name]
    p = np.asarray(out["p_galaxy"].filled(np.nan), dtype=np.float64)
    expected = np.asarray(pinned["p_galaxy"], dtype=np.float64)
    assert p.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(p), np.isnan(expected))
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-5, equal_nan=True)
    # the truth's exact positions: refined, none moves
    assert refined.meta["astro_starglx"]["positions"]["n_moved"] == 0
    np.testing.assert_array_equal(refined["p_galaxy"].filled(np.nan), p)
    p_half = np.asarray(half["p_galaxy"].filled(np.nan), dtype=np.float64)
    np.testing.assert_allclose(p_half, expected, rtol=0, atol=0.03, equal_nan=True)
    # Bits 1-32 existed then; BLENDED (64) and OUT_OF_RANGE (128) came later.
    np.testing.assert_array_equal(np.asarray(out["class_flags"]) & 63, pinned["class_flags"])
