"""
Accuracy and speed of the PSF measurement of `astro_starglx.psf`.

For each PSF family (the simulator's Airy x jitter, Moffat beta = 2.5, 3.5
and 5, Gaussian) and width (0.7-1.8 x nominal), simulates a 1024 x 1024
field in every band, measures each band's FWHM from the catalogued sources
(the truth positions) as `~astro_starglx.psf.resolve_psf` does for an image
without PSF keywords, and compares it with the true FWHM of the PSF drawn,
pixel included (GalSim, 16x oversampled). Then a field with a PSF gradient
(is the plane recovered?) and, with ``--big``, a 4096 x 4096 field (speed).
Run::

    python -m benchmarks.psf_accuracy [--seeds 1] [--bands NUV,u,g,r,i,z,y] \\
        [--big] [--output psf_accuracy.ecsv]

Prints one table row per band x family x width x seed: true and measured
FWHM (arcsec), error, number of stars used, time of the measurement and the
fitted profile shape ``gamma``; then the median errors and shapes.
"""

import argparse
import functools
import time

import numpy as np
from astropy.table import Table

from astro_starglx.csst import CSST_BANDS
from astro_starglx.psf import measure_psf
from astro_starglx.simulate import band_model, simulate_field

FAMILIES = {
    "airy": {"psf_model": "airy"},
    "moffat2.5": {"psf_model": "moffat", "psf_beta": 2.5},
    "moffat3.5": {"psf_model": "moffat", "psf_beta": 3.5},
    "moffat5": {"psf_model": "moffat", "psf_beta": 5.0},
    "gaussian": {"psf_model": "gaussian"},
}
SCALES = (0.7, 1.0, 1.4, 1.8)


@functools.lru_cache(maxsize=None)
def true_fwhm(band, psf_model, psf_beta, psf_scale):
    """FWHM (arcsec) of the PSF drawn, pixel included, on a 16x finer grid."""
    import galsim

    model = band_model(band)
    psf = model.psf(psf_scale=psf_scale, psf_model=psf_model, psf_beta=psf_beta)
    eff = galsim.Convolve(psf, galsim.Pixel(model.pixel_scale))
    image = eff.drawImage(nx=256, ny=256, scale=model.pixel_scale / 16, method="no_pixel")
    return float(image.calculateFWHM())


def measure(image, truth, band):
    """The measurement `resolve_psf` makes for a band without header keywords."""
    x, y = np.asarray(truth[f"x_{band}"]), np.asarray(truth[f"y_{band}"])
    t0 = time.perf_counter()
    est = measure_psf(image.data, x, y, pixel_scale=image.meta["PIXSCALE"],
                      nominal_fwhm=band_model(band).fwhm, sigma=image.uncertainty,
                      mask=image.mask, saturation=image.meta["SATURATE"], band=band)
    return est, time.perf_counter() - t0


def accuracy(bands, seeds):
    rows = []
    for family, kw in FAMILIES.items():
        for scale in SCALES:
            for seed in seeds:
                images, truth = simulate_field(bands=bands, psf_scale=scale, seed=seed, **kw)
                for band in bands:
                    est, dt = measure(images[band], truth, band)
                    true = true_fwhm(band, kw["psf_model"], kw.get("psf_beta", 3.0), scale)
                    rows.append((band, family, scale, seed, true, est.fwhm,
                                 est.fwhm / true - 1.0, est.n_stars, est.source, 1e3 * dt,
                                 images[band].meta["PSFFWHM"] / true - 1.0,
                                 np.nan if est.gamma is None else est.gamma))
    return Table(rows=rows, names=("band", "family", "scale", "seed", "true", "measured",
                                   "error", "n_stars", "source", "time_ms", "header_error",
                                   "gamma"))


def gradient(bands, seed, shape=(2048, 2048), psf_gradient=0.3):
    """Plane recovered on a field whose PSF widens to the right."""
    images, truth = simulate_field(bands=bands, shape=shape, psf_gradient=psf_gradient,
                                   seed=seed)
    stars = truth[truth["label"] == "star"]
    for band in bands:
        est, dt = measure(images[band], truth, band)
        x, y = np.asarray(stars[f"x_{band}"]), np.asarray(stars[f"y_{band}"])
        inside = (x >= 0) & (x < shape[1]) & (y >= 0) & (y < shape[0])
        true = np.asarray(stars[f"psf_fwhm_{band}"])[inside]
        u = 2.0 * x[inside] / (shape[1] - 1) - 1.0
        v = 2.0 * y[inside] / (shape[0] - 1) - 1.0
        coef = np.linalg.lstsq(np.column_stack([np.ones_like(u), u, v]), true, rcond=None)[0]
        err = est.at(x[inside], y[inside]) / true - 1.0
        plane = "none" if est.plane is None else "b/a = %+.3f, c/a = %+.3f" % (
            est.plane[1] / est.plane[0], est.plane[2] / est.plane[0])
        print(f"  {band:>3}: true b/a = {coef[1] / coef[0]:+.3f}, c/a = {coef[2] / coef[0]:+.3f}"
              f"; measured {plane}; per-star error of at(x, y): median "
              f"{np.median(err):+.3f}, 90th percentile |error| "
              f"{np.percentile(np.abs(err), 90):.3f}; {est.n_stars} stars, {1e3 * dt:.0f} ms")


