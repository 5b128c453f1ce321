"""
Tests of astro_starglx.weights: registry, real pooch downloads from a local
HTTP server, hash checks, safe loading and every documented error.

The metadata schema is tested in test_meta.py, registering weights in
test_release.py.
"""

import ast
import dataclasses
import json
import re
import shutil
import socket
import time
from pathlib import Path

import pooch
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from astro_starglx import weights
from astro_starglx.meta import ModelMeta
from astro_starglx.weights import (
    DEFAULT_BASE_URL,
    LoadedModel,
    WeightsDownloadError,
    WeightsHashError,
    download_weights,
    fetch_weights,
    get_weights,
    install_weights,
    list_weights,
    load_model,
    read_meta,
    save_weights,
    verify_weights,
)

from conftest import make_tiny_meta, seeded_state_dict

REPO_ROOT = Path(__file__).resolve().parents[1]


def sha256sum(path):
    return pooch.file_hash(str(path), alg="sha256")


def corrupt(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_tensor_bytes(path, n=4):
    """Flip ``n`` bytes in the middle of the tensor data (after the JSON header)."""
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start = 8 + header_len
    assert len(data) - start > 2 * n  # there is a data region to damage
    middle = start + (len(data) - start) // 2
    for i in range(middle, middle + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    # the header (and so the meta) is untouched: only the tensors differ
    assert json.loads(data[8:start])["__metadata__"]["astro_starglx"]


def files_in(directory):
    return sorted(p.name for p in Path(directory).rglob("*") if p.is_file())


def serve(server, registry):
    shutil.copy2(registry.remote_file, server.directory / registry.remote_file.name)


@pytest.fixture
def served(isolated_registry, weights_server, monkeypatch):
    """The isolated registry's remote file on the local server, URL env pointing at it."""
    serve(weights_server, isolated_registry)
    monkeypatch.setenv("ASTRO_STARGLX_WEIGHTS_URL", weights_server.url)
    return isolated_registry, weights_server


# ------------------------------------------------------------ the shipped registry


def test_shipped_registry_entries_are_valid():
    registry = json.loads(weights._REGISTRY_PATH.read_text())
    assert registry["default"] == "rbim-lite-v13"
    entries = list_weights()
    assert [w.name for w in entries] == sorted(registry["models"])
    for entry in entries:
        assert isinstance(entry.meta, ModelMeta)
        assert entry.meta.to_dict() == registry["models"][entry.name]["meta"]
        if entry.bundled:
            location = entry.bundled_path
        else:
            location = REPO_ROOT / "release" / "weights" / entry.filename
        # a registered file must exist in its one place with the pinned hash, and
        # the registry's meta must be a copy of the file header
        if entry.bundled or (REPO_ROOT / "pyproject.toml").is_file():
            assert sha256sum(location) == entry.sha256, location
            assert read_meta(location) == entry.meta
    if entries:
        assert get_weights().name == registry["default"]
    else:
        with pytest.raises(ValueError, match="default model 'rbim-lite' is not registered yet"):
            get_weights()


def test_default_not_registered_error(tmp_path, monkeypatch):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"default": "rbim-lite", "models": {}}))
    monkeypatch.setattr(weights, "_REGISTRY_PATH", path)
    assert list_weights() == []
    assert verify_weights() == []
    match = (r"default model 'rbim-lite' is not registered yet \(registered: none registered "
             r"yet\)\. Pass a local weights file instead")
    for call in (get_weights, load_model, lambda: fetch_weights(None)):
        with pytest.raises(ValueError, match=match):
            call()


