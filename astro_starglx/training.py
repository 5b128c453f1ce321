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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import metrics
from .model import MODEL_CONFIGS, build_model, predict_batch, to_device
from .preprocess import compute_normalization, prepare_inputs

__all__ = ["TrainConfig", "FitResult", "fit", "predict_logits", "train_release",
           "augment_batch"]

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

    def architecture(self, *, n_bands, n_features):
        """The `~astro_starglx.model.build_model` config for this run."""
        config = json.loads(json.dumps(MODEL_CONFIGS[self.model]))
        if self.mode is not None:
            config["mode"] = self.mode
        config.update(n_bands=int(n_bands), n_features=int(n_features), n_classes=2)
        return config


@dataclass(frozen=True)
class FitResult:
    """Outcome of `fit`: the best network (by validation loss) and the history."""

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


def _batches(n, batch_size, rng=None):
    order = np.arange(n) if rng is None else rng.permutation(n)
    for start in range(0, n, batch_size):
        # Sorted indices make the memory-map gather sequential.
        yield np.sort(order[start:start + batch_size])


def predict_logits(network, data, normalization, *, batch_size=1024, device="cpu"):
    """
    Logits of a network over all sources of ``data``.

    Parameters
    ----------
    network : `torch.nn.Module`
    data : object
        Has ``stamps``, ``noise`` and ``features`` arrays (a
        `~astro_starglx.dataset.SplitData`).
    normalization : dict
        ``meta["normalization"]``.
    batch_size : int, optional
    device : str or `torch.device`, optional

    Returns
    -------
    logits : `~numpy.ndarray`
        ``(N, 2)`` float32.
    """
    device = torch.device(device)
    network.eval()
    out = np.empty((len(data.stamps), 2), dtype=np.float32)
    for idx in _batches(len(data.stamps), batch_size):
        x_image, x_catalog = prepare_inputs(data.stamps[idx], data.noise[idx],
                                            data.features[idx], normalization)
        out[idx] = predict_batch(network, x_image, x_catalog, device=device)
    return out


