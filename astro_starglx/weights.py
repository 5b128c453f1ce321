"""
Pretrained weights: the registry, lazy fetching and safe loading.

A released model is a registry entry (``astro_starglx/data/registry.json``):
a file name, the file's sha256 and a copy of the model's metadata. The file
itself is a ``.safetensors`` file whose header metadata holds the JSON meta
under the key ``"astro_starglx"``; the file is the single source of truth, the
registry's copy of the meta only lets ``list_weights`` describe models that are
not downloaded yet.

A registered file is looked for, in order, in the package (``bundled``
entries), in the cache (``ASTRO_STARGLX_CACHE`` or ``pooch.os_cache
("astro_starglx")``) and finally downloaded with pooch from the base URL
(``ASTRO_STARGLX_WEIGHTS_URL`` or `DEFAULT_BASE_URL`). Every file is checked
against its pinned sha256 before use. Nothing happens at import time: no
network, no file writes, no CUDA initialisation.

This module imports torch, safetensors and pooch, never astropy or photutils.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path

import pooch
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ._optional import atomic_write
from .meta import META_KEY, ModelMeta
from .model import build_model

__all__ = [
    "DEFAULT",
    "DEFAULT_BASE_URL",
    "CACHE_ENV",
    "URL_ENV",
    "META_KEY",
    "DOWNLOAD_TIMEOUT",
    "DOWNLOAD_RETRIES",
    "Weights",
    "LoadedModel",
    "WeightsStatus",
    "WeightsHashError",
    "WeightsDownloadError",
    "get_weights",
    "list_weights",
    "default_weights_name",
    "save_weights",
    "read_meta",
    "cache_dir",
    "base_url",
    "fetch_weights",
    "download_weights",
    "verify_weights",
    "install_weights",
    "load_model",
]

log = logging.getLogger(__name__)

#: Alias accepted wherever a model name is: the registry's default model
#: (the compact ``rbim-lite``).
DEFAULT = "default"

#: Where released files are downloaded from: ``<base URL><file name>``.
DEFAULT_BASE_URL = "https://github.com/astro-starglx/astro_starglx/raw/main/release/weights/"

#: Environment variable that overrides the cache folder.
CACHE_ENV = "ASTRO_STARGLX_CACHE"

#: Environment variable that overrides the download base URL (mirrors).
URL_ENV = "ASTRO_STARGLX_WEIGHTS_URL"

#: Seconds a download may wait for the server to connect or send data.
DOWNLOAD_TIMEOUT = 60.0

#: Extra download attempts after a failed one (pooch waits 1 s, 2 s, ...).
DOWNLOAD_RETRIES = 2

# Private, read at call time so that tests can monkeypatch them.
_REGISTRY_PATH = Path(__file__).parent / "data" / "registry.json"
_BUNDLED_DIR = Path(__file__).parent / "data"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Header key of the sha256 over the tensors (names, dtypes, shapes, bytes):
# local files are checked on every load, not only registry-pinned ones.
_TENSORS_KEY = "tensors_sha256"
_SAVE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class WeightsHashError(ValueError):
    """A weights file's sha256 differs from the registered one; it is not used."""


class WeightsDownloadError(OSError):
    """A registered weights file could not be downloaded (server down, timeout, 404)."""


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Weights:
    """
    One registered weights file.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"rbim-lite"``.
    filename : str
        File name of the ``.safetensors`` file (also its name in the cache and
        on the download server).
    sha256 : str
        Lower-case hex sha256 of the file.
    bundled : bool
        True if the file ships inside the package (``astro_starglx/data``).
    meta : `~astro_starglx.meta.ModelMeta`
        Copy of the file's metadata (see :ref:`internals`); the file header is
        authoritative. Not part of equality or hashing.
    """

    name: str
    filename: str
    sha256: str
    bundled: bool
    meta: ModelMeta = dataclasses.field(compare=False, hash=False, repr=False)

    @property
    def url(self):
        """Download URL (``base_url() + filename``), read from the environment now."""
        return base_url() + self.filename

    @property
    def cache_path(self):
        """Where the file lives in the cache (it may not exist yet)."""
        return cache_dir() / self.filename

    @property
    def bundled_path(self):
        """Where a bundled file lives in the package, or None if not bundled."""
        return Path(_BUNDLED_DIR) / self.filename if self.bundled else None

    def local_path(self):
        """
        The local copy that `fetch_weights` would try first, without checking it.

        Returns
        -------
        path : `~pathlib.Path` or None
            The bundled file if present, else the cached file if present,
            else None (the file must be downloaded or installed).
        """
        for path in (self.bundled_path, self.cache_path):
            if path is not None and path.is_file():
                return path
        return None


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    """
    A network with the metadata that describes how to feed it.

    Attributes
    ----------
    network : `torch.nn.Module`
        The `~astro_starglx.model.RBiM` network in ``eval()`` mode, float32.
    meta : `~astro_starglx.meta.ModelMeta`
        Validated metadata read from the weights file.
    sha256 : str
        sha256 of the weights file (provenance).
    name : str
        Registry name, else ``meta["name"]``, else the file stem.
    path : `~pathlib.Path`
        The file the weights were read from.
    """

    network: torch.nn.Module
    meta: ModelMeta
    sha256: str
    name: str
    path: Path


