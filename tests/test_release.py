"""Tests of astro_starglx.release: registry entries for newly trained weights."""

import json
import runpy
import sys
import warnings
from pathlib import Path

import pooch
import pytest
import torch

from astro_starglx import weights
from astro_starglx.meta import ModelMeta
from astro_starglx.release import main, register_weights, simulated_depth, with_depth
from astro_starglx.weights import (Weights, get_weights, list_weights, load_model, read_meta,
                                   save_weights)

from conftest import seeded_state_dict


def sha256sum(path):
    return pooch.file_hash(str(path), alg="sha256")


def files_in(directory):
    return sorted(p.name for p in Path(directory).rglob("*") if p.is_file())


@pytest.fixture
def registry_path(tmp_path, monkeypatch):
    """A package registry of our own (absent until written) and a matching bundled folder."""
    path = tmp_path / "pkg" / "registry.json"
    path.parent.mkdir()
    monkeypatch.setattr(weights, "_REGISTRY_PATH", path)
    monkeypatch.setattr(weights, "_BUNDLED_DIR", path.parent)
    monkeypatch.setenv("ASTRO_STARGLX_CACHE", str(tmp_path / "cache"))
    return path


def test_register_weights(tmp_path, tiny_weights_file, tiny_meta, caplog):
    registry_path = tmp_path / "new" / "registry.json"
    registry_path.parent.mkdir()
    entry = register_weights(tiny_weights_file, bundled=True, registry_path=registry_path)
    assert isinstance(entry, Weights)
    assert (entry.name, entry.filename, entry.bundled) == ("tiny", "tiny.safetensors", True)
    assert entry.sha256 == sha256sum(tiny_weights_file)
    assert entry.meta == read_meta(tiny_weights_file)
    data = json.loads(registry_path.read_text())
    assert data["default"] == "rbim-lite" and data["format_version"] == 1
    stored = data["models"]["tiny"]
    assert stored == {"filename": "tiny.safetensors", "sha256": sha256sum(tiny_weights_file),
                      "bundled": True, "meta": read_meta(tiny_weights_file).to_dict()}
    assert ModelMeta.from_dict(stored["meta"]) == ModelMeta.from_dict(tiny_meta)
    # re-registering a retrained file updates the entry in place
    retrained = tmp_path / "tiny.safetensors"
    save_weights(retrained, seeded_state_dict(tiny_meta, seed=1), tiny_meta)
    register_weights(retrained, bundled=False, registry_path=registry_path, name="tiny")
    assert "was registered before" in caplog.text
    data = json.loads(registry_path.read_text())
    assert list(data["models"]) == ["tiny"]
    assert data["models"]["tiny"]["sha256"] == sha256sum(retrained)
    assert data["models"]["tiny"]["bundled"] is False
    assert files_in(registry_path.parent) == ["registry.json"]


def test_register_weights_keeps_other_entries_sorted(tmp_path, tiny_weights_file, tiny_meta):
    registry_path = tmp_path / "registry.json"
    other = tmp_path / "b-model.safetensors"
    save_weights(other, seeded_state_dict(tiny_meta), dict(tiny_meta, name="b-model"))
    register_weights(other, bundled=False, registry_path=registry_path)
    register_weights(tiny_weights_file, bundled=True, registry_path=registry_path,
                     name="a-model")
    data = json.loads(registry_path.read_text())
    assert list(data["models"]) == ["a-model", "b-model"]
    # the entry name may differ from the meta name; the meta is the file's
    assert data["models"]["a-model"]["meta"]["name"] == "tiny"


