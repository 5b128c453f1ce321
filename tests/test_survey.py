"""Tests of astro_starglx.survey: manifests, atomic per-tile outputs, resume, killed workers."""

import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from synthetic_sources import ZP, make_field

from astro_starglx.csst import CSST_BANDS
from astro_starglx.survey import SurveyWarning, _write_table, classify_tiles, read_manifest

distributed = pytest.importorskip("distributed")

TILE_BANDS = ("g", "r")  # the tiny test model allows missing bands: two are enough


def _wcs(k, *, shift=0.0):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0 + 0.01 * k, 2.0]
    wcs.wcs.crpix = [48.5 + shift, 48.5 - shift]
    wcs.wcs.cdelt = [-0.074 / 3600.0, 0.074 / 3600.0]
    return wcs


def _write_tile(folder, k, *, l1=False, catalog=True):
    """A 96 x 96 two-band tile of 9 sources; returns its manifest row (relative paths)."""
    rng = np.random.default_rng(k)
    kinds = ["star", "galaxy", "star", "galaxy", "galaxy", "star", "galaxy", "star", "galaxy"]
    row = {"tile": f"tile{k:02d}", "catalog": ""}
    for j, band in enumerate(TILE_BANDS):
        data, x, y = make_field(rng, kinds, rng.uniform(19.0, 22.0, len(kinds)),
                                shape=(96, 96), spacing=32, noise=1.0)
        wcs = _wcs(k, shift=0.3 * j)  # bands on slightly different grids
        header = wcs.to_header()
        header["MAGZERO"] = ZP
        header["BUNIT"] = "adu"
        if l1:
            name = f"CSST_MSC_tile{k:02d}_{band}_L1"
            fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header)]).writeto(
                folder / f"{name}_img.fits")
            fits.ImageHDU(np.ones_like(data), header).writeto(folder / f"{name}_wht.fits")
            fits.ImageHDU(np.zeros(data.shape, np.int32), header).writeto(
                folder / f"{name}_flg.fits")
            row[band] = f"{name}_img.fits"
        else:
            fits.writeto(folder / f"tile{k:02d}_{band}.fits", data, header)
            row[band] = f"tile{k:02d}_{band}.fits"
        if band == "r" and catalog:
            ra, dec = wcs.pixel_to_world_values(x, y)
            cat = Table({"id": np.arange(len(x)) + 100 * k, "ra": ra, "dec": dec})
            cat.write(folder / f"tile{k:02d}_cat.ecsv")
            row["catalog"] = f"tile{k:02d}_cat.ecsv"
    return row


def _manifest(folder, n_tiles, *, detect=(), l1=()):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [_write_tile(folder, k, l1=k in l1, catalog=k not in detect) for k in range(n_tiles)]
    table = Table(rows=[[row["tile"], row["catalog"], *(row.get(b, "") for b in CSST_BANDS)]
                        for row in rows], names=("tile", "catalog", *CSST_BANDS),
                  dtype=[str] * (2 + len(CSST_BANDS)))
    path = folder / "manifest.ecsv"
    table.write(path)
    return path


def _check_outputs(out, manifest_path):
    """Every tile once, every catalog row once, no temporary file left."""
    manifest = Table.read(manifest_path)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{tile}.fits" for tile in manifest["tile"])
    for row in manifest:
        result = Table.read(out / f"{row['tile']}.fits")
        assert result.meta["TILE"] == row["tile"]
        if row["catalog"]:
            catalog = Table.read(manifest_path.parent / row["catalog"])
            assert sorted(result["id"]) == sorted(catalog["id"])  # each row exactly once
        assert {"p_star", "p_galaxy", "class", "class_flags"} <= set(result.colnames)


@pytest.fixture(scope="module")
def client():
    """An in-process cluster for the fast tests (the kill tests start real processes)."""
    import torch

    # Dask gives its worker processes one torch thread (OMP_NUM_THREADS=1); an
    # in-process worker shares ours, so match that here (an LSTM on 2 contended
    # cores runs 20x slower with 2 threads).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  protocol="tcp", host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as cluster, \
            distributed.Client(cluster) as dask_client:
        yield dask_client
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- manifest


def test_read_manifest_resolves_paths(tmp_path):
    path = _manifest(tmp_path / "m", 2, detect=(1,))
    tiles = read_manifest(path, bands=CSST_BANDS)
    assert [t["tile"] for t in tiles] == ["tile00", "tile01"]
    assert tiles[0]["catalog"] == str(tmp_path / "m" / "tile00_cat.ecsv")
    assert tiles[1]["catalog"] == ""
    assert sorted(tiles[0]["images"]) == sorted(TILE_BANDS)


