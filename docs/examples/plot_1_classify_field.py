"""
Classify a simulated field
==========================

Simulate a small CSST-like field in seven bands, classify every source and
mark the result on the r-band image: the colour of each circle is the
model's star probability, and a cross marks a source whose class differs
from the simulation's truth.
"""

# %%
# A 384 x 384 pixel field (28 arcsec on a side) in the seven CSST bands.
# ``simulate_field`` returns one `~astropy.nddata.CCDData` per band, each
# with its own WCS, and the truth table.
import matplotlib.pyplot as plt
import numpy as np
from astropy.visualization import AsinhStretch, ImageNormalize
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from astro_starglx import StarGalaxyClassifier, describe_flags
from astro_starglx.simulate import simulate_field

images, truth = simulate_field(shape=(384, 384), n_stars=25, n_galaxies=45,
                               seed=7)
print(f"{len(truth)} sources in the bands {', '.join(images)}")

# %%
# Classify from the positions alone: the classifier reads the images and
# measures its catalog features itself. It warns once if some sources are
# flagged (near an edge, blended, ...); the flags are in ``class_flags``.
clf = StarGalaxyClassifier()
out = clf.classify(truth["id", "ra", "dec"], images)
info = out.meta["astro_starglx"]
right = out["class"] == truth["label"]
print(f"{right.sum()} of {len(out)} classified as in the truth "
      f"(model {info['model']}, threshold {info['threshold']:.3f})")
for row in out[~right]:
    print(f"source {row['id']}: {row['class']}, p_star {row['p_star']:.2f}, "
          f"flags {describe_flags(row['class_flags'])}")

# %%
# The r-band image with an asinh stretch from just below the sky to the
# brightest pixels. Positions in this band come from the truth (``x_r``,
# ``y_r``); the classifier found them through the band's WCS.
r = images["r"].data
sky = np.nanmedian(r)
noise = 1.4826 * np.nanmedian(np.abs(r - sky))
norm = ImageNormalize(vmin=sky - noise, vmax=np.nanpercentile(r, 99.9),
                      stretch=AsinhStretch(0.01))
colours = ScalarMappable(norm=Normalize(0, 1), cmap="coolwarm_r")

fig, ax = plt.subplots(figsize=(6.4, 5.4))
ax.imshow(r, origin="lower", cmap="gray", norm=norm)
ax.scatter(truth["x_r"], truth["y_r"], s=110, facecolors="none",
           edgecolors=colours.to_rgba(np.asarray(out["p_star"])),
           linewidths=1.4)
ax.scatter(truth["x_r"][~right], truth["y_r"][~right], marker="x",
           color="yellow", s=60, label="class differs from the truth")
fig.colorbar(colours, ax=ax, label="p_star (blue: star, red: galaxy)")
ax.set(xlabel="x (pixel)", ylabel="y (pixel)", title="r band, classified")
if np.any(~right):
    ax.legend(loc="upper right", fontsize="small")
plt.show()
