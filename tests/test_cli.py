"""The astro-starglx command line tool (thin wrappers, tested end to end)."""

import numpy as np
import pytest
from astropy.table import Table

from astro_starglx import StarGalaxyWarning
from astro_starglx.cli import build_parser, main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "classify", "weights", "sim-report", "make-dataset", "train",
                 "evaluate"):
        assert name in out


def test_weights_list_and_verify(isolated_registry, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "bundled" in out and "tiny-remote" in out
    # Nothing downloaded yet is not a failure.
    assert main(["weights", "verify"]) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "ok" in out


def test_weights_install_then_verify(isolated_registry, capsys):
    assert main(["weights", "install", str(isolated_registry.remote_file)]) == 0
    capsys.readouterr()
    assert main(["weights", "verify", "tiny-remote"]) == 0
    assert "ok" in capsys.readouterr().out


def test_demo_runs_offline(isolated_registry, capsys, tmp_path):
    pytest.importorskip("galsim")
    out_file = tmp_path / "demo.ecsv"
    assert main(["demo", "--size", "160", "--seed", "3", "--output", str(out_file)]) == 0
    printed = capsys.readouterr().out
    assert "classified with tiny" in printed and "star recall" in printed
    result = Table.read(out_file)
    assert {"p_star", "p_galaxy", "class", "class_flags"} <= set(result.colnames)


def test_classify_fits_files(tmp_path, tiny_weights_file, capsys):
    from astropy.nddata import CCDData
    from astropy.wcs import WCS

    from astro_starglx.csst import CSST_BANDS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [40, 30]
    w.wcs.cdelt = [-0.074 / 3600, 0.074 / 3600]
    rng = np.random.default_rng(0)
    specs = []
    for band in CSST_BANDS:
        ccd = CCDData(rng.normal(0, 1, (60, 80)).astype(np.float32), unit="electron/s",
                      wcs=w, meta={"MAGZERO": 25.0})
        path = tmp_path / f"{band}.fits"
        ccd.write(path)
        specs.append(f"{band}={path}")
    coords = w.pixel_to_world([20.0, 2.0], [30.0, 10.0])  # the second is PARTIAL
    Table({"ra": coords.ra.deg, "dec": coords.dec.deg}).write(tmp_path / "cat.ecsv")
    out = tmp_path / "out.ecsv"
    with pytest.warns(StarGalaxyWarning, match="PARTIAL 1"):
        assert main(["classify", str(tmp_path / "cat.ecsv"), *specs, "-o", str(out),
                     "--model", str(tiny_weights_file)]) == 0
    result = Table.read(out)
    assert len(result) == 2 and "p_galaxy" in result.colnames
    assert result.meta["astro_starglx"]["model"] == "tiny"


def test_classify_bad_image_spec(tmp_path):
    Table({"ra": [1.0], "dec": [1.0]}).write(tmp_path / "cat.ecsv")
    with pytest.raises(SystemExit, match="BAND=FILE"):
        main(["classify", str(tmp_path / "cat.ecsv"), "nofile.fits", "-o", "x.ecsv"])


def test_parser_defaults():
    args = build_parser().parse_args(["make-dataset", "out"])
    assert (args.n_stars, args.n_galaxies) == (32371, 93525)
    args = build_parser().parse_args(["train", "data", "run"])
    assert args.model == "rbim-lite"
