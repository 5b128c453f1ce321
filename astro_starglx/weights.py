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
import hashlib
import json
import logging
import math
import numbers
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pooch
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .model import build_model, validate_config

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
    "validate_meta",
    "save_weights",
    "read_meta",
    "sha256sum",
    "cache_dir",
    "base_url",
    "fetch_weights",
    "download_weights",
    "verify_weights",
    "install_weights",
    "register_weights",
    "load_model",
    "resolve_device",
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

#: Key of the JSON model meta in a safetensors file's header metadata.
META_KEY = "astro_starglx"

#: Seconds a download may wait for the server to connect or send data.
DOWNLOAD_TIMEOUT = 60.0

#: Extra download attempts after a failed one (pooch waits 1 s, 2 s, ...).
DOWNLOAD_RETRIES = 2

# Private, read at call time so that tests can monkeypatch them.
_REGISTRY_PATH = Path(__file__).parent / "data" / "registry.json"
_BUNDLED_DIR = Path(__file__).parent / "data"

_REGISTRY_FORMAT = 1
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_META_REQUIRED = ("bands", "stamp_size", "pixel_scale", "feature_names", "normalization",
                  "class_names", "threshold", "allow_missing_bands", "architecture",
                  "recipe", "metrics")
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
    meta : dict
        Copy of the file's metadata (see :ref:`internals`); the file header is
        authoritative. Not part of equality or hashing.
    """

    name: str
    filename: str
    sha256: str
    bundled: bool
    meta: dict = dataclasses.field(compare=False, hash=False, repr=False)

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
    meta : dict
        Validated metadata read from the weights file.
    sha256 : str
        sha256 of the weights file (provenance).
    name : str
        Registry name, else ``meta["name"]``, else the file stem.
    path : `~pathlib.Path`
        The file the weights were read from.
    """

    network: torch.nn.Module
    meta: dict
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
    value = os.environ.get(CACHE_ENV, "").strip()
    path = Path(value) if value else Path(pooch.os_cache("astro_starglx"))
    return path.expanduser()


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
        meta = validate_meta(entry["meta"])
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


# ------------------------------------------------------------------------- meta


def _is_number(value):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _unique_strings(value):
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(v, str) and v for v in value) and len(set(value)) == len(value))


def _check_table(value, n_rows, n_cols, *, positive):
    if not isinstance(value, list) or len(value) != n_rows:
        return f"a list of {n_rows} rows (one per band)"
    for row in value:
        if not isinstance(row, list) or len(row) != n_cols:
            return f"{n_rows} rows of {n_cols} numbers (bands x features)"
        if not all(_is_number(v) and (v > 0 or not positive) for v in row):
            return "finite numbers" + (" > 0" if positive else "")
    return None


