"""
Write the recorded Gaia DR3 and SDSS answers used by tests/test_labels.py.

The files follow the documented formats: ``gaia_dr3_cone.vot`` is a VOTable
as the Gaia archive's TAP service returns for a ``gaiadr3.gaia_source``
query (column names, units, UCDs and datatypes of the gaia_source data
model), ``sdss_specobj.csv`` is the CSV that SkyServer's SQL search returns
(a ``#Table1`` line, then a header line) for a ``SpecObj`` query. Run
``python tests/data/make_label_fixtures.py`` to rewrite them.
"""

from pathlib import Path

import numpy as np
from astropy.io.votable import from_table
from astropy.table import MaskedColumn, Table

HERE = Path(__file__).parent
RA0, DEC0 = 150.0, 2.0

# name: (ucd, unit, datatype)
GAIA = {
    "source_id": ("meta.id;meta.main", None, "long"),
    "ra": ("pos.eq.ra;meta.main", "deg", "double"),
    "dec": ("pos.eq.dec;meta.main", "deg", "double"),
    "ref_epoch": ("meta.ref;time.epoch", "yr", "double"),
    "parallax": ("pos.parallax.trig", "mas", "double"),
    "parallax_error": ("stat.error;pos.parallax.trig", "mas", "float"),
    "pmra": ("pos.pm;pos.eq.ra", "mas.yr**-1", "double"),
    "pmra_error": ("stat.error;pos.pm;pos.eq.ra", "mas.yr**-1", "float"),
    "pmdec": ("pos.pm;pos.eq.dec", "mas.yr**-1", "double"),
    "pmdec_error": ("stat.error;pos.pm;pos.eq.dec", "mas.yr**-1", "float"),
    "pmra_pmdec_corr": ("stat.correlation", None, "float"),
    "ruwe": ("stat.error", None, "float"),
    "astrometric_params_solved": ("meta.number", None, "unsignedByte"),
    "phot_g_mean_mag": ("phot.mag;em.opt", "mag", "float"),
}


def gaia():
    # one row per case of tests/test_labels.py (offsets in arcsec from RA0, DEC0)
    rows = [
        # id, dra", ddec", plx, plx_err, pmra, pmra_err, pmdec, pmdec_err, corr, ruwe, solved, G
        (1001, 0.0, 0.0, 0.05, 0.10, 35.0, 0.3, -12.0, 0.3, 0.1, 1.02, 31, 17.1),  # pm star
        (1002, 20.0, 0.0, 2.50, 0.20, 0.2, 0.3, 0.1, 0.3, 0.0, 1.10, 31, 18.0),  # parallax star
        (1003, 40.0, 0.0, -0.02, 0.30, 0.1, 0.4, -0.2, 0.4, 0.2, 1.00, 31, 19.5),  # QSO-like
        (1004, 60.0, 0.0, 0.10, 0.20, 40.0, 0.5, 30.0, 0.5, 0.0, 2.50, 31, 18.2),  # bad RUWE
        (1005, 80.0, 0.0, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan,
         3, 20.8),  # 2-parameter solution
        (1006, 100.0, 0.0, 6.0, 0.05, 500.0, 0.05, 0.0, 0.05, 0.0, 1.05, 95, 15.0),  # fast
    ]
    cols = list(zip(*rows))
    t = Table()
    t["source_id"] = np.array(cols[0], dtype=np.int64) + 4_000_000_000_000_000
    dec = DEC0 + np.array(cols[2]) / 3600.0
    t["ra"] = RA0 + np.array(cols[1]) / 3600.0 / np.cos(np.deg2rad(dec))
    t["dec"] = dec
    t["ref_epoch"] = np.full(len(rows), 2016.0)
    names = ["parallax", "parallax_error", "pmra", "pmra_error", "pmdec", "pmdec_error",
             "pmra_pmdec_corr", "ruwe"]
    for k, name in enumerate(names, start=3):
        values = np.array(cols[k], dtype=float)
        t[name] = MaskedColumn(values, mask=np.isnan(values))
    t["astrometric_params_solved"] = np.array(cols[11], dtype=np.uint8)
    t["phot_g_mean_mag"] = np.array(cols[12], dtype=np.float32)
    for name, (ucd, unit, _) in GAIA.items():
        t[name].unit = unit
        t[name].meta["ucd"] = ucd
    votable = from_table(t)
    resource = votable.resources[0]
    resource.type = "results"
    table = resource.tables[0]
    table.name = "results"
    for field in table.fields:
        ucd, _, datatype = GAIA[field.name]
        field.ucd = ucd
        field.datatype = datatype
    votable.to_xml(str(HERE / "gaia_dr3_cone.vot"))


def sdss():
    dec = DEC0 + np.array([0.0, 20.0, 40.0, 60.0, 80.0]) / 3600.0
    dra = np.array([200.0, 200.0, 200.0, 200.0, 200.0]) / 3600.0 / np.cos(np.deg2rad(dec))
    lines = ["#Table1", "specObjID,ra,dec,class,subClass,z,zErr,zWarning"]
    rows = [
        (299489677444933632, "STAR", "K3", 0.00012, 0.00001, 0),
        (299489952322840576, "GALAXY", "STARFORMING", 0.08412, 0.00002, 0),
        (299490227200747520, "QSO", "BROADLINE", 1.73201, 0.00041, 0),
        (299490502078654464, "GALAXY", "", 0.51230, 0.21000, 4),
        (299490776956561408, "GALAXY", "", 0.21301, 0.00003, 0),
    ]
    for (sid, cls, sub, z, zerr, zw), ra, d in zip(rows, RA0 + dra, dec):
        lines.append(f"{sid},{ra:.8f},{d:.8f},{cls},{sub},{z},{zerr},{zw}")
    (HERE / "sdss_specobj.csv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    gaia()
    sdss()
