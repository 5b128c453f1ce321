"""
The astropy edge of the package: `StarGalaxyClassifier`.

It validates a catalog and its images once, fetches the model's weights
lazily, converts sky positions through every band's own WCS, streams the
sources in bounded batches through cutouts -> features -> the one
normalisation -> the network, and returns a new `~astropy.table.Table`.
"""

import logging
import reprlib
import warnings
from collections.abc import Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import closing, nullcontext

import numpy as np
from astropy.table import MaskedColumn, Table
from astropy.utils.exceptions import AstropyUserWarning

from ._validation import (as_zeropoint, check_bool, check_catalog, check_mapping, check_nddata,
                          check_real)
from .background import image_noise_or_nan
from .cutouts import saturation_level
from .features import features_from_table
from .flags import ClassFlag
from .inputs import (blend_flags, extract_inputs, get_zeropoint, match_band_keys, model_images,
                     pixel_positions)

__all__ = ["StarGalaxyClassifier", "StarGalaxyWarning", "OUTPUT_COLUMNS"]

log = logging.getLogger(__name__)

#: Columns added by `StarGalaxyClassifier.classify`.
OUTPUT_COLUMNS = ("p_star", "p_galaxy", "class", "class_flags")

#: Default ``symmetrize`` of `StarGalaxyClassifier`. Measured with
#: ``python -m benchmarks.orientation --size 2048 --seeds 1 2`` (1,914 simulated
#: sources, 7 flips/rotations of pixels + WCS): without it, p_galaxy moves by up
#: to 0.56 (rbim-lite) / 0.63 (rbim-lite-v2) and 0.6 % of unflagged classes flip.
#: Averaging over the 8 orientations ("d4") closes the gap at 8 forwards per
#: source; the canonical pose closes it exactly at one forward (the recipe
#: trains with all 8 orientations, so the pose costs no accuracy).
SYMMETRIZE_DEFAULT = "canonical"

#: Batches whose inputs (cutouts, features, normalisation) worker threads
#: prepare ahead of the one the caller is consuming: memory holds at most
#: this many + 1 batches of inputs, whatever the catalog length.
PREFETCH_BATCHES = 2

#: Threads that each classify whole batches (inputs, then the network on
#: ``1 / CPU_BATCH_WORKERS`` of torch's threads) when the network runs on the
#: CPU. Measured on this project's 2-core AVX2 machine (``rbim-lite-v10``,
#: 10,000 sources of ``benchmarks.bench_classify``'s 4096^2 7-band field,
#: median of 4 interleaved runs): 2,924 objects/s with 2, against 2,590 with
#: 1 (one thread preparing inputs while the caller runs the network on the
#: other core, the path taken off the CPU): the network on one thread is
#: slower than the inputs, so that core was the bottleneck. 1 takes that path
#: on the CPU too. Never more than the call's thread budget
#: (`~astro_starglx.inference.thread_budget`): with one, a call runs serially.
CPU_BATCH_WORKERS = 2

#: Relative difference between an image's pixel scale and the model's above
#: which the images count as another survey's (a warning; ``match_depth``).
PIXEL_SCALE_TOLERANCE = 0.1

#: Magnitudes by which the images' 5-sigma depth may differ from the model's
#: (``meta.depth``) on its own pixels before ``classify()`` warns that the
#: zero points may be wrong. The released models' training fields spanned
#: exposures of 0.18-5 times the nominal one (about -0.9 to +0.9 mag); a zero
#: point off by 2.5 mag (25 given for 22.5) turned star recall at r < 21 on a
#: real frame from 85 % to 28 %.
DEPTH_TOLERANCE = 1.5

#: Factor by which the per-pixel noise an image's uncertainty states may
#: differ from the noise measured on its pixels before ``classify()`` warns.
#: A correct uncertainty agrees within tens of percent on a sky-limited image
#: (sources add Poisson noise to it, the measured noise is the sky's); a
#: weight map wrapped as ``StdDevUncertainty`` gave 0 % galaxy recall on a
#: real frame, without a warning.
UNCERTAINTY_TOLERANCE = 3.0


class StarGalaxyWarning(AstropyUserWarning):
    """Summary of per-source problems in one `~StarGalaxyClassifier.classify` call."""


