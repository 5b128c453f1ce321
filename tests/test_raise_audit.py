"""
Audit of the error messages: every ``raise`` of the public path is reached.

`raise_sites` parses the modules of the public path with `ast` and names
every raise site ``module:function:Exception:message prefix`` (the message's
literal text, ``{}`` for each formatted field, first 40 characters; ``#n``
for a repeat in one function). `SITES` maps each of them to

- `Trigger`: a small call that reaches it, the exception type and a regex
  its message must match (``pytest.raises(match=...)``);
- `Covered`: a test elsewhere that reaches it with a message match (for
  sites that need an HTTP server or a faulty disk: tests/test_weights.py);
- `Unreachable`: why the public API cannot reach it (internal assertions).

A raise site added to the code without an entry here fails
`test_every_raise_site_is_audited`; an entry whose site is gone fails it too.
"""

import ast
import json
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, NamedTuple

import astropy.units as u
import numpy as np
import pytest
import torch
from astropy.coordinates import SkyCoord
from astropy.nddata import NDData, StdDevUncertainty
from astropy.table import QTable, Table
from astropy.wcs import WCS
from conftest import make_tiny_meta, seeded_state_dict

import astro_starglx
from astro_starglx import StarGalaxyClassifier, _validation as val
from astro_starglx import background, cutouts, features, inference, inputs, meta, preprocess
from astro_starglx import psf, weights
from astro_starglx.csst import CSST_BANDS

PACKAGE = Path(astro_starglx.__file__).parent
MODULES = ("classifier", "inputs", "cutouts", "background", "features", "psf", "preprocess",
           "inference", "weights", "meta", "_validation")


# --------------------------------------------------------------------------
# the raise sites


def _text(node):
    """The literal text of a message expression, ``{}`` for each formatted field."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left) + _text(node.right)
    return "{}"


def _owner(fn, target):
    """The innermost function of ``fn`` that holds ``target``."""
    for node in ast.walk(fn):
        if node is not fn and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(child is target for child in ast.walk(node)):
                return node
    return fn


def raise_sites():
    """``module:function:Exception:message prefix`` of every ``raise X(...)``, in line order."""
    keys = []
    for module in MODULES:
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            names = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                        and isinstance(node.targets[0], ast.Name):
                    names.setdefault(node.targets[0].id, []).append(node)
            raises = sorted((node for node in ast.walk(fn)
                             if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                             and _owner(fn, node) is fn), key=lambda node: node.lineno)
            for node in raises:  # a bare `raise` re-raises: not a message of ours
                exc = node.exc
                arg = exc.args[0] if exc.args else None
                if isinstance(arg, ast.Name):
                    before = sorted((a for a in names.get(arg.id, []) if a.lineno < node.lineno),
                                    key=lambda a: a.lineno)
                    text = _text(before[-1].value) if before else "{}"
                else:
                    text = "" if arg is None else _text(arg)
                base = f"{module}:{fn.name}:{ast.unparse(exc.func)}:{' '.join(text.split())[:40]}"
                n = sum(k == base or k.startswith(base + " #") for k in keys)
                keys.append(base if n == 0 else f"{base} #{n + 1}")
    return keys


class Trigger(NamedTuple):
    call: Callable  # call(ctx) raises
    exc: type
    match: str


class Covered(NamedTuple):
    test: str  # "tests/test_x.py::test_name", which matches the message
    exc: str


class Unreachable(NamedTuple):
    why: str


# --------------------------------------------------------------------------
# inputs of the triggers


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [20.0, 20.0]
    w.wcs.cd = np.array([[-0.074, 0.0], [0.0, 0.074]]) / 3600.0
    return w


def _image(**changes):
    kw = dict(data=np.random.default_rng(0).normal(0, 1, (40, 40)), wcs=_wcs(),
              meta={"MAGZERO": 25.0})
    kw.update(changes)
    return NDData(**kw)


def _images(**changes):
    return {band: _image(**changes) for band in CSST_BANDS}


def _catalog():
    coords = _wcs().pixel_to_world([10.0, 20.0, 30.0], [12.0, 20.0, 25.0])
    return Table({"ra": coords.ra.deg, "dec": coords.dec.deg})


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    tiny = make_tiny_meta()
    path = folder / "tiny.safetensors"
    weights.save_weights(path, seeded_state_dict(tiny), tiny)
    clf = StarGalaxyClassifier(path, device="cpu", symmetrize="none")
    clf.loaded  # noqa: B018 (loaded once here)
    return SimpleNamespace(tmp=folder, path=path, meta=tiny, clf=clf,
                           model_meta=meta.ModelMeta.from_dict(tiny))


def classify(ctx, catalog=None, images=None, **kwargs):
    return ctx.clf.classify(_catalog() if catalog is None else catalog,
                            _images() if images is None else images, **kwargs)


def _write(ctx, name, content):
    path = ctx.tmp / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def _norm(**changes):
    value = {"softening": 3.0, "feature_mean": [[0.0, 0.0]], "feature_std": [[1.0, 1.0]]}
    value.update(changes)
    return preprocess.Normalization.from_dict(value)


def _registry(ctx, text):
    return weights._read_registry(_write(ctx, "registry.json", text))


def _entry(ctx, **changes):
    entry = {"filename": "x.safetensors", "sha256": "0" * 64, "bundled": False,
             "meta": ctx.meta}
    entry.update(changes)
    return weights._entry_to_weights("x", entry, ctx.tmp / "registry.json")


def _safetensors_without_meta(ctx):
    from safetensors.torch import save_file

    path = ctx.tmp / "nometa.safetensors"
    save_file({"a": torch.zeros(2)}, str(path), metadata={"other": "1"})
    return weights.load_model(path)


def _safetensors_bad_meta(ctx):
    from safetensors.torch import save_file

    path = ctx.tmp / "badmeta.safetensors"
    save_file({"a": torch.zeros(2)}, str(path), metadata={meta.META_KEY: "{not json"})
    return weights.load_model(path)


def _tampered(ctx, *, nan=False):
    """The tiny weights with one tensor changed after saving (hash no longer matches), or NaN."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(ctx.path), "pt") as fh:
        header = fh.metadata()
    state = load_file(str(ctx.path))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan") if nan else state[key].view(-1)[0] + 1
    path = ctx.tmp / ("nan.safetensors" if nan else "tampered.safetensors")
    if nan:  # a file that says it holds these tensors, NaN and all
        header = {k: v for k, v in header.items() if k == meta.META_KEY}
    save_file(state, str(path), metadata=header)
    return weights.load_model(path)


def _unfit_state(ctx):
    state = seeded_state_dict(ctx.meta)
    state.pop(next(iter(state)))
    path = ctx.tmp / "unfit.safetensors"
    weights.save_weights(path, state, ctx.meta)
    return weights.load_model(path)


