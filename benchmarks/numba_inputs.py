"""
Would compiled loops make the input floor cheaper? numba against numpy.

The two per-pixel steps of the floor that ``bench_classify`` prints, timed
on 10,000 stamps of 25 x 25 pixels at random places of a 4096 x 4096 image:

- the gather of the data and uncertainty stamps: numba 0.68 loops (no
  bounds checks) against ``cutouts.extract_cutouts`` (numpy: a fancy index
  into a sliding-window view);
- the arcsinh of the normalisation: numba's ``math.asinh`` loop (what
  ``fastmath`` does not vectorise without Intel's SVML) against
  ``preprocess._scaled_arcsinh`` (numpy, vectorised by hand).

numba is not a dependency of astro_starglx: install it to run this
(``pip install numba``)::

    python -m benchmarks.numba_inputs [--n 10000] [--repeat 5]

On the project's 2-core AMD EPYC (AVX2), three runs, microseconds per
stamp: the gather (data and uncertainty) 10.4-11.4 with numba against
4.1-5.3 with numpy, the arcsinh 11.7-18.5 against 4.3-5.8. Not part of the
test suite.
"""

import argparse
import math

import numpy as np

from astro_starglx.cutouts import extract_cutouts
from astro_starglx.preprocess import _scaled_arcsinh
from benchmarks.bench_classify import best_of


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    try:
        from numba import njit
    except ImportError:
        raise SystemExit("numba is not installed: pip install numba") from None

    @njit(boundscheck=False)
    def gather(data, ix, iy, half, out):
        size = 2 * half + 1
        for k in range(ix.shape[0]):
            for j in range(size):
                for i in range(size):
                    out[k, j, i] = data[iy[k] - half + j, ix[k] - half + i]

    @njit(fastmath=True)
    def arcsinh(stamps, inv, out):
        for k in range(stamps.shape[0]):
            for j in range(stamps.shape[1]):
                for i in range(stamps.shape[2]):
                    out[k, j, i] = math.asinh(stamps[k, j, i] * inv[k])

    rng = np.random.default_rng(0)
    size, half = 4096, 12
    data = rng.normal(size=(size, size)).astype(np.float32)
    unc = np.ones((size, size), np.float32)
    ix = rng.integers(half, size - half, args.n)
    iy = rng.integers(half, size - half, args.n)
    out = np.empty((args.n, 2 * half + 1, 2 * half + 1), np.float32)
    inv = np.full(args.n, 2.0, np.float32)
    gather(data, ix, iy, half, out)  # compile
    arcsinh(out, inv, out.copy())

    def best(fn):  # microseconds per stamp
        return best_of(fn, args.repeat) / args.n * 1e6

    rows = {
        "gather, numba": best(lambda: [gather(a, ix, iy, half, out) for a in (data, unc)]),
        "gather, numpy (extract_cutouts)": best(
            lambda: [extract_cutouts(a, ix, iy, size=2 * half + 1) for a in (data, unc)]),
        "arcsinh, numba": best(lambda: arcsinh(out, inv, np.empty_like(out))),
        "arcsinh, numpy (_scaled_arcsinh)": best(
            lambda: _scaled_arcsinh(out[:, None], inv[:, None])),
    }
    for name, us in rows.items():
        print(f"{name:34s} {us:6.2f} us per stamp")


if __name__ == "__main__":
    main()