def test_broken_registry_errors(tmp_path, monkeypatch):
    path = tmp_path / "registry.json"
    monkeypatch.setattr(weights, "_REGISTRY_PATH", path)
    with pytest.raises(FileNotFoundError, match="does not exist.*Reinstall"):
        list_weights()
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        list_weights()
    path.write_text(json.dumps({"models": {}}))
    with pytest.raises(ValueError, match="must be a JSON object with 'default'"):
        list_weights()
    entry = {"filename": "../x.safetensors", "sha256": "0" * 64, "bundled": False,
             "meta": make_tiny_meta()}
    path.write_text(json.dumps({"default": "x", "models": {"x": entry}}))
    with pytest.raises(ValueError, match="filename must be a bare"):
        get_weights("x")
    entry.update(filename="x.safetensors", sha256="abc")
    path.write_text(json.dumps({"default": "x", "models": {"x": entry}}))
    with pytest.raises(ValueError, match="sha256 must be 64 lower-case hex digits"):
        get_weights("x")


# ------------------------------------------------------------------ registry lookup


def test_registry_lookup(isolated_registry):
    names = [w.name for w in list_weights()]
    assert names == ["tiny", "tiny-remote"]
    default = get_weights()
    assert default == get_weights("default") == get_weights("tiny")
    assert default.bundled and not get_weights("tiny-remote").bundled
    assert weights.default_weights_name() == "tiny"
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.name = "other"
    assert hash(default) == hash(get_weights("tiny"))
    assert default.meta == read_meta(isolated_registry.bundled_dir / "tiny.safetensors")


def test_unknown_name_lists_valid_names(isolated_registry):
    match = r"unknown weights name 'nope'; valid names: tiny, tiny-remote"
    with pytest.raises(ValueError, match=match):
        get_weights("nope")
    with pytest.raises(ValueError, match=match):
        load_model("nope")
    with pytest.raises(ValueError, match=match):
        fetch_weights("nope")
    with pytest.raises(ValueError, match=match):
        verify_weights(["tiny", "nope"])
    with pytest.raises(TypeError, match="name must be a registered model name"):
        get_weights(3)
    with pytest.raises(TypeError, match="model must be None"):
        load_model(3.5)


# ----------------------------------------------------------------- save and read


def test_save_weights_roundtrip(tmp_path, tiny_meta):
    state = seeded_state_dict(tiny_meta)
    path = tmp_path / "w.safetensors"
    digest = save_weights(path, state, tiny_meta)
    assert digest == sha256sum(path)
    assert files_in(tmp_path) == ["w.safetensors"]  # no temp file left behind
    meta = ModelMeta.from_dict(tiny_meta)
    assert read_meta(path) == meta
    assert isinstance(read_meta(path), ModelMeta)
    with safe_open(path, framework="pt") as fh:
        header = fh.metadata()
        assert json.loads(header["astro_starglx"]) == meta.to_dict()
        assert header["astro_starglx"] == meta.to_json()
        assert re.fullmatch(r"[0-9a-f]{64}", header["tensors_sha256"])
        key = "head.0.weight"
        assert fh.get_tensor(key).dtype == torch.float16
        assert fh.get_tensor("image_encoder.body.1.bn1.num_batches_tracked").dtype == torch.int64
    full = tmp_path / "w32.safetensors"
    save_weights(full, state, ModelMeta.from_dict(tiny_meta), dtype=torch.float32)
    with safe_open(full, framework="pt") as fh:
        assert torch.equal(fh.get_tensor(key), state[key])
    assert read_meta(full) == meta
    assert torch.equal(load_model(full).network.state_dict()[key], state[key])


def test_save_weights_refuses_bad_input(tmp_path, tiny_meta):
    path = tmp_path / "w.safetensors"
    state = seeded_state_dict(tiny_meta)
    with pytest.raises(ValueError, match="weights meta is missing"):
        save_weights(path, state, {"bands": ["g"]})
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_weights(path, state, tiny_meta, dtype=torch.int8)
    with pytest.raises(TypeError, match="state_dict must be a dict of str -> torch.Tensor"):
        save_weights(path, [1, 2], tiny_meta)
    assert files_in(tmp_path) == []