class StarGalaxyClassifier:
    """
    Classify catalog sources as stars or galaxies from multi-band images.

    Constructing a classifier does no I/O: the weights are located, fetched
    (if needed) and verified on the first call that needs them.

    Parameters
    ----------
    model : None, str, `~astro_starglx.weights.Weights` or path-like, optional
        ``None`` for the bundled default (``rbim-lite``), a registry name
        (see ``astro-starglx weights list``), a registry entry, or a local
        ``.safetensors`` file written by ``astro-starglx train``.
    device : None, str or `torch.device`, optional
        ``None`` picks CUDA when available, else the CPU.
    batch_size : int, optional
        Sources per batch; memory use is bounded by it whatever the catalog
        length.
    threshold : float or None, optional
        ``p_galaxy`` at or above which a source is called a galaxy; ``None``
        uses the model's own from its metadata: one threshold, or one per
        r-magnitude bin (``meta.thresholds``, fitted on validation data,
        with ``meta.threshold`` for sources without a measured magnitude).
    zeropoints : dict or None, optional
        ``{band: zero point}`` AB magnitude of one image unit; overrides the
        images' ``MAGZERO`` header keywords (and the zero point of images
        in a flux density unit such as nJy or nanomaggy).
    progress : bool, optional
        Show a progress bar over batches.
    symmetrize : {"canonical", "d4", "flips", "none"} or bool, optional
        Make the classes independent of how the pixel grid lies on the sky
        (flips, transposes and 90-degree rotations of the images):
        ``"canonical"`` (the default, or ``True``) turns every stamp to a
        pose chosen from its own pixels
        (`~astro_starglx.inference.canonical_pose`) at no extra cost;
        ``"d4"`` averages the logits over the 8 orientations (8 network
        forwards), ``"flips"`` over the 4 flips; ``"none"`` (or ``False``)
        does neither, and its answers for a flipped or rotated image differ
        (``|dp_galaxy|`` up to 0.6 measured on simulated fields;
        ``benchmarks/orientation.py``). Rotations by other
        angles are not covered. Recorded in the result's ``meta``.
    precision : {"auto", "bf16", "fp32"}, optional
        Arithmetic of the network's convolutions. ``"auto"`` (the default)
        uses bfloat16 where the device runs it natively (CUDA; CPUs with
        AVX-512 BF16 or AMX: 2.6 times the network's throughput on one
        core) and float32 elsewhere; ``"fp32"`` gives the same numbers on
        every CPU. ``p_galaxy`` differs between them by bfloat16's rounding
        (tested: by less than 0.03); on the 13 conditions of the robustness
        benchmark (50,867 sources) both gave the same star and galaxy recalls
        at r <= 25 and ECEs within 1e-4. The precision used is recorded in
        the result's ``meta``.

    Examples
    --------
    >>> from astro_starglx import StarGalaxyClassifier
    >>> clf = StarGalaxyClassifier(device="cpu", batch_size=512)
    >>> clf.batch_size
    512
    """

    def __init__(self, model=None, *, device=None, batch_size=1024, threshold=None,
                 zeropoints=None, progress=False, symmetrize=SYMMETRIZE_DEFAULT,
                 precision="auto"):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            msg = f"batch_size must be a positive int, got {batch_size!r}"
            raise ValueError(msg)
        if threshold is not None and not (
                isinstance(threshold, (int, float, np.integer, np.floating))
                and not isinstance(threshold, (bool, np.bool_)) and 0.0 < threshold < 1.0):
            msg = (f"threshold must be None or a float in (0, 1), got {threshold!r}; pass the "
                   "p_galaxy at which a source becomes a galaxy, e.g. threshold=0.5, or None "
                   "for the model's own threshold")
            raise ValueError(msg)
        if zeropoints is not None and not isinstance(zeropoints, Mapping):
            msg = (f"zeropoints must be a mapping {{band: zero point}} or None, "
                   f"got {type(zeropoints).__name__}")
            raise TypeError(msg)
        if zeropoints is not None:
            zeropoints = {band: as_zeropoint(f"zeropoints[{band!r}]", value, band)
                          for band, value in zeropoints.items()}
        self.model = model
        from .inference import check_precision, check_symmetrize, resolve_device

        self.symmetrize = check_symmetrize(symmetrize)
        self.precision = check_precision(precision)

        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.threshold = None if threshold is None else float(threshold)
        self.zeropoints = None if zeropoints is None else dict(zeropoints)
        self.progress = bool(progress)
        self._loaded = None
        self._predict = None

    def __repr__(self):
        name = self.model if isinstance(self.model, str) or self.model is None \
            else getattr(self.model, "name", str(self.model))
        return (f"StarGalaxyClassifier(model={name!r}, device={str(self.device)!r}, "
                f"batch_size={self.batch_size}, symmetrize={self.symmetrize!r}, "
                f"precision={self.precision!r})")

    # -- the model ----------------------------------------------------------
    @property
    def loaded(self):
        """The `~astro_starglx.weights.LoadedModel`, loaded on first access."""
        if self._loaded is None:
            from .weights import load_model

            self._loaded = load_model(self.model, device=self.device)
            log.info("loaded model %s (sha256 %s) on %s", self._loaded.name,
                     self._loaded.sha256, self.device)
        return self._loaded

    @property
    def meta(self):
        """The model's `~astro_starglx.meta.ModelMeta` (bands, stamp size, normalisation, ...)."""
        return self.loaded.meta

    @property
    def bands(self):
        """Bands the model reads, in order."""
        return self.meta.bands

    # -- public API -----------------------------------------------------------
    def predict_proba(self, catalog, images, *, ra_column="ra", dec_column="dec",
                      coord_column=None, x_column="x", y_column="y", shared_grid=False,
                      feature_columns=None, zeropoints=None, psf=None, star_fraction=None,
                      match_depth=None, refine_positions=True):
        """
        Class probabilities for every source.

        Parameters are those of `classify`.

        Returns
        -------
        proba : `~numpy.ndarray`
            ``(N, 2)`` float32, columns in ``meta.class_names`` order
            (``star``, ``galaxy``); rows of sources off every image are NaN.
        """
        star_fraction = self._check_star_fraction(star_fraction, catalog)
        with _LibraryWarnings() as library:
            proba = self._run(catalog, images, ra_column=ra_column,
                              dec_column=dec_column, coord_column=coord_column,
                              x_column=x_column, y_column=y_column,
                              shared_grid=shared_grid, feature_columns=feature_columns,
                              zeropoints=zeropoints, psf=psf, match_depth=match_depth,
                              refine_positions=refine_positions)[0]
        if library.records:
            warnings.warn(library.summary(), StarGalaxyWarning, stacklevel=2)
        return self._apply_prior(proba, star_fraction)

    def classify(self, catalog, images, *, ra_column="ra", dec_column="dec",
                 coord_column=None, x_column="x", y_column="y", shared_grid=False,
                 feature_columns=None, zeropoints=None, psf=None, star_fraction=None,
                 match_depth=None, refine_positions=True, overwrite=False):
        """
        Classify every source of ``catalog``.

        Parameters
        ----------
        catalog : `~astropy.table.Table`
            Sources with positions: ``ra``/``dec`` columns (degrees, or
            Quantity), a `~astropy.coordinates.SkyCoord` column, or pixel
            ``x``/``y`` columns (0-based) when the bands share one pixel grid.
            A masked or non-finite position is a per-source problem: that
            row is flagged ``OFF_IMAGE`` and its probabilities are masked.
            Never modified.
        images : `~astropy.nddata.CCDData` or mapping
            One `~astropy.nddata.CCDData` (or `~astropy.nddata.NDData`) for
            a one-band model, or ``{band: CCDData}``. Every band has its own
            WCS: bands are never assumed pixel-aligned. ``mask`` (True =
            bad) and ``uncertainty`` are honoured; the zero point comes from
            ``zeropoints`` or the ``MAGZERO`` header keyword; a ``SATURATE``
            keyword (image units) sets the ``SATURATED`` flag. A band with
            no usable pixels flags its sources ``BAND_MISSING``. A FITS file
            path or an `astropy.io.fits` HDU may stand for any image (read
            with `~astro_starglx.csst_io.read_image`: memory-mapped, with
            CCDData's ``UNCERT``/``MASK`` extensions; CSST L1 files with
            their ``wht`` and ``flg`` files).
        ra_column, dec_column : str, optional
            Names of the sky position columns (degrees, or any angle unit
            the column carries). With the defaults, a catalog without
            ``ra``/``dec`` is read from ``RA``/``DEC`` (any case),
            ``RA_deg``/``DEC_deg``, ``RA_ICRS``/``DE_ICRS``,
            ``RAJ2000``/``DEJ2000`` or SExtractor's ``ALPHA_J2000``/
            ``DELTA_J2000`` (all pairs: `~astro_starglx.inputs.SKY_COLUMN_ALIASES`).
        coord_column : str or None, optional
            Name of a `~astropy.coordinates.SkyCoord` column; ``None`` uses
            one if the table has exactly one.
        x_column, y_column : str, optional
            Names of the pixel position columns, used when ``shared_grid`` is
            True or when the catalog has no sky positions and ``images`` is a
            single image.
        shared_grid : bool, optional
            The caller asserts that all bands share one pixel grid: positions
            come from ``x_column``/``y_column`` for every band.
        feature_columns : dict or None, optional
            Read the catalog features from table columns instead of measuring
            them on the stamps: ``{feature: "column_{band}"}`` for every
            feature name in ``meta.feature_names``, measured as the model
            defines them (`astro_starglx.features`, at its
            ``meta.feature_scale``: a model fine-tuned on another pixel
            scale warns, since catalog columns rarely are).
        zeropoints : dict or None, optional
            ``{band: AB zero point}`` of the images (the AB magnitude of one
            image unit); overrides the constructor's ``zeropoints`` and the
            ``MAGZERO`` header keywords. Images in a flux density unit
            (``nJy``, ``uJy``, ``nanomaggy``) without those keywords need
            none.
        psf : float, Quantity, array, PSF model or dict, optional
            The PSF per band for PSF-aware models: a FWHM in arcsec (or an
            angle Quantity), a PSF image, or a photutils ``ImagePSF``; one
            value for all bands or ``{band: value}``. Bands without one use
            the header (``PSFFWHM``, ``SEEING``, ...), else the PSF measured
            from the catalog's own point sources (`astro_starglx.psf`).
            What was used is reported in the result's meta.
        star_fraction : float, array-like or None, optional
            The prior fraction of stars among the sources of this field, in
            (0, 1): one value, or one per catalog row (e.g. by magnitude).
            Galactic latitude changes it by orders of magnitude, and the
            posterior with it: the probabilities are re-weighted by Bayes'
            rule from the prior the model assumes
            (`~astro_starglx.meta.ModelMeta.prior_star_fraction`, 0.5 for the
            released models) to this one
            (`~astro_starglx.metrics.reweight_prior`); the class then follows
            from the model's threshold. ``None`` (default): the model's own.
        match_depth : bool or None, optional
            Shift the magnitudes the model reads by the difference between
            the images' 5-sigma point-source depth and its training data's
            (``meta.depth``; one shift for all bands, the median of the
            bands', so colours are kept). On another survey's pixels, a
            source's magnitude then goes with the signal-to-noise and size
            the model learnt for it: without any labels, on SDSS-like fields
            this took the accuracy at r < 21 from 78 % to 93 % (see "Use
            astro_starglx on your own survey" in the docs). ``None``
            (default): on when the images' pixel scale is not that of the
            pixel frame the model's features are measured on
            (``meta.pixel_scale / meta.feature_scale``: its own pixels, or
            for a model fine-tuned on another survey, the base model's);
            ``True``: always; ``False``: never. Needs a PSF-aware model
            that records ``meta.depth`` (`~astro_starglx.fine_tune` keeps
            the base's where it matched the depth, so that its model sees
            the magnitudes it was fine-tuned on). The shift is reported in
            the result's meta (``depth``).
        refine_positions : bool, optional
            Move each catalog position to its source's windowed centroid
            before the stamps are cut (`astro_starglx.centroids`): each
            band's systematic offset from its bright sources (a WCS off by
            a fraction of an arcsec), then each source's own error, combined
            over the bands and shrunk by the scatter the bright sources show,
            so that exact positions stay put. A catalog from another survey
            or band is rarely exact, and a point source cut a pixel off its
            centre looks extended (0.1" off: 91 % of the stars kept without
            it, 100 % with it). Default True; ``False`` uses the positions as
            given. What was done is in the result's meta (``positions``).
        overwrite : bool, optional
            Replace output columns that already exist in ``catalog``.

        Returns
        -------
        result : `~astropy.table.Table`
            A new table: the input columns plus ``p_star`` and ``p_galaxy``
            (float32, summing to 1, masked for sources off every image),
            ``class`` (``"star"``/``"galaxy"``, masked likewise) and
            ``class_flags`` (`~astro_starglx.flags.ClassFlag` bits). Its
            ``meta["astro_starglx"]`` holds the provenance: model name,
            weights sha256, package version, threshold, bands, device and,
            for PSF-aware models, ``psf``: the PSF used per band (FWHM,
            source, number of stars, spatial model), and ``depth`` when the
            magnitudes were shifted (``match_depth``): the images' and the
            model's depths per band and the ``magnitude_offset`` applied.

        Raises
        ------
        TypeError
            If ``catalog`` is not a Table, ``images`` not NDData (or a
            mapping of them with string band names), an image holds complex
            numbers, or a ``feature_columns`` template is not a string.
        ValueError
            For missing, non-numeric or 2-D position columns, a declination
            outside [-90, 90] degrees, missing bands or WCS, malformed images
            (empty, a mask of another shape), zero points that are not real
            numbers within +-100 mag, ``feature_columns`` naming a column
            the catalog lacks, or existing output columns without
            ``overwrite=True``, or a ``star_fraction`` that is not a
            fraction in (0, 1) (or one per row).

        Warns
        -----
        StarGalaxyWarning
            Once per call, summarising the flagged sources and any warning
            of the libraries underneath (numpy overflow near the float32
            limit, a WCS that did not converge).
        """
        if not isinstance(catalog, Table):
            check_catalog(catalog)
        existing = [name for name in OUTPUT_COLUMNS if name in catalog.colnames]
        if existing and not overwrite:
            msg = (f"catalog already has output column(s) {existing}; pass overwrite=True to "
                   "replace them, or rename them first")
            raise ValueError(msg)
        star_fraction = self._check_star_fraction(star_fraction, catalog)
        # Warnings of numpy, astropy or torch (overflow near the float32
        # limit, a WCS that does not converge) go into the call's summary.
        with _LibraryWarnings() as library:
            proba, flags, conditions, source_threshold = self._run(
                catalog, images, ra_column=ra_column, dec_column=dec_column,
                coord_column=coord_column, x_column=x_column, y_column=y_column,
                shared_grid=shared_grid, feature_columns=feature_columns,
                zeropoints=zeropoints, psf=psf, match_depth=match_depth,
                refine_positions=refine_positions)
        if star_fraction is not None:
            conditions["star_fraction"] = (float(star_fraction) if np.ndim(star_fraction) == 0
                                           else "per source")
            conditions["prior_star_fraction"] = self.meta.prior_star_fraction
        return self._build_table(catalog, self._apply_prior(proba, star_fraction), flags,
                                 conditions, library, source_threshold=source_threshold)

    # -- priors ---------------------------------------------------------------
    def _check_star_fraction(self, star_fraction, catalog):
        """None, a float in (0, 1), or a float64 array of one per catalog row."""
        if star_fraction is None:
            return None
        if isinstance(catalog, Table) and np.ndim(star_fraction) == 1 \
                and not isinstance(star_fraction, str):
            try:
                values = np.asarray(star_fraction, dtype=np.float64)
            except (TypeError, ValueError):
                values = None
            if values is None or values.shape != (len(catalog),) \
                    or not (np.isfinite(values).all() and (values > 0).all()
                            and (values < 1).all()):
                msg = (f"star_fraction must be a fraction in (0, 1) or an array of "
                       f"{len(catalog)} of them (one per catalog row), got "
                       f"{reprlib.repr(star_fraction)}; e.g. star_fraction=0.3")
                raise ValueError(msg)
            values = values.copy()
        else:
            values = check_real("star_fraction", star_fraction, low=0.0, high=1.0,
                                low_open=True, high_open=True,
                                hint=" (or one per catalog row); e.g. star_fraction=0.3")
        if self.meta.prior_star_fraction is None:
            msg = (f"model {self.loaded.name!r} does not record the star fraction its "
                   "probabilities assume (meta star_fraction), so star_fraction cannot "
                   "re-weight them; use a released model, or re-weight p_galaxy yourself "
                   "with astro_starglx.metrics.reweight_prior")
            raise ValueError(msg)
        return values

    def _apply_prior(self, proba, star_fraction):
        """``proba`` re-weighted to ``star_fraction`` (unchanged for None)."""
        if star_fraction is None:
            return proba
        from .metrics import reweight_prior

        class_names = list(self.meta.class_names)
        i_star, i_gal = class_names.index("star"), class_names.index("galaxy")
        p_gal = reweight_prior(proba[:, i_gal], star_fraction=star_fraction,
                               train_star_fraction=self.meta.prior_star_fraction)
        out = proba.copy()
        out[:, i_gal] = p_gal
        out[:, i_star] = 1.0 - p_gal
        return out

    # -- internals ------------------------------------------------------------
    def _run(self, catalog, images, *, ra_column, dec_column, coord_column, x_column,
             y_column, shared_grid, feature_columns, zeropoints, psf, match_depth,
             refine_positions=True):
        check_catalog(catalog)
        if match_depth is not None:
            check_bool("match_depth", match_depth)
        check_bool("refine_positions", refine_positions)
        meta = self.meta
        images = self._check_images(images, meta, match_depth=match_depth)
        if zeropoints is not None:
            check_mapping("zeropoints", zeropoints, what="{band: zero point}")
            zeropoints = {**(self.zeropoints or {}), **zeropoints}
        else:
            zeropoints = self.zeropoints
        # keyed like the images may be (e.g. 'HSC-R'): the same names as they map to
        if zeropoints is not None:
            zeropoints = match_band_keys(zeropoints, meta.bands, "zeropoints")
        if isinstance(psf, Mapping):
            psf = match_band_keys(psf, meta.bands, "psf")
        for band, image in images.items():  # checked whatever the catalog's length
            get_zeropoint(image, band, zeropoints)
            saturation_level(image, f"images[{band!r}]")
        x, y = pixel_positions(catalog, images, ra_column=ra_column, dec_column=dec_column,
                               coord_column=coord_column, x_column=x_column,
                               y_column=y_column, shared_grid=shared_grid)
        from .inference import thread_budget, torch_threads

        budget = thread_budget()
        refined = {}
        if refine_positions and len(catalog):
            from .centroids import refine_catalog_positions, window_fwhm

            foreign = _foreign_scales(images, meta.pixel_scale)
            fwhm = window_fwhm((meta.psf or {}).get("nominal_fwhm"),
                               {band: foreign.get(band, meta.pixel_scale) for band in images},
                               model_scale=meta.pixel_scale)
            x, y, refined = refine_catalog_positions(images, x, y, psf_fwhm=fwhm,
                                                     pixel_scale=meta.pixel_scale,
                                                     workers=min(2, budget))
        table_features = None
        if feature_columns is not None:
            table_features = features_from_table(catalog, bands=meta.bands,
                                                 column_map=feature_columns,
                                                 feature_names=meta.feature_names)
            if meta.feature_scale != 1.0:
                msg = (f"model {meta.name!r} reads features measured in apertures "
                       f"{meta.feature_scale:g} times wider than astro_starglx.features "
                       "defines (meta.feature_scale, set by fine_tune for your PSF); "
                       "feature_columns are used as given, so they must be measured so. "
                       "Leave feature_columns out to measure them on the stamps.")
                warnings.warn(msg, StarGalaxyWarning, stacklevel=3)
        n_sources = len(catalog)
        proba = np.full((n_sources, len(meta.class_names)), np.nan, dtype=np.float32)
        flags = np.zeros(n_sources, dtype=np.uint16)
        # the model's threshold of each source (one per magnitude bin with
        # meta.thresholds); sources never extracted keep meta.threshold
        source_threshold = np.full(n_sources, float(meta.threshold))
        if n_sources == 0:
            return proba, flags, {}, source_threshold
        # Whole-image noise is computed once per call, not once per batch (NaN
        # for a band with too few usable pixels: stamps measure their own): for
        # the images without an uncertainty, the depth of every band, and the
        # check of the uncertainties given.
        estimates, flags[:], psf_out, noise = self._conditions(images, x, y, psf, list(images),
                                                               threads=budget)
        mismatch = _uncertainty_mismatch(images, noise)
        zeropoints, depth = self._match_depth(images, x, y, estimates, zeropoints, match_depth,
                                              noise)
        image_sigma = {band: noise[band] for band, img in images.items()
                       if img.uncertainty is None}
        predict = self._predictor()
        from tqdm.auto import tqdm

        def produce(sl):
            # numpy only: cutouts, features, the normalisation and the pose
            inputs = extract_inputs(
                images, {b: v[sl] for b, v in x.items()}, {b: v[sl] for b, v in y.items()},
                bands=meta.bands, size=meta.stamp_size,
                pixel_scale=meta.pixel_scale, zeropoints=zeropoints,
                image_sigma=image_sigma, feature_names=meta.feature_names, psf=estimates,
                feature_scale=meta.feature_scale)
            batch_features = (inputs.features if table_features is None
                              else table_features[sl])
            off = ~np.isfinite(inputs.stamps).any(axis=(1, 2, 3))
            return (predict.prepare(inputs.stamps, inputs.noise, batch_features), off,
                    inputs.flags, meta.source_thresholds(batch_features))

        slices = [slice(start, start + self.batch_size)
                  for start in range(0, n_sources, self.batch_size)]
        # On the CPU, CPU_BATCH_WORKERS threads each take a whole batch, inputs
        # and network (the network on their share of torch's threads), so that
        # every core is busy all the time; elsewhere one thread prepares the
        # next batches while the accelerator runs the network (one torch
        # thread fewer). The results do not depend on either. closing(): an
        # error here stops and joins the workers at once.
        # A budget of one thread (torch.set_num_threads(1), or OMP_NUM_THREADS=1
        # as Dask sets on its workers) runs everything in the caller, one batch
        # after the other: a call never keeps more cores busy than it is given
        # (on a node of Dask workers, each is given one).
        cpu = predict.device.type == "cpu"
        workers = min(CPU_BATCH_WORKERS, budget) if cpu else 1
        in_threads = cpu and workers > 1 and len(slices) > 1
        if in_threads:
            threads, ahead = torch_threads(share=workers), workers
        elif budget > 1 or not cpu:
            threads, ahead = torch_threads(reserve=1 if len(slices) > 1 else 0), 1
        else:
            threads, ahead = nullcontext(), 0

        def work(sl):
            prepared, *rest = produce(sl)
            return (predict.proba(*prepared) if in_threads else prepared), *rest

        with closing(_prefetch(work, slices, depth=PREFETCH_BATCHES, workers=ahead)) \
                as batches, threads:
            for sl, (done, off, batch_flags, thresholds) in tqdm(
                    zip(slices, batches), total=len(slices), disable=not self.progress,
                    unit="batch", desc="astro_starglx"):
                proba[sl] = done if in_threads else predict.proba(*done)
                proba[sl][off] = np.nan
                flags[sl] |= batch_flags
                source_threshold[sl] = thresholds
        # Models that do not read the PSF report none (estimates is empty for them).
        conditions = ({"psf": {band: est.to_dict() for band, est in estimates.items()}}
                      if estimates else {})
        if depth:
            conditions["depth"] = depth
        if refined:
            conditions["positions"] = refined
        # call-level conditions, reported once (the summary warning, the meta)
        missing = [band for band in meta.bands if band not in images]
        if missing:
            conditions["bands_missing"] = missing
        if psf_out:
            conditions["psf_out_of_range"] = psf_out
        if mismatch:
            conditions["uncertainty_mismatch"] = mismatch
        return proba, flags, conditions, source_threshold

    def _depth_matching(self, match_depth):
        """Whether `classify` may shift the magnitudes (``match_depth`` not False)."""
        return match_depth is not False and self.meta.depth is not None \
            and self.meta.psf is not None

    def _match_depth(self, images, x, y, estimates, zeropoints, match_depth, noise=None):
        """
        The zero points with the ``match_depth`` shift, and its record for
        the result's meta ({} and ``zeropoints`` unchanged when none applies).
        """
        meta = self.meta
        if match_depth and not self._depth_matching(match_depth):
            msg = (f"the model {self.loaded.name!r} records no training depth (meta.depth, "
                   "PSF-aware models only), so match_depth=True is ignored")
            warnings.warn(msg, StarGalaxyWarning, stacklevel=5)
        if not self._depth_matching(match_depth) or not estimates:
            return zeropoints, {}
        # the pixel frame the features are measured on: the model's own pixels,
        # or (fine-tuned on another survey) the base's that its feature_scale keeps
        frame = meta.pixel_scale / meta.feature_scale
        apply = match_depth is True or bool(_foreign_scales(images, frame))
        from .background import depth_offset

        zps = {band: get_zeropoint(image, band, zeropoints) for band, image in images.items()}
        offset, measured = depth_offset(images, estimates,
                                        {band: (x[band], y[band]) for band in images},
                                        depth=meta.depth, pixel_scale=meta.pixel_scale,
                                        zeropoints=zps, sigma=noise)
        if offset is None:
            return zeropoints, {}
        if not apply:
            if abs(offset) > DEPTH_TOLERANCE:  # on the model's pixels: a zero point off?
                msg = (f"the images' 5-sigma depth ({measured}) is {abs(offset):.1f} mag "
                       f"{'shallower' if offset > 0 else 'deeper'} than the model's training "
                       f"fields ({ {band: meta.depth[band] for band in measured} }), more than "
                       "their exposures spanned: check the zero points, since the model reads "
                       "absolute magnitudes and a wrong zero point shifts them all (or pass "
                       "match_depth=True to shift them by the difference)")
                warnings.warn(msg, StarGalaxyWarning, stacklevel=5)
            return zeropoints, {}
        shifted = {band: zp + offset for band, zp in zps.items()}
        return shifted, {"image_depth": measured,
                         "model_depth": {band: meta.depth[band] for band in measured},
                         "magnitude_offset": round(offset, 4)}

    def _conditions(self, images, x, y, psf, noisy=(), *, threads=2):
        """
        PSF estimates per band, the BLENDED / OUT_OF_RANGE bits of every
        source, the bands whose PSF puts every source out of range, and the
        per-pixel noise (`image_noise_or_nan`) of the bands ``noisy``
        (on two threads when ``threads`` > 1, else in the caller).
        """
        meta = self.meta
        ref = "r" if "r" in images else next(iter(images))
        # The blend flags (numpy, reference band) in a thread while the PSF is
        # measured: two cores busy. (Measuring the bands in 2 threads as well
        # was slower on 2 shared cores: 1.09 s against 0.72 s, median of 6.)
        # The image noise too (numpy: 0.4 s for the 7 bands of a CSST chip).
        pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="astro_starglx-blend")
                if threads > 1 else _InlineExecutor())
        with pool:
            blended = pool.submit(blend_flags, images[ref], x[ref], y[ref],
                                  size=meta.stamp_size)
            noise = {band: pool.submit(image_noise_or_nan, images[band]) for band in noisy}
            estimates = self._psf_estimates(images, x, y, psf)
            flags = blended.result()
            noise = {band: future.result() for band, future in noise.items()}
        if not estimates:
            return {}, flags, [], noise
        fell_back = [band for band, est in estimates.items() if est.fell_back]
        if fell_back:
            msg = (f"too few usable point sources to measure the PSF of band(s) {fell_back}; "
                   f"the model {self.loaded.name!r} assumed its nominal PSF there and flagged "
                   "every source OUT_OF_RANGE. Pass psf={band: fwhm_arcsec} if you know it.")
            warnings.warn(msg, StarGalaxyWarning, stacklevel=4)
        from .psf import header_disagreement

        disagreement = header_disagreement(estimates)
        if disagreement:
            warnings.warn(disagreement, StarGalaxyWarning, stacklevel=4)
        everywhere = []
        shapes = meta.psf.get("gamma_range", {})
        for band, est in estimates.items():
            low, high = meta.psf["fwhm_range"][band]
            fwhm = est.at(x[band], y[band])
            # a profile shape the model never saw (Moffat wings beyond its range)
            shape_out = (band in shapes and est.gamma is not None
                         and not shapes[band][0] <= est.gamma <= shapes[band][1])
            out = np.broadcast_to(est.fell_back | shape_out | (fwhm < low) | (fwhm > high),
                                  flags.shape)
            flags[out] |= np.uint16(ClassFlag.OUT_OF_RANGE)
            if out.all():
                everywhere.append(band)
        return estimates, flags, everywhere, noise

    def _psf_estimates(self, images, x, y, psf):
        """`~astro_starglx.psf.resolve_psf` for a PSF-aware model; {} for the others."""
        meta = self.meta
        if meta.psf is None:
            if psf is not None:
                msg = (f"the model {self.loaded.name!r} does not read the PSF, so psf= is ignored; "
                       "use a PSF-aware model (see `astro-starglx weights list`)")
                warnings.warn(msg, StarGalaxyWarning, stacklevel=5)
            return {}
        from .psf import resolve_psf

        return resolve_psf(images, {band: (x[band], y[band]) for band in images},
                           psf=psf, pixel_scale=meta.pixel_scale,
                           nominal_fwhm=meta.psf["nominal_fwhm"])

    def _predictor(self):
        """The `~astro_starglx.inference.Predictor`: (stamps, noise, features) -> proba."""
        if self._predict is None:
            from .inference import Predictor

            self._predict = Predictor(self.loaded.network, self.loaded.meta, device=self.device,
                                      symmetrize=self.symmetrize, precision=self.precision)
        return self._predict

    def _check_images(self, images, meta, *, match_depth=None):
        images = model_images(images, meta.bands, allow_missing=meta.allow_missing_bands,
                              model=self.loaded.name)
        present = list(images)
        # Validated once here: the PSF, blend and noise steps read the pixels too.
        for band in present:
            check_nddata(f"images[{band!r}]", images[band])
        _warn_pixel_scale({band: images[band] for band in present}, meta, self.loaded.name,
                          depth_matched=self._depth_matching(match_depth))
        return {band: images[band] for band in present}

    def _build_table(self, catalog, proba, flags, conditions, library=None, *,
                     source_threshold=None):
        from . import __version__

        meta = self.meta
        if self.threshold is not None:  # the user's, for every source
            threshold = self.threshold
            per_source = np.full(len(proba), threshold)
        else:
            per_source = (np.full(len(proba), float(meta.threshold))
                          if source_threshold is None else source_threshold)
            threshold = (float(meta.threshold) if meta.thresholds is None else
                         {"default": float(meta.threshold), **meta.thresholds})
        class_names = list(meta.class_names)
        i_star, i_gal = class_names.index("star"), class_names.index("galaxy")
        result = Table(catalog, copy=True)
        for name in OUTPUT_COLUMNS:
            if name in result.colnames:
                result.remove_column(name)
        bad = ~np.isfinite(proba).all(axis=1)
        p_star = proba[:, i_star]
        p_gal = proba[:, i_gal]
        labels = np.where(p_gal >= per_source, "galaxy", "star")
        result["p_star"] = MaskedColumn(np.where(bad, 0, p_star).astype(np.float32), mask=bad,
                                        description="probability that the source is a star")
        result["p_galaxy"] = MaskedColumn(np.where(bad, 0, p_gal).astype(np.float32),
                                          mask=bad,
                                          description="probability that the source is a galaxy")
        rule = (f"{threshold}" if not isinstance(threshold, dict) else
                f"the threshold of its {threshold['band']}-band {threshold['feature']} bin "
                "(meta threshold)")
        result["class"] = MaskedColumn(labels.astype("U6"), mask=bad,
                                       description=f"'galaxy' if p_galaxy >= {rule}")
        result["class_flags"] = MaskedColumn(
            flags.astype(np.uint16), mask=np.zeros(len(flags), bool),
            description="astro_starglx.ClassFlag bits: 1 OFF_IMAGE, 2 PARTIAL, 4 MASKED, "
                        "8 BAND_MISSING, 16 NO_FEATURES, 32 SATURATED, 64 BLENDED, "
                        "128 OUT_OF_RANGE")
        result.meta["astro_starglx"] = {
            "model": self.loaded.name,
            "weights_sha256": self.loaded.sha256,
            "version": __version__,
            "threshold": threshold,
            "bands": list(meta.bands),
            "device": str(self.device),
            "symmetrize": self.symmetrize,
            "precision": "bf16" if self._predictor().bf16 else "fp32",
            **conditions,
        }
        _warn_flags(flags, bad, library, conditions)
        return result


