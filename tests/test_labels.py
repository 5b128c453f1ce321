"""
Tests of astro_starglx.labels: Gaia DR3 and SDSS labels, offline.

The archives' answers are recorded files in tests/data (written from the
documented gaia_source and SpecObj formats by tests/data/make_label_fixtures.py);
astroquery's query functions are monkeypatched to return them, so astroquery's
own parsing runs where it can. Live queries are marked remote_data.
"""

from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import Table

pytest.importorskip("astroquery")

from astro_starglx import labels as labels_module  # noqa: E402
from astro_starglx.labels import gaia_labels, sdss_labels  # noqa: E402

DATA = Path(__file__).parent / "data"
RA0, DEC0 = 150.0, 2.0


def _catalog(offsets):
    """A catalog at (dra, ddec) arcsec offsets from (RA0, DEC0), with an id column."""
    off = np.asarray(offsets, dtype=float)
    dec = DEC0 + off[:, 1] / 3600.0
    ra = RA0 + off[:, 0] / 3600.0 / np.cos(np.deg2rad(dec))
    return Table({"id": np.arange(len(off)), "ra": ra, "dec": dec})


class FakeGaia:
    """Stands in for astroquery.gaia.Gaia.launch_job_async (records the queries)."""

    def __init__(self, path=DATA / "gaia_dr3_cone.vot", errors=()):
        self.path, self.errors, self.queries = path, list(errors), []

    def __call__(self, query, **kwargs):
        self.queries.append(query)
        if self.errors:
            raise self.errors.pop(0)
        path = self.path

        class Job:
            def get_results(self):
                return Table.read(path, format="votable")

        return Job()


class FakeResponse:
    def __init__(self, text):
        self.text = text


