"""
Shared fixtures: tiny random-init weights, a local HTTP server and an isolated
weights registry, so that weight loading is tested for real without network.
"""

import dataclasses
import functools
import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from astro_starglx import weights as weights_module
from astro_starglx.csst import CSST_BANDS
from astro_starglx.model import build_model
from astro_starglx.release import register_weights
from astro_starglx.weights import save_weights

TINY_ARCHITECTURE = {
    "mode": "fused",
    "n_bands": 7,
    "n_features": 5,
    "n_classes": 2,
    "image_encoder": {"name": "resnet", "block": "basic", "layers": [1], "widths": [4],
                      "stem": "small"},
    "catalog_encoder": {"hidden_size": 4, "num_layers": 1},
    "head": {"hidden": 8, "dropout": 0.0},
}


def make_tiny_meta(name="tiny"):
    """A valid meta for the tiny 7-band fused model (a fresh dict each call)."""
    n_bands, n_features = len(CSST_BANDS), 5
    return {
        "name": name,
        "bands": list(CSST_BANDS),
        "stamp_size": 15,
        "pixel_scale": 0.074,
        "feature_names": ["mag", "mag_err", "concentration", "radius", "ellipticity"],
        "normalization": {
            "softening": 3.0,
            "feature_mean": [[0.01 * (i + j) for j in range(n_features)]
                             for i in range(n_bands)],
            "feature_std": [[1.0] * n_features for _ in range(n_bands)],
        },
        "class_names": ["star", "galaxy"],
        "threshold": 0.5,
        "allow_missing_bands": True,
        "architecture": dict(TINY_ARCHITECTURE),
        "recipe": {"command": "test fixture", "data_seed": 0},
        "metrics": {},
    }


def seeded_state_dict(meta, *, seed=0):
    """State dict of ``build_model(meta["architecture"])`` filled from a torch.Generator."""
    network = build_model(meta["architecture"])
    generator = torch.Generator().manual_seed(seed)
    state = network.state_dict()
    with torch.no_grad():
        for key, tensor in state.items():
            if not tensor.is_floating_point():
                continue
            values = torch.rand(tensor.shape, generator=generator) * 0.2 - 0.1
            if key.endswith("running_var"):
                values = values + 1.0  # variances must stay positive
            tensor.copy_(values)
    return state


@pytest.fixture
def tiny_meta():
    """A valid weights meta dict for a tiny fused model over the 7 CSST bands."""
    return make_tiny_meta()


@pytest.fixture
def tiny_weights_file(tmp_path, tiny_meta):
    """``tmp_path / "tiny.safetensors"``: seeded random-init tiny weights (fp16 on disk)."""
    path = tmp_path / "tiny.safetensors"
    save_weights(path, seeded_state_dict(tiny_meta), tiny_meta)
    return path


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.server.owner
        server.requests.append(self.path)
        if server.truncate_after is None:
            return super().do_GET()
        # Announce the whole file, send only part of it, then drop the connection:
        # an interrupted download.
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:server.truncate_after])
        self.wfile.flush()
        self.close_connection = True
        return None


@dataclasses.dataclass
class WeightsServer:
    """
    A static HTTP server on 127.0.0.1 in a background thread.

    Attributes
    ----------
    url : str
        Base URL ending in ``/`` (``http://127.0.0.1:PORT/``).
    directory : Path
        The folder served.
    requests : list of str
        Paths requested so far (to check what was downloaded).
    truncate_after : int or None
        If set, every file is announced in full but only this many bytes are
        sent before the connection is closed.
    """

    url: str
    directory: Path
    requests: list
    truncate_after: int | None
    _httpd: http.server.ThreadingHTTPServer
    _thread: threading.Thread

    def shutdown(self):
        """Stop serving and close the port (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()


@pytest.fixture
def weights_server(tmp_path):
    """Serve ``tmp_path / "www"`` over HTTP on 127.0.0.1; shut down at teardown."""
    directory = tmp_path / "www"
    directory.mkdir()
    handler = functools.partial(_Handler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    server = WeightsServer(url=f"http://127.0.0.1:{httpd.server_address[1]}/",
                           directory=directory, requests=[], truncate_after=None,
                           _httpd=httpd, _thread=thread)
    httpd.owner = server
    thread.start()
    yield server
    server.shutdown()


def closed_port_url():
    """URL of a local port nobody listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@dataclasses.dataclass(frozen=True)
