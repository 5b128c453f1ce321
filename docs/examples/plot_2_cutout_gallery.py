"""
Cutouts coloured by star probability
====================================

What the model sees: r-band stamps of a simulated field's sources, ordered
by the star probability and framed in its colour, from sure galaxies (red)
to sure stars (blue). The doubtful ones, if any, sit in between.
"""

# %%
# Simulate and classify a small field.
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from astro_starglx import StarGalaxyClassifier
from astro_starglx.cutouts import extract_cutouts
from astro_starglx.plotting import plot_cutout_gallery
from astro_starglx.simulate import simulate_field

images, truth = simulate_field(shape=(384, 384), n_stars=30, n_galaxies=60,
                               seed=11)
out = StarGalaxyClassifier().classify(truth["id", "ra", "dec"], images)
p_star = np.asarray(out["p_star"], dtype=float)

# %%
# Stamps of 25 x 25 pixels (1.85 arcsec), the model's own size, cut from the
# r band at the true positions. Keep unflagged sources (inside the image, no
# bright neighbour) brighter than r = 24.5: the five most doubtful, then the
# brightest galaxies and stars, 20 in all, sorted by ``p_star``.
stamps, _ = extract_cutouts(images["r"].data, truth["x_r"], truth["y_r"],
                            size=25)
ok = np.flatnonzero((np.asarray(out["class_flags"]) == 0)
                    & (truth["mag_r"] < 24.5))
doubtful = ok[np.argsort(np.abs(p_star[ok] - 0.5))[:5]]
rest = np.setdiff1d(ok, doubtful)
rest = rest[np.argsort(np.asarray(truth["mag_r"])[rest])]
galaxies = rest[p_star[rest] < 0.5][:8]
stars = rest[p_star[rest] >= 0.5][:7]
pick = np.concatenate([galaxies, doubtful, stars])
pick = pick[np.argsort(p_star[pick])]
labels = [f"{truth['label'][k]} {p_star[k]:.2f}" for k in pick]

fig = plot_cutout_gallery(stamps[pick], labels=labels, n_max=len(pick))
cmap, norm = plt.get_cmap("coolwarm_r"), Normalize(0, 1)
for ax, k in zip(fig.axes, pick):
    for spine in ax.spines.values():
        spine.set_edgecolor(cmap(norm(p_star[k])))
        spine.set_linewidth(3)
fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=fig.axes, shrink=0.6,
             label="p_star")
fig.suptitle("r-band stamps, titled by true class and p_star")
plt.show()