@dataclasses.dataclass(frozen=True)
class WeightsStatus:
    """
    Result of `verify_weights` for one registry entry.

    Attributes
    ----------
    name : str
        Registry name.
    state : str
        ``"ok"`` (local copy with the right sha256), ``"missing"`` (no local
        copy: it will be downloaded on first use) or ``"corrupt"`` (a local
        copy whose sha256 differs; it will be refused).
    path : `~pathlib.Path` or None
        The local copy checked, None if missing.
    expected_sha256 : str
        The registered sha256.
    found_sha256 : str or None
        The local copy's sha256, None if missing.
    """

    name: str
    state: str
    path: Path | None
    expected_sha256: str
    found_sha256: str | None

    @property
    def ok(self):
        """True when a verified local copy exists."""
        return self.state == "ok"

    @property
    def message(self):
        """One line for people: what was found and, if needed, what to do."""
        if self.state == "ok":
            return f"sha256 {self.expected_sha256} verified: {self.path}"
        if self.state == "missing":
            return (f"not available locally; it is downloaded on first use, or now with "
                    f"`astro-starglx weights download {self.name}`")
        return (f"{self.path} has sha256 {self.found_sha256}, expected {self.expected_sha256}; "
                f"run `astro-starglx weights download {self.name}` or "
                "`astro-starglx weights install FILE`")


# ------------------------------------------------------------------- environment


def cache_dir():
    """
    The folder that holds downloaded and installed weights.

    Returns
    -------
    path : `~pathlib.Path`
        ``$ASTRO_STARGLX_CACHE`` if set and not empty, else
        ``pooch.os_cache("astro_starglx")`` (e.g. ``~/.cache/astro_starglx``).
        Read at each call; the folder is not created here.
    """
    return Path(_pooch().abspath)


def _pooch():
    """The one `pooch.Pooch` of the registry, for today's environment."""
    registry = _read_registry()
    files = tuple(sorted((entry["filename"], entry["sha256"])
                         for entry in registry["models"].values()
                         if isinstance(entry, dict) and "filename" in entry
                         and "sha256" in entry))
    return _make_pooch(base_url(), os.environ.get(CACHE_ENV, ""), files)


@functools.lru_cache(maxsize=8)
def _make_pooch(url, cache_env_value, files):
    # cache_env_value is part of the key: pooch reads the variable at create().
    return pooch.create(path=pooch.os_cache("astro_starglx"), base_url=url, env=CACHE_ENV,
                        registry={name: f"sha256:{digest}" for name, digest in files},
                        retry_if_failed=DOWNLOAD_RETRIES)


def _sha256(path):
    return pooch.file_hash(os.fspath(path), alg="sha256")


def base_url():
    """
    The URL that registered file names are appended to for download.

    Returns
    -------
    url : str
        ``$ASTRO_STARGLX_WEIGHTS_URL`` if set and not empty, else
        `DEFAULT_BASE_URL`; always ending in ``/``. Read at each call.

    Raises
    ------
    ValueError
        If ``ASTRO_STARGLX_WEIGHTS_URL`` is not an http(s) URL.
    """
    value = os.environ.get(URL_ENV, "").strip()
    if not value:
        return DEFAULT_BASE_URL
    if not value.startswith(("http://", "https://")):
        msg = (f"{URL_ENV} must be an http:// or https:// URL of a folder holding the "
               f"weights files, got {value!r}. For weights on a shared disk, point "
               f"{CACHE_ENV} at that folder instead, or run `astro-starglx weights "
               "install FILE`.")
        raise ValueError(msg)
    return value if value.endswith("/") else value + "/"


