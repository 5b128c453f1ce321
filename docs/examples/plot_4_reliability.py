"""
Reliability diagram
===================

Are the probabilities honest? Among sources given ``p_galaxy`` near 0.8,
about 80 % should be galaxies. The released models are calibrated by
temperature scaling on validation fields; this checks it on a fresh
simulated field.
"""

# %%
# Simulate and classify a field.
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import beta

from astro_starglx import StarGalaxyClassifier
from astro_starglx.metrics import (brier_score, expected_calibration_error,
                                   reliability_curve)
from astro_starglx.plotting import plot_reliability
from astro_starglx.simulate import simulate_field

images, truth = simulate_field(shape=(512, 512), n_stars=80, n_galaxies=120,
                               seed=5)
out = StarGalaxyClassifier().classify(truth["id", "ra", "dec"], images)
ok = ~np.ma.getmaskarray(out["p_galaxy"])
y = np.asarray(truth["label"])[ok]
p = np.asarray(out["p_galaxy"], dtype=float)[ok]

# %%
# Five equal-width bins of ``p_galaxy``: the observed galaxy fraction in
# each, and how many sources fall there. Almost every source sits near 0 or
# 1; the middle bins hold a handful, so their fractions carry large errors.
centers, observed, mean_predicted, counts = reliability_curve(y, p, n_bins=5)
n_galaxy = np.round(np.nan_to_num(observed) * counts)
print(f"Brier score {brier_score(y, p):.4f}, expected calibration error "
      f"{expected_calibration_error(y, p, n_bins=5):.4f}")
print("sources per bin:", counts.tolist())

# %%
# The dashed diagonal is perfect calibration; the bars are 68 % (Jeffreys)
# intervals of each bin's galaxy fraction; the step histogram (right axis,
# logarithmic) is the number of sources per bin. (The interval reaches 0
# when a bin holds no galaxy, and 1 when it holds only galaxies.)
low = np.where(n_galaxy == 0, 0.0,
               beta.ppf(0.16, n_galaxy + 0.5, counts - n_galaxy + 0.5))
high = np.where(n_galaxy == counts, 1.0,
                beta.ppf(0.84, n_galaxy + 0.5, counts - n_galaxy + 0.5))
fig, ax = plt.subplots(figsize=(5.4, 5.0))
plot_reliability(centers, observed, counts, ax=ax,
                 label=out.meta["astro_starglx"]["model"])
good = counts > 0
ax.errorbar(centers[good], observed[good],
            yerr=[observed[good] - low[good], high[good] - observed[good]],
            fmt="none", ecolor="C0", capsize=3)
ax.set_title(f"reliability, {ok.sum()} simulated sources")
plt.show()
