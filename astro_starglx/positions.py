"""
Source positions in every band's own pixel grid.

CSST bands sit on different detectors, so a sky position is converted through
each band's WCS separately; pixel columns are used only when the caller says
the bands share one grid. numpy + astropy only (shared by inference and the
training-set builder).
"""

import numpy as np
from astropy.coordinates import SkyCoord

__all__ = ["pixel_positions"]


def _finite_column(catalog, name):
    column = catalog[name]
    values = np.ma.filled(np.ma.asarray(getattr(column, "value", column), dtype=float), np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad)
        msg = (f"column {name!r} has {bad.sum()} non-finite or masked value(s) (rows "
               f"{rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}); remove those rows or "
               "fill them before classifying")
        raise ValueError(msg)
    return values


def _skycoord_column(catalog, coord_column):
    if coord_column is not None:
        if coord_column not in catalog.colnames:
            msg = (f"coord_column {coord_column!r} is not in the catalog; available columns: "
                   f"{catalog.colnames}")
            raise ValueError(msg)
        coords = catalog[coord_column]
        if not isinstance(coords, SkyCoord):
            msg = (f"coord_column {coord_column!r} must hold a SkyCoord, got "
                   f"{type(coords).__name__}")
            raise TypeError(msg)
        return coords
    found = [name for name in catalog.colnames if isinstance(catalog[name], SkyCoord)]
    return catalog[found[0]] if len(found) == 1 else None


def pixel_positions(catalog, images, *, ra_column, dec_column, coord_column, x_column,
                    y_column, shared_grid):
    """
    Per-band pixel positions of every catalog source.

    Parameters
    ----------
    catalog : `~astropy.table.Table`
        Sources with ``ra_column``/``dec_column`` (degrees or Quantity), a
        `~astropy.coordinates.SkyCoord` column, or pixel columns.
    images : dict
        ``{band: NDData}``; each band's ``wcs`` converts sky positions.
    ra_column, dec_column, coord_column, x_column, y_column : str or None
        Column names (``coord_column=None`` uses the table's only SkyCoord
        column, if any).
    shared_grid : bool
        Use the pixel columns for every band.

    Returns
    -------
    x, y : dict
        ``{band: (N,) float64}`` 0-based pixel positions in each band.

    Raises
    ------
    ValueError
        Missing or non-finite position columns, or a band without WCS.
    """
    has_xy = x_column in catalog.colnames and y_column in catalog.colnames
    use_pixels = shared_grid or (len(images) == 1 and has_xy
                                 and ra_column not in catalog.colnames)
    if use_pixels:
        if not has_xy:
            msg = (f"shared_grid=True needs pixel columns x_column={x_column!r} and "
                   f"y_column={y_column!r}; available columns: {catalog.colnames}")
            raise ValueError(msg)
        xs = _finite_column(catalog, x_column)
        ys = _finite_column(catalog, y_column)
        return {b: xs for b in images}, {b: ys for b in images}
    coords = _skycoord_column(catalog, coord_column)
    if coords is None:
        if ra_column not in catalog.colnames or dec_column not in catalog.colnames:
            hint = ""
            if has_xy:
                hint = (f" The catalog has pixel columns {x_column!r}/{y_column!r}: pass "
                        "shared_grid=True if all bands share one pixel grid.")
            msg = (f"catalog has no sky positions: expected columns ra_column={ra_column!r} "
                   f"and dec_column={dec_column!r}, or a SkyCoord column (coord_column); "
                   f"available columns: {catalog.colnames}.{hint}")
            raise ValueError(msg)
        ra = _finite_column(catalog, ra_column)
        dec = _finite_column(catalog, dec_column)
        coords = SkyCoord(ra, dec, unit="deg")
    elif len(coords) and not (np.isfinite(coords.spherical.lon.deg).all()
                              and np.isfinite(coords.spherical.lat.deg).all()):
        msg = "the SkyCoord column has non-finite coordinates; remove or fix those rows"
        raise ValueError(msg)
    xs, ys = {}, {}
    for band, image in images.items():
        if image.wcs is None:
            msg = (f"images[{band!r}] has no WCS but sky positions are used; attach one "
                   f"(CCDData(..., wcs=WCS(header))) or give pixel columns with "
                   "shared_grid=True")
            raise ValueError(msg)
        if len(coords) == 0:
            xs[band] = ys[band] = np.zeros(0)
            continue
        px, py = image.wcs.world_to_pixel(coords)
        xs[band] = np.asarray(px, dtype=float)
        ys[band] = np.asarray(py, dtype=float)
    return xs, ys