@pytest.mark.parametrize(("edit", "error", "match"), [
    (lambda t: t.remove_column("u"), ValueError, r"missing column\(s\) \['u'\]"),
    (lambda t: t.remove_column("catalog"), ValueError, r"missing column\(s\) \['catalog'\]"),
    (lambda t: t.__setitem__("tile", ["a", "a"]), ValueError,
     r"rows 0 and 1: tile 'a' appears twice"),
    (lambda t: t.__setitem__("tile", ["a", "../b"]), ValueError, "tile '../b' cannot be"),
    (lambda t: t["r"].__setitem__(1, "nope.fits"), FileNotFoundError,
     r"tile 'tile01', column 'r': file .*nope.fits does not exist"),
    (lambda t: [t[b].__setitem__(0, "") for b in TILE_BANDS], ValueError,
     "tile 'tile00' .* has no image"),
])
def test_read_manifest_errors(tmp_path, edit, error, match):
    table = Table.read(_manifest(tmp_path, 2))
    table["tile"] = table["tile"].astype("U8")
    edit(table)
    path = tmp_path / "edited.ecsv"
    table.write(path)
    with pytest.raises(error, match=match):
        read_manifest(path, bands=CSST_BANDS)


def test_read_manifest_type_errors(tmp_path):
    with pytest.raises(TypeError, match="manifest must be a path"):
        read_manifest(3, bands=CSST_BANDS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "none.ecsv", bands=CSST_BANDS)


def test_l1_manifest_needs_companions(tmp_path):
    path = _manifest(tmp_path, 1, l1=(0,))
    (tmp_path / "CSST_MSC_tile00_r_L1_flg.fits").unlink()
    with pytest.raises(FileNotFoundError, match=r"column 'r \(flg\)'"):
        read_manifest(path, bands=CSST_BANDS)


# --------------------------------------------------------------------------- outputs


def test_write_table_is_atomic(tmp_path):
    path = tmp_path / "t.fits"
    Table({"a": [1, 2]}).write(path)
    before = path.read_bytes()
    bad = Table({"a": np.array([{1: 2}, None], dtype=object)})  # FITS cannot hold it
    with pytest.raises(Exception):  # noqa: B017, PT011 (astropy's own error)
        _write_table(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.fits"]


def test_classify_tiles_resume_and_detect(tmp_path, client, tiny_weights_file):
    manifest = _manifest(tmp_path / "in", 4, detect=(3,), l1=(2,))
    out = tmp_path / "out"
    with pytest.warns(SurveyWarning, match="had warnings"):
        summary = classify_tiles(manifest, out, client=client, model=tiny_weights_file,
                                 progress=False)
    assert list(summary["status"]) == ["done"] * 4
    assert summary["n_sources"][3] >= 7  # detected: 9 sources on the field
    _check_outputs(out, manifest)
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "tile01.fits").unlink()
    with pytest.warns(SurveyWarning, match="1 tile"):
        again = classify_tiles(manifest, out, client=client, model=tiny_weights_file,
                               progress=False)
    assert list(again["status"]) == ["skipped", "done", "skipped", "skipped"]
    assert all((out / name).stat().st_mtime_ns == first[name]
               for name in first if name != "tile01.fits")
    _check_outputs(out, manifest)


def test_failed_tile_is_reported_not_raised(tmp_path, client, tiny_weights_file):
    manifest = _manifest(tmp_path / "in", 2)
    (tmp_path / "in" / "tile01_g.fits").write_bytes(b"not a FITS file")
    with pytest.warns(SurveyWarning, match=r"1 tile\(s\) failed: \['tile01'\]"):
        summary = classify_tiles(manifest, tmp_path / "out", client=client,
                                 model=tiny_weights_file, progress=False)
    assert list(summary["status"]) == ["done", "failed"]
    assert "tile01_g.fits" in summary["message"][1] or "FITS" in summary["message"][1]
    assert not (tmp_path / "out" / "tile01.fits").exists()