@pytest.fixture
def gaia(monkeypatch, tmp_path):
    from astroquery.gaia import Gaia

    fake = FakeGaia()
    monkeypatch.setattr(Gaia, "launch_job_async", fake)
    monkeypatch.setenv("ASTRO_STARGLX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(labels_module, "_sleep", lambda s: fake.queries.append(f"sleep {s}"))
    return fake


@pytest.fixture
def sdss(monkeypatch, tmp_path):
    from astroquery.sdss import SDSS

    calls = []
    text = (DATA / "sdss_specobj.csv").read_text()

    def query_sql_async(sql, **kwargs):
        calls.append((sql, kwargs))
        return FakeResponse(text)

    # query_sql (astroquery's async_to_sync) calls query_sql_async, then parses
    # the CSV with astroquery's own _parse_result.
    monkeypatch.setattr(SDSS, "query_sql_async", query_sql_async)
    monkeypatch.setenv("ASTRO_STARGLX_CACHE", str(tmp_path / "cache"))
    return calls


GAIA_OFFSETS = [(0.3, 0.0), (20.0, 0.2), (40.0, 0.0), (60.0, 0.0), (80.0, 0.0), (105.0, 0.0),
                (300.0, 300.0), (0.0, 0.0)]


def test_gaia_labels_cuts_alignment_and_meta(gaia):
    cat = _catalog(GAIA_OFFSETS)
    cat["ra"][-1] = np.nan  # no position: a masked row, not an error
    before = cat.copy()
    out = gaia_labels(cat)
    assert len(out) == len(cat)
    assert np.all(np.asarray(cat["ra"] == before["ra"]) | np.isnan(cat["ra"]))
    assert cat.colnames == before.colnames
    label = out["label"]
    assert label.filled("-").tolist() == ["star", "star", "-", "-", "-", "-", "-", "-"]
    # matched rows: the first five; the fast star is 5" from its 2016 position
    assert (~out["gaia_source_id"].mask).tolist() == [True] * 5 + [False] * 3
    assert out["gaia_source_id"][0] == 4000000000001001
    assert out["gaia_sep"][0] == pytest.approx(0.3, abs=0.01)
    assert out["gaia_pm_snr"][0] > 50 and out["gaia_parallax_snr"][1] > 5
    assert out["gaia_pm_snr"][2] < 5 and out["gaia_ruwe"][3] > 1.4
    meta = out.meta["gaia_labels"]
    assert meta["n_star"] == 2 and meta["n_matched"] == 5 and meta["n_queries"] == 1
    assert len([q for q in gaia.queries if q.startswith("SELECT")]) == 1
    query = gaia.queries[0]
    assert "gaiadr3.gaia_source" in query and "CIRCLE('ICRS', 150.0" in query


def test_gaia_labels_epoch_moves_fast_stars(gaia):
    out = gaia_labels(_catalog(GAIA_OFFSETS[:6]), epoch=2026.0, cache=False)
    assert out["label"][5] == "star"
    assert out["gaia_source_id"][5] == 4000000000001006
    assert out["gaia_sep"][5] < 0.1


def test_gaia_labels_skycoord_column_and_label_name(gaia):
    cat = _catalog(GAIA_OFFSETS[:2])
    cat = Table({"coord": SkyCoord(cat["ra"], cat["dec"], unit="deg")})
    out = gaia_labels(cat, label_column="gaia_class")
    assert out["gaia_class"].tolist() == ["star", "star"]


def test_gaia_labels_cached(gaia, tmp_path):
    cat = _catalog(GAIA_OFFSETS[:3])
    first = gaia_labels(cat)
    second = gaia_labels(cat)
    assert len(gaia.queries) == 1  # the second answer came from the cache
    assert first["label"].filled("").tolist() == second["label"].filled("").tolist()
    assert list((tmp_path / "cache" / "labels").glob("gaia-*.ecsv"))
    gaia_labels(cat, cache=False)
    assert len(gaia.queries) == 2
    folder = tmp_path / "elsewhere"
    gaia_labels(cat, cache=folder)
    assert list(folder.glob("gaia-*.ecsv"))


def test_gaia_labels_batches_by_cones(gaia):
    # two groups 2 degrees apart: two cones of chunk_radius, not one per source
    cat = _catalog([(0, 0), (10, 0), (7200, 0), (7210, 0)])
    out = gaia_labels(cat, chunk_radius=0.25, cache=False)
    assert out.meta["gaia_labels"]["n_queries"] == 2
    assert len(gaia.queries) == 2


@pytest.mark.parametrize("ra", [0.001, 359.999, 180.0])
def test_cones_cover_every_position(ra):
    rng = np.random.default_rng(1)
    coords = SkyCoord(ra + rng.uniform(-1.5, 1.5, 300), rng.uniform(-1.5, 1.5, 300),
                      unit="deg")
    cones = labels_module._cones(coords, chunk_radius=0.3, radius=1.0)
    assert 4 <= len(cones) < 300
    centres = SkyCoord([c[0] for c in cones], [c[1] for c in cones], unit="deg")
    radii = np.array([c[2] for c in cones])
    assert radii.max() <= 0.3 * 1.001 + 1e-6
    sep = coords[:, None].separation(centres[None, :]).deg
    # every source, with the match radius around it, lies inside some cone
    assert np.all((sep + 1.0 / 3600 <= radii[None, :] + 1e-9).any(axis=1))


def test_gaia_labels_retries_rate_limit(gaia):
    import requests

    gaia.errors = [requests.exceptions.HTTPError("Too Many Requests"),
                   requests.exceptions.HTTPError("Service Unavailable")]
    out = gaia_labels(_catalog(GAIA_OFFSETS[:2]), cache=False, backoff=0.5)
    assert out["label"].tolist() == ["star", "star"]
    assert [q for q in gaia.queries if q.startswith("sleep")] == ["sleep 0.5", "sleep 1.0"]


def test_gaia_labels_offline_error_names_service_and_fix(gaia):
    import requests

    gaia.errors = [requests.exceptions.ConnectionError("Max retries exceeded")] * 3
    with pytest.raises(ConnectionError, match=r"Gaia DR3 archive.*after 3 attempt.*network"):
        gaia_labels(_catalog(GAIA_OFFSETS[:2]), cache=False, retries=2, backoff=0)


def test_gaia_labels_no_retry_on_bad_query(gaia):
    import requests

    gaia.errors = [requests.exceptions.HTTPError("Bad Request: syntax error")]
    with pytest.raises(ConnectionError,
                       match=r"Gaia DR3 archive \(gea.esac.esa.int\) failed: HTTPError.*refused"):
        gaia_labels(_catalog(GAIA_OFFSETS[:2]), cache=False)
    assert not [q for q in gaia.queries if q.startswith("sleep")]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"radius": -1}, ValueError, "radius"),
    ({"parallax_snr": 0}, ValueError, "parallax_snr"),
    ({"max_ruwe": 0.5}, ValueError, "max_ruwe"),
    ({"epoch": 16.0}, ValueError, "epoch"),
    ({"chunk_radius": 10}, ValueError, "chunk_radius"),
    ({"cache": 3}, TypeError, "cache must be True, False or a folder"),
    ({"label_column": 1}, TypeError, "label_column"),
    ({"ra_column": "RA"}, ValueError, "column 'RA' is not in the catalog"),
])
def test_gaia_labels_errors(gaia, kwargs, error, match):
    with pytest.raises(error, match=match):
        gaia_labels(_catalog(GAIA_OFFSETS[:2]), **kwargs)


