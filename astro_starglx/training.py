"""
Training of the RBiM networks: arrays in, weights out (no astropy here).

`fit` streams mini-batches from (memory-mapped) arrays through the same
`~astro_starglx.preprocess.prepare_inputs` normalisation that inference uses,
checkpoints every epoch and resumes exactly after an interruption.
`train_release` runs the whole recipe on a data set from
`astro_starglx.dataset` and exports ``.safetensors`` weights whose metadata
holds everything inference needs.
"""

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import metrics
from .inference import calibrated_proba, predict_logits, resolve_bf16, to_device
from .meta import MODEL_CONFIGS, ModelMeta
from .model import build_model
from .preprocess import Normalization, compute_normalization, prepare_inputs

__all__ = ["TrainConfig", "FitResult", "fit", "train_release", "augment_batch"]

log = logging.getLogger(__name__)

_CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """
    Everything that defines a training run; saved into every checkpoint.

    Attributes
    ----------
    model : str
        Model family in `~astro_starglx.model.MODEL_CONFIGS`.
    mode : str or None
        ``"fused"``, ``"image"`` or ``"catalog"`` to override the family's
        mode (ablations).
    epochs : int
        Maximum number of epochs.
    batch_size : int
        Mini-batch size.
    optimizer : {"adamw", "sgd"}
        Optimiser.
    lr : float
        Peak learning rate (linear warm-up, then cosine decay).
    weight_decay : float
        Decoupled weight decay.
    warmup_epochs : float
        Length of the linear warm-up.
    class_balance : bool
        Weight the loss by inverse class frequency (the paper's data set has
        2.9 galaxies per star).
    augment : bool
        Random flips and 90-degree rotations of the stamps (the features are
        invariant under them).
    band_dropout : float
        Probability per source that one random band is removed (zero stamp,
        unmeasured features), so the model copes with a missing band.
    label_smoothing : float
        Cross-entropy label smoothing.
    patience : int
        Early stopping: epochs without a better validation loss.
    softening : float
        ``arcsinh`` softening of the stamps, in noise units.
    max_train : int or None
        Use at most this many training sources (quick runs).
    features : tuple of str or None
        Train on these of the data set's per-band features only (ablations);
        None uses them all.
    precision : {"auto", "fp32", "bf16"}
        ``"bf16"`` trains the image encoder under `torch.autocast` in
        bfloat16; ``"auto"`` does so on CUDA and on CPUs with native bfloat16
        (AVX-512 BF16 or AMX), and uses float32 elsewhere. Tensors are
        channels-last in every case.
    checkpoint_minutes : float
        Also checkpoint within an epoch once this many minutes have passed
        since the last checkpoint (long runs on machines that stop jobs).
        Not part of what makes two configs the same run.
    threshold_max_mag : float or None
        `train_release` fits the decision threshold (equal star and galaxy
        recall) on the validation sources with a catalog ``mag_r`` at most
        this; None fits it on all of them. The faintest sources, where stars
        and galaxies overlap most, otherwise set the threshold for every
        magnitude: for ``rbim-lite-v5`` 0.711 on all, 0.444 at r <= 25, the
        range its targets are stated in. A calibration choice, not part of
        what makes two configs the same run (a finished run re-exports with
        another value without training again).
    seed : int
        Seed of the initialisation, the batch order and the augmentation.
    """

    model: str = "rbim-lite"
    mode: str | None = None
    epochs: int = 20
    batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    class_balance: bool = True
    augment: bool = True
    band_dropout: float = 0.05
    label_smoothing: float = 0.0
    patience: int = 5
    softening: float = 3.0
    max_train: int | None = None
    features: tuple | None = None
    precision: str = "auto"
    checkpoint_minutes: float = 10.0
    threshold_max_mag: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODEL_CONFIGS:
            msg = f"model must be one of {sorted(MODEL_CONFIGS)}, got {self.model!r}"
            raise ValueError(msg)
        if self.mode not in (None, "fused", "image", "catalog"):
            msg = f"mode must be None, 'fused', 'image' or 'catalog', got {self.mode!r}"
            raise ValueError(msg)
        if self.optimizer not in ("adamw", "sgd"):
            msg = f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}"
            raise ValueError(msg)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                msg = f"{name} must be >= 1, got {getattr(self, name)!r}"
                raise ValueError(msg)
        if self.precision not in ("auto", "fp32", "bf16"):
            msg = f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}"
            raise ValueError(msg)
        if not self.checkpoint_minutes > 0:
            msg = f"checkpoint_minutes must be > 0, got {self.checkpoint_minutes!r}"
            raise ValueError(msg)
        if self.threshold_max_mag is not None and not (
                isinstance(self.threshold_max_mag, (int, float))
                and not isinstance(self.threshold_max_mag, bool)
                and math.isfinite(self.threshold_max_mag)):
            msg = (f"threshold_max_mag must be None or a finite r magnitude, got "
                   f"{self.threshold_max_mag!r}")
            raise ValueError(msg)
        if self.features is not None:
            if isinstance(self.features, str) or not all(
                    isinstance(f, str) for f in self.features) or not self.features:
                msg = (f"features must be None or a non-empty sequence of feature names, "
                       f"got {self.features!r}")
                raise ValueError(msg)
            object.__setattr__(self, "features", tuple(self.features))

    def run_key(self):
        """The settings that make two configs the same run (checked on resume)."""
        key = dataclasses.asdict(self)
        key.pop("checkpoint_minutes")
        key.pop("threshold_max_mag")
        key["features"] = None if self.features is None else list(self.features)
        return key

    def use_bf16(self, device):
        """Whether this run trains under bfloat16 autocast on ``device``."""
        return resolve_bf16(self.precision, device)

    def architecture(self, *, n_bands, n_features):
        """The `~astro_starglx.model.build_model` config for this run."""
        config = json.loads(json.dumps(MODEL_CONFIGS[self.model]))
        if self.mode is not None:
            config["mode"] = self.mode
        config.update(n_bands=int(n_bands), n_features=int(n_features), n_classes=2)
        return config