def test_register_weights_refusals(tmp_path, tiny_meta):
    registry_path = tmp_path / "registry.json"
    legacy = tmp_path / "legacy.pt"
    torch.save({"state_dict": seeded_state_dict(tiny_meta), "meta": tiny_meta}, legacy)
    with pytest.raises(ValueError, match="registered weights must be .safetensors files"):
        register_weights(legacy, bundled=False, registry_path=registry_path)
    del tiny_meta["name"]
    nameless = tmp_path / "nameless.safetensors"
    save_weights(nameless, seeded_state_dict(tiny_meta), tiny_meta)
    with pytest.raises(ValueError, match=r"has no usable meta\['name'\] \(None\); pass name="):
        register_weights(nameless, bundled=False, registry_path=registry_path)
    with pytest.raises(ValueError, match=r"has no usable meta\['name'\] \('default'\)"):
        register_weights(nameless, bundled=False, registry_path=registry_path, name="default")
    with pytest.raises(TypeError, match="bundled must be True or False"):
        register_weights(nameless, bundled="yes", registry_path=registry_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        register_weights(tmp_path / "none.safetensors", bundled=False,
                         registry_path=registry_path)
    assert not registry_path.exists()


def test_main_registers_in_the_package_registry(registry_path, tmp_path, tiny_weights_file,
                                                tiny_meta, capsys):
    bundled = registry_path.parent / "tiny.safetensors"
    bundled.write_bytes(tiny_weights_file.read_bytes())
    assert main([str(bundled), "--bundled"]) == 0
    digest = sha256sum(bundled)
    assert capsys.readouterr().out == (f"registered tiny (tiny.safetensors, sha256 {digest})\n")
    assert [w.name for w in list_weights()] == ["tiny"]
    entry = get_weights("tiny")
    assert entry.bundled and entry.sha256 == digest
    assert entry.meta == ModelMeta.from_dict(tiny_meta)
    # the new entry is usable at once, offline (bundled)
    assert load_model("tiny").path == bundled

    remote = tmp_path / "remote.safetensors"
    save_weights(remote, seeded_state_dict(tiny_meta, seed=2), tiny_meta)
    assert main([str(remote), "--name", "tiny-remote"]) == 0
    assert "registered tiny-remote (remote.safetensors" in capsys.readouterr().out
    entry = get_weights("tiny-remote")
    assert not entry.bundled and entry.sha256 == sha256sum(remote)
    assert [w.name for w in list_weights()] == ["tiny", "tiny-remote"]


def test_main_errors(registry_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "the following arguments are required: file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main([str(tmp_path / "none.safetensors")])
    assert not registry_path.exists()


def test_module_entry_point(monkeypatch, capsys):
    """``python -m astro_starglx.release --help`` works (run in-process: torch is loaded)."""
    monkeypatch.setattr(sys, "argv", ["python -m astro_starglx.release", "--help"])
    with warnings.catch_warnings():
        # runpy's note that the module is already imported (by this test module)
        warnings.filterwarnings("ignore", message=".*found in sys.modules",
                                category=RuntimeWarning)
        with pytest.raises(SystemExit) as exc:
            runpy.run_module("astro_starglx.release", run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m astro_starglx.release" in out
    assert "--bundled" in out and "--name" in out


def psf_aware_meta(tiny_meta):
    """``tiny_meta`` as a PSF-aware model (8 features, ``psf`` set)."""
    from conftest import TINY_ARCHITECTURE

    from astro_starglx.csst import CSST_BANDS

    names = ["mag", "mag_err", "concentration", "radius", "ellipticity", "psf_fwhm",
             "radius_excess", "concentration_excess"]
    meta = dict(tiny_meta, feature_names=names,
                architecture=dict(TINY_ARCHITECTURE, n_features=len(names)),
                psf={"nominal_fwhm": {b: 0.13 for b in CSST_BANDS},
                     "fwhm_range": {b: [0.05, 0.5] for b in CSST_BANDS}})
    meta["normalization"] = dict(meta["normalization"],
                                 feature_mean=[[0.0] * len(names)] * len(CSST_BANDS),
                                 feature_std=[[1.0] * len(names)] * len(CSST_BANDS))
    return meta


def test_with_depth_adds_the_simulated_depth(registry_path, tmp_path, tiny_meta, capsys):
    pytest.importorskip("galsim")
    meta = psf_aware_meta(tiny_meta)
    source = tmp_path / "psf.safetensors"
    save_weights(source, seeded_state_dict(meta), meta)
    out = with_depth(source, tmp_path / "deep.safetensors", name="tiny-deep", size=384)
    before, after = load_model(source), load_model(out)
    assert after.name == "tiny-deep" and after.meta.depth is not None
    assert list(after.meta.depth) == list(meta["bands"])
    # the simulator's nominal CSST depths are 24-27 mag (design: 24.4-26.3)
    assert all(23.5 < d < 28.0 for d in after.meta.depth.values())
    assert after.meta.depth == simulated_depth(before.meta, size=384)
    assert after.meta.recipe["derived_from"] == {"name": before.name, "sha256": before.sha256}
    assert "simulated_depth(meta, n_fields=2, size=384, seed=0)" in after.meta.recipe["depth"]
    for key, tensor in before.network.state_dict().items():
        assert torch.equal(tensor, after.network.state_dict()[key])
    with pytest.raises(ValueError, match="does not read the PSF"):
        simulated_depth(ModelMeta.from_dict(tiny_meta))
    with pytest.raises(SystemExit):
        main([str(source), "--with-depth", str(tmp_path / "x.safetensors")])
    assert "--with-depth needs --name" in capsys.readouterr().err
