"""
The one normalisation shared by training and inference (numpy only).

Raw inputs (`astro_starglx.features.SourceInputs`) become network inputs:

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

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["compute_normalization", "prepare_inputs"]

#: Keys of a normalisation dict.
NORMALIZATION_KEYS = ("softening", "feature_mean", "feature_std")


def _check_array(value, name, ndim, shape_text):
    arr = np.asarray(value)
    if arr.ndim != ndim:
        msg = f"{name} must have shape {shape_text}, got shape {arr.shape}"
        raise ValueError(msg)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        msg = f"{name} must hold numbers, got dtype {arr.dtype}"
        raise ValueError(msg)
    return arr


def _check_normalization(normalization, n_bands, n_features):
    """Validated (softening, mean (C, F) float32, std (C, F) float32)."""
    fix = "use the dict from compute_normalization() stored in meta['normalization']"
    if not isinstance(normalization, Mapping):
        msg = (
            f"normalization must be a dict with keys {list(NORMALIZATION_KEYS)}, got "
            f"{type(normalization).__name__}; {fix}"
        )
        raise ValueError(msg)
    missing = [key for key in NORMALIZATION_KEYS if key not in normalization]
    if missing:
        msg = (
            f"normalization lacks the keys {missing} (has {sorted(normalization)}); {fix}"
        )
        raise ValueError(msg)
    try:
        softening = float(normalization["softening"])
    except (TypeError, ValueError):
        softening = math.nan
    if not math.isfinite(softening) or softening <= 0:
        msg = (
            "normalization['softening'] must be a positive number of noise sigmas, got "
            f"{normalization['softening']!r}; {fix}"
        )
        raise ValueError(msg)
    arrays = []
    for key in ("feature_mean", "feature_std"):
        try:
            arr = np.asarray(normalization[key], dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape != (n_bands, n_features):
            got = "non-numeric values" if arr is None else f"shape {arr.shape}"
            msg = (
                f"normalization[{key!r}] must be a nested list of shape (C, F) = "
                f"({n_bands}, {n_features}) matching the features, got {got}; {fix} "
                "for the same bands and feature names"
            )
            raise ValueError(msg)
        if not np.all(np.isfinite(arr)):
            msg = f"normalization[{key!r}] must be finite; {fix}"
            raise ValueError(msg)
        arrays.append(arr)
    mean, std = arrays
    if np.any(std <= 0):
        msg = f"normalization['feature_std'] must be positive everywhere; {fix}"
        raise ValueError(msg)
    return softening, mean.astype(np.float32), std.astype(np.float32)


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
    normalization : dict
        ``{"softening": float, "feature_mean": (C, F) nested list,
        "feature_std": (C, F) nested list}`` (`compute_normalization`).

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
    softening, mean, std = _check_normalization(normalization, n_bands, features.shape[2])

    noise = noise.astype(np.float32)
    usable = np.isfinite(noise) & (noise > 0)
    # 1 / (noise * softening), 0 where the noise is unusable: those stamps
    # become all zeros (no warnings from a division by zero).
    inv = np.zeros_like(noise)
    inv[usable] = 1.0 / (noise[usable] * np.float32(softening))
    with np.errstate(invalid="ignore"):  # inf pixels x 0: NaN, then 0
        x_image = np.arcsinh(stamps.astype(np.float32) * inv[:, :, None, None])
    x_image[~np.isfinite(x_image)] = 0.0

    x_catalog = (features.astype(np.float32) - mean) / std
    x_catalog[~np.isfinite(x_catalog)] = 0.0
    return x_image, x_catalog


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
    normalization : dict
        ``{"softening": float, "feature_mean": [[...F] * C],
        "feature_std": [[...F] * C]}`` of plain Python floats (JSON ready).

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
    >>> norm["feature_mean"], norm["feature_std"]
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
    return {
        "softening": float(softening),
        "feature_mean": mean.tolist(),
        "feature_std": std.tolist(),
    }