class IsolatedRegistry:
    """
    What `isolated_registry` set up.

    Attributes
    ----------
    path : Path
        The temporary registry JSON that ``astro_starglx.weights`` now reads.
    bundled_dir : Path
        Stand-in for the package's data folder (bundled files).
    cache_dir : Path
        ``$ASTRO_STARGLX_CACHE`` (not created yet).
    default : str
        ``"tiny"``: the registry default, a bundled entry (loads offline).
    remote : str
        ``"tiny-remote"``: a non-bundled entry, fetched on first use.
    remote_file : Path
        The released ``tiny-remote.safetensors`` (outside the cache): copy it
        into ``weights_server.directory`` to serve it, or install it.
    """

    path: Path
    bundled_dir: Path
    cache_dir: Path
    default: str
    remote: str
    remote_file: Path


@pytest.fixture
def isolated_registry(tmp_path, monkeypatch, tiny_weights_file):
    """
    Point ``astro_starglx.weights`` at a temporary registry and cache.

    The registry holds ``"tiny"`` (bundled, the default, a copy of
    `tiny_weights_file`) and ``"tiny-remote"`` (downloaded on first use, same
    tensors, meta name ``"tiny-remote"``). ``ASTRO_STARGLX_CACHE`` is
    ``tmp_path / "cache"`` and ``ASTRO_STARGLX_WEIGHTS_URL`` a closed local
    port, so nothing can reach the internet; a test that serves files sets it
    to ``weights_server.url``.
    """
    bundled_dir = tmp_path / "bundled"
    release_dir = tmp_path / "release"
    bundled_dir.mkdir()
    release_dir.mkdir()
    registry_path = tmp_path / "registry.json"
    bundled = shutil.copy2(tiny_weights_file, bundled_dir / "tiny.safetensors")
    meta = make_tiny_meta("tiny-remote")
    remote_file = release_dir / "tiny-remote.safetensors"
    save_weights(remote_file, seeded_state_dict(meta), meta)
    register_weights(bundled, bundled=True, registry_path=registry_path)
    register_weights(remote_file, bundled=False, registry_path=registry_path)
    registry = json.loads(registry_path.read_text())
    registry["default"] = "tiny"
    registry_path.write_text(json.dumps(registry, indent=2))

    cache = tmp_path / "cache"
    monkeypatch.setattr(weights_module, "_REGISTRY_PATH", registry_path)
    monkeypatch.setattr(weights_module, "_BUNDLED_DIR", bundled_dir)
    monkeypatch.setenv("ASTRO_STARGLX_CACHE", str(cache))
    monkeypatch.setenv("ASTRO_STARGLX_WEIGHTS_URL", closed_port_url())
    return IsolatedRegistry(path=registry_path, bundled_dir=bundled_dir, cache_dir=cache,
                            default="tiny", remote="tiny-remote", remote_file=remote_file)


# --------------------------------------------------------------------------
# hypothesis profiles of tests/test_fuzz.py: "fuzz" runs in the default test
# run (derandomized, so reproducible; its tests set their own max_examples,
# 450 examples in all, ~25 s on 2 cores); "fuzz-long" (5,000 random examples
# per property, ~11 min) runs with `pytest -m slow --slow tests/test_fuzz.py`.
# No example database: tests write files only in tmp_path.
_FUZZ_SETTINGS = dict(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("fuzz", max_examples=100, derandomize=True, **_FUZZ_SETTINGS)
settings.register_profile("fuzz-long", max_examples=5000, derandomize=False, **_FUZZ_SETTINGS)

_HYPOTHESIS_HOME = []


def pytest_configure(config):
    """
    Hypothesis' own files (its constants cache, written while collecting) go
    to a temporary folder removed at the end, not to ./.hypothesis.
    """
    import tempfile

    from hypothesis.configuration import set_hypothesis_home_dir

    _HYPOTHESIS_HOME.append(tempfile.mkdtemp(prefix="astro_starglx-hypothesis-"))
    set_hypothesis_home_dir(_HYPOTHESIS_HOME[-1])


def pytest_unconfigure(config):
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(None)
    while _HYPOTHESIS_HOME:
        shutil.rmtree(_HYPOTHESIS_HOME.pop(), ignore_errors=True)
