"""
The one normalisation shared by training and inference (numpy only).

Raw inputs (`astro_starglx.inputs.SourceInputs`) become network inputs:

- image channels: each stamp divided by its per-pixel noise (so no model
  depends on the flux scale or unit of an image) and compressed with
  ``arcsinh(s / softening)``: linear within ``softening`` noise sigmas,
  logarithmic for bright sources;
- catalog features: standardised with the training set's per-band,
  per-feature mean and standard deviation.

Every NaN (no data, not measurable) becomes 0: the sky level for images, the
training-set mean for features. The constants live in the weights metadata
under ``meta["normalization"]``, produced by `compute_normalization`.
"""

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["Normalization", "compute_normalization", "prepare_inputs"]

#: Keys of a normalisation dict.
NORMALIZATION_KEYS = ("softening", "feature_mean", "feature_std")

_FIX = "use the Normalization from compute_normalization() stored in the model's meta"


def _check_array(value, name, ndim, shape_text):
    arr = np.asarray(value)
    if arr.ndim != ndim:
        msg = f"{name} must have shape {shape_text}, got shape {arr.shape}"
        raise ValueError(msg)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        msg = f"{name} must hold numbers, got dtype {arr.dtype}"
        raise ValueError(msg)
    return arr


@dataclass(frozen=True, eq=False)
class Normalization:
    """
    The normalisation constants of a model, validated once.

    Attributes
    ----------
    softening : float
        ``arcsinh`` softening of the stamps, in noise sigmas.
    feature_mean, feature_std : `~numpy.ndarray`
        ``(C, F)`` float64 (read-only): per-band, per-feature mean and
        standard deviation of the training set's features.
    """

    softening: float
    feature_mean: np.ndarray
    feature_std: np.ndarray

    def __post_init__(self):
        try:
            softening = float(self.softening)
        except (TypeError, ValueError):
            softening = math.nan
        if not math.isfinite(softening) or softening <= 0:
            msg = (f"normalization softening must be a positive number of noise sigmas, got "
                   f"{self.softening!r}; {_FIX}")
            raise ValueError(msg)
        object.__setattr__(self, "softening", softening)
        arrays = {}
        for key in ("feature_mean", "feature_std"):
            try:
                arr = np.array(getattr(self, key), dtype=np.float64)
            except (TypeError, ValueError):
                arr = None
            if arr is None or arr.ndim != 2:
                got = "non-numeric values" if arr is None else f"shape {arr.shape}"
                msg = (f"normalization {key} must be a (C, F) table of numbers (bands x "
                       f"features), got {got}; {_FIX}")
                raise ValueError(msg)
            if not np.all(np.isfinite(arr)):
                msg = f"normalization {key} must be finite; {_FIX}"
                raise ValueError(msg)
            arr.flags.writeable = False
            arrays[key] = arr
        if arrays["feature_mean"].shape != arrays["feature_std"].shape:
            msg = (f"normalization feature_mean {arrays['feature_mean'].shape} and feature_std "
                   f"{arrays['feature_std'].shape} must have the same (C, F) shape; {_FIX}")
            raise ValueError(msg)
        if np.any(arrays["feature_std"] <= 0):
            msg = f"normalization feature_std must be positive everywhere; {_FIX}"
            raise ValueError(msg)
        for key, arr in arrays.items():
            object.__setattr__(self, key, arr)

    @classmethod
    def from_dict(cls, value):
        """A `Normalization` from ``{"softening", "feature_mean", "feature_std"}``."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            msg = (f"normalization must be a dict with keys {list(NORMALIZATION_KEYS)}, got "
                   f"{type(value).__name__}; {_FIX}")
            raise ValueError(msg)
        missing = [key for key in NORMALIZATION_KEYS if key not in value]
        if missing:
            msg = f"normalization lacks the keys {missing} (has {sorted(value)}); {_FIX}"
            raise ValueError(msg)
        return cls(**{key: value[key] for key in NORMALIZATION_KEYS})

    def to_dict(self):
        """JSON-ready ``{"softening": float, "feature_mean": [[...]], "feature_std": [[...]]}``."""
        return {"softening": self.softening, "feature_mean": self.feature_mean.tolist(),
                "feature_std": self.feature_std.tolist()}

    @property
    def shape(self):
        """``(C, F)``: bands x features."""
        return self.feature_mean.shape

    @functools.cached_property
    def _float32(self):
        # Cast once, not on every batch.
        return self.feature_mean.astype(np.float32), self.feature_std.astype(np.float32)

    def __eq__(self, other):
        if not isinstance(other, Normalization):
            return NotImplemented
        return (self.softening == other.softening
                and np.array_equal(self.feature_mean, other.feature_mean)
                and np.array_equal(self.feature_std, other.feature_std))

    __hash__ = None


def prepare_inputs(stamps, noise, features, normalization):
    """
    Turn raw inputs into network inputs.

    Parameters
    ----------
    stamps : array_like, shape (N, C, H, W)
        Background-subtracted stamps in image units, NaN where no data.
    noise : array_like, shape (N, C)
        Per-pixel noise of each stamp, image units. A non-positive or
        non-finite noise makes that stamp all zeros.
    features : array_like, shape (N, C, F)
        Catalog features, NaN where not measurable.
    normalization : `Normalization` or dict
        From `compute_normalization` (a dict with the same keys is validated
        and converted, once per call).

    Returns
    -------
    x_image : `~numpy.ndarray`, shape (N, C, H, W), float32
        ``arcsinh(stamps / noise / softening)``, non-finite values
        replaced by 0.
    x_catalog : `~numpy.ndarray`, shape (N, C, F), float32
        ``(features - mean) / std``, non-finite values replaced by 0.

    Raises
    ------
    ValueError
        If the shapes disagree or ``normalization`` is malformed.

    Examples
    --------
    >>> import numpy as np
    >>> from astro_starglx.preprocess import prepare_inputs
    >>> norm = {"softening": 1.0, "feature_mean": [[1.0]], "feature_std": [[2.0]]}
    >>> x_image, x_catalog = prepare_inputs(np.zeros((1, 1, 3, 3)), [[1.0]], [[[5.0]]], norm)
    >>> x_image.shape, x_catalog.tolist()
    ((1, 1, 3, 3), [[[2.0]]])
    """
    stamps = _check_array(stamps, "stamps", 4, "(N, C, H, W)")
    noise = _check_array(noise, "noise", 2, "(N, C)")
    features = _check_array(features, "features", 3, "(N, C, F)")
    n, n_bands = stamps.shape[:2]
    if noise.shape != (n, n_bands):
        msg = f"noise must have shape (N, C) = {(n, n_bands)} to match stamps, got {noise.shape}"
        raise ValueError(msg)
    if features.shape[:2] != (n, n_bands):
        msg = (
            f"features must have shape (N, C, F) with (N, C) = {(n, n_bands)} to match "
            f"stamps, got {features.shape}"
        )
        raise ValueError(msg)
    normalization = Normalization.from_dict(normalization)
    if normalization.shape != (n_bands, features.shape[2]):
        msg = (f"normalization is for (C, F) = {normalization.shape} (bands x features) but "
               f"the features have {(n_bands, features.shape[2])}; {_FIX} for the same bands "
               "and feature names")
        raise ValueError(msg)
    softening = normalization.softening
    mean, std = normalization._float32

    noise = noise.astype(np.float32)
    usable = np.isfinite(noise) & (noise > 0)
    # 1 / (noise * softening), 0 where the noise is unusable: those stamps
    # become all zeros (no warnings from a division by zero).
    inv = np.zeros_like(noise)
    inv[usable] = 1.0 / (noise[usable] * np.float32(softening))
    x_image = _scaled_arcsinh(stamps, inv)

    x_catalog = (features.astype(np.float32) - mean) / std
    x_catalog[~np.isfinite(x_catalog)] = 0.0
    return x_image, x_catalog


#: Elements per block of `_scaled_arcsinh` (its four float32 scratch arrays
#: are 256 KiB each): 2**16 was the fastest of 2**12, 2**14 and 2**16
#: (48 ms against 70 ms at 2**14 for 1024 x 7 x 25 x 25 values).
_BLOCK = 1 << 16
_LN2 = np.float32(math.log(2.0))


def _scaled_arcsinh(stamps, inv):
    """
    ``arcsinh(stamps * inv[:, :, None, None])`` in float32, non-finite -> 0.

    numpy's float32 ``arcsinh`` runs one element at a time on CPUs without
    AVX-512 (it was 1/4 of a classify() call), its ``log1p`` too; ``log``,
    ``sqrt`` and the arithmetic are vectorised. So: ``arcsinh(a) =
    log1p(u)`` with ``u = a + a**2 / (1 + sqrt(1 + a**2))`` (no cancellation
    for small ``a``), and ``log1p(u) = log(w) * u / (w - 1)`` with ``w = 1 +
    u`` (Goldberg's rounding-compensated form, exact to a few float32 ulp);
    ``a < 1e-4``: ``a``; ``a > 4096``: ``log(2 a)``, where ``a**2`` could
    overflow. Measured against float64 ``arcsinh`` on 4.5 M values from
    1e-5 to 1e38: relative error <= 3.2e-7 (numpy's float32: 1.3e-7), and
    `prepare_inputs` of 1024 stamps of 7 x 25 x 25 pixels took 60 ms
    instead of 190 ms (2-core AVX2 EPYC), in blocks of `_BLOCK` elements so
    that the temporaries stay in cache. ``torch.asinh`` is no faster than
    numpy's (arcsinh alone on such a batch, one thread: torch 63 ms, numpy
    69 ms, this 27 ms), so no library does it better here.
    """
    n, n_bands = stamps.shape[:2]
    plane = int(np.prod(stamps.shape[2:], dtype=np.int64))
    src = stamps.reshape(n * n_bands, plane)
    scale = inv.reshape(n * n_bands, 1)
    result = np.empty(stamps.shape, dtype=np.float32)
    out = result.reshape(n * n_bands, plane)
    rows = max(1, _BLOCK // max(plane, 1))
    size = rows * plane
    x, a, s, w = (np.empty(size, dtype=np.float32) for _ in range(4))
    small, big = np.empty(size, dtype=bool), np.empty(size, dtype=bool)
    # inf pixels x 0 noise weight: NaN; a**2 beyond float32: inf (both handled)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, n * n_bands, rows):
            stop = min(start + rows, n * n_bands)
            k = (stop - start) * plane
            xb, ab, sb, wb, o = x[:k], a[:k], s[:k], w[:k], out[start:stop].reshape(-1)
            # float32 product of the float32 pixels, as (stamps.astype(float32) * inv)
            np.multiply(src[start:stop], scale[start:stop], out=xb.reshape(stop - start, plane),
                        dtype=np.float32, casting="unsafe")
            np.abs(xb, out=ab)
            np.multiply(ab, ab, out=wb)
            np.add(wb, np.float32(1.0), out=sb)
            np.sqrt(sb, out=sb)
            sb += np.float32(1.0)
            np.divide(wb, sb, out=sb)
            sb += ab  # u
            np.add(sb, np.float32(1.0), out=wb)  # w
            np.log(wb, out=o)
            wb -= np.float32(1.0)
            np.divide(sb, wb, out=sb)
            o *= sb
            np.less(ab, np.float32(1e-4), out=small[:k])
            np.copyto(o, ab, where=small[:k])
            np.greater(ab, np.float32(4096.0), out=big[:k])
            if big[:k].any():
                hit = big[:k]
                o[hit] = np.log(ab[hit]) + _LN2
            np.copysign(o, xb, out=o)
            np.isfinite(o, out=small[:k])
            np.copyto(o, np.float32(0.0), where=~small[:k])
    return result


def compute_normalization(features, *, softening=3.0, min_std=1e-3):
    """
    Normalisation constants from a training set's features.

    Parameters
    ----------
    features : array_like, shape (N, C, F)
        Training-set catalog features; NaN values are ignored.
    softening : float, optional
        Image softening in noise sigmas for `prepare_inputs`.
    min_std : float, optional
        Floor of the standard deviations, so that a constant (or one-valued)
        feature does not divide by zero; a feature with no finite value at
        all gets mean 0 and standard deviation 1.

    Returns
    -------
    normalization : `Normalization`
        ``to_dict()`` gives the JSON form stored in the weights meta.

    Raises
    ------
    ValueError
        If ``features`` is not (N, C, F), or ``softening`` or ``min_std`` is
        not a positive number.

    Examples
    --------
    >>> import numpy as np
    >>> from astro_starglx.preprocess import compute_normalization
    >>> norm = compute_normalization(np.array([[[1.0]], [[3.0]], [[np.nan]]]))
    >>> norm.feature_mean.tolist(), norm.feature_std.tolist()
    ([[2.0]], [[1.0]])
    """
    features = _check_array(features, "features", 3, "(N, C, F)").astype(np.float64)
    for name, value in (("softening", softening), ("min_std", min_std)):
        try:
            ok = math.isfinite(float(value)) and float(value) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            msg = f"{name} must be a positive number, got {value!r}"
            raise ValueError(msg)
    finite = np.isfinite(features)
    count = finite.sum(axis=0)
    values = np.where(finite, features, 0.0)
    # Hand-written rather than np.nanmean / np.nanstd, which warn on the
    # all-NaN columns of a band that is missing from every training field.
    safe = np.maximum(count, 1)
    mean = values.sum(axis=0) / safe
    var = (np.where(finite, features - mean, 0.0) ** 2).sum(axis=0) / safe
    std = np.maximum(np.sqrt(var), float(min_std))
    mean[count == 0] = 0.0
    std[count == 0] = 1.0
    return Normalization(softening=float(softening), feature_mean=mean, feature_std=std)