# ----------------------------------------------------------------------- registry


def _read_registry(path=None):
    path = Path(_REGISTRY_PATH if path is None else path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = (f"weights registry {path} does not exist; the installation is incomplete. "
               "Reinstall astro_starglx.")
        raise FileNotFoundError(msg) from None
    try:
        registry = json.loads(text)
    except json.JSONDecodeError as err:
        msg = f"weights registry {path} is not valid JSON ({err}); reinstall astro_starglx"
        raise ValueError(msg) from err
    if (not isinstance(registry, dict) or not isinstance(registry.get("models"), dict)
            or not isinstance(registry.get("default"), str)):
        got = sorted(registry) if isinstance(registry, dict) else type(registry).__name__
        msg = (f"weights registry {path} must be a JSON object with 'default' (a name) and "
               f"'models' (an object), got {got}; reinstall astro_starglx")
        raise ValueError(msg)
    return registry


def _entry_to_weights(name, entry, registry_path):
    where = f"weights registry {registry_path}, entry {name!r}"
    if not isinstance(entry, dict):
        msg = f"{where} must be an object, got {type(entry).__name__}"
        raise ValueError(msg)
    missing = [key for key in ("filename", "sha256", "bundled", "meta") if key not in entry]
    if missing:
        msg = f"{where} is missing {missing}; re-register it with register_weights()"
        raise ValueError(msg)
    filename, sha256, bundled = entry["filename"], entry["sha256"], entry["bundled"]
    if (not isinstance(filename, str) or Path(filename).name != filename
            or not filename.endswith(".safetensors")):
        msg = f"{where}: filename must be a bare '*.safetensors' file name, got {filename!r}"
        raise ValueError(msg)
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256):
        msg = f"{where}: sha256 must be 64 lower-case hex digits, got {sha256!r}"
        raise ValueError(msg)
    if not isinstance(bundled, bool):
        msg = f"{where}: bundled must be true or false, got {bundled!r}"
        raise ValueError(msg)
    try:
        meta = ModelMeta.from_dict(entry["meta"])
    except (TypeError, ValueError) as err:
        msg = f"{where} has invalid meta: {err}"
        raise ValueError(msg) from err
    return Weights(name=name, filename=filename, sha256=sha256, bundled=bundled, meta=meta)


def default_weights_name():
    """
    Name of the registry's default model (``rbim-lite``), registered or not.

    Returns
    -------
    name : str
    """
    return _read_registry()["default"]


def list_weights():
    """
    All registered weights.

    Returns
    -------
    weights : list of `Weights`
        Sorted by name; empty while no trained model is registered.
    """
    registry = _read_registry()
    return [_entry_to_weights(name, registry["models"][name], _REGISTRY_PATH)
            for name in sorted(registry["models"])]


def get_weights(name=None):
    """
    Look up a registered model by name.

    Parameters
    ----------
    name : str or None
        A registry name, `DEFAULT` (``"default"``) or None for the default
        model.

    Returns
    -------
    weights : `Weights`

    Raises
    ------
    ValueError
        If the name is not registered (the message lists the valid names), or
        the default model is not registered yet.
    """
    if name is not None and not isinstance(name, str):
        msg = f"name must be a registered model name (str) or None, got {type(name).__name__}"
        raise TypeError(msg)
    registry = _read_registry()
    models = registry["models"]
    names = ", ".join(sorted(models)) or "none registered yet"
    if name is None or name == DEFAULT:
        default = registry["default"]
        if default not in models:
            msg = (f"the default model {default!r} is not registered yet (registered: "
                   f"{names}). Pass a local weights file instead, e.g. "
                   "load_model('path/to/model.safetensors'), or train one with "
                   "`astro-starglx train` and add it with "
                   "astro_starglx.weights.register_weights().")
            raise ValueError(msg)
        name = default
    if name not in models:
        msg = (f"unknown weights name {name!r}; valid names: {names} (or {DEFAULT!r} for "
               f"{registry['default']!r}). To use a file of your own, pass its path.")
        raise ValueError(msg)
    return _entry_to_weights(name, models[name], _REGISTRY_PATH)