class _InlineExecutor(Executor):
    """An `~concurrent.futures.Executor` that runs each call in the caller, at submit."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # raised by result(), as a pool's would be
            future.set_exception(err)
        return future


def _prefetch(produce, items, *, depth, workers=1):
    """
    ``produce(item)`` for every item, in order, computed ``depth`` items ahead.

    ``workers`` threads run ``produce`` while the caller consumes the
    results: at most ``depth`` results wait, so memory stays bounded (with
    ``workers=0`` the caller runs each in turn). An exception of ``produce``
    is raised in the caller, unchanged, when its item is reached; on any
    exit the pending items are cancelled and the workers are joined, so no
    thread outlives the call.
    """
    from collections import deque

    if len(items) <= 1 or workers < 1:
        yield from map(produce, items)
        return
    depth = max(depth, workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="astro_starglx-inputs")
    queue = deque()
    try:
        for item in items:
            queue.append(pool.submit(produce, item))
            if len(queue) > depth:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
    finally:
        for future in queue:
            future.cancel()
        pool.shutdown(wait=True)


def _foreign_scales(images, expected, *, tolerance=PIXEL_SCALE_TOLERANCE):
    """``{band: arcsec per pixel}`` of the images whose WCS scale is not ``expected``."""
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    expected = float(expected)
    off = {}
    for band, image in images.items():
        if not isinstance(image.wcs, WCS) or not image.wcs.has_celestial:
            continue
        scale = float(np.mean(proj_plane_pixel_scales(image.wcs.celestial))) * 3600.0
        if abs(scale / expected - 1.0) > tolerance:
            off[band] = round(scale, 4)
    return off


def _warn_pixel_scale(images, meta, name, *, depth_matched=False,
                      tolerance=PIXEL_SCALE_TOLERANCE):
    """One warning if a band's pixel scale is far from the model's."""
    off = _foreign_scales(images, meta.pixel_scale, tolerance=tolerance)
    if off:
        matched = (" The magnitudes are shifted to the model's depth (match_depth; the "
                   "result's meta['astro_starglx']['depth']), which recovers much of the "
                   "accuracy without labels." if depth_matched else "")
        msg = (f"pixel scale (arcsec) of {off} differs by more than {tolerance:.0%} from the "
               f"{meta.pixel_scale} arcsec the model {name!r} was trained on: sizes and "
               f"profiles will be misread and the classes are less reliable.{matched} Use a "
               "model trained or fine-tuned at this pixel scale (astro_starglx.fine_tune); "
               "resampling the images does not help (it changes the noise and the PSF "
               "sampling the model has learned)")
        warnings.warn(msg, StarGalaxyWarning, stacklevel=4)


def _uncertainty_mismatch(images, noise):
    """
    ``{band: ratio}`` of the bands whose uncertainty states a per-pixel noise
    more than `UNCERTAINTY_TOLERANCE` times off the measured one (ratio =
    stated / measured), with one warning naming them.
    """
    from .background import uncertainty_sigma

    ratios = {}
    for band, image in images.items():
        measured = noise.get(band, np.nan)
        if image.uncertainty is None or not np.isfinite(measured) or measured <= 0:
            continue
        stated = uncertainty_sigma(image)
        if np.isfinite(stated):
            ratio = stated / measured
            if not 1.0 / UNCERTAINTY_TOLERANCE <= ratio <= UNCERTAINTY_TOLERANCE:
                ratios[band] = float(f"{ratio:.4g}")
    if ratios:
        kinds = {band: type(images[band].uncertainty).__name__ for band in ratios}
        msg = (f"the uncertainty of band(s) {list(ratios)} ({kinds}) states a per-pixel "
               f"noise {ratios} times the noise measured on the pixels (robust scatter, "
               f"image_noise), more than a factor {UNCERTAINTY_TOLERANCE:g} off: the stamps' "
               "noise and the features read from it will be wrong. Is it a weight "
               "(inverse-variance) map wrapped as StdDevUncertainty, or in other units? Wrap "
               "weights as InverseVariance(w), variances as VarianceUncertainty, or leave "
               "the uncertainty out to have the noise measured from the image.")
        warnings.warn(msg, StarGalaxyWarning, stacklevel=4)
    return ratios


def _warn_flags(flags, unclassified, library=None, conditions=None):
    """
    The call's one summary warning: the call-level conditions that flag
    every source (bands not given, a band's PSF out of the model's range),
    once, then the counts of the other flags, then the libraries' warnings.
    """
    conditions = conditions or {}
    parts, everyone = [], 0
    if conditions.get("bands_missing"):
        everyone |= ClassFlag.BAND_MISSING
        parts.append(f"Bands {conditions['bands_missing']} are not in images: the model sees "
                     "them as dropped bands (every source carries BAND_MISSING).")
    if conditions.get("psf_out_of_range"):
        everyone |= ClassFlag.OUT_OF_RANGE
        parts.append(f"The PSF of band(s) {conditions['psf_out_of_range']} is outside the "
                     "model's validity range (meta.psf's 'fwhm_range', or 'gamma_range' for "
                     "the profile's shape) or was not measured: "
                     "every source carries OUT_OF_RANGE.")
    rest = flags & np.uint16(~int(everyone) & 0xFFFF)
    if rest.any():
        counts = {flag.name: int(np.count_nonzero(rest & flag.value)) for flag in ClassFlag}
        summary = ", ".join(f"{name} {n}" for name, n in counts.items() if n)
        parts.append(f"{int(np.count_nonzero(rest))} of {len(flags)} sources flagged "
                     f"{'for other problems ' if everyone else ''}({summary}); "
                     f"{int(unclassified.sum())} have no usable pixels and masked "
                     "probabilities. See the class_flags column and astro_starglx.ClassFlag.")
    elif unclassified.any():
        parts.append(f"{int(unclassified.sum())} of {len(flags)} sources have no usable pixels "
                     "and masked probabilities.")
    if library is not None and library.records:
        parts.append(library.summary())
    if parts:
        warnings.warn(" ".join(parts), StarGalaxyWarning, stacklevel=4)


class _LibraryWarnings:
    """
    Catch the warnings raised during one call, for its one summary.

    Warnings of this package (`StarGalaxyWarning` and the like) and
    deprecations are re-issued unchanged on exit; the others (numpy,
    astropy, torch) are kept in ``records`` and summarised by `summary`.
    ``warnings.catch_warnings`` is process-wide in Python < 3.14, so it also
    sees the warnings of the extraction thread.
    """

    _PASS_THROUGH = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)

    def __enter__(self):
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        self.records = []
        return self

    def __exit__(self, *exc_info):
        self._catcher.__exit__(*exc_info)
        for record in self._caught:
            ours = record.category.__module__.split(".")[0] == __name__.split(".")[0]
            if ours or issubclass(record.category, self._PASS_THROUGH):
                warnings.warn_explicit(record.message, record.category, record.filename,
                                       record.lineno, source=record.source)
            else:
                self.records.append(record)
        return False

    def summary(self):
        """One sentence: each distinct library warning, where it came from and its count."""
        counts = {}
        for record in self.records:
            parts = record.filename.replace("\\", "/").split("/")
            roots = [i for i, part in enumerate(parts)
                     if part in ("site-packages", "dist-packages", "astro_starglx")]
            start = roots[-1] + (parts[roots[-1]] != "astro_starglx") if roots else -1
            where = "/".join(parts[start:])
            first = (str(record.message).strip().splitlines() or [""])[0]
            key = f"{record.category.__name__} {first[:120]!r} at {where}:{record.lineno}"
            counts[key] = counts.get(key, 0) + 1
        listed = "; ".join(f"{key} (x{n})" for key, n in counts.items())
        text = " ".join(str(record.message) for record in self.records)
        hints = []
        if "overflow" in text:
            hints.append("pixel values near the float32 limit (+-3.4e38) overflow: rescale "
                         "the image (and add 2.5 log10 of the factor to its zero point)")
        if "converge" in text:
            hints.append("a WCS did not converge for some positions (far outside its "
                         "distortion model): those sources' pixel positions are approximate")
        hint = "; ".join(hints)
        hint = f" {hint[:1].upper()}{hint[1:]}." if hint else ""
        return (f"{len(self.records)} warning(s) of the libraries underneath were caught: "
                f"{listed}.{hint}")