def test_labels_refuse_non_table(gaia):
    with pytest.raises(TypeError, match="catalog must be an astropy Table"):
        gaia_labels({"ra": [1.0], "dec": [2.0]})


def test_missing_astroquery_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "astroquery.sdss", None)
    with pytest.raises(ImportError, match=r'astro_starglx\[remote\]'):
        sdss_labels(_catalog([(0, 0)]), cache=False)


SDSS_OFFSETS = [(200.0, 0.0), (200.0, 20.0), (200.0, 40.0), (200.0, 60.0), (200.5, 80.0),
                (-500.0, 0.0)]


def test_sdss_labels_classes(sdss):
    cat = _catalog(SDSS_OFFSETS)
    before = cat.copy()
    out = sdss_labels(cat)
    assert np.all(cat["ra"] == before["ra"]) and cat.colnames == before.colnames
    assert out["label"].filled("-").tolist() == ["star", "galaxy", "star", "-", "galaxy", "-"]
    assert out["sdss_class"].filled("-").tolist() == ["STAR", "GALAXY", "QSO", "GALAXY",
                                                      "GALAXY", "-"]
    assert out["sdss_zwarning"][3] == 4
    assert out["sdss_specobjid"][0] == 299489677444933632
    assert out["sdss_sep"][4] == pytest.approx(0.5, abs=0.01)
    assert out.meta["sdss_labels"]["n_galaxy"] == 2
    sql, kwargs = sdss[0]
    assert "FROM SpecObj" in sql and "dec BETWEEN" in sql
    assert kwargs["data_release"] == 17 and kwargs["cache"] is True


def test_sdss_labels_qso_and_zwarning_options(sdss):
    cat = _catalog(SDSS_OFFSETS)
    out = sdss_labels(cat, qso=None, max_zwarning=None, cache=False)
    assert out["label"].filled("-").tolist() == ["star", "galaxy", "-", "galaxy", "galaxy",
                                                 "-"]
    assert sdss[0][1]["cache"] is False
    with pytest.raises(ValueError, match="qso must be"):
        sdss_labels(cat, qso="quasar")


def test_sdss_labels_empty_answer(monkeypatch, tmp_path):
    from astroquery.sdss import SDSS

    monkeypatch.setattr(SDSS, "query_sql_async",
                        lambda sql, **kw: FakeResponse("#Table1\n" + ",".join(
                            labels_module._SDSS_COLUMNS) + "\n"))
    out = sdss_labels(_catalog([(0, 0), (1, 1)]), cache=tmp_path)
    assert out["label"].mask.all() and len(out) == 2


def test_sdss_box_query_wraps_at_zero():
    sql = labels_module._sdss_box_query(0.05, 0.0, 0.1)
    assert "(ra >= 359.9499" in sql and "OR ra <= 0.1500" in sql


@pytest.mark.remote_data
def test_gaia_labels_live(tmp_path):
    # Barnard's star (J2016.0 position) and a patch of sky beside it
    cat = Table({"ra": [269.44850252543, 269.5], "dec": [4.73942005111, 4.8]})
    out = gaia_labels(cat, cache=tmp_path)
    assert out["label"][0] == "star"


@pytest.mark.remote_data
def test_sdss_labels_live(tmp_path):
    # The SDSS spectrum of a bright galaxy (NGC 5406 nucleus, DR17)
    cat = Table({"ra": [210.08381], "dec": [38.91535]})
    out = sdss_labels(cat, radius=3.0, cache=tmp_path)
    assert out["sdss_class"][0] in ("GALAXY", "QSO", "STAR")