def _as_weights(weights):
    if isinstance(weights, Weights):
        return weights
    if weights is None or isinstance(weights, str):
        return get_weights(weights)
    msg = (f"weights must be a Weights entry, a registered name or None, "
           f"got {type(weights).__name__}")
    raise TypeError(msg)


# -------------------------------------------------------------------------- files


def _tensors_digest(tensors):
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape: a 0-d tensor (num_batches_tracked) cannot be viewed as bytes
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()


def save_weights(path, state_dict, meta, *, dtype=torch.float16):
    """
    Write a state dict and its metadata to a ``.safetensors`` file.

    The meta is validated and stored as JSON under the header key
    ``"astro_starglx"``, together with a sha256 over the tensors that every
    load checks. The file is written to a temporary file first and then moved
    into place, so a crash never leaves a partial file at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; should end in ``.safetensors``. Its folder must exist.
    state_dict : dict of str to `torch.Tensor`
        The network's ``state_dict()``; every value must be finite.
    meta : `~astro_starglx.meta.ModelMeta` or dict
        Weights metadata (a dict is validated with `ModelMeta.from_dict`).
    dtype : torch.dtype or None, optional
        Storage dtype of floating-point tensors (``torch.float16``, the
        default, halves the file; ``torch.bfloat16`` or ``torch.float32``);
        None keeps each tensor's dtype. Tensors are cast back to float32 on
        load. Integer tensors are stored as they are.

    Returns
    -------
    sha256 : str
        sha256 of the written file (what a registry entry pins).

    Raises
    ------
    ValueError
        If ``meta`` is invalid, ``dtype`` unsupported, or a tensor holds NaN
        or inf (also after the cast to ``dtype``).
    """
    path = Path(path)
    if dtype is not None and dtype not in _SAVE_DTYPES:
        msg = f"dtype must be one of {_SAVE_DTYPES} or None, got {dtype!r}"
        raise ValueError(msg)
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        msg = "state_dict must be a dict of str -> torch.Tensor, e.g. network.state_dict()"
        raise TypeError(msg)
    meta = ModelMeta.from_dict(meta.to_dict() if isinstance(meta, ModelMeta) else meta)
    tensors = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            msg = (f"state_dict[{key!r}] holds NaN or inf (after the cast to {tensor.dtype}); "
                   "the network diverged or overflows this dtype: save with dtype=None or "
                   "torch.float32, or retrain")
            raise ValueError(msg)
        # clone: safetensors refuses tensors that share memory
        tensors[key] = tensor.contiguous().clone()
    header = {META_KEY: meta.to_json(), _TENSORS_KEY: _tensors_digest(tensors), "format": "pt"}
    with atomic_write(path, "wb") as fh:
        fh.close()
        save_file(tensors, fh.name, metadata=header)
        os.chmod(fh.name, 0o644)
    digest = _sha256(path)
    log.info("wrote weights %s (sha256 %s)", path, digest)
    return digest


def _read_file(path, *, tensors):
    """Return (ModelMeta, state_dict or None) of a .safetensors weights file."""
    path = Path(path)
    if not path.is_file():
        msg = f"weights file {path} does not exist"
        raise FileNotFoundError(msg)
    if path.suffix.lower() != ".safetensors":
        msg = (f"weights file {path} must be a .safetensors file written by "
               f"astro_starglx.weights.save_weights(), got suffix {path.suffix!r}")
        raise ValueError(msg)
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()} if tensors else None
    except (SafetensorError, OSError) as err:
        msg = f"weights file {path} is not a readable .safetensors file: {err}"
        raise ValueError(msg) from err
    if META_KEY not in header:
        msg = (f"weights file {path} has no {META_KEY!r} metadata in its header; "
               "it was not written by astro_starglx.weights.save_weights(). Re-save "
               "the state dict with save_weights(path, state_dict, meta).")
        raise ValueError(msg)
    try:
        meta = ModelMeta.from_json(header[META_KEY])
    except (TypeError, ValueError) as err:
        msg = f"weights file {path} has invalid metadata: {err}"
        raise ValueError(msg) from err
    if state is not None:
        _check_tensors(state, header.get(_TENSORS_KEY), path)
    return meta, state