def test_classify_tiles_argument_errors(tmp_path, tiny_weights_file):
    manifest = _manifest(tmp_path, 1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        classify_tiles(manifest, tmp_path / "o", model=tiny_weights_file, batch_size=0)
    with pytest.raises(TypeError, match="client must be a distributed.Client"):
        classify_tiles(manifest, tmp_path / "o", model=tiny_weights_file, client="tcp://x")
    with pytest.raises(TypeError, match="detect must be a dict"):
        classify_tiles(manifest, tmp_path / "o", model=tiny_weights_file, detect=3.0)
    with pytest.raises(FileNotFoundError, match="model file .*none.safetensors does not exist"):
        classify_tiles(manifest, tmp_path / "o", model=tmp_path / "none.safetensors")
    assert not (tmp_path / "o").exists()  # refused before any work


# --------------------------------------------------------------------------- fault tolerance


def _wait_for_output(out, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.is_dir() and any(p.suffix == ".fits" for p in out.iterdir()):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def process_cluster():
    """
    A real LocalCluster: 2 worker processes of one thread each, under nannies,
    with the allocator setting the survey page of the docs recommends.
    """
    import dask

    from astro_starglx.survey import WORKER_ENVIRON

    with dask.config.set({"distributed.nanny.pre-spawn-environ": {
            **dask.config.get("distributed.nanny.pre-spawn-environ"), **WORKER_ENVIRON}}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     host="127.0.0.1",
                                     dashboard_address="127.0.0.1:0") as cluster:
        yield cluster


def test_own_cluster_gives_its_workers_the_allocator_setting():
    from astro_starglx.survey import WORKER_ENVIRON, _allocator_environ, _client

    with _client(None, 1) as dask_client:
        environs = dask_client.run(_allocator_environ)
    assert len(environs) == 1
    for environ in environs.values():
        if environ is None:  # not glibc: nothing to set
            continue
        assert environ == {"MALLOC_TRIM_THRESHOLD_": "65536",  # Dask's, kept
                           **{name: str(value) for name, value in WORKER_ENVIRON.items()}}


def test_allocator_environ_is_what_the_process_started_with():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator variables are glibc's")
    code = ("import os; from astro_starglx.survey import _allocator_environ; "
            "os.environ['MALLOC_MMAP_THRESHOLD_'] = '1'; print(_allocator_environ())")
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    # set after the start, so glibc never read it: reported as unset
    assert out.strip() == str({"MALLOC_TRIM_THRESHOLD_": "65536",
                               "MALLOC_MMAP_THRESHOLD_": None})


def test_workers_with_dasks_allocator_default_warn():
    from astro_starglx.survey import _check_worker_environ

    class Workers:
        def __init__(self, environs):
            self.environs = environs

        def run(self, function):
            return self.environs

    fast = {"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": "33554432"}
    slow = {"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": None}
    unset = {"MALLOC_TRIM_THRESHOLD_": None, "MALLOC_MMAP_THRESHOLD_": None}
    with pytest.warns(SurveyWarning, match=r"^1 of 3 Dask workers run with "
                      r"MALLOC_TRIM_THRESHOLD_ .* \{MALLOC_MMAP_THRESHOLD_: 33554432\}"):
        _check_worker_environ(Workers({"a": fast, "b": slow, "c": None}))
    for environs in ({"a": fast, "b": unset, "c": None}, {}):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _check_worker_environ(Workers(environs))


def test_killed_worker_loses_and_duplicates_nothing(tmp_path, tiny_weights_file,
                                                    process_cluster):
    n_tiles = 8
    manifest = _manifest(tmp_path / "in", n_tiles)
    out = tmp_path / "out"
    killed = {}
    with distributed.Client(process_cluster) as dask_client:
        pids = dask_client.run(os.getpid)

        def kill_a_busy_worker():
            if not _wait_for_output(out):
                return
            for address, keys in dask_client.processing().items():
                if keys and address in pids:
                    killed.update(address=address, keys=keys,
                                  n_done=sum(1 for _ in out.glob("*.fits")))
                    os.kill(pids[address], signal.SIGKILL)
                    return

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        with pytest.warns(SurveyWarning, match="had warnings"):
            summary = classify_tiles(manifest, out, client=dask_client,
                                     model=tiny_weights_file, progress=False)
        killer.join()
    assert killed, "no worker was busy when the first tile finished"
    assert killed["n_done"] < n_tiles
    assert list(summary["status"]) == ["done"] * n_tiles
    _check_outputs(out, manifest)


def test_cli_killed_and_rerun_completes(tmp_path, tiny_weights_file, process_cluster):
    n_tiles = 10
    manifest = _manifest(tmp_path / "in", n_tiles)
    out = tmp_path / "out"
    # --scheduler: the cluster of the test above (its killed worker restarted by its
    # nanny) saves starting workers again; the command itself is what is killed.
    command = [sys.executable, "-m", "astro_starglx.cli", "classify-tiles", str(manifest),
               "-o", str(out), "--scheduler", process_cluster.scheduler_address,
               "--model", str(tiny_weights_file)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert _wait_for_output(out)
        n_done = sum(1 for _ in out.glob("*.fits"))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert n_done < n_tiles
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    n_skipped = int(rerun.stdout.split(" skipped")[0].rsplit(", ", 1)[1])
    assert n_skipped >= n_done
    assert f"{n_tiles} tiles in" in rerun.stdout
    _check_outputs(out, manifest)
