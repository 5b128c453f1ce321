"""
The weights metadata: one frozen `ModelMeta`, validated once (no torch, no astropy).

Every released model is a ``.safetensors`` file whose header holds this
metadata as JSON under the key ``"astro_starglx"``. Training writes it,
inference reads it, and nothing about preprocessing is hard-coded anywhere
else: bands and their order, stamp size, pixel scale, feature names and
order, the normalisation constants, class names, decision threshold,
probability temperature, the architecture config that rebuilds the network,
the training recipe and the measured metrics.

The architecture configs of the named model families (`MODEL_CONFIGS`) and
their validation live here too: they are part of the metadata schema, and
`astro_starglx.model` builds networks from them.
"""

import copy
import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from .preprocess import Normalization

__all__ = ["ModelMeta", "MODEL_CONFIGS", "validate_architecture", "META_KEY"]

#: Key of the metadata in a ``.safetensors`` header.
META_KEY = "astro_starglx"

_MODES = ("fused", "image", "catalog")
_ENCODERS = ("resnet50", "resnet18", "resnet34", "resnet")
_ARCH_REQUIRED = ("mode", "n_bands", "n_features", "n_classes", "image_encoder",
                  "catalog_encoder", "head")

#: Architecture configs of the named model families. ``n_bands``,
#: ``n_features`` and ``stamp_size`` are filled in from the data at training
#: time and stored in the weights meta with the rest.
MODEL_CONFIGS = {
    # Paper-faithful: torchvision ResNet-50 (Bottleneck [3, 4, 6, 3]) with a
    # stride-1 3x3 stem and no max-pool, because CSST stamps are ~25-33 px
    # rather than 224 px: the standard 7x7/2 stem + pool would shrink a 25 px
    # stamp to 7 px before the first residual stage.
    "rbim-resnet50": {
        "mode": "fused",
        "image_encoder": {"name": "resnet50", "stem": "small"},
        "catalog_encoder": {"hidden_size": 128, "num_layers": 2, "dropout": 0.1},
        "head": {"hidden": 256, "dropout": 0.2},
    },
    # Compact CPU model: three narrow BasicBlock stages.
    "rbim-lite": {
        "mode": "fused",
        "image_encoder": {"name": "resnet", "block": "basic", "layers": [1, 1, 1],
                          "widths": [16, 32, 64], "stem": "small"},
        "catalog_encoder": {"hidden_size": 32, "num_layers": 1, "dropout": 0.0},
        "head": {"hidden": 64, "dropout": 0.1},
    },
}


def validate_architecture(config):
    """
    Check an architecture config and fill defaults.

    Parameters
    ----------
    config : dict
        Architecture config (``ModelMeta.architecture``).

    Returns
    -------
    config : dict
        A validated deep copy.

    Raises
    ------
    TypeError
        If ``config`` is not a dict.
    ValueError
        If a key is missing or has an unusable value.
    """
    if not isinstance(config, dict):
        msg = f"config must be a dict (meta['architecture']), got {type(config).__name__}"
        raise TypeError(msg)
    config = copy.deepcopy(config)
    config.setdefault("n_classes", 2)
    missing = [key for key in _ARCH_REQUIRED if key not in config]
    if missing:
        msg = (f"architecture config is missing {missing}; it has {sorted(config)}. "
               "Rebuild the weights with `astro-starglx train` or fix meta['architecture'].")
        raise ValueError(msg)
    if config["mode"] not in _MODES:
        msg = f"architecture mode must be one of {_MODES}, got {config['mode']!r}"
        raise ValueError(msg)
    for key in ("n_bands", "n_features", "n_classes"):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            msg = f"architecture {key} must be a positive int, got {value!r}"
            raise ValueError(msg)
    encoder = config["image_encoder"]
    name = encoder.get("name") if isinstance(encoder, dict) else None
    if name not in _ENCODERS:
        msg = f"image_encoder name must be one of {_ENCODERS}, got {name!r}"
        raise ValueError(msg)
    return config