def validate_meta(meta):
    """
    Check a weights metadata dict against the schema.

    The schema is described in :ref:`internals` ("Weights metadata"):
    ``bands``, ``stamp_size``, ``pixel_scale``, ``feature_names``,
    ``normalization`` (``softening``, ``feature_mean``, ``feature_std`` of
    shape bands x features), ``class_names``, ``threshold``,
    ``allow_missing_bands``, ``architecture`` (a `~astro_starglx.model.build_model`
    config consistent with the bands, features and classes), ``recipe``
    (``command``, ``data_seed``) and ``metrics``; ``name`` is optional. Extra
    keys are kept.

    Parameters
    ----------
    meta : dict
        The metadata.

    Returns
    -------
    meta : dict
        A validated deep copy in JSON form, exactly as a file stores it
        (tuples and numpy arrays become lists; ``architecture`` has its
        defaults filled in).

    Raises
    ------
    TypeError
        If ``meta`` is not a dict or holds values JSON cannot store.
    ValueError
        If keys are missing or values unusable (NaN included); the message
        lists every problem found.
    """
    if not isinstance(meta, dict):
        msg = f"meta must be a dict (the weights metadata), got {type(meta).__name__}"
        raise TypeError(msg)
    missing = [key for key in _META_REQUIRED if key not in meta]
    if missing:
        msg = (f"weights meta is missing {missing}; it has {sorted(meta)}. "
               "See 'Weights metadata' in docs/internals.rst for the schema.")
        raise ValueError(msg)
    # The JSON round trip makes the copy exactly what a file stores (tuples and
    # numpy arrays become lists) and rejects what JSON cannot hold.
    meta = json.loads(_meta_to_json(meta))
    problems = []

    def bad(key, expected):
        problems.append(f"{key} must be {expected}, got {meta_get(key)!r}")

    def meta_get(key):
        value = meta
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    if "name" in meta and not (isinstance(meta["name"], str) and meta["name"]):
        bad("name", "a non-empty string")
    bands_ok = _unique_strings(meta["bands"])
    if not bands_ok:
        bad("bands", "a non-empty list of distinct band names")
    size = meta["stamp_size"]
    if not (_is_int(size) and size > 0 and size % 2 == 1):
        bad("stamp_size", "a positive odd integer")
    if not (_is_number(meta["pixel_scale"]) and meta["pixel_scale"] > 0):
        bad("pixel_scale", "a positive number (arcsec per pixel)")
    features_ok = _unique_strings(meta["feature_names"])
    if not features_ok:
        bad("feature_names", "a non-empty list of distinct feature names")
    classes_ok = _unique_strings(meta["class_names"]) and len(meta["class_names"]) >= 2
    if not classes_ok:
        bad("class_names", "a list of at least 2 distinct class names")
    threshold = meta["threshold"]
    if not (_is_number(threshold) and 0 < threshold < 1):
        bad("threshold", "a number between 0 and 1 (exclusive)")
    if not isinstance(meta["allow_missing_bands"], bool):
        bad("allow_missing_bands", "true or false")

    norm = meta["normalization"]
    if not isinstance(norm, dict):
        bad("normalization", "a dict with softening, feature_mean and feature_std")
    else:
        if not (_is_number(norm.get("softening")) and norm["softening"] > 0):
            bad("normalization.softening", "a positive number")
        if bands_ok and features_ok:
            shape = (len(meta["bands"]), len(meta["feature_names"]))
            for key, positive in (("feature_mean", False), ("feature_std", True)):
                expected = _check_table(norm.get(key), *shape, positive=positive)
                if expected:
                    problems.append(f"normalization.{key} must be {shape[0]}x{shape[1]} "
                                    f"(bands x features) {expected}")

    arch = meta["architecture"]
    try:
        arch = validate_config(arch)
    except (TypeError, ValueError) as err:
        problems.append(f"architecture: {err}")
    else:
        meta["architecture"] = arch
        checks = [("n_bands", "bands", bands_ok), ("n_features", "feature_names", features_ok),
                  ("n_classes", "class_names", classes_ok)]
        for arch_key, meta_key, ok in checks:
            if ok and arch[arch_key] != len(meta[meta_key]):
                problems.append(f"architecture {arch_key}={arch[arch_key]} does not match "
                                f"len({meta_key})={len(meta[meta_key])}")
        if "stamp_size" in arch and arch["stamp_size"] != size:
            problems.append(f"architecture stamp_size={arch['stamp_size']} does not match "
                            f"stamp_size={size}")

    recipe = meta["recipe"]
    if not (isinstance(recipe, dict) and isinstance(recipe.get("command"), str)
            and "data_seed" in recipe
            and (recipe["data_seed"] is None or _is_int(recipe["data_seed"]))):
        bad("recipe", "a dict with 'command' (str) and 'data_seed' (int or None)")
    if not isinstance(meta["metrics"], dict):
        bad("metrics", "a dict (may be empty)")

    if problems:
        msg = "invalid weights meta:\n  - " + "\n  - ".join(problems)
        raise ValueError(msg)
    return meta


def _json_default(value):
    # numpy scalars and arrays (normalisation constants) -> plain lists/numbers
    if hasattr(value, "tolist"):
        return value.tolist()
    msg = f"meta values must be JSON-serialisable, got {type(value).__name__}: {value!r}"
    raise TypeError(msg)