def _check_tensors(state, expected, path):
    if expected is not None and _tensors_digest(state) != expected:
        msg = (f"weights file {path} is corrupted: the sha256 of its tensors differs from the "
               "one recorded when it was saved, so it was not used. Download or copy the file "
               "again (registered models: `astro-starglx weights download NAME`).")
        raise WeightsHashError(msg)
    bad = [key for key, value in state.items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        msg = (f"weights file {path} holds NaN or inf in {bad[:3]}"
               f"{' and more' if len(bad) > 3 else ''}; it was not used. Retrain or re-export "
               "the model.")
        raise ValueError(msg)


def read_meta(path):
    """
    Read and validate the metadata of a weights file without loading tensors.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file written by `save_weights`.

    Returns
    -------
    meta : `~astro_starglx.meta.ModelMeta`
        The validated metadata.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a weights file or its metadata is invalid.
    """
    return _read_file(path, tensors=False)[0]


# ------------------------------------------------------------------------ fetching


def _hash_error(weights, path, found, *, what):
    return WeightsHashError(
        f"{what} {path} for weights {weights.name!r} has the wrong sha256 and was not used: "
        f"expected {weights.sha256}, found {found}. The file is corrupted or was "
        f"tampered with. To recover, delete it and run `astro-starglx weights download "
        f"{weights.name}`, or get the right file elsewhere and run `astro-starglx weights "
        "install FILE`.")


def _progress(progressbar):
    if progressbar is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return progressbar


def _download(weights, *, progressbar, timeout, retries):
    import requests  # pooch's own dependency; imported lazily as pooch does

    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    retries = DOWNLOAD_RETRIES if retries is None else retries
    url = base_url() + weights.filename
    pup = _pooch()
    pup.retry_if_failed = retries
    # A Weights entry not (or differently) in the package registry, e.g. a
    # registry of the caller's own: its pinned hash is the one that counts.
    pup.registry[weights.filename] = f"sha256:{weights.sha256}"
    downloader = pooch.HTTPDownloader(timeout=timeout, progressbar=_progress(progressbar))
    try:
        # pooch streams into a temp file in the cache folder, checks the hash and
        # only then moves it into place: a failed download leaves nothing behind.
        return Path(pup.fetch(weights.filename, downloader=downloader))
    except requests.exceptions.RequestException as err:
        reason = (f"no answer within {timeout} s" if isinstance(err, requests.exceptions.Timeout)
                  else f"{type(err).__name__}: {err}")
        msg = (f"could not download weights {weights.name!r} from {url} ({reason}; "
               f"{1 + retries} attempt(s)). If this machine is offline or the server is "
               f"down, set {URL_ENV} to a mirror that holds {weights.filename}, or copy "
               f"the file here and run `astro-starglx weights install FILE`.")
        raise WeightsDownloadError(msg) from err
    except ValueError as err:
        if "hash" not in str(err):
            raise
        match = re.search(r"but got ([0-9a-fA-F]{64})", str(err))
        found = match.group(1).lower() if match else "a different hash"
        raise _hash_error(weights, url, found, what="downloaded file") from err


def _verified_local(weights):
    """Return the verified bundled/cached path, None if none; raise on a bad cached copy."""
    bundled = weights.bundled_path
    if bundled is not None and bundled.is_file():
        found = _sha256(bundled)
        if found == weights.sha256:
            return bundled
        # A broken installation: never use the file, fall back to cache/download.
        log.warning("bundled weights %s have sha256 %s, expected %s; ignoring them "
                    "(reinstall astro_starglx)", bundled, found, weights.sha256)
    cached = weights.cache_path
    if cached.is_file():
        found = _sha256(cached)
        if found != weights.sha256:
            raise _hash_error(weights, cached, found, what="cached file")
        return cached
    return None


def fetch_weights(weights, *, progressbar=False, timeout=None, retries=None):
    """
    Local path of a registered weights file, downloading it on first use.

    Looks in the package (bundled entries), then in the cache (`cache_dir`),
    then downloads ``base_url() + filename`` with pooch into the cache. The
    file's sha256 is checked in every case.

    Parameters
    ----------
    weights : `Weights` or str or None
        Registry entry, registered name, or None for the default model.
    progressbar : bool or None, optional
        Show a tqdm progress bar while downloading (None: only when stderr is
        a terminal).
    timeout : float or None, optional
        Seconds to wait for the server to connect or send data
        (default `DOWNLOAD_TIMEOUT`).
    retries : int or None, optional
        Extra download attempts after a failure (default `DOWNLOAD_RETRIES`).

    Returns
    -------
    path : `~pathlib.Path`
        Verified local file.

    Raises
    ------
    WeightsHashError
        If the cached or downloaded file has the wrong sha256 (it is not used).
    WeightsDownloadError
        If the download fails (server down, timeout, missing file).
    ValueError
        If the name is not registered.
    """
    weights = _as_weights(weights)
    path = _verified_local(weights)
    if path is not None:
        return path
    return _download(weights, progressbar=progressbar, timeout=timeout, retries=retries)


def download_weights(name=None, *, progressbar=True, timeout=None, retries=None):
    """
    Make sure a registered model is available locally (``weights download NAME``).

    Unlike `fetch_weights`, a cached copy with the wrong sha256 is replaced by
    a fresh download (only once the new file is verified).

    Parameters
    ----------
    name : str or `Weights` or None
        Registered name, entry, or None for the default model.
    progressbar : bool or None, optional
        Show a progress bar (default True).
    timeout, retries : optional
        As in `fetch_weights`.

    Returns
    -------
    path : `~pathlib.Path`
        Verified local file (the bundled file for bundled models).
    """
    weights = _as_weights(name)
    try:
        path = _verified_local(weights)
    except WeightsHashError as err:
        log.warning("%s Downloading a fresh copy.", err)
        path = None
    if path is not None:
        log.info("weights %r are already available at %s", weights.name, path)
        return path
    return _download(weights, progressbar=progressbar, timeout=timeout, retries=retries)


def verify_weights(names=None):
    """
    Check the local copies of registered weights against their sha256.

    Nothing is downloaded or deleted (``astro-starglx weights verify``).

    Parameters
    ----------
    names : str, iterable of str or None
        Registered name(s); None checks every registered model.

    Returns
    -------
    statuses : list of `WeightsStatus`
        One per model, for the copy `fetch_weights` would use (bundled, else
        cached); ``status.ok`` and ``status.message`` summarise it.

    Raises
    ------
    ValueError
        If a name is not registered.
    """
    if names is None:
        entries = list_weights()
    elif isinstance(names, str):
        entries = [get_weights(names)]
    else:
        entries = [get_weights(name) for name in names]
    statuses = []
    for weights in entries:
        path = weights.local_path()
        found = None if path is None else _sha256(path)
        if path is not None and found != weights.sha256 and path == weights.bundled_path:
            # fetch_weights skips a broken bundled copy and would use the cache
            cached = weights.cache_path
            if cached.is_file():
                path, found = cached, _sha256(cached)
        state = "missing" if path is None else ("ok" if found == weights.sha256 else "corrupt")
        statuses.append(WeightsStatus(name=weights.name, state=state, path=path,
                                      expected_sha256=weights.sha256, found_sha256=found))
    return statuses


def _infer_entry(path):
    registry = _read_registry()
    entries = [_entry_to_weights(n, e, _REGISTRY_PATH) for n, e in registry["models"].items()]
    for weights in entries:
        if weights.filename == path.name:
            return weights
    try:
        meta_name = read_meta(path).name
    except (ValueError, OSError):
        meta_name = None
    for weights in entries:
        if weights.name in (meta_name, path.stem):
            return weights
    names = ", ".join(sorted(w.name for w in entries)) or "none registered yet"
    msg = (f"cannot tell which registered model {path} is (by its file name or "
           f"meta['name']); pass name=... (valid names: {names})")
    raise ValueError(msg)


def install_weights(path, *, name=None):
    """
    Copy a weights file obtained elsewhere into the cache (``weights install FILE``).

    For offline machines: download the file anywhere, copy it over, install.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    name : str or None
        Registered model it should be; None infers it from the file name
        (the registered ``filename``), else ``meta["name"]``, else the stem.

    Returns
    -------
    path : `~pathlib.Path`
        The installed file in the cache.

    Raises
    ------
    WeightsHashError
        If the file's sha256 differs from the registered one (nothing is
        installed).
    ValueError
        If the model cannot be identified or is not registered.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"path {path} does not exist or is not a file"
        raise FileNotFoundError(msg)
    weights = get_weights(name) if name is not None else _infer_entry(path)
    found = _sha256(path)
    if found != weights.sha256:
        msg = (f"refusing to install {path} as {weights.name!r}: its sha256 is {found}, "
               f"expected {weights.sha256}. Get the released file {weights.filename} "
               f"(from {weights.url}) or check name=.")
        raise WeightsHashError(msg)
    dest = weights.cache_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and dest.samefile(path):
        return dest
    with atomic_write(dest, "wb") as fh, open(path, "rb") as src:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            fh.write(chunk)
        fh.flush()
        if _sha256(fh.name) != weights.sha256:
            msg = f"copying {path} to {dest} changed its content; check the disk"
            raise OSError(msg)
    log.info("installed weights %r at %s", weights.name, dest)
    return dest


# ------------------------------------------------------------------------- loading


def _check_state_dict(network, state, path):
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{key}: file {tuple(state[key].shape)} vs network {tuple(expected[key].shape)}"
              for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        msg = (f"weights file {path} does not fit the network described by its "
               f"meta.architecture ({'; '.join(parts)}). The meta was not written "
               "with these weights: re-save them with save_weights(path, state_dict, meta) "
               "using the training config.")
        raise ValueError(msg)


def _resolve_source(model):
    """Return (Weights or None, local path or None) for load_model's argument."""
    if isinstance(model, Weights) or model is None:
        return model if model is not None else get_weights(None), None
    if isinstance(model, str):
        registry = _read_registry()
        is_path_like = os.sep in model or "/" in model or model.lower().endswith(".safetensors")
        if model == DEFAULT or model in registry["models"] or not is_path_like:
            return get_weights(model), None
        return None, Path(model)
    if isinstance(model, os.PathLike):
        return None, Path(model)
    msg = (f"model must be None (the default model), a registered name, a Weights entry "
           f"or a path to a .safetensors weights file, got {type(model).__name__}")
    raise TypeError(msg)


def load_model(model=None, *, device="cpu", progressbar=None):
    """
    Build a network from its weights file, ready for inference.

    The architecture is built from ``meta.architecture``, then the state dict
    is loaded with strict key checking; half-precision tensors are cast to
    float32. Loading never executes pickled code, and a file whose tensors
    differ from those it was saved with, or hold NaN or inf, is refused.

    Parameters
    ----------
    model : None, str, `Weights` or os.PathLike
        None for the default model, a registered name, a registry entry, or a
        local ``.safetensors`` file. A string is a registered name unless it
        contains a path separator or ends in ``.safetensors``.
    device : str or torch.device or None, optional
        Where to put the network; None picks CUDA when available.
    progressbar : bool or None, optional
        Progress bar if a download is needed (None: only on a terminal).

    Returns
    -------
    loaded : `LoadedModel`
        ``network`` in eval() mode on ``device``, ``meta``, ``sha256``,
        ``name`` and ``path``.

    Raises
    ------
    ValueError
        Unknown name (lists the valid ones), default model not registered,
        invalid metadata, non-finite tensors, or tensors that do not fit the
        architecture.
    WeightsHashError
        If the file's sha256 differs from the registered one, or its tensors
        from the digest recorded at saving.
    WeightsDownloadError
        See `fetch_weights`.
    FileNotFoundError
        If a local file does not exist.

    Examples
    --------
    >>> from astro_starglx.weights import load_model
    >>> loaded = load_model()
    >>> loaded.meta.bands
    ('NUV', 'u', 'g', 'r', 'i', 'z', 'y')
    """
    from .inference import resolve_device

    device = resolve_device(device)
    weights, path = _resolve_source(model)
    if weights is not None:
        path = fetch_weights(weights, progressbar=progressbar)
        sha256 = weights.sha256
    else:
        if not path.is_file():
            msg = f"model file {path} does not exist (model={model!r})"
            raise FileNotFoundError(msg)
        sha256 = _sha256(path)
    meta, state = _read_file(path, tensors=True)
    name = weights.name if weights is not None else (meta.name or path.stem)
    try:
        network = build_model(meta.architecture)
    except (KeyError, TypeError, ValueError) as err:
        msg = (f"weights file {path}: cannot build the network described by "
               f"meta.architecture ({type(err).__name__}: {err})")
        raise ValueError(msg) from err
    state = {key: value.float() if value.is_floating_point() else value
             for key, value in state.items()}
    _check_state_dict(network, state, path)
    network.load_state_dict(state, strict=True)
    network.to(device).eval()
    log.debug("loaded weights %r from %s onto %s", name, path, device)
    return LoadedModel(network=network, meta=meta, sha256=sha256, name=name, path=path)