def test_read_meta_errors(tmp_path, tiny_meta):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_meta(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="is not a readable .safetensors file"):
        read_meta(junk)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(2)}, bare)
    with pytest.raises(ValueError, match="has no 'astro_starglx' metadata"):
        read_meta(bare)
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(2)}, bad,
              metadata={"astro_starglx": json.dumps(dict(tiny_meta, threshold=2))})
    with pytest.raises(ValueError, match=r"(?s)bad.safetensors has invalid metadata.*threshold"):
        read_meta(bad)
    other = tmp_path / "w.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="must be a .safetensors file"):
        read_meta(other)


# ------------------------------------------------------------------ local loading


def test_load_model_local_file(tiny_weights_file, tiny_meta):
    for source in (tiny_weights_file, str(tiny_weights_file)):
        loaded = load_model(source)
        assert isinstance(loaded, LoadedModel)
        assert loaded.name == "tiny"
        assert loaded.path == tiny_weights_file
        assert loaded.sha256 == sha256sum(tiny_weights_file)
        assert loaded.meta == ModelMeta.from_dict(tiny_meta)
        assert isinstance(loaded.meta, ModelMeta)
    net = loaded.network
    assert not net.training
    params = list(net.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
    expected = seeded_state_dict(tiny_meta)["head.0.weight"].half().float()
    assert torch.equal(net.state_dict()["head.0.weight"], expected)
    with torch.inference_mode():
        logits = net(torch.zeros(2, 7, 15, 15), torch.zeros(2, 7, 5))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.name = "x"


def test_load_model_name_falls_back_to_stem(tmp_path, tiny_meta):
    del tiny_meta["name"]
    path = tmp_path / "my-model.safetensors"
    save_weights(path, seeded_state_dict(tiny_meta), tiny_meta)
    assert load_model(path).name == "my-model"


def test_load_model_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file .*nothere.safetensors does not"):
        load_model(tmp_path / "nothere.safetensors")


def test_load_model_device_errors(tiny_weights_file):
    with pytest.raises(ValueError, match="device must be None, 'cpu'"):
        load_model(tiny_weights_file, device="toaster")
    with pytest.raises(ValueError, match="the models run on CPUs and CUDA GPUs only"):
        load_model(tiny_weights_file, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError,
                           match="device=.cuda. was requested but torch.cuda.is_available"):
            load_model(tiny_weights_file, device="cuda")
        assert next(load_model(tiny_weights_file, device=None).network.parameters()).is_cpu


def test_architecture_mismatch_is_a_clear_error(tmp_path, tiny_meta):
    state = seeded_state_dict(tiny_meta)
    wide = dict(tiny_meta, architecture=dict(
        tiny_meta["architecture"],
        image_encoder=dict(tiny_meta["architecture"]["image_encoder"], widths=[8])))
    path = tmp_path / "wide.safetensors"
    save_weights(path, state, wide)
    with pytest.raises(ValueError, match=r"wide.safetensors does not fit the network .*"
                                         r"shape mismatches: .*file \(4, 7, 3, 3\) vs "
                                         r"network \(8, 7, 3, 3\)"):
        load_model(path)
    del state["head.3.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "keys.safetensors"
    save_weights(path, state, tiny_meta)
    with pytest.raises(ValueError, match=r"missing keys: head.3.bias; unexpected keys: "
                                         r"extra.weight"):
        load_model(path)


def test_unbuildable_architecture(tmp_path, tiny_meta):
    arch = dict(tiny_meta["architecture"],
                image_encoder=dict(tiny_meta["architecture"]["image_encoder"], widths=[4, 8]))
    path = tmp_path / "arch.safetensors"
    save_weights(path, seeded_state_dict(tiny_meta), dict(tiny_meta, architecture=arch))
    with pytest.raises(ValueError, match="cannot build the network described by"):
        load_model(path)


class _Sentinel:
    """Touches a file when unpickled: proves whether a .pt file was ever unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pt_files_are_refused_unread(tmp_path, tiny_meta):
    """Only .safetensors files load: a pickled .pt file is never unpickled."""
    touched = tmp_path / "unpickled"
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": seeded_state_dict(tiny_meta), "meta": tiny_meta,
                "obj": _Sentinel(touched)}, path)
    match = r"legacy.pt must be a .safetensors file written by .*save_weights\(\)"
    for call in (load_model, read_meta, lambda p: load_model(str(p))):
        with pytest.raises(ValueError, match=match):
            call(path)
    assert not touched.exists()


# --------------------------------------------------------------- tensor integrity


def test_flipped_tensor_bytes_are_refused(tiny_weights_file):
    load_model(tiny_weights_file)  # loads before the damage
    flip_tensor_bytes(tiny_weights_file)
    read_meta(tiny_weights_file)  # the header is intact
    match = (r"weights file .*tiny.safetensors is corrupted: the sha256 of its tensors "
             r"differs from the one recorded when it was saved")
    for source in (tiny_weights_file, str(tiny_weights_file)):
        with pytest.raises(WeightsHashError, match=match):
            load_model(source)


def test_save_weights_refuses_non_finite(tmp_path, tiny_meta):
    path = tmp_path / "nan.safetensors"
    state = seeded_state_dict(tiny_meta)
    state["head.0.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"state_dict\['head.0.weight'\] holds NaN or inf"):
        save_weights(path, state, tiny_meta)
    with pytest.raises(ValueError, match=r"holds NaN or inf \(after the cast to torch.float32"):
        save_weights(path, state, tiny_meta, dtype=None)
    # finite in float32 but inf in float16: refused unless stored wider
    state = seeded_state_dict(tiny_meta)
    state["head.0.weight"][0, 0] = 1e6
    with pytest.raises(ValueError, match=r"after the cast to torch.float16.*dtype=None"):
        save_weights(path, state, tiny_meta)
    assert files_in(tmp_path) == []
    save_weights(path, state, tiny_meta, dtype=torch.float32)
    assert load_model(path).network.state_dict()["head.0.weight"][0, 0] == 1e6


@pytest.mark.parametrize("with_digest", [False, True])
def test_non_finite_file_is_refused(tmp_path, tiny_meta, with_digest):
    """A file written by other means with NaN tensors and a valid meta is not used."""
    state = {k: v.clone() for k, v in seeded_state_dict(tiny_meta).items()}
    state["head.0.weight"][1, 2] = float("nan")
    state["head.3.bias"][0] = float("inf")
    header = {"astro_starglx": ModelMeta.from_dict(tiny_meta).to_json(), "format": "pt"}
    if with_digest:  # even with a matching digest: the tensors themselves are checked
        header["tensors_sha256"] = weights._tensors_digest(state)
    path = tmp_path / "nan.safetensors"
    save_file(state, path, metadata=header)
    assert read_meta(path) == ModelMeta.from_dict(tiny_meta)
    with pytest.raises(ValueError, match=r"weights file .*nan.safetensors holds NaN or inf in "
                                         r"\['head.0.weight', 'head.3.bias'\]; it was not used"):
        load_model(path)


def test_file_without_tensor_digest_still_loads(tmp_path, tiny_meta):
    """Files saved before the tensor digest existed load (the registry pins them)."""
    state = seeded_state_dict(tiny_meta)
    path = tmp_path / "old.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path,
              metadata={"astro_starglx": json.dumps(tiny_meta), "format": "pt"})
    with safe_open(path, framework="pt") as fh:
        assert "tensors_sha256" not in fh.metadata()
    loaded = load_model(path)
    assert loaded.meta == ModelMeta.from_dict(tiny_meta)
    assert torch.equal(loaded.network.state_dict()["head.0.weight"],
                       state["head.0.weight"].half().float())


def test_pinned_file_with_flipped_bytes_is_refused(isolated_registry):
    entry = get_weights("tiny-remote")
    path = install_weights(isolated_registry.remote_file)
    flip_tensor_bytes(path)
    match = (rf"cached file .*tiny-remote.safetensors for weights 'tiny-remote' has the wrong "
             rf"sha256 and was not used: expected {entry.sha256}")
    with pytest.raises(WeightsHashError, match=match):
        load_model("tiny-remote")
    with pytest.raises(WeightsHashError, match=match):
        load_model(entry)
    # by path, the tensor digest refuses the same file
    with pytest.raises(WeightsHashError, match="the sha256 of its tensors differs"):
        load_model(path)
    assert [s.state for s in verify_weights("tiny-remote")] == ["corrupt"]


# ------------------------------------------------------- bundled, cache, download


def test_bundled_default_loads_without_any_server(isolated_registry):
    loaded = load_model()
    assert loaded.name == "tiny"
    assert loaded.path == isolated_registry.bundled_dir / "tiny.safetensors"
    assert loaded.sha256 == get_weights().sha256
    assert not isolated_registry.cache_dir.exists()  # nothing fetched, nothing written


def test_download_then_cache_without_server(served):
    registry, server = served
    entry = get_weights(registry.remote)
    assert entry.url == server.url + "tiny-remote.safetensors"
    path = fetch_weights(entry)
    assert path == registry.cache_dir / "tiny-remote.safetensors"
    assert sha256sum(path) == entry.sha256
    assert server.requests == ["/tiny-remote.safetensors"]
    assert files_in(registry.cache_dir) == ["tiny-remote.safetensors"]

    server.shutdown()
    assert fetch_weights("tiny-remote") == path
    loaded = load_model("tiny-remote")
    assert loaded.name == "tiny-remote" and loaded.path == path
    assert server.requests == ["/tiny-remote.safetensors"]


def test_cache_env_is_read_at_call_time(served, tmp_path, monkeypatch):
    registry, server = served
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("ASTRO_STARGLX_CACHE", str(other))
    assert weights.cache_dir() == other
    assert fetch_weights("tiny-remote") == other / "tiny-remote.safetensors"
    assert not registry.cache_dir.exists()
    monkeypatch.delenv("ASTRO_STARGLX_CACHE")
    assert weights.cache_dir() == Path(pooch.os_cache("astro_starglx")).expanduser()


def test_url_env_is_read_at_call_time(monkeypatch):
    monkeypatch.delenv("ASTRO_STARGLX_WEIGHTS_URL", raising=False)
    assert weights.base_url() == DEFAULT_BASE_URL
    assert DEFAULT_BASE_URL.endswith("/release/weights/")
    monkeypatch.setenv("ASTRO_STARGLX_WEIGHTS_URL", "https://mirror.example.org/w")
    assert weights.base_url() == "https://mirror.example.org/w/"
    monkeypatch.setenv("ASTRO_STARGLX_WEIGHTS_URL", "/shared/weights")
    with pytest.raises(ValueError, match="ASTRO_STARGLX_WEIGHTS_URL must be an http"):
        weights.base_url()


def test_progressbar(served, capsys):
    download_weights("tiny-remote", progressbar=True)
    assert "100%" in capsys.readouterr().err


def test_corrupted_download_is_refused(served):
    registry, server = served
    corrupt(server.directory / "tiny-remote.safetensors")
    entry = get_weights("tiny-remote")
    with pytest.raises(WeightsHashError, match=rf"expected {entry.sha256}, found [0-9a-f]{{64}}"
                                               r".*astro-starglx weights download tiny-remote"):
        fetch_weights(entry, retries=0)
    assert files_in(registry.cache_dir) == []  # the bad file was not kept
    serve(server, registry)
    assert sha256sum(fetch_weights(entry, retries=0)) == entry.sha256


def test_corrupted_cached_file_is_refused(served):
    registry, server = served
    path = fetch_weights("tiny-remote")
    corrupt(path)
    found = sha256sum(path)
    entry = get_weights("tiny-remote")
    match = (rf"cached file .* has the wrong sha256 and was not used: expected {entry.sha256}, "
             rf"found {found}.*delete it.*`astro-starglx weights download tiny-remote`.*"
             r"`astro-starglx weights install FILE`")
    with pytest.raises(WeightsHashError, match=match):
        fetch_weights("tiny-remote")
    with pytest.raises(WeightsHashError, match=match):
        load_model("tiny-remote")
    assert [s.state for s in verify_weights("tiny-remote")] == ["corrupt"]
    assert len(server.requests) == 1  # refusing never downloads behind the user's back
    # the documented recovery: `weights download NAME` replaces the bad copy
    assert download_weights("tiny-remote", progressbar=False) == path
    assert sha256sum(path) == entry.sha256
    assert len(server.requests) == 2


def test_interrupted_download_leaves_no_file(served):
    registry, server = served
    server.truncate_after = 100
    with pytest.raises(WeightsDownloadError, match="could not download weights 'tiny-remote'"):
        fetch_weights("tiny-remote", retries=0)
    assert files_in(registry.cache_dir) == []
    server.truncate_after = None
    assert sha256sum(fetch_weights("tiny-remote")) == get_weights("tiny-remote").sha256


def test_keyboard_interrupt_mid_download_leaves_no_file(served, monkeypatch):
    registry, _ = served

    def interrupted(self, url, output_file, pooch, check_only=False):
        Path(output_file).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_weights("tiny-remote")
    assert files_in(registry.cache_dir) == []


def test_server_gone_is_a_clear_error(served):
    registry, server = served
    server.shutdown()
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError,
                       match=r"(?s)could not download weights 'tiny-remote' from "
                             rf"{server.url}tiny-remote.safetensors .*2 attempt\(s\).*"
                             r"ASTRO_STARGLX_WEIGHTS_URL.*`astro-starglx weights install FILE`"):
        fetch_weights("tiny-remote", retries=1, timeout=5)
    assert time.monotonic() - start < 60  # generous: refused at once, plus one 1 s retry wait
    assert files_in(registry.cache_dir) == []


def test_unresponsive_server_times_out(isolated_registry, monkeypatch):
    with socket.socket() as sock:  # accepts TCP connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        monkeypatch.setenv("ASTRO_STARGLX_WEIGHTS_URL",
                           f"http://127.0.0.1:{sock.getsockname()[1]}/")
        with pytest.raises(WeightsDownloadError, match=r"no answer within 0.3 s.*"
                                                       r"ASTRO_STARGLX_WEIGHTS_URL"):
            fetch_weights("tiny-remote", timeout=0.3, retries=0)


def test_missing_file_on_server(served):
    registry, server = served
    (server.directory / "tiny-remote.safetensors").unlink()
    with pytest.raises(WeightsDownloadError, match="HTTPError: 404"):
        fetch_weights("tiny-remote", retries=0)
    assert files_in(registry.cache_dir) == []


def test_closed_default_url_in_isolation(isolated_registry):
    with pytest.raises(WeightsDownloadError, match="ConnectionError"):
        fetch_weights("tiny-remote", retries=0)


def test_corrupted_bundled_file_is_skipped(served):
    registry, server = served
    bundled = registry.bundled_dir / "tiny.safetensors"
    shutil.copy2(bundled, server.directory / "tiny.safetensors")
    corrupt(bundled)
    path = fetch_weights("tiny")
    assert path == registry.cache_dir / "tiny.safetensors"
    assert sha256sum(path) == get_weights("tiny").sha256


# ------------------------------------------------------------ install and verify


def test_install_weights_accepts_the_registered_file(isolated_registry):
    path = install_weights(isolated_registry.remote_file)
    assert path == isolated_registry.cache_dir / "tiny-remote.safetensors"
    assert files_in(isolated_registry.cache_dir) == ["tiny-remote.safetensors"]
    # offline (closed URL): the installed copy is used
    assert load_model("tiny-remote").path == path
    assert install_weights(path) == path  # installing the cached file is a no-op


def test_install_weights_infers_name_from_meta(isolated_registry, tmp_path):
    renamed = tmp_path / "downloaded-by-hand.safetensors"
    shutil.copy2(isolated_registry.remote_file, renamed)
    assert install_weights(renamed).name == "tiny-remote.safetensors"


def test_install_weights_refuses_mismatch(isolated_registry, tmp_path, tiny_weights_file):
    bad = tmp_path / "tiny-remote.safetensors"
    shutil.copy2(isolated_registry.remote_file, bad)
    corrupt(bad)
    expected = get_weights("tiny-remote").sha256
    with pytest.raises(WeightsHashError, match=rf"refusing to install .* as 'tiny-remote': "
                                               rf"its sha256 is [0-9a-f]{{64}}, expected "
                                               rf"{expected}"):
        install_weights(bad)
    with pytest.raises(WeightsHashError, match="refusing to install"):
        install_weights(tiny_weights_file, name="tiny-remote")
    assert not isolated_registry.cache_dir.exists() or files_in(
        isolated_registry.cache_dir) == []
    unknown = tmp_path / "mystery.bin"
    unknown.write_bytes(b"123")
    with pytest.raises(ValueError, match=r"cannot tell which registered model .*mystery.bin "
                                         r"is .*pass name=... \(valid names: tiny, tiny-remote"):
        install_weights(unknown)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        install_weights(tmp_path / "none.safetensors")


def test_verify_weights(isolated_registry):
    statuses = {s.name: s for s in verify_weights()}
    assert statuses["tiny"].ok and statuses["tiny"].path.parent == isolated_registry.bundled_dir
    assert statuses["tiny-remote"].state == "missing"
    assert "weights download tiny-remote" in statuses["tiny-remote"].message
    install_weights(isolated_registry.remote_file)
    assert [s.ok for s in verify_weights(["tiny", "tiny-remote"])] == [True, True]


# ----------------------------------------------------------------- module hygiene


def test_weights_module_imports_no_astropy():
    tree = ast.parse(Path(weights.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"astropy", "photutils"}


def test_default_reads_the_psf_profile():
    """rbim-lite-v13 compares sources with the fitted PSF profile and knows its shapes."""
    v13 = load_model("rbim-lite-v13")
    meta = v13.meta
    assert {"psf_gamma", "radius_model_excess", "concentration_model_excess"} <= set(
        meta.feature_names)
    assert not {"radius_excess", "concentration_excess"} & set(meta.feature_names)
    for band in meta.bands:
        low, high = meta.psf["gamma_range"][band]
        assert low < 0.0 < 0.3 < high  # Gaussian to Moffat beta 2.5 wings at nominal width
    assert set(meta.depth) == set(meta.bands)
    assert meta.recipe["derived_from"]["name"] == "rbim-lite-v13"
    assert meta.recipe["data_seed"] == load_model("rbim-lite-v10").meta.recipe["data_seed"]


def test_v12_is_v10s_network_with_its_depth():
    """rbim-lite-v12 is rbim-lite-v10's network; only the meta's depth (and name) differ."""
    v10, v12 = load_model("rbim-lite-v10"), load_model("rbim-lite-v12")
    assert v12.meta.recipe["derived_from"] == {"name": "rbim-lite-v10", "sha256": v10.sha256}
    assert v10.meta.depth is None and set(v12.meta.depth) == set(v12.meta.bands)
    for key, tensor in v10.network.state_dict().items():
        assert torch.equal(tensor, v12.network.state_dict()[key])
    assert v12.meta.replace(name=v10.meta.name, depth=None,
                            recipe=v10.meta.recipe) == v10.meta