def _meta_to_json(meta):
    try:
        text = json.dumps(meta, sort_keys=True, default=_json_default, allow_nan=False)
    except ValueError as err:
        msg = (f"meta must be strict JSON ({err}); write undefined metrics as None, "
               "not NaN or inf")
        raise ValueError(msg) from err
    return text


# -------------------------------------------------------------------------- files


def sha256sum(path):
    """
    sha256 of a file.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    digest : str
        Lower-case hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:  # hashlib.file_digest needs Python 3.11
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_target(path):
    # A temp file next to the target, so that os.replace is atomic.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def save_weights(path, state_dict, meta, *, dtype=torch.float16):
    """
    Write a state dict and its metadata to a ``.safetensors`` file.

    The meta is validated, stored as JSON under the header key
    ``"astro_starglx"``, and the file is written to a temporary file first and
    then moved into place, so a crash never leaves a partial file at ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; should end in ``.safetensors``. Its folder must exist.
    state_dict : dict of str to `torch.Tensor`
        The network's ``state_dict()``.
    meta : dict
        Weights metadata (see `validate_meta`).
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
        If ``meta`` is invalid or ``dtype`` unsupported.
    """
    path = Path(path)
    if dtype is not None and dtype not in _SAVE_DTYPES:
        msg = f"dtype must be one of {_SAVE_DTYPES} or None, got {dtype!r}"
        raise ValueError(msg)
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        msg = "state_dict must be a dict of str -> torch.Tensor, e.g. network.state_dict()"
        raise TypeError(msg)
    meta = validate_meta(meta)
    tensors = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        # clone: safetensors refuses tensors that share memory
        tensors[key] = tensor.contiguous().clone()
    header = {META_KEY: _meta_to_json(meta), "format": "pt"}
    tmp = _atomic_target(path)
    try:
        save_file(tensors, os.fspath(tmp), metadata=header)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest = sha256sum(path)
    log.info("wrote weights %s (sha256 %s)", path, digest)
    return digest


def _read_file(path, *, tensors):
    """Return (meta, state_dict or None) from a .safetensors or legacy .pt file."""
    path = Path(path)
    if not path.is_file():
        msg = f"weights file {path} does not exist"
        raise FileNotFoundError(msg)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
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
            meta = json.loads(header[META_KEY])
        except json.JSONDecodeError as err:
            msg = f"weights file {path}: the {META_KEY!r} header metadata is not JSON ({err})"
            raise ValueError(msg) from err
    elif suffix == ".pt":
        try:
            # weights_only: tensors and plain containers only, never arbitrary pickles
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            msg = (f"refused to load {path}: torch.load(weights_only=True) found objects "
                   f"other than tensors and plain containers ({type(err).__name__}: {err}). "
                   "Only {'state_dict': ..., 'meta': ...} files are accepted; convert "
                   "trusted files with save_weights() to .safetensors.")
            raise ValueError(msg) from err
        if not (isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict)
                and "meta" in blob):
            got = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
            msg = (f"legacy weights file {path} must hold a dict with 'state_dict' and "
                   f"'meta', got {got}")
            raise ValueError(msg)
        meta = blob["meta"]
        if isinstance(meta, str):
            meta = json.loads(meta)
        state = blob["state_dict"] if tensors else None
    else:
        msg = (f"weights file {path} must be a .safetensors file (or a legacy .pt file "
               f"holding {{'state_dict', 'meta'}}), got suffix {path.suffix!r}")
        raise ValueError(msg)
    try:
        meta = validate_meta(meta)
    except (TypeError, ValueError) as err:
        msg = f"weights file {path} has invalid metadata: {err}"
        raise ValueError(msg) from err
    return meta, state


def read_meta(path):
    """
    Read and validate the metadata of a weights file without loading tensors.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file written by `save_weights` (or a legacy
        ``.pt`` file, read with ``torch.load(weights_only=True)``).

    Returns
    -------
    meta : dict
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
    pup = pooch.create(path=cache_dir(), base_url=base_url(),
                       registry={weights.filename: f"sha256:{weights.sha256}"},
                       retry_if_failed=retries)
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
        found = sha256sum(bundled)
        if found == weights.sha256:
            return bundled
        # A broken installation: never use the file, fall back to cache/download.
        log.warning("bundled weights %s have sha256 %s, expected %s; ignoring them "
                    "(reinstall astro_starglx)", bundled, found, weights.sha256)
    cached = weights.cache_path
    if cached.is_file():
        found = sha256sum(cached)
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
        found = None if path is None else sha256sum(path)
        if path is not None and found != weights.sha256 and path == weights.bundled_path:
            # fetch_weights skips a broken bundled copy and would use the cache
            cached = weights.cache_path
            if cached.is_file():
                path, found = cached, sha256sum(cached)
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
        meta_name = read_meta(path).get("name")
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
    found = sha256sum(path)
    if found != weights.sha256:
        msg = (f"refusing to install {path} as {weights.name!r}: its sha256 is {found}, "
               f"expected {weights.sha256}. Get the released file {weights.filename} "
               f"(from {weights.url}) or check name=.")
        raise WeightsHashError(msg)
    dest = weights.cache_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and dest.samefile(path):
        return dest
    tmp = _atomic_target(dest)
    try:
        shutil.copyfile(path, tmp)
        if sha256sum(tmp) != weights.sha256:
            msg = f"copying {path} to {dest} changed its content; check the disk"
            raise OSError(msg)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("installed weights %r at %s", weights.name, dest)
    return dest