def _is_number(value):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _names(value):
    """A tuple of distinct non-empty strings, or None."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        return None
    if not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
        return None
    return tuple(value)


def _strict_json(value, where):
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False,
                                     default=_json_default))
    except ValueError as err:
        msg = (f"{where} must be strict JSON ({err}); write undefined metrics as None, "
               "not NaN or inf")
        raise ValueError(msg) from err


def _json_default(value):
    # numpy scalars and arrays -> plain numbers and lists
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    msg = f"meta values must be JSON-serialisable, got {type(value).__name__}: {value!r}"
    raise TypeError(msg)


@dataclass(frozen=True)
class ModelMeta:
    """
    Everything a weights file says about how to feed and read its network.

    Build it with `ModelMeta.from_dict` (or `from_json`), which validates
    every field once and lists every problem found; `to_dict` / `to_json`
    give the form stored in a file's header.

    Attributes
    ----------
    bands : tuple of str
        Band names in the order of the channel axis C.
    stamp_size : int
        Stamp side in pixels (odd).
    pixel_scale : float
        Arcsec per pixel the model was trained at.
    feature_names : tuple of str
        Per-band catalog features, in the order of the feature axis F.
    normalization : `~astro_starglx.preprocess.Normalization`
        Input normalisation constants, (C, F).
    architecture : dict
        `~astro_starglx.model.build_model` config, consistent with the bands,
        features and classes.
    threshold : float
        Decision threshold on ``p_galaxy`` in (0, 1).
    recipe : dict
        How the weights were made: at least ``command`` (str) and
        ``data_seed`` (int or None, or a list of ints for a model trained on
        several data sets).
    name : str or None
        Model name (the registry name of released models).
    class_names : tuple of str
        Classes in the order of the network's outputs.
    temperature : float
        Softmax temperature fitted on validation data (probability calibration).
    allow_missing_bands : bool
        Trained with band dropout: bands may be absent from the images.
    metrics : dict
        Measured metrics (JSON values).
    psf : dict or None
        For PSF-aware models: ``nominal_fwhm`` (``{band: arcsec}``, the
        fallback when a band's PSF cannot be measured) and ``fwhm_range``
        (``{band: [low, high]}`` arcsec, the PSF FWHMs seen in training:
        sources outside it are flagged ``OUT_OF_RANGE``); for models that
        read ``psf_gamma``, ``gamma_range`` (``{band: [low, high]}``, the
        profile shapes seen in training, `~astro_starglx.psf.PSFEstimate.gamma`:
        a band whose fitted shape lies outside flags every source
        ``OUT_OF_RANGE``). None for models that do not read the PSF.
    thresholds : dict or None
        Magnitude-dependent decision thresholds, which replace ``threshold``
        for sources whose magnitude is measured: ``feature`` and ``band``
        name the catalog feature that sets the bin (e.g. ``"mag"`` in
        ``"r"``), ``edges`` its increasing bin edges and ``values`` the
        ``len(edges) + 1`` thresholds (below the first edge, between edges,
        at or above the last). See `threshold_for`. None: one threshold.
    star_fraction : float or None
        The prior fraction of stars that ``p_galaxy`` assumes: 0.5 for
        models trained with a class-balanced loss (every released model),
        else the training data's. `prior_star_fraction` falls back to the
        training recipe when a file predates this field.
    feature_scale : float
        The catalog features' angular scale relative to their definition in
        `astro_starglx.features`: the apertures and the moment weight are
        ``feature_scale`` times wider (in arcsec) and the angular features
        (``radius``, ``psf_fwhm`` and ``radius_excess``) are divided by it.
        1 for every model trained on CSST's pixels; a model fine-tuned on
        another survey (`astro_starglx.fine_tune`) measures its features on
        as many of that survey's pixels as the base model's apertures held
        of its own, like the stamps: ``feature_scale`` is that survey's pixel
        scale over the base model's (earlier fine-tuned files: its PSF FWHM
        over the base model's; either is read as recorded).
    depth : dict or None
        ``{band: AB magnitude}``: the 5-sigma point-source depth of the
        training data's nominal field in each band, measured as
        `~astro_starglx.background.point_source_depth` measures an image.
        On images of another pixel scale, `~StarGalaxyClassifier.classify`
        shifts the magnitudes by the difference of the depths (its
        ``match_depth``). None: not recorded (no depth matching).
    extra : dict
        Keys this version does not know, kept so that files round-trip.
    """

    bands: tuple
    stamp_size: int
    pixel_scale: float
    feature_names: tuple
    normalization: Normalization
    architecture: dict
    threshold: float
    recipe: dict
    name: str | None = None
    class_names: tuple = ("star", "galaxy")
    temperature: float = 1.0
    allow_missing_bands: bool = False
    metrics: dict = field(default_factory=dict)
    psf: dict | None = None
    thresholds: dict | None = None
    star_fraction: float | None = None
    feature_scale: float = 1.0
    depth: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, meta):
        """
        Validate a metadata dict (as stored in a file) and build a `ModelMeta`.

        Parameters
        ----------
        meta : dict or `ModelMeta`

        Returns
        -------
        meta : `ModelMeta`

        Raises
        ------
        TypeError
            If ``meta`` is not a dict or holds values JSON cannot store.
        ValueError
            If keys are missing or values unusable (NaN included); the
            message lists every problem found.
        """
        if isinstance(meta, cls):
            return meta
        if not isinstance(meta, dict):
            msg = f"meta must be a dict (the weights metadata), got {type(meta).__name__}"
            raise TypeError(msg)
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [key for key in required + ["class_names", "allow_missing_bands", "metrics"]
                   if key not in meta]
        if missing:
            msg = (f"weights meta is missing {missing}; it has {sorted(meta)}. "
                   "See 'Weights metadata' in docs/internals.rst for the schema.")
            raise ValueError(msg)
        meta = _strict_json(meta, "meta")
        problems = []
        values = _validated_values(meta, problems)
        if problems:
            msg = "invalid weights meta:\n  - " + "\n  - ".join(problems)
            raise ValueError(msg)
        # "extra" is not a key of the stored form: a file key of that name is kept too.
        known = _FIELD_NAMES - {"extra"}
        values["extra"] = {k: v for k, v in meta.items() if k not in known}
        return cls(**values)

    @classmethod
    def from_json(cls, text):
        """`from_dict` of a JSON string; ValueError if it is not JSON."""
        try:
            meta = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            msg = f"weights meta is not JSON ({err})"
            raise ValueError(msg) from err
        return cls.from_dict(meta)

    def to_dict(self):
        """The JSON-ready dict stored in a file (extra keys included)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("extra", "normalization")}
        out["normalization"] = self.normalization.to_dict()
        for key in ("psf", "thresholds", "star_fraction", "depth"):  # unset: as before it existed
            if out[key] is None:
                del out[key]
        if out["feature_scale"] == 1.0:
            del out["feature_scale"]
        out.update(self.extra)
        return _strict_json(out, "meta")

    def to_json(self):
        """`to_dict` as a compact JSON string with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    def replace(self, **changes):
        """
        A validated copy with some fields changed (`dataclasses.replace` + checks).

        Raises
        ------
        TypeError
            If a keyword is not a field name (a typo would otherwise be kept
            silently as an unknown key), or ``extra`` is not a dict.
        ValueError
            If the new values are invalid (as in `from_dict`), or ``extra``
            holds field names.
        """
        unknown = sorted(set(changes) - _FIELD_NAMES)
        if unknown:
            msg = (f"replace() got unknown field(s) {unknown}; ModelMeta fields are "
                   f"{sorted(_FIELD_NAMES)}")
            raise TypeError(msg)
        extra = changes.pop("extra", self.extra)
        if not isinstance(extra, dict):
            msg = f"extra must be a dict of unknown keys, got {type(extra).__name__}"
            raise TypeError(msg)
        clash = sorted(set(extra) & (_FIELD_NAMES - {"extra"}))
        if clash:
            msg = f"extra must not hold ModelMeta fields {clash}; pass them as keywords"
            raise ValueError(msg)
        base = {k: v for k, v in self.to_dict().items() if k not in self.extra}
        changes = {k: (v.to_dict() if isinstance(v, Normalization) else v)
                   for k, v in changes.items()}
        return type(self).from_dict({**extra, **base, **changes})

    def threshold_for(self, value):
        """
        The decision threshold of each source from its binning feature.

        Parameters
        ----------
        value : array-like
            ``(N,)`` values of ``thresholds["feature"]`` in
            ``thresholds["band"]`` (e.g. r magnitudes); NaN where not
            measured.

        Returns
        -------
        threshold : `~numpy.ndarray`
            ``(N,)`` float: the bin's threshold, or ``threshold`` where the
            value is NaN or the model has no ``thresholds``.
        """
        value = np.asarray(value, dtype=np.float64)
        out = np.full(value.shape, float(self.threshold))
        if self.thresholds is None:
            return out
        known = np.isfinite(value)
        index = np.searchsorted(np.asarray(self.thresholds["edges"], dtype=np.float64),
                                value[known], side="right")
        out[known] = np.asarray(self.thresholds["values"], dtype=np.float64)[index]
        return out

    def source_thresholds(self, features):
        """
        The decision threshold of each source from its extracted features.

        Parameters
        ----------
        features : array-like
            ``(N, C, F)`` features in ``bands`` and ``feature_names`` order
            (raw, as `~astro_starglx.inputs.extract_inputs` measures them).

        Returns
        -------
        threshold : `~numpy.ndarray`
            ``(N,)`` float: `threshold_for` of ``thresholds["feature"]`` in
            ``thresholds["band"]``, or ``threshold`` for every source of a
            model without ``thresholds``.
        """
        features = np.asarray(features)
        if self.thresholds is None:
            return np.full(len(features), float(self.threshold))
        value = features[:, list(self.bands).index(self.thresholds["band"]),
                         list(self.feature_names).index(self.thresholds["feature"])]
        return self.threshold_for(value)

    @property
    def prior_star_fraction(self):
        """
        The star fraction that ``p_galaxy`` assumes, or None if unknown.

        `star_fraction` when the file records it; otherwise 0.5 if the
        training recipe used a class-balanced loss (``recipe["config"]
        ["class_balance"]``: each class then weighs the same, whatever the
        data held), else the fraction of stars in the simulated data set of
        the recipe (``recipe["dataset"]``'s ``n_stars`` and ``n_galaxies``).
        """
        if self.star_fraction is not None:
            return float(self.star_fraction)
        config = self.recipe.get("config")
        if isinstance(config, dict) and config.get("class_balance") is True:
            return 0.5
        data = self.recipe.get("dataset")
        if isinstance(data, dict):
            n_star, n_gal = data.get("n_stars"), data.get("n_galaxies")
            if _is_number(n_star) and _is_number(n_gal) and n_star > 0 and n_gal > 0:
                return float(n_star) / float(n_star + n_gal)
        return None

    @property
    def n_bands(self):
        """Number of bands (C)."""
        return len(self.bands)


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(ModelMeta))


def _valid_psf(psf, bands):
    if not isinstance(psf, dict):
        return False
    nominal, ranges = psf.get("nominal_fwhm"), psf.get("fwhm_range")
    if not isinstance(nominal, dict) or not isinstance(ranges, dict):
        return False
    for band in bands:
        value, limits = nominal.get(band), ranges.get(band)
        if not (_is_number(value) and value > 0):
            return False
        if not (isinstance(limits, list) and len(limits) == 2
                and all(_is_number(v) and v > 0 for v in limits) and limits[0] < limits[1]):
            return False
    if "gamma_range" in psf:
        shapes = psf["gamma_range"]
        if not isinstance(shapes, dict):
            return False
        for band in bands:
            limits = shapes.get(band)
            if not (isinstance(limits, list) and len(limits) == 2
                    and all(_is_number(v) and -0.5 <= v <= 0.9 for v in limits)
                    and limits[0] < limits[1]):
                return False
    return True


def _valid_thresholds(thresholds, bands, features):
    if not (isinstance(thresholds, dict)
            and set(thresholds) == {"feature", "band", "edges", "values"}
            and thresholds["feature"] in features and thresholds["band"] in bands):
        return False
    edges, values = thresholds["edges"], thresholds["values"]
    if not (isinstance(edges, list) and isinstance(values, list) and edges
            and len(values) == len(edges) + 1):
        return False
    if not all(_is_number(e) and math.isfinite(e) for e in edges) \
            or any(b <= a for a, b in zip(edges, edges[1:])):
        return False
    return all(_is_number(v) and 0 < v < 1 for v in values)


def _validated_values(meta, problems):
    """Field values of a JSON meta dict; appends every problem found to ``problems``."""
    def bad(key, expected):
        problems.append(f"{key} must be {expected}, got {meta.get(key)!r}")

    name = meta.get("name")
    if name is not None and not (isinstance(name, str) and name):
        bad("name", "a non-empty string")
    bands = _names(meta["bands"])
    if bands is None:
        bad("bands", "a non-empty list of distinct band names")
    size = meta["stamp_size"]
    if not (_is_int(size) and size > 0 and size % 2 == 1):
        bad("stamp_size", "a positive odd integer")
    if not (_is_number(meta["pixel_scale"]) and meta["pixel_scale"] > 0):
        bad("pixel_scale", "a positive number (arcsec per pixel)")
    features = _names(meta["feature_names"])
    if features is None:
        bad("feature_names", "a non-empty list of distinct feature names")
    classes = _names(meta["class_names"])
    if classes is None or len(classes) < 2:
        bad("class_names", "a list of at least 2 distinct class names")
    if not (_is_number(meta["threshold"]) and 0 < meta["threshold"] < 1):
        bad("threshold", "a number between 0 and 1 (exclusive)")
    temperature = meta.get("temperature", 1.0)
    if not (_is_number(temperature) and temperature > 0):
        bad("temperature", "a positive number")
    if not isinstance(meta["allow_missing_bands"], bool):
        bad("allow_missing_bands", "true or false")
    normalization = None
    try:
        normalization = Normalization.from_dict(meta["normalization"])
    except ValueError as err:
        problems.append(str(err))
    else:
        if bands and features and normalization.shape != (len(bands), len(features)):
            problems.append(f"normalization must be {len(bands)}x{len(features)} (bands x "
                            f"features), got {normalization.shape[0]}x"
                            f"{normalization.shape[1]}")
    arch = meta["architecture"]
    try:
        arch = validate_architecture(arch)
    except (TypeError, ValueError) as err:
        problems.append(f"architecture: {err}")
    else:
        for arch_key, values in (("n_bands", bands), ("n_features", features),
                                 ("n_classes", classes)):
            if values and arch[arch_key] != len(values):
                problems.append(f"architecture {arch_key}={arch[arch_key]} does not match "
                                f"the {len(values)} names given")
        if "stamp_size" in arch and arch["stamp_size"] != size:
            problems.append(f"architecture stamp_size={arch['stamp_size']} does not match "
                            f"stamp_size={size}")
    recipe = meta["recipe"]
    if not (isinstance(recipe, dict) and isinstance(recipe.get("command"), str)
            and "data_seed" in recipe
            and (recipe["data_seed"] is None or _is_int(recipe["data_seed"])
                 or (isinstance(recipe["data_seed"], list) and recipe["data_seed"]
                     and all(_is_int(v) for v in recipe["data_seed"])))):
        bad("recipe", "a dict with 'command' (str) and 'data_seed' (int, None or a list of "
                      "ints)")
    if not isinstance(meta["metrics"], dict):
        bad("metrics", "a dict (may be empty)")
    psf = meta.get("psf")
    if psf is not None and not _valid_psf(psf, bands or ()):
        bad("psf", "None or a dict with 'nominal_fwhm' {band: arcsec > 0} and 'fwhm_range' "
                   "{band: [low, high]} for every band (and optionally 'gamma_range' "
                   "{band: [low, high]} within [-0.5, 0.9])")
    thresholds = meta.get("thresholds")
    if thresholds is not None and not _valid_thresholds(thresholds, bands or (),
                                                        features or ()):
        bad("thresholds", "None or a dict with 'feature' and 'band' (names the model reads), "
                          "increasing finite 'edges' and len(edges) + 1 'values' in (0, 1)")
    star_fraction = meta.get("star_fraction")
    if star_fraction is not None and not (_is_number(star_fraction) and 0 < star_fraction < 1):
        bad("star_fraction", "None or a number between 0 and 1 (exclusive)")
    feature_scale = meta.get("feature_scale", 1.0)
    if _is_number(feature_scale) and feature_scale > 0:
        feature_scale = float(feature_scale)
    else:
        bad("feature_scale", "a finite number > 0 (1: the features as defined)")
    depth = meta.get("depth")
    if depth is not None:
        if (isinstance(depth, dict) and depth and set(depth) <= set(bands or ())
                and all(_is_number(v) for v in depth.values())):
            depth = {band: float(depth[band]) for band in (bands or ()) if band in depth}
        else:
            bad("depth", "None or a non-empty dict {band: AB magnitude} of the model's bands")
    return {"psf": psf, "thresholds": thresholds, "star_fraction": star_fraction,
            "feature_scale": feature_scale, "depth": depth,
            "bands": bands, "stamp_size": size, "pixel_scale": meta["pixel_scale"],
            "feature_names": features, "normalization": normalization, "architecture": arch,
            "threshold": meta["threshold"], "recipe": recipe, "name": name,
            "class_names": classes, "temperature": temperature,
            "allow_missing_bands": meta["allow_missing_bands"], "metrics": meta["metrics"]}
