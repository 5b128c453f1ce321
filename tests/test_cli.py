"""The astro-starglx command line tool (thin wrappers, tested end to end)."""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table

from astro_starglx.cli import build_parser, main
from astro_starglx.csst import CSST_BANDS


def _subparsers(parser, prefix=()):
    """(command words, parser) for the top parser and every (sub)subcommand."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*prefix, name))


ALL_COMMANDS = [words for words, _ in _subparsers(build_parser())]


def _fits_field(tmp_path, x=(20.0, 2.0), y=(30.0, 10.0)):
    """Seven noise images sharing a TAN WCS, and a catalog of sky positions."""
    from astropy.nddata import CCDData
    from astropy.wcs import WCS

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
    coords = w.pixel_to_world(list(x), list(y))
    catalog = tmp_path / "cat.ecsv"
    Table({"ra": coords.ra.deg, "dec": coords.dec.deg}).write(catalog)
    return str(catalog), specs


# -- the parser -----------------------------------------------------------------------


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("demo", "classify", "weights", "sim-report", "make-dataset", "train",
                 "evaluate"):
        assert name in out


@pytest.mark.parametrize("words", ALL_COMMANDS, ids=lambda w: " ".join(w) or "top")
def test_every_subcommand_help(words, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: astro-starglx {' '.join(words)}".rstrip())
    assert "--verbose" in out and "--debug" in out


@pytest.mark.parametrize("words", ALL_COMMANDS, ids=lambda w: " ".join(w) or "top")
def test_every_option_has_help_with_default(words):
    parser = dict(_subparsers(build_parser()))[words]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{words} {name}: no help"
        text = formatter._expand_help(action)
        is_flag = action.nargs == 0
        has_default = not action.required and action.default is not argparse.SUPPRESS \
            and (action.option_strings or action.nargs in ("?", "*"))
        if (has_default or is_flag) and not isinstance(action, argparse._VersionAction):
            assert "default" in text, f"{words} {name}: help does not show the default"
        assert "%(" not in text


@pytest.mark.parametrize("argv", [["-v", "weights", "list"], ["weights", "-v", "list"],
                                  ["weights", "list", "--verbose"]])
def test_verbose_before_or_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert args.verbose == 1 and args.debug is False


def test_debug_before_or_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["--debug", "demo"]).debug is True
    assert parser.parse_args(["demo", "--debug"]).debug is True
    args = parser.parse_args(["demo"])
    assert args.debug is False and args.verbose == 0
    assert parser.parse_args(["-vv", "demo"]).verbose == 2


def test_parser_defaults():
    args = build_parser().parse_args(["make-dataset", "out"])
    assert (args.n_stars, args.n_galaxies) == (32371, 93525)
    args = build_parser().parse_args(["train", "data", "run"])
    assert args.model == "rbim-lite"
    args = build_parser().parse_args(["classify", "cat.ecsv", "r=r.fits", "-o", "x.ecsv"])
    assert args.overwrite is False and args.replace_columns is False
    assert args.zeropoint is None and args.psf is None and args.precision == "auto"


def test_train_passes_init_and_config(monkeypatch, tmp_path, capsys):
    from astro_starglx import training

    calls = []

    def fake_train_release(dataset, output, **kwargs):
        calls.append((dataset, output, kwargs))
        return tmp_path / "out.safetensors"

    monkeypatch.setattr(training, "train_release", fake_train_release)
    argv = ["train", "a", "b", "run", "--init", "rbim-lite-v5", "--epochs", "3",
            "--config", '{"lr": 5e-4}']
    monkeypatch.setattr("sys.argv", ["astro-starglx", *argv])  # the recipe's command
    assert main(argv) == 0
    (dataset, output, kwargs), = calls
    assert dataset == ["a", "b"] and output == "run"
    assert kwargs["init"] == "rbim-lite-v5"
    assert kwargs["config"].lr == 5e-4 and kwargs["config"].epochs == 3
    assert "--init rbim-lite-v5" in kwargs["command"]
    assert capsys.readouterr().out.strip() == str(tmp_path / "out.safetensors")
    assert build_parser().parse_args(["train", "data", "run"]).init is None


# -- weights --------------------------------------------------------------------------


def test_weights_list_header_and_default(isolated_registry, capsys):
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "where", "sha256", "file"]
    rows = {line[2:].split()[0]: line for line in lines[1:-1]}
    assert set(rows) == {"tiny", "tiny-remote"}
    assert rows["tiny"].startswith("* ") and "bundled" in rows["tiny"]
    assert rows["tiny-remote"].startswith("  ") and "download" in rows["tiny-remote"]
    assert lines[-1] == "* the default model"


def test_weights_verify(isolated_registry, capsys):
    # Nothing downloaded yet is not a failure.
    assert main(["weights", "verify"]) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "ok" in out


def test_weights_install_then_verify(isolated_registry, capsys):
    assert main(["weights", "install", str(isolated_registry.remote_file)]) == 0
    capsys.readouterr()
    assert main(["weights", "verify", "tiny-remote"]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["weights", "list"]) == 0
    assert "cached" in capsys.readouterr().out


# -- errors ---------------------------------------------------------------------------


def test_error_is_one_line_without_traceback(tmp_path, capsys):
    argv = ["classify", str(tmp_path / "missing.ecsv"), "r=r.fits", "-o",
            str(tmp_path / "out.ecsv")]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("astro-starglx classify: error: ")
    assert "missing.ecsv" in lines[0] and "Traceback" not in captured.err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ecsv"):
        main(["--debug", "classify", str(tmp_path / "missing.ecsv"), "r=r.fits", "-o",
              str(tmp_path / "out.ecsv")])


def test_classify_bad_image_spec(tmp_path, capsys):
    Table({"ra": [1.0], "dec": [1.0]}).write(tmp_path / "cat.ecsv")
    assert main(["classify", str(tmp_path / "cat.ecsv"), "nofile.fits", "-o",
                 str(tmp_path / "x.ecsv")]) == 2
    assert "BAND=FILE, got 'nofile.fits'" in capsys.readouterr().err


def test_classify_unknown_output_format(tmp_path, capsys):
    Table({"ra": [1.0], "dec": [1.0]}).write(tmp_path / "cat.ecsv")
    assert main(["classify", str(tmp_path / "cat.ecsv"), "r=r.fits", "-o",
                 str(tmp_path / "x.unknown")]) == 2
    assert "table format" in capsys.readouterr().err


def test_failed_evaluate_leaves_no_output_folder(tmp_path, capsys):
    outdir = tmp_path / "evaluation"
    assert main(["evaluate", str(tmp_path / "no-such-dataset"), "--outdir",
                 str(outdir)]) == 1
    assert "error:" in capsys.readouterr().err
    assert not outdir.exists()


def test_failed_evaluate_keeps_an_existing_folder(tmp_path, capsys):
    outdir = tmp_path / "evaluation"
    outdir.mkdir()
    assert main(["evaluate", str(tmp_path / "no-such-dataset"), "--outdir",
                 str(outdir)]) == 1
    assert outdir.is_dir()


# -- classify -------------------------------------------------------------------------


def test_classify_fits_files(tmp_path, tiny_weights_file, capsys):
    catalog, specs = _fits_field(tmp_path, x=[20.0], y=[30.0])
    out = tmp_path / "out.ecsv"
    assert main(["classify", catalog, *specs, "-o", str(out), "--model",
                 str(tiny_weights_file)]) == 0
    assert f"wrote 1 rows to {out}" in capsys.readouterr().out
    result = Table.read(out)
    assert len(result) == 1 and "p_galaxy" in result.colnames
    assert result.meta["astro_starglx"]["model"] == "tiny"


def test_output_is_never_overwritten_silently(tmp_path, tiny_weights_file, capsys):
    catalog, specs = _fits_field(tmp_path, x=[20.0], y=[30.0])
    out = tmp_path / "out.ecsv"
    out.write_text("keep me")
    argv = ["classify", catalog, *specs, "-o", str(out), "--model", str(tiny_weights_file)]
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert main([*argv, "--overwrite"]) == 0
    assert "p_star" in Table.read(out).colnames


def test_existing_output_columns_need_replace_columns(tmp_path, tiny_weights_file, capsys):
    catalog, specs = _fits_field(tmp_path, x=[20.0], y=[30.0])
    first = tmp_path / "first.ecsv"
    model = ["--model", str(tiny_weights_file)]
    assert main(["classify", catalog, *specs, "-o", str(first), *model]) == 0
    second = tmp_path / "second.ecsv"
    assert main(["classify", str(first), *specs, "-o", str(second), *model]) == 2
    assert "pass --replace-columns" in capsys.readouterr().err
    assert not second.exists()
    assert main(["classify", str(first), *specs, "-o", str(second), *model,
                 "--replace-columns"]) == 0


@pytest.mark.filterwarnings("ignore:the model .* does not read the PSF")
@pytest.mark.filterwarnings("ignore:the model .* records no training depth")
def test_zeropoint_and_psf_reach_classify(tmp_path, tiny_weights_file, monkeypatch):
    from astro_starglx.classifier import StarGalaxyClassifier

    seen = {}
    original = StarGalaxyClassifier.classify

    def spy(self, catalog, images, **kwargs):
        seen.update(kwargs)
        return original(self, catalog, images, **kwargs)

    monkeypatch.setattr(StarGalaxyClassifier, "classify", spy)
    catalog, specs = _fits_field(tmp_path, x=[20.0], y=[30.0])
    assert main(["classify", catalog, *specs, "-o", str(tmp_path / "out.ecsv"), "--model",
                 str(tiny_weights_file), "--zeropoint", "25.5", "--zeropoint", "r=26",
                 "--psf", "g=0.2", "--psf", "r=0.15"]) == 0
    assert seen["zeropoints"] == {**{band: 25.5 for band in CSST_BANDS}, "r": 26.0}
    assert seen["psf"] == {"g": 0.2, "r": 0.15}
    assert main(["classify", catalog, *specs, "-o", str(tmp_path / "out2.ecsv"),
                 "--model", str(tiny_weights_file)]) == 0
    assert seen["zeropoints"] is None and seen["psf"] is None
    assert seen["match_depth"] is None  # --match-depth auto
    assert seen["refine_positions"] is True
    assert main(["classify", catalog, *specs, "-o", str(tmp_path / "given.ecsv"),
                 "--model", str(tiny_weights_file), "--positions-as-given"]) == 0
    assert seen["refine_positions"] is False
    for choice, value in (("on", True), ("off", False)):
        assert main(["classify", catalog, *specs, "-o", str(tmp_path / f"{choice}.ecsv"),
                     "--model", str(tiny_weights_file), "--match-depth", choice]) == 0
        assert seen["match_depth"] is value


@pytest.mark.parametrize("option, values, match", [
    ("--zeropoint", ["25", "26"], "two values for every band"),
    ("--zeropoint", ["q=25"], "no image is given for band 'q'"),
    ("--psf", ["r=wide"], "BAND=VALUE or one VALUE"),
    ("--psf", ["nan"], "BAND=VALUE or one VALUE"),
])
def test_bad_zeropoint_or_psf(tmp_path, capsys, option, values, match):
    argv = ["classify", "cat.ecsv", *[f"{b}={b}.fits" for b in CSST_BANDS], "-o",
            str(tmp_path / "out.ecsv")]
    for value in values:
        argv += [option, value]
    Table({"ra": [1.0], "dec": [1.0]}).write(tmp_path / "cat.ecsv")
    argv[1] = str(tmp_path / "cat.ecsv")
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_warning_prints_once(tmp_path, tiny_weights_file):
    # A real process: astropy's logger and the logging set-up are what once
    # printed each warning twice.
    catalog, specs = _fits_field(tmp_path)  # the second source is PARTIAL
    env = {**os.environ, "PYTHONWARNINGS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "astro_starglx.cli", "classify", catalog, *specs, "-o",
         str(tmp_path / "out.ecsv"), "--model", str(tiny_weights_file)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("PARTIAL 1") == 1, proc.stderr
    assert "astro-starglx: warning: 1 of 2 sources flagged (PARTIAL 1)" in proc.stderr


# -- demo -----------------------------------------------------------------------------


def test_demo_saves_field_and_truth(isolated_registry, capsys, tmp_path):
    pytest.importorskip("galsim")
    from astropy.nddata import CCDData

    out_file = tmp_path / "demo.ecsv"
    field = tmp_path / "field"
    argv = ["demo", "--size", "160", "--seed", "3", "-o", str(out_file), "--save", str(field)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "classified with tiny" in captured.out and "star recall" in captured.out
    assert "simulating a 160x160 px" in captured.err  # progress, on stderr
    result = Table.read(out_file)
    assert {"p_star", "p_galaxy", "class", "class_flags", "label", "mag_r"} <= set(
        result.colnames)
    truth = Table.read(field / "catalog.ecsv")
    assert {"id", "ra", "dec", "label", "mag_r"} <= set(truth.colnames)
    assert list(truth["id"]) == list(result["id"])
    for band in CSST_BANDS:
        image = CCDData.read(field / f"field_{band}.fits")
        assert image.wcs.has_celestial and "MAGZERO" in image.header
    # Both outputs exist now: a second run refuses before simulating anything.
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "already exists; pass --overwrite" in captured.err
    assert "simulating" not in captured.err


# -- your own labelled data: make-dataset --catalog, evaluate --catalog, fine-tune ------


@pytest.fixture(scope="module")
def labelled_fits(tmp_path_factory):
    """A simulated CSST-like field on disk as a user has one: FITS images + labels."""
    pytest.importorskip("galsim")
    from astro_starglx.simulate import simulate_field

    folder = tmp_path_factory.mktemp("own")
    images, truth = simulate_field(shape=(160, 160), seed=8, n_stars=14, n_galaxies=16)
    specs = []
    for band, image in images.items():
        path = folder / f"{band}.fits"
        image.write(path)
        specs += ["--image", f"{band}={path}"]
    catalog = folder / "labelled.ecsv"
    truth["ra", "dec", "label", "mag_r"].write(catalog)
    return str(catalog), specs


def test_labelled_data_commands(labelled_fits, tiny_weights_file, tmp_path, capsys):
    import json

    catalog, specs = labelled_fits
    model = ["--model", str(tiny_weights_file)]
    data = tmp_path / "own-set"
    assert main(["make-dataset", str(data), "--catalog", catalog, *specs,
                 "--stamp-size", "15", "--seed", "2"]) == 0
    info = json.loads((data / "dataset.json").read_text())
    assert info["source"] == "labelled" and info["stamp_size"] == 15 and info["seed"] == 2
    # the data set evaluates like a simulated one
    assert main(["evaluate", str(data), *model, "--outdir", str(tmp_path / "e1")]) == 0
    assert (tmp_path / "e1" / "summary.ecsv").is_file()
    # and so does the catalog itself
    out = tmp_path / "e2"
    capsys.readouterr()
    assert main(["evaluate", "--catalog", catalog, *specs, *model, "--outdir", str(out)]) == 0
    assert "tiny" in capsys.readouterr().out
    assert {"summary.ecsv", "by_magnitude.ecsv", "roc.png"} <= {p.name for p in out.iterdir()}
    weights = tmp_path / "ft"
    assert main(["fine-tune", "--catalog", catalog, *specs, "--base",
                 str(tiny_weights_file), "-o", str(weights), "--mode", "calibrate",
                 "--name", "tiny-own", "--device", "cpu", "--magnitude-thresholds",
                 "--feature-scale", "2.5", "--folds", "3"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path.endswith("tiny-own.safetensors") and os.path.isfile(path)
    from astro_starglx.weights import read_meta
    meta = read_meta(path)
    assert meta.recipe["magnitude_thresholds"] is True and meta.recipe["folds"] == 3
    assert meta.feature_scale == 2.5


@pytest.mark.parametrize(("argv", "match"), [
    (["evaluate"], "give a data set folder, or --catalog"),
    (["evaluate", "some-set", "--catalog", "c.ecsv"], "not both"),
    (["evaluate", "--catalog", "c.ecsv"], "--catalog needs the images"),
    (["make-dataset", "out", "--catalog", "c.ecsv", "--n-stars", "5"],
     "--n-stars set.* simulated fields"),
    (["evaluate", "--catalog", "c.ecsv", "--image", "r=x.fits", "--baselines"],
     "--baselines needs a data set"),
])
def test_labelled_data_usage_errors(argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err
    import re

    assert re.search(match, err)


def test_classify_tiles_options_and_errors(tmp_path, capsys, tiny_weights_file):
    """classify-tiles: defaults shown in --help, usage errors, a bad manifest named."""
    pytest.importorskip("distributed")
    with pytest.raises(SystemExit):
        main(["classify-tiles", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--scheduler ADDRESS" in text and "(default: one per CPU)" in text
    assert main(["classify-tiles", "m.ecsv", "-o", str(tmp_path), "--workers", "2",
                 "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "not both" in capsys.readouterr().err
    manifest = tmp_path / "m.ecsv"
    Table({"tile": ["a"], "catalog": [""], "r": ["r.fits"]}).write(manifest)
    assert main(["classify-tiles", str(manifest), "-o", str(tmp_path / "out"), "--model",
                 str(tiny_weights_file)]) == 1
    err = capsys.readouterr().err
    assert "classify-tiles: error: manifest is missing column(s) ['NUV', 'u', 'g'," in err