@dataclass(frozen=True)
class FitResult:
    """Outcome of `fit`: the best network (by validation loss, else the last) and the history."""

    network: nn.Module
    history: list
    best_epoch: int
    normalization: dict


def augment_batch(stamps, features, *, rng, flips=True, band_dropout=0.0):
    """
    Random flips / 90-degree rotations and band dropout of one batch.

    Parameters
    ----------
    stamps : `~numpy.ndarray`
        ``(N, C, H, W)`` float32 (a copy is returned; the input is untouched).
    features : `~numpy.ndarray`
        ``(N, C, F)`` float32.
    rng : `numpy.random.Generator`
    flips : bool, optional
        Apply one of the 8 dihedral transforms per source.
    band_dropout : float, optional
        Probability that one random band of a source is blanked (NaN).

    Returns
    -------
    stamps, features : `~numpy.ndarray`
    """
    stamps = np.array(stamps, dtype=np.float32, copy=True)
    features = np.array(features, dtype=np.float32, copy=True)
    n = len(stamps)
    if flips and n:
        k = rng.integers(0, 4, size=n)
        flip = rng.random(n) < 0.5
        stamps[flip] = stamps[flip, :, :, ::-1]
        for r in range(1, 4):
            sel = k == r
            stamps[sel] = np.rot90(stamps[sel], r, axes=(2, 3))
    if band_dropout > 0 and n:
        drop = np.flatnonzero(rng.random(n) < band_dropout)
        band = rng.integers(0, stamps.shape[1], size=len(drop))
        stamps[drop, band] = np.nan
        features[drop, band] = np.nan
    return stamps, features


class _FeatureSubset:
    """A data split that shows only some of its per-band features (ablations)."""

    def __init__(self, data, index):
        self._data = data
        self.features = np.asarray(data.features)[:, :, index]

    def __getattr__(self, name):
        return getattr(self._data, name)


def _select_features(config, info, splits):
    names = list(info["feature_names"])
    if config.features is None:
        return names, splits
    unknown = [f for f in config.features if f not in names]
    if unknown:
        msg = (f"TrainConfig.features names {unknown}, which the data set does not have; "
               f"it has {names}")
        raise ValueError(msg)
    index = [names.index(f) for f in config.features]
    return list(config.features), [_FeatureSubset(s, index) for s in splits]