def _lr_lambda(config, steps_per_epoch):
    total = config.epochs * steps_per_epoch
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _save_atomic(obj, path):
    tmp = Path(str(path) + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(train, val, *, config, output_dir, normalization=None, device="cpu", resume=True,
        progress=False):
    """
    Train a network; checkpoint every epoch; resume exactly.

    Parameters
    ----------
    train, val : object
        Training and validation data with ``stamps`` ``(N, C, H, W)``,
        ``noise`` ``(N, C)``, ``features`` ``(N, C, F)`` and ``labels``
        ``(N,)`` (0 = star, 1 = galaxy) arrays; memory maps are streamed.
    config : `TrainConfig`
    output_dir : path-like
        Where ``checkpoint.pt`` is written after every epoch.
    normalization : dict or None, optional
        Input normalisation; ``None`` computes it from the training features.
    device : str or `torch.device`, optional
    resume : bool, optional
        Continue from ``output_dir/checkpoint.pt`` if it exists and was
        written with the same ``config``.
    progress : bool, optional
        Progress bar with loss and validation recall.

    Returns
    -------
    result : `FitResult`
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    n_train = len(train.labels)
    if config.max_train is not None:
        n_train = min(config.max_train, n_train)
    if normalization is None:
        normalization = compute_normalization(np.asarray(train.features[:n_train]),
                                              softening=config.softening)
    n_bands, n_features = train.features.shape[1:]
    arch = config.architecture(n_bands=n_bands, n_features=n_features)
    labels_train = np.asarray(train.labels[:n_train]).astype(np.int64)
    counts = np.bincount(labels_train, minlength=2).astype(float)
    weight = (counts.sum() / (2 * np.maximum(counts, 1))) if config.class_balance \
        else np.ones(2)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float32,
                                                      device=device),
                                  label_smoothing=config.label_smoothing)
    steps_per_epoch = math.ceil(n_train / config.batch_size)

    # Our own RNG streams: the global torch RNG is forked, never left changed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = build_model(arch).to(device)
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(network.parameters(), lr=config.lr, momentum=0.9,
                                    nesterov=True, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  _lr_lambda(config, steps_per_epoch))
    history, start_epoch, best = [], 0, {"loss": np.inf, "epoch": -1, "state": None}
    bad_epochs = 0
    ckpt_path = output_dir / _CHECKPOINT
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt["config"] != dataclasses.asdict(config):
            msg = (f"checkpoint {ckpt_path} was written with a different TrainConfig; "
                   "use another output directory or resume=False")
            raise ValueError(msg)
        network.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, start_epoch = ckpt["history"], ckpt["epoch"] + 1
        best = {"loss": ckpt["best_loss"], "epoch": ckpt["best_epoch"],
                "state": ckpt["best_state"]}
        bad_epochs = ckpt["bad_epochs"]
        normalization = ckpt["normalization"]
        log.info("resumed from %s after epoch %d", ckpt_path, ckpt["epoch"])

    cuda = device.type == "cuda"
    for epoch in range(start_epoch, config.epochs):
        if bad_epochs >= config.patience:
            break
        # Per-epoch streams seeded from (seed, epoch): resuming needs no RNG state.
        rng = np.random.default_rng([config.seed, epoch])
        network.train()
        total, n_seen = 0.0, 0
        with torch.random.fork_rng(devices=[device] if cuda else []):
            torch.manual_seed(config.seed * 100003 + epoch)
            bar = tqdm(_batches(n_train, config.batch_size, rng), total=steps_per_epoch,
                       disable=not progress, desc=f"epoch {epoch + 1}/{config.epochs}",
                       unit="batch")
            for idx in bar:
                stamps, feats = train.stamps[idx], train.features[idx]
                if config.augment or config.band_dropout:
                    stamps, feats = augment_batch(stamps, feats, rng=rng,
                                                  flips=config.augment,
                                                  band_dropout=config.band_dropout)
                x_image, x_catalog = prepare_inputs(stamps, train.noise[idx], feats,
                                                    normalization)
                x_image, x_catalog = to_device(x_image, x_catalog, device)
                y = torch.from_numpy(labels_train[idx]).to(device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                    enabled=cuda):
                    loss = loss_fn(network(x_image, x_catalog).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(idx)
                n_seen += len(idx)
                bar.set_postfix(loss=f"{total / n_seen:.4f}")
        logits = predict_logits(network, val, normalization, device=device)
        y_val = np.asarray(val.labels).astype(np.int64)
        val_loss = float(nn.functional.cross_entropy(torch.from_numpy(logits),
                                                     torch.from_numpy(y_val)))
        p_gal = metrics.softmax(logits)[:, 1]
        report = metrics.classification_report(y_val, p_gal, threshold=0.5)
        entry = {"epoch": epoch, "train_loss": total / max(n_seen, 1), "val_loss": val_loss,
                 "val_recall_star": report["recall_star"],
                 "val_recall_galaxy": report["recall_galaxy"],
                 "lr": scheduler.get_last_lr()[0]}
        history.append(entry)
        log.info("epoch %d: %s", epoch, entry)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f}, val loss "
                       f"{val_loss:.4f}, val recall star {report['recall_star']:.4f} "
                       f"galaxy {report['recall_galaxy']:.4f}")
        if val_loss < best["loss"]:
            best = {"loss": val_loss, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in network.state_dict().items()}}
            bad_epochs = 0
        else:
            bad_epochs += 1
        _save_atomic({"config": dataclasses.asdict(config), "epoch": epoch,
                      "model": network.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "history": history,
                      "best_loss": best["loss"], "best_epoch": best["epoch"],
                      "best_state": best["state"], "bad_epochs": bad_epochs,
                      "normalization": normalization}, ckpt_path)
    if best["state"] is not None:
        network.load_state_dict(best["state"])
    network.eval()
    return FitResult(network=network, history=history, best_epoch=best["epoch"],
                     normalization=normalization)


# Data-set settings copied into a release's recipe.
_RECIPE_DATASET_KEYS = ("n_fields", "field_size", "detect", "psf_scale_range", "psf_models",
                        "psf_beta_range", "exptime_scale_range", "galaxy_size_range",
                        "sersic_fraction", "colour_scatter", "position_jitter", "mag_range",
                        "counts")


def train_release(dataset, output, *, config=None, device=None, resume=True, command=None,
                  progress=True):
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
    dataset : path-like
        Directory written by `astro_starglx.dataset.make_dataset`.
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

    Returns
    -------
    path : `~pathlib.Path`
        The exported ``.safetensors`` file.
    """
    from .dataset import load_dataset
    from .weights import resolve_device, save_weights

    config = config or TrainConfig()
    device = resolve_device(device)
    output = Path(output)
    train = load_dataset(dataset, "train")
    val = load_dataset(dataset, "val")
    test = load_dataset(dataset, "test")
    info = train.info
    result = fit(train, val, config=config, output_dir=output, device=device, resume=resume,
                 progress=progress)
    network = result.network
    val_logits = predict_logits(network, val, result.normalization, device=device)
    y_val = np.asarray(val.labels)
    temperature = float(metrics.fit_temperature(val_logits, y_val))
    p_val = metrics.softmax(val_logits, temperature=temperature)[:, 1]
    threshold = float(metrics.best_threshold(y_val, p_val, criterion="balanced"))
    test_logits = predict_logits(network, test, result.normalization, device=device)
    p_test = metrics.softmax(test_logits, temperature=temperature)[:, 1]
    y_test = np.asarray(test.labels)
    mag_r = np.asarray(test.catalog["mag_r"]) if "mag_r" in test.catalog.colnames else None
    test_metrics = {"all": _jsonable(metrics.classification_report(y_test, p_test,
                                                                   threshold=threshold))}
    if mag_r is not None:
        bright = mag_r <= 25.0
        test_metrics["r<=25"] = _jsonable(metrics.classification_report(
            y_test[bright], p_test[bright], threshold=threshold))
    name = config.model if config.mode in (None, "fused") else f"{config.model}-{config.mode}"
    meta = {
        "name": name,
        "bands": list(info["bands"]),
        "stamp_size": int(info["stamp_size"]),
        "pixel_scale": float(info["pixel_scale"]),
        "feature_names": list(info["feature_names"]),
        "normalization": result.normalization,
        "class_names": ["star", "galaxy"],
        "threshold": threshold,
        "temperature": temperature,
        "allow_missing_bands": config.band_dropout > 0,
        "architecture": config.architecture(n_bands=len(info["bands"]),
                                            n_features=len(info["feature_names"])),
        "recipe": {"command": command or "astro-starglx train", "data_seed": info["seed"],
                   # The data set's settings; the per-field variations only
                   # where the set has them (sets built before they existed do not).
                   "dataset": {k: info[k] for k in _RECIPE_DATASET_KEYS if k in info},
                   "config": dataclasses.asdict(config), "best_epoch": result.best_epoch,
                   "epochs_run": len(result.history)},
        "metrics": {"test": test_metrics, "history": result.history},
    }
    path = output / f"{name}.safetensors"
    save_weights(path, network.state_dict(), meta)
    (output / "metrics.json").write_text(json.dumps(meta["metrics"], indent=2))
    log.info("wrote %s", path)
    return path


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