def speed(seed, shape=(4096, 4096), band="r", repeat=3):
    images, truth = simulate_field(bands=(band,), shape=shape, seed=seed)
    times = []
    for _ in range(repeat):
        est, dt = measure(images[band], truth, band)
        times.append(dt)
    true = true_fwhm(band, "airy", 3.0, 1.0)
    print(f"  {shape[1]}x{shape[0]}, {len(truth)} sources: best of {repeat} "
          f"{1e3 * min(times):.0f} ms, error {est.fwhm / true - 1:+.3f}, {est.n_stars} stars")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seeds", type=int, default=1, help="fields per case")
    parser.add_argument("--seed", type=int, default=2026, help="first seed")
    parser.add_argument("--bands", default=",".join(CSST_BANDS))
    parser.add_argument("--big", action="store_true", help="also time a 4096x4096 field")
    parser.add_argument("--output", help="write the table (ECSV)")
    args = parser.parse_args()
    bands = tuple(args.bands.split(","))
    seeds = list(range(args.seed, args.seed + args.seeds))

    table = accuracy(bands, seeds)
    for col, fmt in (("true", ".4f"), ("measured", ".4f"), ("error", "+.3f"),
                     ("time_ms", ".0f"), ("header_error", "+.3f"), ("gamma", "+.3f")):
        table[col].format = fmt
    table.pprint(max_lines=-1, max_width=-1)
    print("\nmedian error over seeds, per band (measured fields only; n fell back in brackets):")
    print(f"  {'family':>10} {'width':>5} " + " ".join(f"{b:>10}" for b in bands)
          + "   n_stars  time_ms")
    for family in FAMILIES:
        for scale in SCALES:
            sel = table[(table["family"] == family) & (table["scale"] == scale)]
            cells = []
            for b in bands:
                rows = sel[sel["band"] == b]
                measured = rows["source"] == "measured"
                n_back = int(np.count_nonzero(~measured))
                cell = f"{np.median(rows['error'][measured]):+.3f}" if measured.any() else "-"
                cells.append(f"{cell}{f' ({n_back})' if n_back else '':>4}".rjust(10))
            print(f"  {family:>10} {scale:>5} " + " ".join(cells)
                  + f"   {int(np.median(sel['n_stars'])):>7}  {np.median(sel['time_ms']):>7.0f}")
    measured = table[table["source"] == "measured"]
    print(f"\nmeasured: {len(measured)} of {len(table)} band-fields; |error| median "
          f"{np.median(np.abs(measured['error'])):.3f}, 90th percentile "
          f"{np.percentile(np.abs(measured['error']), 90):.3f}, largest "
          f"{np.max(np.abs(measured['error'])):.3f}; time median "
          f"{np.median(table['time_ms']):.0f} ms, largest {np.max(table['time_ms']):.0f} ms")
    print("\nfitted profile shape gamma (PSFEstimate.gamma; Moffat beta = 1 / gamma before "
          "the pixel), measured fields:")
    print(f"  {'family':>10} " + " ".join(f"{'x' + str(s):>16}" for s in SCALES))
    for family in FAMILIES:
        cells = []
        for scale in SCALES:
            g = measured["gamma"][(measured["family"] == family) & (measured["scale"] == scale)]
            cells.append(f"{np.median(g):+.3f} [{np.min(g):+.2f},{np.max(g):+.2f}]"
                         if len(g) else "-")
        print(f"  {family:>10} " + " ".join(f"{c:>16}" for c in cells))
    print("\nPSF gradient 0.3 on a 2048x2048 field:")
    gradient(("r", "y"), args.seed)
    if args.big:
        print("\nspeed:")
        speed(args.seed)
    if args.output:
        table.write(args.output, overwrite=True)


if __name__ == "__main__":
    main()