def _scheduler(optimizer, config, steps_per_epoch):
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 0 at the last step."""
    total = config.epochs * steps_per_epoch
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    lr = torch.optim.lr_scheduler
    return lr.SequentialLR(optimizer, [
        lr.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0,
                    total_iters=max(1, warmup - 1)),
        lr.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup)),
    ], milestones=[warmup])


def _save_atomic(obj, path):
    tmp = Path(str(path) + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class _Run:
    """The mutable state of one training run: network, optimiser, schedule, position."""

    def __init__(self, config, arch, device, steps_per_epoch, init_state=None):
        # Our own RNG streams: the global torch RNG is forked, never left changed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.network = build_model(arch).to(device)
        if init_state is not None:
            # Fine-tuning: start from given weights, before the optimiser sees them.
            self.network.load_state_dict(init_state, strict=True)
        self.bf16 = config.use_bf16(device)
        # Channels-last in every set-up: 2.6x the fp32 training throughput of
        # rbim-lite on the 2-core CPU (benchmarks/bench_training.py).
        self.memory_format = torch.channels_last
        self.network = self.network.to(memory_format=self.memory_format)
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=config.lr,
                                               weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.network.parameters(), lr=config.lr,
                                             momentum=0.9, nesterov=True,
                                             weight_decay=config.weight_decay)
        self.scheduler = _scheduler(self.optimizer, config, steps_per_epoch)
        self.history, self.epoch, self.step = [], 0, 0
        self.best = {"loss": np.inf, "epoch": -1, "state": None}
        self.bad_epochs = 0
        # within the current epoch (mid-epoch checkpoints)
        self.total, self.n_seen, self.rng_state, self.torch_rng = 0.0, 0, None, None

    def state(self, config, normalization):
        return {"config": config.run_key(), "epoch": self.epoch, "step": self.step,
                "model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "history": self.history,
                "best_loss": self.best["loss"], "best_epoch": self.best["epoch"],
                "best_state": self.best["state"], "bad_epochs": self.bad_epochs,
                "total": self.total, "n_seen": self.n_seen, "rng_state": self.rng_state,
                "torch_rng": self.torch_rng, "normalization": normalization.to_dict()}

    def restore(self, ckpt):
        self.network.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.history, self.epoch, self.step = ckpt["history"], ckpt["epoch"], ckpt["step"]
        self.best = {"loss": ckpt["best_loss"], "epoch": ckpt["best_epoch"],
                     "state": ckpt["best_state"]}
        self.bad_epochs = ckpt["bad_epochs"]
        self.total, self.n_seen = ckpt["total"], ckpt["n_seen"]
        self.rng_state, self.torch_rng = ckpt["rng_state"], ckpt["torch_rng"]


def _load_checkpoint(path, config, device):
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt.get("config") != config.run_key():
        msg = (f"checkpoint {path} was written with a different TrainConfig; "
               "use another output directory or resume=False")
        raise ValueError(msg)
    return ckpt


def _train_epoch(run, train, labels, normalization, loss_fn, *, config, device, n_train,
                 save, progress):
    """One epoch from ``run.step`` on; ``save()`` is called every checkpoint_minutes."""
    from tqdm.auto import tqdm

    epoch = run.epoch
    # Per-epoch streams seeded from (seed, epoch); a mid-epoch checkpoint
    # stores their state after the permutation, so a resume is exact.
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(n_train)
    if run.rng_state is not None:
        rng.bit_generator.state = run.rng_state
    batches = [np.sort(order[start:start + config.batch_size])
               for start in range(0, n_train, config.batch_size)]
    cuda = device.type == "cuda"
    last_save = time.monotonic()
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.manual_seed(config.seed * 100003 + epoch)
        if run.torch_rng is not None:
            torch.set_rng_state(run.torch_rng)
        run.network.train()
        bar = tqdm(batches[run.step:], total=len(batches), initial=run.step,
                   disable=not progress, desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="batch")
        for idx in bar:
            stamps, feats = train.stamps[idx], train.features[idx]
            if config.augment or config.band_dropout:
                stamps, feats = augment_batch(stamps, feats, rng=rng, flips=config.augment,
                                              band_dropout=config.band_dropout)
            x_image, x_catalog = prepare_inputs(stamps, train.noise[idx], feats,
                                                normalization)
            x_image, x_catalog = to_device(x_image, x_catalog, device,
                                           memory_format=run.memory_format)
            y = torch.from_numpy(labels[idx]).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                enabled=run.bf16):
                loss = loss_fn(run.network(x_image, x_catalog).float(), y)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.scheduler.step()
            run.total += loss.item() * len(idx)
            run.n_seen += len(idx)
            run.step += 1
            bar.set_postfix(loss=f"{run.total / run.n_seen:.4f}")
            if (time.monotonic() - last_save > 60.0 * config.checkpoint_minutes
                    and run.step < len(batches)):
                run.rng_state, run.torch_rng = rng.bit_generator.state, torch.get_rng_state()
                save()
                last_save = time.monotonic()
                log.info("epoch %d: checkpoint after batch %d of %d (loss %.4f)", epoch,
                         run.step, len(batches), run.total / run.n_seen)
    return run.total / max(run.n_seen, 1)


def _validate(run, val, normalization, *, device, train_loss):
    logits = predict_logits(run.network, val, normalization, device=device)
    y_val = np.asarray(val.labels).astype(np.int64)
    val_loss = float(nn.functional.cross_entropy(torch.from_numpy(logits),
                                                 torch.from_numpy(y_val)))
    report = metrics.classification_report(y_val, metrics.softmax(logits)[:, 1],
                                           threshold=0.5)
    return {"epoch": run.epoch, "train_loss": train_loss, "val_loss": val_loss,
            "val_recall_star": report["recall_star"],
            "val_recall_galaxy": report["recall_galaxy"],
            "lr": run.scheduler.get_last_lr()[0]}


def _log_file(output_dir):
    handler = logging.FileHandler(output_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    return handler


def fit(train, val, *, config, output_dir, normalization=None, device="cpu", resume=True,
        progress=False, init_state=None, architecture=None):
    """
    Train a network; checkpoint every epoch and every few minutes; resume exactly.

    Parameters
    ----------
    train, val : object
        Training and validation data with ``stamps`` ``(N, C, H, W)``,
        ``noise`` ``(N, C)``, ``features`` ``(N, C, F)`` and ``labels``
        ``(N,)`` (0 = star, 1 = galaxy) arrays; memory maps are streamed.
        ``val=None``: no validation, the whole schedule of ``config.epochs``
        runs (``config.patience`` is not used) and the last epoch's weights
        are returned.
    config : `TrainConfig`
    output_dir : path-like
        Where ``checkpoint.pt`` is written after every epoch and, within an
        epoch, every ``config.checkpoint_minutes``; ``train.log`` gets one
        line per epoch and checkpoint (``tail -f`` it).
    normalization : `~astro_starglx.preprocess.Normalization` or None, optional
        Input normalisation; ``None`` computes it from the training features.
    device : str or `torch.device`, optional
    resume : bool, optional
        Continue from ``output_dir/checkpoint.pt`` if it exists and was
        written with the same ``config`` (from the middle of an epoch too:
        the result is the same as that of an uninterrupted run).
    progress : bool, optional
        Progress bar with loss and validation recall.
    init_state : dict or None, optional
        A state dict (e.g. a released model's ``network.state_dict()``)
        loaded into the freshly built network before the optimiser is
        built: fine-tuning starts from it. ``None`` starts from the seeded
        random initialisation. A resumed checkpoint takes precedence.
    architecture : dict or None, optional
        The `~astro_starglx.model.build_model` config of the network (that
        of the model ``init_state`` comes from); ``None`` builds
        ``config.architecture(...)`` for the data's bands and features.

    Returns
    -------
    result : `FitResult`
    """
    device = torch.device(device)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    handler = _log_file(output_dir)
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        return _fit(train, val, config=config, output_dir=output_dir,
                    normalization=normalization, device=device, resume=resume,
                    progress=progress, init_state=init_state, architecture=architecture)
    finally:
        log.removeHandler(handler)
        handler.close()


def _fit(train, val, *, config, output_dir, normalization, device, resume, progress,
         init_state=None, architecture=None):
    from tqdm.auto import tqdm

    n_train = len(train.labels)
    if config.max_train is not None:
        n_train = min(config.max_train, n_train)
    if normalization is None:
        normalization = compute_normalization(np.asarray(train.features[:n_train]),
                                              softening=config.softening)
    n_bands, n_features = train.features.shape[1:]
    labels = np.asarray(train.labels[:n_train]).astype(np.int64)
    counts = np.bincount(labels, minlength=2).astype(float)
    weight = (counts.sum() / (2 * np.maximum(counts, 1))) if config.class_balance \
        else np.ones(2)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float32,
                                                      device=device),
                                  label_smoothing=config.label_smoothing)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    if architecture is None:
        architecture = config.architecture(n_bands=n_bands, n_features=n_features)
    run = _Run(config, architecture, device, steps_per_epoch, init_state=init_state)
    ckpt_path = output_dir / _CHECKPOINT
    if resume and ckpt_path.exists():
        ckpt = _load_checkpoint(ckpt_path, config, device)
        run.restore(ckpt)
        normalization = Normalization.from_dict(ckpt["normalization"])
        log.info("resumed from %s at epoch %d, batch %d", ckpt_path, run.epoch, run.step)
    log.info("training %s on %s (%s, channels-last, %d sources, %d batches per epoch)",
             config.model, device, "bf16 autocast" if run.bf16 else "fp32", n_train,
             steps_per_epoch)

    def save():
        _save_atomic(run.state(config, normalization), ckpt_path)

    while run.epoch < config.epochs and run.bad_epochs < config.patience:
        train_loss = _train_epoch(run, train, labels, normalization, loss_fn, config=config,
                                  device=device, n_train=n_train, save=save,
                                  progress=progress)
        if val is None:  # the full schedule, no early stopping
            entry = {"epoch": run.epoch, "train_loss": train_loss,
                     "lr": run.scheduler.get_last_lr()[0]}
        else:
            entry = _validate(run, val, normalization, device=device, train_loss=train_loss)
        run.history.append(entry)
        log.info("epoch %d: %s", run.epoch, entry)
        if progress:
            tqdm.write(f"epoch {run.epoch + 1}: train loss {train_loss:.4f}" + (
                "" if val is None else
                f", val loss {entry['val_loss']:.4f}, val recall star "
                f"{entry['val_recall_star']:.4f} galaxy {entry['val_recall_galaxy']:.4f}"))
        if val is None:
            run.best["epoch"] = run.epoch
        elif entry["val_loss"] < run.best["loss"]:
            run.best = {"loss": entry["val_loss"], "epoch": run.epoch,
                        "state": {k: v.detach().clone()
                                  for k, v in run.network.state_dict().items()}}
            run.bad_epochs = 0
        else:
            run.bad_epochs += 1
        run.epoch, run.step = run.epoch + 1, 0
        run.total, run.n_seen, run.rng_state, run.torch_rng = 0.0, 0, None, None
        save()
    network = run.network.to(memory_format=torch.contiguous_format)
    if run.best["state"] is not None:
        network.load_state_dict(run.best["state"])
    network.eval()
    return FitResult(network=network, history=run.history, best_epoch=run.best["epoch"],
                     normalization=normalization)


# Margin of the trained range of PSF profile shapes (``gamma``): the joint
# profile fit's scatter between simulated fields of one PSF family is ~0.03-0.05.
_GAMMA_MARGIN = 0.05


def _psf_validity(info, train, feature_names):
    """``ModelMeta.psf`` of a model that reads ``psf_fwhm``: nominal PSF and trained range."""
    if "psf_fwhm" not in feature_names:
        return None
    nominal = {band: float(info["nominal_fwhm"][band]) for band in info["bands"]}
    # The central 99 % of the PSFs seen in training (outside, too few
    # examples to trust the model), widened by the estimator's typical
    # 2 % error so that the range is never empty; a band never measured:
    # only its nominal PSF is known.
    seen = _central_range(train, feature_names, "psf_fwhm", info["bands"], nominal)
    psf = {"nominal_fwhm": nominal,
           "fwhm_range": {band: [round(float(low) * 0.98, 4), round(float(high) * 1.02, 4)]
                          for band, (low, high) in seen.items()}}
    if "psf_gamma" in feature_names:
        # widened by the fit's typical scatter between fields of one PSF; a
        # shape never fitted: any shape is outside what the model saw
        shapes = _central_range(train, feature_names, "psf_gamma", info["bands"],
                                dict.fromkeys(info["bands"], 0.0))
        psf["gamma_range"] = {
            band: [round(max(float(low) - _GAMMA_MARGIN, -0.5), 4),
                   round(min(float(high) + _GAMMA_MARGIN, 0.9), 4)]
            for band, (low, high) in shapes.items()}
    return psf


def _central_range(train, feature_names, name, bands, empty):
    """
    Per band, the 0.5th and 99.5th percentiles of a feature's finite values
    in training (``empty[band]`` where it has none).
    """
    column = np.asarray(train.features)[:, :, feature_names.index(name)]
    ranges = {}
    for c, band in enumerate(bands):
        values = column[:, c][np.isfinite(column[:, c])]
        if values.size == 0:
            values = np.array([empty[band]])
        ranges[band] = np.quantile(values, [0.005, 0.995])
    return ranges


def train_release(dataset, output, *, config=None, device=None, resume=True, command=None,
                  progress=True, name=None, init=None):
    """
    The release recipe: train on a data set, calibrate, test, export weights.

    Trains on the ``train`` split with early stopping on ``val``, fits the
    probability temperature and the decision threshold (equal recalls) on
    ``val``, measures the metrics on the held-out ``test`` fields, and writes
    ``<output>/<name>.safetensors`` (fp16) whose metadata holds bands, stamp
    size, pixel scale, feature order, normalisation, threshold, temperature,
    architecture, the recipe and the test metrics.

    Parameters
    ----------
    dataset : path-like or sequence of path-like
        Directory written by `astro_starglx.dataset.make_dataset`, or several
        (their splits are concatenated by `~astro_starglx.dataset.load_dataset`,
        and the recipe records each set's seed and settings).
    output : path-like
        Output directory (checkpoints and the exported weights).
    config : `TrainConfig`, optional
    device : str or None, optional
        ``None`` picks CUDA when available.
    resume : bool, optional
        Resume from a checkpoint in ``output``.
    command : str or None, optional
        The command line recorded in the recipe.
    progress : bool, optional
    name : str or None, optional
        The model's name in its meta and file name (e.g. ``"rbim-lite-v2"``);
        default the model family, with the mode of an ablation appended.
    init : str, path-like or None, optional
        Continue training a model instead of starting from a random
        initialisation: a registry name (e.g. ``"rbim-lite-v5"``) or a
        ``.safetensors`` file whose weights and input normalisation are the
        starting point. Its bands, stamp size, pixel scale, features and
        architecture must be those of ``dataset`` and ``config``. The
        recipe records its name and sha256. Use a smaller ``config.lr``
        than for a fresh start (e.g. 5e-4), so that it keeps what it learned.

    Returns
    -------
    path : `~pathlib.Path`
        The exported ``.safetensors`` file.
    """
    from .dataset import load_dataset
    from .inference import resolve_device
    from .weights import save_weights

    config = config or TrainConfig()
    device = resolve_device(device)
    output = Path(output)
    train = load_dataset(dataset, "train")
    val = load_dataset(dataset, "val")
    test = load_dataset(dataset, "test")
    info = train.info
    feature_names, (train, val, test) = _select_features(config, info, (train, val, test))
    architecture = config.architecture(n_bands=len(info["bands"]), n_features=len(feature_names))
    start = _init_model(init, info=info, feature_names=feature_names,
                        architecture=architecture, device=device)
    result = fit(train, val, config=config, output_dir=output, device=device, resume=resume,
                 progress=progress,
                 normalization=None if start is None else start.meta.normalization,
                 init_state=None if start is None else start.network.state_dict(),
                 architecture=architecture)
    network = result.network
    val_logits = predict_logits(network, val, result.normalization, device=device)
    y_val = np.asarray(val.labels)
    temperature = float(metrics.fit_temperature(val_logits, y_val))
    if name is None:
        name = config.model if config.mode in (None, "fused") else f"{config.model}-{config.mode}"
    meta = ModelMeta(
        name=name, bands=tuple(info["bands"]), stamp_size=int(info["stamp_size"]),
        pixel_scale=float(info["pixel_scale"]), feature_names=tuple(feature_names),
        normalization=result.normalization, threshold=0.5, temperature=temperature,
        # the prior p_galaxy assumes: a class-balanced loss weighs each class alike
        star_fraction=0.5 if config.class_balance else float(np.mean(y_val == 0)),
        allow_missing_bands=config.band_dropout > 0,
        architecture=architecture,
        recipe={"command": command or "astro-starglx train", "data_seed": info["seed"],
                "init": None if start is None else {"name": start.name,
                                                    "sha256": start.sha256},
                "dataset": info.get("config"),
                "dataset_max_fields": info.get("max_fields"),
                "config": dataclasses.asdict(config),
                "best_epoch": result.best_epoch, "epochs_run": len(result.history)},
        psf=_psf_validity(info, train, feature_names))
    p_val = calibrated_proba(val_logits, meta)[:, 1]
    fit_on = _threshold_sources(val, config.threshold_max_mag)
    threshold = float(metrics.best_threshold(y_val[fit_on], p_val[fit_on], criterion="balanced"))
    # One threshold: per-magnitude ones (magnitude_thresholds) fitted on the
    # validation fields of data/v4 lowered the test galaxy recall at r <= 25
    # (97.09 -> 96.05 %, stars unchanged), so they are not used by default.
    meta = meta.replace(threshold=threshold)
    test_logits = predict_logits(network, test, result.normalization, device=device)
    p_test = calibrated_proba(test_logits, meta)[:, 1]
    y_test = np.asarray(test.labels)
    mag_r = np.asarray(test.catalog["mag_r"]) if "mag_r" in test.catalog.colnames else None
    test_metrics = decision_report(meta, y_test, p_test, test.features, mag_r=mag_r)
    meta = meta.replace(metrics={"test": test_metrics, "history": result.history})
    path = output / f"{name}.safetensors"
    save_weights(path, network.state_dict(), meta)
    (output / "metrics.json").write_text(json.dumps(meta.metrics, indent=2))
    log.info("wrote %s", path)
    return path


def _init_model(init, *, info, feature_names, architecture, device):
    """The model `train_release` continues from (``init``), checked against the data."""
    if init is None:
        return None
    from .weights import load_model

    start = load_model(init, device=device)
    meta = start.meta
    wanted = {"bands": tuple(info["bands"]), "stamp_size": int(info["stamp_size"]),
              "feature_names": tuple(feature_names), "architecture": architecture}
    have = {"bands": tuple(meta.bands), "stamp_size": int(meta.stamp_size),
            "feature_names": tuple(meta.feature_names), "architecture": meta.architecture}
    for key, value in wanted.items():
        if have[key] != value:
            msg = (f"init={init!r} has {key} {have[key]!r} but the data set and config give "
                   f"{value!r}; continue a model trained on data of the same kind (and "
                   "config.model), or leave init out to start afresh")
            raise ValueError(msg)
    if not math.isclose(meta.pixel_scale, float(info["pixel_scale"]), rel_tol=1e-3):
        msg = (f"init={init!r} reads pixels of {meta.pixel_scale} arcsec but the data set's "
               f"are {info['pixel_scale']}; use fine_tune for another pixel scale")
        raise ValueError(msg)
    return start


def _threshold_sources(val, max_mag):
    """The validation sources the threshold is fitted on (`TrainConfig.threshold_max_mag`)."""
    n = len(val.labels)
    if max_mag is None:
        return np.ones(n, dtype=bool)
    if "mag_r" not in val.catalog.colnames:
        msg = (f"TrainConfig.threshold_max_mag={max_mag} needs a mag_r column in the data "
               f"set's catalog, which has {val.catalog.colnames}; leave it None to fit the "
               "threshold on all validation sources")
        raise ValueError(msg)
    selected = np.asarray(val.catalog["mag_r"], dtype=float) <= max_mag
    y = np.asarray(val.labels)
    if min(np.sum(selected & (y == 0)), np.sum(selected & (y == 1))) < 1:
        msg = (f"no validation star or no galaxy has mag_r <= threshold_max_mag="
               f"{max_mag}; raise it or leave it None")
        raise ValueError(msg)
    return selected


#: Bin edges (r magnitudes measured by the model's own features) of the
#: thresholds that `train_release` fits: bright, r = 24-25, and fainter.
THRESHOLD_EDGES = (24.0, 25.0)


def r_band_mag(meta, features):
    """
    The r-band ``mag`` feature of every source, the one magnitude-dependent
    thresholds are binned by (`magnitude_thresholds`, ``fine_tune``).

    ``features`` is ``(N, C, F)`` in ``meta.bands`` and ``meta.feature_names``
    order; returns an ``(N,)`` float64 array, or None for a model without an
    r band or a ``mag`` feature.
    """
    if "mag" not in meta.feature_names or "r" not in meta.bands:
        return None
    return np.asarray(features)[:, list(meta.bands).index("r"),
                                list(meta.feature_names).index("mag")].astype(np.float64)


def magnitude_thresholds(meta, y_val, p_val, features, *, edges=THRESHOLD_EDGES,
                         min_per_class=30):
    """
    Decision thresholds per r-magnitude bin, fitted on validation data.

    A single threshold set on all magnitudes is pulled by the faintest
    sources, where stars and galaxies overlap most, and can give away
    bright galaxies that the network separates well; with your own labelled
    validation data (e.g. a survey with another star fraction per
    magnitude) set ``meta.replace(thresholds=...)`` from this. Measured on
    ``rbim-lite-v3`` with the validation fields of its data set it did not
    help on the test fields (galaxy recall at r <= 25 97.09 -> 96.05 %, stars
    unchanged: a few hundred validation sources per bin make the fit noisy),
    so `train_release` keeps one threshold. Each bin of the r
    magnitude (the model's own ``mag`` feature, as `classify` measures it)
    gets the threshold of equal star and galaxy recall on its validation
    sources (`~astro_starglx.metrics.binned_thresholds`); bins with fewer
    than ``min_per_class`` of either class keep ``meta.threshold``.

    Parameters
    ----------
    meta : `~astro_starglx.meta.ModelMeta`
        The model's meta, with its single ``threshold`` already fitted.
    y_val : array-like
        ``(N,)`` validation labels (0 star, 1 galaxy).
    p_val : array-like
        ``(N,)`` calibrated validation ``p_galaxy``.
    features : array-like
        ``(N, C, F)`` validation features in ``meta.feature_names`` order.
    edges : sequence of float, optional
        r-magnitude bin edges.
    min_per_class : int, optional

    Returns
    -------
    thresholds : dict or None
        The ``thresholds`` meta entry, or None for models without an r-band
        ``mag`` feature.
    """
    mag = r_band_mag(meta, features)
    if mag is None:
        return None
    values = metrics.binned_thresholds(y_val, p_val, mag, edges=edges,
                                       min_per_class=min_per_class, fallback=meta.threshold)
    return {"feature": "mag", "band": "r", "edges": [float(e) for e in edges],
            "values": [float(np.clip(v, 1e-4, 1.0 - 1e-4)) for v in values]}


def decision_report(meta, y_true, p_galaxy, features, *, mag_r=None):
    """
    Test metrics at the model's thresholds: all sources and, given ``mag_r``, r <= 25.

    With magnitude-dependent thresholds (``meta.thresholds``) each source is
    classified at its bin's threshold; the threshold-free metrics (AUC,
    Brier, ECE) are unchanged.
    """
    y_true, p_galaxy = np.asarray(y_true), np.asarray(p_galaxy, dtype=np.float64)
    per_source = meta.source_thresholds(features)

    def report(sel):
        out = metrics.classification_report(y_true[sel], p_galaxy[sel],
                                            threshold=float(meta.threshold))
        if meta.thresholds is not None:
            # the decisions at each source's threshold: p >= t <=> p - t + 0.5 >= 0.5;
            # AUC, Brier and ECE stay those of the probabilities themselves
            shifted = np.clip(p_galaxy[sel] - per_source[sel] + 0.5, 0.0, 1.0)
            decided = metrics.classification_report(y_true[sel], shifted, threshold=0.5)
            for key in ("recall_star", "recall_galaxy", "purity_star", "purity_galaxy",
                        "f1_star", "f1_galaxy", "accuracy"):
                out[key] = decided[key]
            out["threshold"] = "by r magnitude (meta thresholds)"
        return _jsonable(out)

    result = {"all": report(np.ones(len(y_true), bool))}
    if mag_r is not None:
        result["r<=25"] = report(np.asarray(mag_r) <= 25.0)
    return result


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