def _quiet(call):
    """``call`` with the call's pixel-scale StarGalaxyWarning silenced."""
    import warnings

    def run(c, mp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", astro_starglx.StarGalaxyWarning)
            return call(c, mp)
    return run


def _unbuildable(ctx, monkeypatch):
    monkeypatch.setattr(weights, "build_model", lambda config: (_ for _ in ()).throw(
        KeyError("block")))
    return weights.load_model(ctx.path)


def _cuda_missing(ctx, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return inference.resolve_device("cuda")


def _bad_url(ctx, monkeypatch):
    monkeypatch.setenv(weights.URL_ENV, "ftp://mirror/weights")
    return weights.base_url()


def _unregistered_default(ctx, monkeypatch):
    reg = {"format_version": 1, "default": "nope", "models": {}}
    monkeypatch.setattr(weights, "_REGISTRY_PATH", _write(ctx, "empty.json", json.dumps(reg)))
    return weights.get_weights(None)


def _infer(ctx, monkeypatch):
    reg = {"format_version": 1, "default": "nope", "models": {}}
    monkeypatch.setattr(weights, "_REGISTRY_PATH", _write(ctx, "empty.json", json.dumps(reg)))
    return weights.install_weights(_write(ctx, "mystery.safetensors", b"x"))


def _psf_measure(**changes):
    kw = dict(data=np.zeros((20, 20)), x=[5.0], y=[5.0], pixel_scale=0.074,
              nominal_fwhm=0.15)
    kw.update(changes)
    return psf.measure_psf(**kw)


# --------------------------------------------------------------------------
# the table

ARCH = make_tiny_meta()["architecture"]
PSF_NAME = features.PSF_FEATURE_NAMES[0]


def _stamps(n=2, c=1, h=5):
    return np.zeros((n, c, h, h), np.float32)


def _cube_wcs():
    w = WCS(naxis=3)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN", "FREQ"]
    return w


def _extract(x, y, images=None, **kw):
    kw = dict(dict(bands=["r"], size=5, pixel_scale=0.074), **kw)
    return inputs.extract_inputs({"r": _image()} if images is None else images, x, y, **kw)


def _table_features(table, column_map):
    return features.features_from_table(table, bands=("g",), column_map=column_map,
                                        feature_names=("mag",))


def _resolve(images=None, positions=None, **kw):
    images = {"r": _image()} if images is None else images
    positions = {"r": ([5.0], [5.0])} if positions is None else positions
    return psf.resolve_psf(images, positions, **dict(dict(nominal_fwhm={"r": 0.15}), **kw))


def _arch(**changes):
    return meta.validate_architecture(dict(ARCH, **changes))


def _meta(c, **changes):
    return meta.ModelMeta.from_dict(dict(c.meta, **changes))


T = Trigger
SITES = {
    # classifier
    "classifier:__init__:ValueError:batch_size must be a positive int, got {":
        T(lambda c, mp: StarGalaxyClassifier(batch_size=0), ValueError,
          r"batch_size must be a positive int, got 0"),
    "classifier:__init__:ValueError:threshold must be None or a float in (0,":
        T(lambda c, mp: StarGalaxyClassifier(threshold="abc"), ValueError,
          r"threshold must be None or a float in \(0, 1\), got 'abc'; pass"),
    "classifier:__init__:TypeError:zeropoints must be a mapping {band: zero":
        T(lambda c, mp: StarGalaxyClassifier(zeropoints=25.0), TypeError,
          r"zeropoints must be a mapping \{band: zero point\} or None, got float"),
    "classifier:classify:ValueError:catalog already has output column(s) {};":
        T(lambda c, mp: classify(c, Table({"ra": [150.0], "dec": [2.0], "class": ["x"]})),
          ValueError, r"catalog already has output column\(s\) \['class'\]; pass overwrite"),
    "classifier:_check_star_fraction:ValueError:star_fraction must be a fraction in (0, ":
        T(lambda c, mp: classify(c, star_fraction=[0.2, 0.3]), ValueError,
          r"star_fraction must be a fraction in \(0, 1\) or an array of 3 of them \(one per "
          r"catalog row\), got \[0.2, 0.3\]"),
    "classifier:_check_star_fraction:ValueError:model {} does not record the star fracti":
        T(lambda c, mp: classify(c, star_fraction=0.3), ValueError,
          r"model 'tiny' does not record the star fraction its probabilities assume"),
    # inputs
    "inputs:_column_values:ValueError:column {} must hold numbers ({}), got dt":
        T(lambda c, mp: classify(c, Table({"ra": ["10:00:00"], "dec": [2.0]})), ValueError,
          r"column 'ra' must hold numbers \(.*\), got dtype <U8; parse sexagesimal"),
    "inputs:_column_values:ValueError:column {} must be 1-D (one position per ":
        T(lambda c, mp: classify(c, Table({"ra": np.ones((2, 2)), "dec": [2.0, 2.0]})),
          ValueError, r"column 'ra' must be 1-D \(one position per"),
    "inputs:_column_values:ValueError:column {} has unit {}, which is not an a":
        T(lambda c, mp: classify(c, QTable({"ra": [1.0] * u.m, "dec": [2.0] * u.deg})),
          ValueError, r"column 'ra' has unit m, which is not an angle"),
    "inputs:_sky_positions:ValueError:column {} has {} value(s) outside [-90, ":
        T(lambda c, mp: classify(c, Table({"ra": [150.0, 1.0], "dec": [2.0, 95.0]})),
          ValueError, r"column 'dec' has 1 value\(s\) outside \[-90, 90\] degrees "
                      r"\(first at row 1"),
    "inputs:_skycoord_column:ValueError:coord_column {} is not in the catalog; a":
        T(lambda c, mp: classify(c, coord_column="pos"), ValueError,
          r"coord_column 'pos' is not in the catalog; available columns: \['ra', 'dec'\]"),
    "inputs:_skycoord_column:TypeError:coord_column {} must hold a SkyCoord, go":
        T(lambda c, mp: classify(c, coord_column="ra"), TypeError,
          r"coord_column 'ra' must hold a SkyCoord, got Column"),
    "inputs:_skycoord_column:ValueError:SkyCoord column {} must be 1-D (one posi":
        T(lambda c, mp: classify(c, Table({"pos": SkyCoord(np.full((2, 2), 150.0),
                                                           np.full((2, 2), 2.0), unit="deg")})),
          ValueError, r"SkyCoord column 'pos' must be 1-D \(one posi"),
    "inputs:_check_celestial_wcs:ValueError:images[{}] has no WCS but sky positions ":
        T(lambda c, mp: classify(c, images=_images(wcs=None)), ValueError,
          r"images\['NUV'\] has no WCS but sky positions are used"),
    "inputs:_check_celestial_wcs:ValueError:images[{}].wcs must be a 2-D celestial W":
        T(_quiet(lambda c, mp: classify(c, images=_images(wcs=_cube_wcs()))), ValueError,
          r"images\['NUV'\]\.wcs must be a 2-D celestial WCS to convert sky positions"),
    "inputs:pixel_positions:ValueError:shared_grid=True needs pixel columns x_c":
        T(lambda c, mp: classify(c, shared_grid=True), ValueError,
          r"shared_grid=True needs pixel columns x_column='x' and y_column='y'"),
    "inputs:pixel_positions:ValueError:catalog has no sky positions: expected c":
        T(lambda c, mp: classify(c, Table({"a": [1.0]})), ValueError,
          r"catalog has no sky positions: expected columns ra_column='ra' and "
          r"dec_column='dec'"),
    "inputs:_find_zeropoint:ValueError:no photometric zero point for band {}: m":
        T(lambda c, mp: classify(c, images=_images(meta={})), ValueError,
          r"no photometric zero point for band 'NUV': magnitude features need one"),
    "inputs:_band_positions:ValueError:{} has no positions for band {} (keys: {":
        T(lambda c, mp: _extract({"g": [1.0]}, {"g": [1.0]}), ValueError,
          r"x has no positions for band 'r' \(keys: \['g'\]\); give x=\{band: array\}"),
    "inputs:_validated_positions:ValueError:x holds no positions: cannot tell how ma":
        T(lambda c, mp: _extract({}, {}, images={}), ValueError,
          r"x holds no positions: cannot tell how many sources there are"),
    "inputs:_validated_positions:ValueError:all bands must have positions for the sa":
        T(lambda c, mp: _extract({"r": [1.0], "g": [1.0, 2.0]}, {"r": [1.0], "g": [1.0, 2.0]},
                                 images={"r": _image(), "g": _image()}, bands=["r", "g"]),
          ValueError,
          r"all bands must have positions for the same N sources: band 'r' has 1, "
          r"band 'g' has 2"),
    "inputs:_feature_columns:TypeError:feature_names must be a sequence of feat":
        T(lambda c, mp: _extract([1.0], [1.0], feature_names="mag"), TypeError,
          r"feature_names must be a sequence of feature names, got 'mag'"),
    "inputs:_feature_columns:ValueError:feature_names holds {}, which astro_star":
        T(lambda c, mp: _extract([1.0], [1.0], feature_names=["bogus"]), ValueError,
          r"feature_names holds \['bogus'\], which astro_starglx cannot measure"),
    "inputs:_feature_columns:ValueError:feature_names asks for PSF features but ":
        T(lambda c, mp: _extract([1.0], [1.0], feature_names=[PSF_NAME]), ValueError,
          r"feature_names asks for PSF features but psf has no estimate for bands \['r'\]"),
    "inputs:model_images:ValueError:{} is a single image but the model reads":
        T(lambda c, mp: classify(c, images=_image()), ValueError,
          r"images is a single image but the model reads bands \['NUV'.*; pass a mapping"),
    "inputs:model_images:TypeError:{} must be a CCDData/NDData or a mapping":
        T(lambda c, mp: classify(c, images=[np.zeros((4, 4))]), TypeError,
          r"images must be a CCDData/NDData or a mapping \{band: CCDData\}, got list"),
    "inputs:_images_by_filter:ValueError:{} is a list, and {}[{}] cannot be mappe":
        T(lambda c, mp: classify(c, images=[_image(meta={"FILTER": "r"}),
                                            _image(meta={"FILTER": "R"})]), ValueError,
          r"images is a list, and images\[1\] cannot be mapped to a band: band 'r' "
          r"\(FILTER\) is given twice; pass a mapping"),
    "inputs:match_band_keys:ValueError:{} has keys {} and {} that both name ban":
        T(lambda c, mp: classify(c, images={"R": _image(), "HSC-R": _image()}), ValueError,
          r"images has keys 'R' and 'HSC-R' that both name band 'r'; keep one of them"),
    "inputs:model_images:TypeError:{} keys must be band names (str), got {}":
        T(lambda c, mp: classify(c, images={0: _image()}), TypeError,
          r"images keys must be band names \(str\), got 0 of type int"),
    "inputs:model_images:TypeError:{}[{}] must be an astropy CCDData or NDD":
        T(lambda c, mp: classify(c, images={"r": np.zeros((4, 4))}), TypeError,
          r"images\['r'\] must be an astropy CCDData or NDData, got ndarray"),
    "inputs:model_images:ValueError:{} has bands {} but the model {} reads {":
        T(lambda c, mp: classify(c, images={"F1": _image()}), ValueError,
          r"images has bands \['F1'\] but the model 'tiny' reads \['NUV'"),
    "inputs:model_images:ValueError:{} is missing band(s) {} that model {} n":
        T(lambda c, mp: inputs.model_images({"g": _image()}, ["g", "r"], allow_missing=False,
                                            model="m"), ValueError,
          r"images is missing band\(s\) \['r'\] that model 'm' needs \(it reads"),
    # cutouts, background, features
    "cutouts:saturation_level:ValueError:header keyword {} of {} must be the satu":
        T(lambda c, mp: classify(c, images=_images(meta={"MAGZERO": 25.0, "SATURATE": "hi"})),
          ValueError, r"header keyword SATURATE of images\['NUV'\] must be the saturation "
                      r"level as a number"),
    "background:estimate_background_noise:ValueError:sigma_stamps must have the shape of stam":
        T(lambda c, mp: background.estimate_background_noise(np.zeros((2, 5, 5)),
                                                             np.zeros((2, 4, 4))),
          ValueError, r"sigma_stamps must have the shape of stamps \(2, 5, 5\), got "
                      r"\(2, 4, 4\)"),
    "background:image_noise:ValueError:image has {} usable (unmasked, finite) p":
        T(lambda c, mp: background.image_noise(_image(data=np.full((8, 8), np.nan))), ValueError,
          r"image has 0 usable \(unmasked, finite\) pixels in its noise subsample"),
    "background:_noise_subsample:ValueError:image must be a 2-D image, got data of s":
        T(lambda c, mp: background.image_noise(np.zeros(5)), ValueError,
          r"image must be a 2-D image, got data of shape \(5,\)"),
    "features:measure_features:ValueError:offsets must have shape ({}, 2) (x, y in":
        T(lambda c, mp: features.measure_features(np.zeros((2, 5, 5)), np.ones(2),
                                                  zeropoint=25.0, offsets=np.zeros((3, 2)),
                                                  pixel_scale=0.074), ValueError,
          r"offsets must have shape \(2, 2\) \(x, y in the stamp\), got \(3, 2\)"),
    "features:measure_features:ValueError:zeropoint must be a finite AB magnitude,":
        T(lambda c, mp: features.measure_features(np.zeros((2, 5, 5)), np.ones(2),
                                                  zeropoint=np.nan, offsets=np.zeros((2, 2)),
                                                  pixel_scale=0.074), ValueError,
          r"zeropoint must be a finite AB magnitude, got nan"),
    "features:features_from_table:ValueError:column_map must map exactly the features":
        T(lambda c, mp: _table_features(Table({"m": [1.0]}), {"x": "m"}), ValueError,
          r"column_map must map exactly the features \['mag'\]; missing \['mag'\], "
          r"unknown \['x'\]"),
    "features:features_from_table:TypeError:column_map[{}] must be a column-name tem":
        T(lambda c, mp: _table_features(Table({"m": [1.0]}), {"mag": 1}), TypeError,
          r"column_map\['mag'\] must be a column-name template \(str\), got 1"),
    "features:features_from_table:ValueError:column_map[{}] = {} is not a valid templ":
        T(lambda c, mp: _table_features(Table({"m": [1.0]}), {"mag": "m_{foo}"}), ValueError,
          r"column_map\['mag'\] = 'm_\{foo\}' is not a valid template"),
    "features:features_from_table:ValueError:column {} (feature {}, band {}) is not i":
        T(lambda c, mp: _table_features(Table({"m": [1.0]}), {"mag": "mag_{band}"}),
          ValueError, r"column 'mag_g' \(feature 'mag', band 'g'\) is not in the table"),
    "features:features_from_table:ValueError:column {} must be numeric, got dtype {}":
        T(lambda c, mp: _table_features(Table({"m": ["a"]}), {"mag": "m"}), ValueError,
          r"column 'm' must be numeric, got dtype <U1"),
    "features:features_from_table:ValueError:column {} must be 1-D, got shape {}":
        T(lambda c, mp: _table_features(Table({"m": np.ones((1, 2))}), {"mag": "m"}),
          ValueError, r"column 'm' must be 1-D, got shape \(1, 2\)"),
    # psf
    "psf:psf_from_argument:ValueError:{} has unit {}; expected an angle or pix":
        T(lambda c, mp: psf.psf_from_argument(5 * u.m, pixel_scale=0.074), ValueError,
          r"psf has unit Unit\(\"m\"\); expected an angle or pixels; pass the FWHM"),
    "psf:psf_from_argument:TypeError:{} must be a number, a Quantity or a PSF":
        T(lambda c, mp: psf.psf_from_argument("wide", pixel_scale=0.074), TypeError,
          r"psf must be a number, a Quantity or a PSF image, got str; pass the FWHM"),
    "psf:psf_from_argument:ValueError:{} must be a 2-D PSF image of at least 3":
        T(lambda c, mp: psf.psf_from_argument(np.ones((2, 2)), pixel_scale=0.074),
          ValueError, r"psf must be a 2-D PSF image of at least 3 x 3 pixels, got shape"),
    "psf:psf_from_argument:ValueError:{} must be a PSF image of finite pixels ":
        T(lambda c, mp: psf.psf_from_argument(np.full((5, 5), np.nan), pixel_scale=0.074),
          ValueError, r"psf must be a PSF image of finite pixels with a positive peak"),
    "psf:_check_measure_inputs:ValueError:{}: data must be a 2-D numeric image, go":
        T(lambda c, mp: _psf_measure(data=np.zeros(5)), ValueError,
          r"data must be a 2-D numeric image, got float64 of shape \(5,\)"),
    "psf:_check_measure_inputs:ValueError:{}: x and y must be 1-D arrays of the sa":
        T(lambda c, mp: _psf_measure(x=[[5.0]]), ValueError,
          r"x and y must be 1-D arrays of the same length"),
    "psf:_check_measure_inputs:ValueError:{}: mask must have the image's shape {},":
        T(lambda c, mp: _psf_measure(mask=np.zeros((3, 3), bool)), ValueError,
          r"mask must have the image's shape \(20, 20\), got \(3, 3\)"),
    "psf:_check_measure_inputs:ValueError:{}: sigma must be a scalar or an array o":
        T(lambda c, mp: _psf_measure(sigma=np.ones((3, 3))), ValueError,
          r"sigma must be a scalar or an array of the image's shape \(20, 20\)"),
    "psf:_image_pixel_scale:ValueError:band {}: no pixel scale; pass pixel_scal":
        T(lambda c, mp: _resolve(images={"r": NDData(np.zeros((20, 20)))}), ValueError,
          r"band 'r': no pixel scale; pass pixel_scale=<arcsec per pixel>"),
    "psf:resolve_psf:TypeError:images must be a non-empty mapping {band":
        T(lambda c, mp: _resolve(images={}), TypeError,
          r"images must be a non-empty mapping \{band: NDData\}, got dict"),
    "psf:resolve_psf:ValueError:psf has bands {} that are not in images ":
        T(lambda c, mp: _resolve(psf={"zz": 0.1}), ValueError,
          r"psf has bands \['zz'\] that are not in images \(\['r'\]\)"),
    "psf:resolve_psf:TypeError:images[{}] must be an NDData or CCDData,":
        T(lambda c, mp: _resolve(images={"r": np.zeros((5, 5))}), TypeError,
          r"images\['r'\] must be an NDData or CCDData, got ndarray"),
    "psf:resolve_psf:ValueError:positions has no entry for band {}, need":
        T(lambda c, mp: _resolve(positions={}), ValueError,
          r"positions has no entry for band 'r', needed to measure its PSF"),
    "psf:__post_init__:ValueError:source must be one of {}, got {}":
        T(lambda c, mp: psf.PSFEstimate(fwhm=0.15, source="guess"), ValueError,
          r"source must be one of \('argument', 'header', 'measured', 'nominal'\), "
          r"got 'guess'"),
    "psf:__post_init__:ValueError:plane must be (a, b, c) and needs the im":
        T(lambda c, mp: psf.PSFEstimate(fwhm=0.15, source="measured", plane=(0.1, 0.0)),
          ValueError, r"plane must be \(a, b, c\) and needs the image shape"),
    # preprocess
    "preprocess:_check_array:ValueError:{} must have shape {}, got shape {}":
        T(lambda c, mp: preprocess.prepare_inputs(np.zeros((2, 5, 5)), np.ones((2, 1)),
                                                  np.zeros((2, 1, 2)), _norm()), ValueError,
          r"stamps must have shape \(N, C, H, W\), got shape \(2, 5, 5\)"),
    "preprocess:_check_array:ValueError:{} must hold numbers, got dtype {}":
        T(lambda c, mp: preprocess.prepare_inputs(np.full((2, 1, 5, 5), "a"), np.ones((2, 1)),
                                                  np.zeros((2, 1, 2)), _norm()), ValueError,
          r"stamps must hold numbers, got dtype <U1"),
    "preprocess:prepare_inputs:ValueError:noise must have shape (N, C) = {} to mat":
        T(lambda c, mp: preprocess.prepare_inputs(_stamps(), np.ones((3, 1)),
                                                  np.zeros((2, 1, 2)), _norm()), ValueError,
          r"noise must have shape \(N, C\) = \(2, 1\) to match stamps, got \(3, 1\)"),
    "preprocess:prepare_inputs:ValueError:features must have shape (N, C, F) with ":
        T(lambda c, mp: preprocess.prepare_inputs(_stamps(), np.ones((2, 1)),
                                                  np.zeros((2, 3, 2)), _norm()), ValueError,
          r"features must have shape \(N, C, F\) with \(N, C\) = \(2, 1\) to match stamps"),
    "preprocess:prepare_inputs:ValueError:normalization is for (C, F) = {} (bands ":
        T(lambda c, mp: preprocess.prepare_inputs(_stamps(), np.ones((2, 1)),
                                                  np.zeros((2, 1, 4)), _norm()), ValueError,
          r"normalization is for \(C, F\) = \(1, 2\) \(bands x features\) but the features"),
    "preprocess:compute_normalization:ValueError:{} must be a positive number, got {}":
        T(lambda c, mp: preprocess.compute_normalization(np.zeros((2, 1, 2)), softening=-1.0),
          ValueError, r"softening must be a positive number, got -1.0"),
    "preprocess:__post_init__:ValueError:normalization softening must be a positi":
        T(lambda c, mp: _norm(softening=-1.0), ValueError,
          r"normalization softening must be a positive number of noise sigmas, got -1.0"),
    "preprocess:__post_init__:ValueError:normalization {} must be a (C, F) table ":
        T(lambda c, mp: _norm(feature_mean=[0.0, 0.0]), ValueError,
          r"normalization feature_mean must be a \(C, F\) table of numbers"),
    "preprocess:__post_init__:ValueError:normalization {} must be finite; {}":
        T(lambda c, mp: _norm(feature_mean=[[np.nan, 0.0]]), ValueError,
          r"normalization feature_mean must be finite; "),
    "preprocess:__post_init__:ValueError:normalization feature_mean {} and featur":
        T(lambda c, mp: _norm(feature_std=[[1.0, 1.0, 1.0]]), ValueError,
          r"normalization feature_mean \(1, 2\) and feature_std \(1, 3\)"),
    "preprocess:__post_init__:ValueError:normalization feature_std must be positi":
        T(lambda c, mp: _norm(feature_std=[[1.0, 0.0]]), ValueError,
          r"normalization feature_std must be positive"),
    "preprocess:from_dict:ValueError:normalization must be a dict with keys {":
        T(lambda c, mp: preprocess.Normalization.from_dict([1, 2]), ValueError,
          r"normalization must be a dict with keys .*, got list"),
    "preprocess:from_dict:ValueError:normalization lacks the keys {} (has {})":
        T(lambda c, mp: preprocess.Normalization.from_dict({"softening": 3.0}), ValueError,
          r"normalization lacks the keys \['feature_mean', 'feature_std'\] "
          r"\(has \['softening'\]\)"),
    # inference
    "inference:resolve_device:ValueError:device must be None, 'cpu', 'cuda' or 'c":
        T(lambda c, mp: inference.resolve_device("toaster"), ValueError,
          r"device must be None, 'cpu', 'cuda' or 'cuda:N', got 'toaster' \(.+\)"),
    "inference:resolve_device:ValueError:device must be None, 'cpu', 'cuda' or 'c #2":
        T(lambda c, mp: StarGalaxyClassifier(device="meta"), ValueError,
          r"device must be None, 'cpu', 'cuda' or 'cuda:N', got 'meta'; the models run"),
    "inference:resolve_device:RuntimeError:device={} was requested but torch.cuda.i":
        T(_cuda_missing, RuntimeError,
          r"device='cuda' was requested but torch.cuda.is_available\(\) is False"),
    "inference:check_symmetrize:ValueError:symmetrize must be one of {} or a bool, ":
        T(lambda c, mp: StarGalaxyClassifier(symmetrize="c4"), ValueError,
          r"symmetrize must be one of \['canonical', 'd4', 'flips', 'none'\] or a bool, "
          r"got 'c4'; use 'canonical'"),
    "inference:check_precision:ValueError:precision must be one of {} ('auto': bfl":
        T(lambda c, mp: StarGalaxyClassifier(precision="fp16"), ValueError,
          r"precision must be one of \['auto', 'bf16', 'fp32'\] \('auto': bfloat16 where the "
          r"hardware runs it natively, else float32\), got 'fp16'"),
    # weights
    "weights:base_url:ValueError:{} must be an http:// or https:// URL of":
        T(_bad_url, ValueError, r"ASTRO_STARGLX_WEIGHTS_URL must be an http:// or https:// "
                                r"URL of a folder holding the weights files, got 'ftp:"),
    "weights:_read_registry:FileNotFoundError:weights registry {} does not exist; the ":
        T(lambda c, mp: weights._read_registry(c.tmp / "none.json"), FileNotFoundError,
          r"weights registry .*none.json does not exist; the installation is incomplete"),
    "weights:_read_registry:ValueError:weights registry {} is not valid JSON ({":
        T(lambda c, mp: _registry(c, "{"), ValueError,
          r"weights registry .* is not valid JSON \(.*\); reinstall astro_starglx"),
    "weights:_read_registry:ValueError:weights registry {} must be a JSON objec":
        T(lambda c, mp: _registry(c, "[]"), ValueError,
          r"weights registry .* must be a JSON object with 'default' \(a name\) and "
          r"'models' \(an object\), got list"),
    "weights:_entry_to_weights:ValueError:{} must be an object, got {}":
        T(lambda c, mp: weights._entry_to_weights("x", [], c.tmp), ValueError,
          r"weights registry .*, entry 'x' must be an object, got list"),
    "weights:_entry_to_weights:ValueError:{} is missing {}; re-register it with re":
        T(lambda c, mp: weights._entry_to_weights("x", {}, c.tmp), ValueError,
          r"weights registry .*, entry 'x' is missing \[.*'sha256'.*\]; re-register it"),
    "weights:_entry_to_weights:ValueError:{}: filename must be a bare '*.safetenso":
        T(lambda c, mp: _entry(c, filename="../x.safetensors"), ValueError,
          r"filename must be a bare '\*\.safetensors' file name, got '\.\./x\.safetensors'"),
    "weights:_entry_to_weights:ValueError:{}: sha256 must be 64 lower-case hex dig":
        T(lambda c, mp: _entry(c, sha256="abc"), ValueError,
          r"sha256 must be 64 lower-case hex digits, got 'abc'"),
    "weights:_entry_to_weights:ValueError:{}: bundled must be true or false, got {":
        T(lambda c, mp: _entry(c, bundled="yes"), ValueError,
          r"bundled must be true or false, got 'yes'"),
    "weights:_entry_to_weights:ValueError:{} has invalid meta: {}":
        T(lambda c, mp: _entry(c, meta={"bands": []}), ValueError,
          r"weights registry .*, entry 'x' has invalid meta: weights meta is missing"),
    "weights:get_weights:TypeError:name must be a registered model name (st":
        T(lambda c, mp: weights.get_weights(5), TypeError,
          r"name must be a registered model name \(str\) or None, got int"),
    "weights:get_weights:ValueError:the default model {} is not registered y":
        T(_unregistered_default, ValueError,
          r"the default model 'nope' is not registered yet \(registered: .*\)\. Pass a lo"),
    "weights:get_weights:ValueError:unknown weights name {}; valid names: {}":
        T(lambda c, mp: weights.get_weights("nope"), ValueError,
          r"unknown weights name 'nope'; valid names: .*rbim-lite"),
    "weights:_as_weights:TypeError:weights must be a Weights entry, a regis":
        T(lambda c, mp: weights.fetch_weights(5), TypeError,
          r"weights must be a Weights entry, a registered name or None, got int"),
    "weights:save_weights:ValueError:dtype must be one of {} or None, got {}":
        T(lambda c, mp: weights.save_weights(c.tmp / "a.safetensors", {}, c.meta,
                                             dtype=torch.int8), ValueError,
          r"dtype must be one of .* or None, got torch.int8"),
    "weights:save_weights:TypeError:state_dict must be a dict of str -> torc":
        T(lambda c, mp: weights.save_weights(c.tmp / "a.safetensors", [1], c.meta), TypeError,
          r"state_dict must be a dict of str -> torch.Tensor"),
    "weights:save_weights:ValueError:state_dict[{}] holds NaN or inf (after t":
        T(lambda c, mp: weights.save_weights(c.tmp / "a.safetensors",
                                             {"w": torch.tensor([np.nan])}, c.meta),
          ValueError, r"state_dict\['w'\] holds NaN or inf \(after the cast to"),
    "weights:_read_file:FileNotFoundError:weights file {} does not exist":
        T(lambda c, mp: weights.read_meta(c.tmp / "none.safetensors"), FileNotFoundError,
          r"weights file .*none.safetensors does not exist"),
    "weights:_read_file:ValueError:weights file {} must be a .safetensors f":
        T(lambda c, mp: weights.read_meta(_write(c, "w.pt", b"x")), ValueError,
          r"weights file .*w.pt must be a .safetensors file written by astro_starglx"),
    "weights:_read_file:ValueError:weights file {} is not a readable .safet":
        T(lambda c, mp: weights.read_meta(_write(c, "junk.safetensors", b"junk")), ValueError,
          r"weights file .*junk.safetensors is not a readable .safetensors file"),
    "weights:_read_file:ValueError:weights file {} has no {} metadata in it":
        T(lambda c, mp: _safetensors_without_meta(c), ValueError,
          r"weights file .*nometa.safetensors has no .* metadata in its header"),
    "weights:_read_file:ValueError:weights file {} has invalid metadata: {}":
        T(lambda c, mp: _safetensors_bad_meta(c), ValueError,
          r"weights file .*badmeta.safetensors has invalid metadata: weights meta is not JSON"),
    "weights:_check_tensors:WeightsHashError:weights file {} is corrupted: the sha256":
        T(lambda c, mp: _tampered(c), weights.WeightsHashError,
          r"weights file .*tampered.safetensors is corrupted: the sha256 of its tensors"),
    "weights:_check_tensors:ValueError:weights file {} holds NaN or inf in {}{}":
        T(lambda c, mp: _tampered(c, nan=True), ValueError,
          r"weights file .*nan.safetensors holds NaN or inf in \['.*'\]; it was not used"),
    "weights:_download:WeightsDownloadError:could not download weights {} from {} ({":
        Covered("tests/test_weights.py::test_interrupted_download_leaves_no_file",
                "WeightsDownloadError"),
    "weights:_download:_hash_error:{}":
        Covered("tests/test_weights.py::test_corrupted_download_is_refused", "WeightsHashError"),
    "weights:_verified_local:_hash_error:{}":
        Covered("tests/test_weights.py::test_corrupted_cached_file_is_refused",
                "WeightsHashError"),
    "weights:_infer_entry:ValueError:cannot tell which registered model {} is":
        T(_infer, ValueError, r"cannot tell which registered model .*mystery.safetensors is "
                              r"\(by its file name or meta\['name'\]\); pass name="),
    "weights:install_weights:FileNotFoundError:path {} does not exist or is not a file":
        T(lambda c, mp: weights.install_weights(c.tmp / "none.safetensors"), FileNotFoundError,
          r"path .*none.safetensors does not exist or is not a file"),
    "weights:install_weights:WeightsHashError:refusing to install {} as {}: its sha256":
        T(lambda c, mp: weights.install_weights(c.path, name="rbim-lite"),
          weights.WeightsHashError, r"refusing to install .*tiny.safetensors as 'rbim-lite': "
                                    r"its sha256 is [0-9a-f]{64}, expected"),
    "weights:install_weights:OSError:copying {} to {} changed its content; ch":
        Unreachable("the copy's sha256 differs from the verified source only on a faulty "
                    "disk or a file changed during the copy; no test can make one portably"),
    "weights:_check_state_dict:ValueError:weights file {} does not fit the network":
        T(lambda c, mp: _unfit_state(c), ValueError,
          r"weights file .*unfit.safetensors does not fit the network described by its "
          r"meta.architecture \(missing keys: "),
    "weights:_resolve_source:TypeError:model must be None (the default model), ":
        T(lambda c, mp: weights.load_model(3), TypeError,
          r"model must be None \(the default model\), a registered name, a Weights entry "
          r"or a path to a .safetensors weights file, got int"),
    "weights:load_model:FileNotFoundError:model file {} does not exist (model={})":
        T(lambda c, mp: weights.load_model(c.tmp / "none.safetensors"), FileNotFoundError,
          r"model file .*none.safetensors does not exist \(model=PosixPath"),
    "weights:load_model:ValueError:weights file {}: cannot build the networ":
        T(_unbuildable, ValueError, r"weights file .*tiny.safetensors: cannot build the "
                                    r"network described by meta.architecture \(KeyError"),
    # meta
    "meta:validate_architecture:TypeError:config must be a dict (meta['architectur":
        T(lambda c, mp: meta.validate_architecture("resnet"), TypeError,
          r"config must be a dict \(meta\['architecture'\]\), got str"),
    "meta:validate_architecture:ValueError:architecture config is missing {}; it ha":
        T(lambda c, mp: meta.validate_architecture({"mode": "fused"}), ValueError,
          r"architecture config is missing \[.*'n_bands'.*\]; it has \['mode'.*\]\. Rebuild"),
    "meta:validate_architecture:ValueError:architecture mode must be one of {}, got":
        T(lambda c, mp: _arch(mode="late"), ValueError,
          r"architecture mode must be one of .*, got 'late'"),
    "meta:validate_architecture:ValueError:architecture {} must be a positive int, ":
        T(lambda c, mp: _arch(n_bands=0), ValueError,
          r"architecture n_bands must be a positive int, got 0"),
    "meta:validate_architecture:ValueError:image_encoder name must be one of {}, go":
        T(lambda c, mp: _arch(image_encoder={"name": "vit"}), ValueError,
          r"image_encoder name must be one of .*, got 'vit'"),
    "meta:_strict_json:ValueError:{} must be strict JSON ({}); write undef":
        T(lambda c, mp: _meta(c, metrics={"auc": float("nan")}), ValueError,
          r"meta must be strict JSON \(.*\); write undefined metrics as None, not NaN"),
    "meta:_json_default:TypeError:meta values must be JSON-serialisable, g":
        T(lambda c, mp: _meta(c, metrics={"when": object()}), TypeError,
          r"meta values must be JSON-serialisable, got object"),
    "meta:from_dict:TypeError:meta must be a dict (the weights metadat":
        T(lambda c, mp: meta.ModelMeta.from_dict("tiny"), TypeError,
          r"meta must be a dict \(the weights metadata\), got str"),
    "meta:from_dict:ValueError:weights meta is missing {}; it has {}. S":
        T(lambda c, mp: meta.ModelMeta.from_dict({"name": "x"}), ValueError,
          r"weights meta is missing \[.*'bands'.*\]; it has \['name'\]\. See"),
    "meta:from_dict:ValueError:invalid weights meta: - {}":
        T(lambda c, mp: _meta(c, threshold=2.0), ValueError,
          r"invalid weights meta:\n  - .*threshold"),
    "meta:from_json:ValueError:weights meta is not JSON ({})":
        T(lambda c, mp: meta.ModelMeta.from_json("{"), ValueError,
          r"weights meta is not JSON \(.*\)"),
    "meta:replace:TypeError:replace() got unknown field(s) {}; Model":
        T(lambda c, mp: c.model_meta.replace(colour="red"), TypeError,
          r"replace\(\) got unknown field\(s\) \['colour'\]; ModelMeta fields are"),
    "meta:replace:TypeError:extra must be a dict of unknown keys, go":
        T(lambda c, mp: c.model_meta.replace(extra=5), TypeError,
          r"extra must be a dict of unknown keys, got int"),
    "meta:replace:ValueError:extra must not hold ModelMeta fields {};":
        T(lambda c, mp: c.model_meta.replace(extra={"bands": ["r"]}), ValueError,
          r"extra must not hold ModelMeta fields \['bands'\]; pass them as keywords"),
    # _validation
    "_validation:check_real:ValueError:{} must be a finite number{}, got {}{}":
        T(lambda c, mp: val.check_real("psf_beta", "3", low=0.0, hint="; e.g. psf_beta=3.0"),
          ValueError, r"psf_beta must be a finite number >= 0.0, got '3'; e.g. psf_beta=3.0"),
    "_validation:check_count:ValueError:{} must be {}, got {}{}":
        T(lambda c, mp: val.check_count("n_stars", -1), ValueError,
          r"n_stars must be .*, got -1"),
    "_validation:check_bool:ValueError:{} must be True or False, got {}":
        T(lambda c, mp: val.check_bool("subtract_sky", 1), ValueError,
          r"subtract_sky must be True or False, got 1"),
    "_validation:check_choice:ValueError:{} must be one of {}, got {}":
        T(lambda c, mp: val.check_choice("psf_model", "box", ("airy", "moffat")), ValueError,
          r"psf_model must be one of \('airy', 'moffat'\), got 'box'"),
    "_validation:check_range:ValueError:{} must be a (lo, hi) pair of finite num":
        T(lambda c, mp: val.check_range("mag_range", (26.0, 17.0)), ValueError,
          r"mag_range must be a \(lo, hi\) pair of finite numbers with lo <= hi, "
          r"got \(26.0, 17.0\)"),
    "_validation:check_catalog:TypeError:catalog must be an astropy Table, got {}":
        T(lambda c, mp: classify(c, {"ra": [150.0], "dec": [2.0]}), TypeError,
          r"catalog must be an astropy Table, got dict"),
    "_validation:check_mapping:TypeError:{} must be a mapping {}, got {}{}":
        T(lambda c, mp: classify(c, zeropoints=25.0), TypeError,
          r"zeropoints must be a mapping \{band: zero point\}, got float"),
    "_validation:check_bands:ValueError:{} must be a non-empty sequence of band ":
        T(lambda c, mp: val.check_bands("bands", []), ValueError,
          r"bands must be a non-empty sequence of band names, got \[\]"),
    "_validation:check_bands:ValueError:{} must not repeat a band, got {}":
        T(lambda c, mp: val.check_bands("bands", ["g", "g"]), ValueError,
          r"bands must not repeat a band, got \['g', 'g'\]"),
    "_validation:check_size:ValueError:{} must be a positive integer number of ":
        T(lambda c, mp: cutouts.extract_cutouts(np.zeros((9, 9)), [1.0], [1.0], size=0),
          ValueError, r"size must be a positive integer number of pixels \(odd or even\), "
                      r"got 0; pass for example size=25"),
    "_validation:as_positions:ValueError:x and y must be 1-D arrays of the same l":
        T(lambda c, mp: cutouts.extract_cutouts(np.zeros((9, 9)), [1.0, 2.0], [1.0], size=3),
          ValueError, r"x and y must be 1-D arrays of the same length \(pixel positions of "
                      r"the sources\), got shapes \(2,\) and \(1,\)"),
    "_validation:as_image_array:ValueError:{} must be a 2-D image array, got an arr":
        T(lambda c, mp: classify(c, images=_images(data=np.zeros((1, 9, 9)))), ValueError,
          r"images\['NUV'\]\.data must be a 2-D image array, got an array of shape"),
    "_validation:as_image_array:TypeError:{} must hold real numbers, got complex d":
        T(lambda c, mp: classify(c, images=_images(data=np.zeros((9, 9)) + 1j)), TypeError,
          r"images\['NUV'\]\.data must hold real numbers, got complex dtype complex128"),
    "_validation:as_image_array:ValueError:{} must hold numbers, got dtype {}":
        T(lambda c, mp: classify(c, images=_images(data=np.full((9, 9), "a"))), ValueError,
          r"images\['NUV'\]\.data must hold numbers, got dtype <U1"),
    "_validation:as_image_array:ValueError:{} must have at least one row and one co":
        T(lambda c, mp: classify(c, images=_images(data=np.zeros((0, 9)))), ValueError,
          r"images\['NUV'\]\.data must have at least one row and one column of pixels"),
    "_validation:as_zeropoint:ValueError:the zero point from {} must be a finite ":
        T(lambda c, mp: classify(c, zeropoints={"r": 1e30}), ValueError,
          r"the zero point from zeropoints\['r'\] must be a finite real number of AB "
          r"magnitudes"),
    "_validation:check_nddata:TypeError:{} must be an astropy NDData or CCDData,":
        T(lambda c, mp: val.check_nddata("image", np.zeros((4, 4))), TypeError,
          r"image must be an astropy NDData or CCDData, got ndarray; wrap a bare array"),
    "_validation:check_nddata:TypeError:{}.data must hold pixel values, got a bo":
        T(lambda c, mp: classify(c, images=_images(data=np.zeros((9, 9), bool))), TypeError,
          r"images\['NUV'\]\.data must hold pixel values, got a boolean array"),
    "_validation:check_nddata:ValueError:{}.mask must have the shape of {}.data {":
        T(lambda c, mp: classify(c, images=_images(mask=np.bool_(True))), ValueError,
          r"images\['NUV'\]\.mask must have the shape of images\['NUV'\]\.data \(40, 40\)"),
    "_validation:check_nddata:TypeError:{}.mask must be a boolean or integer (bi":
        T(lambda c, mp: classify(c, images=_images(mask=np.full((40, 40), "x"))), TypeError,
          r"images\['NUV'\]\.mask must be a boolean or integer \(bit\) mask, got dtype <U1"),
    "_validation:check_nddata:ValueError:{}.uncertainty must have the shape of {}":
        T(lambda c, mp: classify(c, images=_images(uncertainty=StdDevUncertainty(
            np.ones((3, 3))))), ValueError,
          r"images\['NUV'\]\.uncertainty must have the shape of images\['NUV'\]\.data"),
    "_validation:check_nddata:TypeError:{}.uncertainty must hold real numbers, g":
        T(lambda c, mp: classify(c, images=_images(uncertainty=StdDevUncertainty(
            np.ones((40, 40)) + 1j))), TypeError,
          r"images\['NUV'\]\.uncertainty must hold real numbers, got dtype complex128"),
    "_validation:check_nddata:TypeError:{}.uncertainty must be a StdDevUncertain":
        T(lambda c, mp: classify(c, images=_images(uncertainty=np.ones((40, 40)))), TypeError,
          r"images\['NUV'\]\.uncertainty must be a StdDevUncertainty, VarianceUncertainty "
          r"or InverseVariance, got UnknownUncertainty"),
    "_validation:check_nddata:ValueError:{}.uncertainty has unit {}, which cannot":
        Unreachable("astropy's NDData and CCDData refuse an uncertainty whose unit does not "
                    "convert to the data's (UnitConversionError at construction, before "
                    "classify() sees it); kept for NDData subclasses that skip that check"),
    "_validation:as_stamps:ValueError:{} must have shape (N, H, W), got shape ":
        T(lambda c, mp: background.estimate_background_noise(np.zeros((5, 5))), ValueError,
          r"stamps must have shape \(N, H, W\), got shape \(5, 5\)"),
    "_validation:as_stamps:ValueError:{} must hold numbers, got dtype {}":
        T(lambda c, mp: background.estimate_background_noise(np.full((1, 5, 5), "a")),
          ValueError, r"stamps must hold numbers, got dtype <U1"),
    "_validation:as_per_source:ValueError:{} must be a scalar or have shape ({},),":
        T(lambda c, mp: features.measure_features(np.zeros((2, 5, 5)), np.ones(3),
                                                  zeropoint=25.0, offsets=np.zeros((2, 2)),
                                                  pixel_scale=0.074), ValueError,
          r"noise must be a scalar or have shape \(2,\), got shape \(3,\)"),
    "_validation:as_pixel_scale:ValueError:pixel_scale must be a positive number of":
        T(lambda c, mp: features.measure_features(np.zeros((2, 5, 5)), np.ones(2),
                                                  zeropoint=25.0, offsets=np.zeros((2, 2)),
                                                  pixel_scale=-1.0), ValueError,
          r"pixel_scale must be a positive number of arcsec per pixel, got -1.0"),
    "_validation:check_feature_stamps:ValueError:stamps must be at least 2 x 2 pixels to ":
        T(lambda c, mp: features.measure_features(np.zeros((2, 1, 1)), np.ones(2),
                                                  zeropoint=25.0, offsets=np.zeros((2, 2)),
                                                  pixel_scale=0.074), ValueError,
          r"stamps must be at least 2 x 2 pixels to measure features, got 1 x 1"),
    "_validation:resolve_config:TypeError:unknown {} settings {}; {} has {}":
        T(lambda c, mp: val.resolve_config(preprocess.Normalization, None, {"colour": 1},
                                           what="normalisation"), TypeError,
          r"unknown normalisation settings \['colour'\]; Normalization has"),
    "_validation:resolve_config:TypeError:config must be a {} or None, got {}{}":
        T(lambda c, mp: val.resolve_config(preprocess.Normalization, 5, {},
                                           what="normalisation"), TypeError,
          r"config must be a Normalization or None, got int"),
}


# --------------------------------------------------------------------------
# the tests


def test_every_raise_site_is_audited():
    sites = raise_sites()
    assert len(sites) == len(set(sites))
    missing = [key for key in sites if key not in SITES]
    stale = [key for key in SITES if key not in sites]
    assert not missing, ("raise sites without an entry in SITES (add a Trigger that reaches "
                         f"each and matches its message): {missing}")
    assert not stale, f"entries of SITES whose raise is gone (remove them): {stale}"


@pytest.mark.parametrize("key", [k for k, v in SITES.items() if isinstance(v, Trigger)])
def test_raise_site_is_reached_with_its_message(key, ctx, monkeypatch):
    entry = SITES[key]
    with pytest.raises(entry.exc, match=entry.match) as info:
        entry.call(ctx, monkeypatch)
    # raised in the function the key names (or below it, for a shared checker)
    module, function = key.split(":")[:2]
    frames = [(Path(f.filename).stem, f.name) for f in
              traceback.extract_tb(info.value.__traceback__)]
    assert (module, function) in frames, f"{key} raised from {frames[-1]}"


@pytest.mark.parametrize("key", [k for k, v in SITES.items() if isinstance(v, Covered)])
def test_covered_sites_name_a_real_test(key):
    entry = SITES[key]
    path, name = entry.test.split("::")
    source = (PACKAGE.parent / path).read_text()
    tree = ast.parse(source)
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    assert fn is not None, f"{entry.test} does not exist"
    body = ast.get_source_segment(source, fn)
    assert entry.exc in body and "match=" in body, f"{entry.test} does not match {entry.exc}"


@pytest.mark.parametrize("key", [k for k, v in SITES.items() if isinstance(v, Unreachable)])
def test_unreachable_sites_say_why(key):
    assert len(SITES[key].why) > 40
