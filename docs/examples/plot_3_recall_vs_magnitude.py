"""
Recall against magnitude, with errors
=====================================

Star and galaxy recall in bins of true r magnitude, with bootstrap errors,
on one simulated field. Classification is easy for bright sources and gets
harder towards r = 26, where small galaxies look like the PSF and the bluest
bands run out of signal.
"""

# %%
# A field with three times the CSST source density, to fill the bins.
import matplotlib.pyplot as plt
import numpy as np

from astro_starglx import StarGalaxyClassifier
from astro_starglx.metrics import binned_report
from astro_starglx.plotting import plot_recall_vs_magnitude
from astro_starglx.simulate import simulate_field

images, truth = simulate_field(shape=(512, 512), n_stars=80, n_galaxies=120,
                               seed=3)
out = StarGalaxyClassifier().classify(truth["id", "ra", "dec"], images)
model = out.meta["astro_starglx"]["model"]

# %%
# ``binned_report`` takes the true labels, ``p_galaxy`` and the binning
# quantity; the threshold is the model's own. Errors come from resampling
# each bin (200 bootstrap draws). Sources off every image have masked
# probabilities and are left out.
ok = ~np.ma.getmaskarray(out["p_galaxy"])
label = np.asarray(truth["label"])[ok]
p_galaxy = np.asarray(out["p_galaxy"])[ok]
mag_r = np.asarray(truth["mag_r"])[ok]
table = binned_report(label, p_galaxy, mag_r, bins=np.arange(17.0, 27.0, 1.0),
                      threshold=out.meta["astro_starglx"]["threshold"],
                      n_bootstrap=200, seed=0)
print("   r bin   stars  recall  galaxies  recall")
for k, lo in enumerate(table["bin_lo"]):
    print(f"{lo:4.0f}-{lo + 1:<3.0f} {table['n_star'][k]:6d} "
          f"{table['recall_star'][k]:7.2f} {table['n_galaxy'][k]:9d} "
          f"{table['recall_galaxy'][k]:7.2f}")

# %%
# The figure: one curve per class, bootstrap standard errors as bars.
fig, ax = plt.subplots(figsize=(6.4, 4.2))
plot_recall_vs_magnitude(table, ax=ax, label=model)
ax.set_title(f"recall per 1 mag bin, {ok.sum()} simulated sources")
plt.show()