def register_weights(path, *, bundled, registry_path=None, name=None):
    """
    Add or update a registry entry from a weights file (release step).

    The sha256 and meta are read from the file, so the file stays the single
    source of truth. Put the file where it will be found: ``astro_starglx/data/``
    for ``bundled=True``, ``release/weights/`` at the repository root (served
    at `DEFAULT_BASE_URL`) otherwise.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file written by `save_weights`.
    bundled : bool
        Whether the file ships inside the package.
    registry_path : str or os.PathLike or None
        Registry JSON to update (created if absent, with default
        ``"rbim-lite"``); None for the package's registry.
    name : str or None
        Entry name; default ``meta["name"]``.

    Returns
    -------
    weights : `Weights`
        The new entry.

    Raises
    ------
    ValueError
        If the file is not a ``.safetensors`` weights file, its meta is
        invalid, or it has no name.
    """
    path = Path(path)
    if not isinstance(bundled, bool):
        msg = f"bundled must be True or False, got {bundled!r}"
        raise TypeError(msg)
    if path.suffix != ".safetensors":
        msg = f"registered weights must be .safetensors files, got {path.name!r}"
        raise ValueError(msg)
    meta = read_meta(path)
    name = meta.get("name") if name is None else name
    if not isinstance(name, str) or not name or name == DEFAULT:
        msg = (f"{path} has no usable meta['name'] ({name!r}); pass name=... "
               f"(any string but {DEFAULT!r})")
        raise ValueError(msg)
    registry_path = Path(_REGISTRY_PATH if registry_path is None else registry_path)
    if registry_path.exists():
        registry = _read_registry(registry_path)
    else:
        registry = {"format_version": _REGISTRY_FORMAT, "default": "rbim-lite", "models": {}}
    entry = {"filename": path.name, "sha256": sha256sum(path), "bundled": bundled,
             "meta": meta}
    weights = _entry_to_weights(name, entry, registry_path)
    reused = [other for other, old in registry["models"].items()
              if old.get("filename") == path.name and old.get("sha256") != entry["sha256"]]
    if reused:
        # Caches and mirrors keyed by file name would then hold a file with the old hash.
        log.warning("file name %s was registered before (as %s) with another sha256; "
                    "caches holding the old file will refuse it. Give retrained weights a "
                    "new file name, e.g. %s-v2.safetensors.", path.name, reused, path.stem)
    registry["models"][name] = entry
    registry["models"] = dict(sorted(registry["models"].items()))
    text = json.dumps(registry, indent=2, allow_nan=False) + "\n"
    tmp = _atomic_target(registry_path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, registry_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("registered weights %r (%s, sha256 %s) in %s", name, path.name, entry["sha256"],
             registry_path)
    return weights


# ------------------------------------------------------------------------- loading


def resolve_device(device):
    """
    Pick the torch device.

    Parameters
    ----------
    device : None, str or `torch.device`
        ``None`` picks CUDA when available, else the CPU.

    Returns
    -------
    device : `torch.device`

    Raises
    ------
    RuntimeError
        If CUDA is requested but not available.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        msg = f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {device!r} ({exc})"
        raise ValueError(msg) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = (f"device={str(device)!r} was requested but torch.cuda.is_available() is False "
               f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use device='cpu', "
               "or device=None to pick CUDA only when a GPU is present")
        raise RuntimeError(msg)
    return device


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
               f"meta['architecture'] ({'; '.join(parts)}). The meta was not written "
               "with these weights: re-save them with save_weights(path, state_dict, meta) "
               "using the training config.")
        raise ValueError(msg)


def _resolve_source(model):
    """Return (path, name or None, expected sha256 or None) for load_model's argument."""
    if isinstance(model, Weights) or model is None:
        return model if model is not None else get_weights(None), None
    if isinstance(model, str):
        registry = _read_registry()
        is_path_like = (os.sep in model or "/" in model
                        or model.lower().endswith((".safetensors", ".pt")))
        if model == DEFAULT or model in registry["models"] or not is_path_like:
            return get_weights(model), None
        return None, Path(model)
    if isinstance(model, os.PathLike):
        return None, Path(model)
    msg = (f"model must be None (the default model), a registered name, a Weights entry "
           f"or a path to a weights file, got {type(model).__name__}")
    raise TypeError(msg)


def load_model(model=None, *, device="cpu", progressbar=None):
    """
    Build a network from its weights file, ready for inference.

    The architecture is built from ``meta["architecture"]``, then the state
    dict is loaded with strict key checking; half-precision tensors are cast
    to float32. Loading never executes pickled code.

    Parameters
    ----------
    model : None, str, `Weights` or os.PathLike
        None for the default model, a registered name, a registry entry, or a
        local ``.safetensors`` file (or legacy ``.pt`` file with
        ``{"state_dict": ..., "meta": ...}``). A string is a registered name
        unless it contains a path separator or ends in ``.safetensors``/``.pt``.
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
        invalid metadata, or tensors that do not fit the architecture.
    WeightsHashError, WeightsDownloadError
        See `fetch_weights`.
    FileNotFoundError
        If a local file does not exist.

    Examples
    --------
    >>> from astro_starglx.weights import load_model
    >>> loaded = load_model()                       # doctest: +SKIP
    >>> loaded.meta["bands"]                        # doctest: +SKIP
    ['NUV', 'u', 'g', 'r', 'i', 'z', 'y']
    """
    device = resolve_device(device)
    weights, path = _resolve_source(model)
    if weights is not None:
        path = fetch_weights(weights, progressbar=progressbar)
        sha256 = weights.sha256
    else:
        if not path.is_file():
            msg = f"model file {path} does not exist (model={model!r})"
            raise FileNotFoundError(msg)
        sha256 = sha256sum(path)
    meta, state = _read_file(path, tensors=True)
    if weights is not None:
        name = weights.name
    else:
        name = meta.get("name") or path.stem
    try:
        network = build_model(meta["architecture"])
    except (KeyError, TypeError, ValueError) as err:
        msg = (f"weights file {path}: cannot build the network described by "
               f"meta['architecture'] ({type(err).__name__}: {err})")
        raise ValueError(msg) from err
    state = {key: value.float() if value.is_floating_point() else value
             for key, value in state.items()}
    _check_state_dict(network, state, path)
    network.load_state_dict(state, strict=True)
    network.to(device).eval()
    log.debug("loaded weights %r from %s onto %s", name, path, device)
    return LoadedModel(network=network, meta=meta, sha256=sha256, name=name, path=path)
