"""
The one inference path (torch only; no astropy).

Every prediction of the package goes through here: `StarGalaxyClassifier`,
training's validation passes, `astro_starglx.evaluation` and the release
recipe. `resolve_device` picks the device; `Predictor` holds a loaded model
with its BatchNorm folded into the convolutions and a channels-last layout
(twice the CPU throughput of the plain network) and maps raw inputs to
calibrated probabilities, optionally symmetrised over the flips and
rotations of the stamps (`SYMMETRIES`), in bfloat16 where the hardware runs
it natively (`native_bf16`); `predict_logits` streams a data split through a
network; `calibrated_proba` applies the model's temperature.
"""

import contextlib
import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .metrics import softmax
from .preprocess import Normalization, prepare_inputs

__all__ = ["resolve_device", "check_symmetrize", "fuse_for_inference", "to_device",
           "predict_batch", "predict_logits", "calibrated_proba", "Predictor", "SYMMETRIES",
           "SYMMETRIZE_OPTIONS", "canonical_pose", "torch_threads", "thread_budget",
           "CPU_FORWARD_CHUNK", "native_bf16", "check_precision", "resolve_bf16",
           "PRECISION_OPTIONS"]

#: Orientations of the stamps averaged by ``symmetrize``: each is a list of
#: ``(transpose, flip_y, flip_x)`` applied to the last two axes of an
#: ``(N, C, H, W)`` array. ``"d4"`` is the dihedral group of the square (the
#: 4 rotations by 90 degrees and the 4 reflections): its average is exactly
#: invariant to any flip, transpose or 90-degree rotation of the images.
#: ``"flips"`` is its subgroup {identity, x flip, y flip, 180-degree rotation}:
#: invariant to those 4 only, at half the cost.
SYMMETRIES = {
    "none": ((False, False, False),),
    "flips": ((False, False, False), (False, False, True), (False, True, False),
              (False, True, True)),
    "d4": ((False, False, False), (False, False, True), (False, True, False),
           (False, True, True), (True, False, False), (True, False, True),
           (True, True, False), (True, True, True)),
}

#: ``symmetrize`` options: the averages of `SYMMETRIES` and ``"canonical"``,
#: which turns every stamp into one pose chosen from its own pixels (see
#: `canonical_pose`): exactly invariant to the 8 orientations at the cost of
#: one forward, because the training recipe augments with all 8.
SYMMETRIZE_OPTIONS = ("canonical", *SYMMETRIES)

#: ``precision`` options of `Predictor`: ``"auto"`` runs the convolutions in
#: bfloat16 where the hardware does so natively (`native_bf16`), ``"bf16"``
#: always, ``"fp32"`` never.
PRECISION_OPTIONS = ("auto", "bf16", "fp32")


def native_bf16(device):
    """
    Whether ``device`` runs bfloat16 convolutions natively.

    True on CUDA, and on CPUs whose oneDNN has bfloat16 kernels (AVX-512
    BF16 or AMX). Elsewhere bfloat16 is emulated and slower than float32
    (``benchmarks/bench_training.py``).

    Parameters
    ----------
    device : str or `torch.device`

    Returns
    -------
    bool
    """
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _cpu_native_bf16()


def _cpu_native_bf16():
    # oneDNN's own check, and the instructions it needs
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()
                    and (torch.cpu._is_avx512_bf16_supported()
                         or torch.cpu._is_amx_tile_supported()))
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision):
    """
    Validate a ``precision`` option (`PRECISION_OPTIONS`).

    Raises
    ------
    ValueError
        If ``precision`` is not one of them.
    """
    if not isinstance(precision, str) or precision not in PRECISION_OPTIONS:
        msg = (f"precision must be one of {list(PRECISION_OPTIONS)} ('auto': bfloat16 where "
               f"the hardware runs it natively, else float32), got {precision!r}")
        raise ValueError(msg)
    return precision


def resolve_bf16(precision, device):
    """
    Whether a ``precision`` option (`PRECISION_OPTIONS`) runs bfloat16 on ``device``.

    ``"auto"`` is `native_bf16`; shared by inference (`Predictor`) and
    training (`~astro_starglx.training.TrainConfig.use_bf16`).

    Raises
    ------
    ValueError
        If ``precision`` is not one of `PRECISION_OPTIONS`.
    """
    if check_precision(precision) == "auto":
        return native_bf16(device)
    return precision == "bf16"


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
    ValueError
        If ``device`` is not a device name, or names a device type other
        than CPU or CUDA (e.g. ``"meta"``).
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
    if device.type not in ("cpu", "cuda"):
        msg = (f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {str(device)!r}; "
               "the models run on CPUs and CUDA GPUs only")
        raise ValueError(msg)
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = (f"device={str(device)!r} was requested but torch.cuda.is_available() is False "
               f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use device='cpu', "
               "or device=None to pick CUDA only when a GPU is present")
        raise RuntimeError(msg)
    return device


def check_symmetrize(symmetrize):
    """
    Validate a ``symmetrize`` option.

    Parameters
    ----------
    symmetrize : {"canonical", "none", "flips", "d4"} or bool
        ``True`` is ``"canonical"`` and ``False`` is ``"none"``.

    Returns
    -------
    symmetrize : str
        One of `SYMMETRIZE_OPTIONS`.

    Raises
    ------
    ValueError
        If ``symmetrize`` is anything else.
    """
    if isinstance(symmetrize, (bool, np.bool_)):
        return "canonical" if symmetrize else "none"
    if isinstance(symmetrize, str) and symmetrize.lower() in SYMMETRIZE_OPTIONS:
        return symmetrize.lower()
    msg = (f"symmetrize must be one of {sorted(SYMMETRIZE_OPTIONS)} or a bool, got "
           f"{symmetrize!r}; use 'canonical' (each stamp turned to a pose chosen from its "
           "pixels), 'd4' (average over the 8 flips and 90-degree rotations of the stamps), "
           "'flips' (4 flips) or 'none'")
    raise ValueError(msg)


def canonical_pose(x_image):
    """
    Each stamp stack turned to a pose chosen from its own pixels.

    Of the 8 flips and 90-degree rotations of a stamp, the one whose
    band-summed light has the largest ``mean_x + 2 mean_y`` (first moments
    about the stamp centre) is chosen, so that the light sits towards +y,
    and towards +x as the second choice. Flipping, transposing or rotating
    the input by 90 degrees changes the moments in the same way, so the
    chosen pose, and the network's answer on it, are the same for all 8
    orientations of a stamp; moments that tie (to rounding) are decided by
    comparing the candidate poses' pixels, which flips do not change. A
    network trained with flip and rotation augmentation
    (``TrainConfig.augment``) sees every pose alike, so this
    costs no accuracy and one forward, where averaging over the 8 costs 8.
    (The moments are computed here rather than by a library because the
    rule only needs two sums per stamp.)

    Parameters
    ----------
    x_image : `~numpy.ndarray`
        ``(N, C, H, W)`` normalised stamps (NaN-free, as from
        `~astro_starglx.preprocess.prepare_inputs`).

    Returns
    -------
    posed : `~numpy.ndarray`
        ``(N, C, H, W)``, a new C-contiguous array.
    """
    x_image = np.asarray(x_image)
    n, _, height, width = x_image.shape
    light = x_image.sum(axis=1, dtype=np.float64)
    mx = light.sum(axis=1) @ (np.arange(width) - (width - 1) / 2.0)
    my = light.sum(axis=2) @ (np.arange(height) - (height - 1) / 2.0)
    # After (transpose, flip_y, flip_x) the moments are (+-m_b, +-m_a) with
    # (m_a, m_b) = (mx, my) swapped by the transpose: score each of the 8.
    keys = np.empty((n, len(SYMMETRIES["d4"])))
    for k, (transpose, flip_y, flip_x) in enumerate(SYMMETRIES["d4"]):
        ax, ay = (my, mx) if transpose else (mx, my)
        keys[:, k] = (-ax if flip_x else ax) + 2.0 * (-ay if flip_y else ay)
    choice = np.argmax(keys, axis=1)
    # Near ties (|mean_x| = |mean_y|, or a moment of 0, to rounding: the sums
    # run in another order on a flipped stamp) are broken by the posed pixels
    # themselves, compared as sequences: flips only move pixels, so that
    # order is exact, and the same pose wins for every orientation.
    top = keys.max(axis=1, keepdims=True)
    tol = 1e-9 * (np.abs(mx) + np.abs(my))[:, None] + 1e-300
    tied = keys >= top - tol
    for i in np.flatnonzero(tied.sum(axis=1) > 1):
        candidates = [(k, _orient(x_image[i:i + 1], *SYMMETRIES["d4"][k]).ravel())
                      for k in np.flatnonzero(tied[i])]
        choice[i] = max(candidates, key=lambda kc: tuple(kc[1].tolist()))[0]
    posed = np.empty_like(x_image, order="C")
    for k, orientation in enumerate(SYMMETRIES["d4"]):
        sel = choice == k
        if sel.any():
            posed[sel] = _orient(x_image[sel], *orientation)
    return posed


def _orient(x_image, transpose, flip_y, flip_x):
    """One orientation of ``(N, C, H, W)`` stamps, as a new C-contiguous array."""
    if transpose:
        x_image = x_image.swapaxes(-1, -2)
    if flip_y:
        x_image = x_image[..., ::-1, :]
    if flip_x:
        x_image = x_image[..., ::-1]
    return np.ascontiguousarray(x_image)


def thread_budget():
    """
    Threads a call may keep busy on the CPU: torch's intra-op thread count.

    That is the number of cores by default, what `torch.set_num_threads`
    set, or ``OMP_NUM_THREADS`` when it was set before torch started: Dask's
    worker processes get 1 (``distributed.nanny.pre-spawn-environ``), SLURM
    jobs often the cores they were given. With 1, `~astro_starglx.
    StarGalaxyClassifier.classify` runs every step in the calling thread.
    """
    return max(1, torch.get_num_threads())


@contextlib.contextmanager
def torch_threads(*, reserve=0, share=1):
    """
    Run torch's CPU operators on fewer intra-op threads, then restore.

    For callers that keep cores busy themselves: ``reserve`` threads fewer
    (a thread preparing the next batch), and what is left divided among
    ``share`` threads that each run the network at the same time. Threads
    that outnumber the cores take turns, and an operator waits for its
    slowest thread. Never fewer than one thread; the number set before is
    restored on exit. Measured on 2 shared cores (``rbim-lite-v3``, 10,000
    sources of a 4096^2 7-band field): classify() with the input thread took
    17 s with 1 torch thread, 27 s with 2; a network's outputs do not depend
    on its thread count (the tests check).

    Parameters
    ----------
    reserve : int, optional
        Threads to leave to the caller (0: none).
    share : int, optional
        Threads running the network at once (1: one).
    """
    before = torch.get_num_threads()
    wanted = max(1, (before - max(reserve, 0)) // max(share, 1))
    if wanted == before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fuse_for_inference(model):
    """
    A copy of an eval-mode network with every BatchNorm folded into its conv.

    Inference only: the folded network gives the same outputs (to float32
    rounding) with fewer passes over the feature maps. Measured on the
    2-core CPU with ``rbim-lite`` and 1024 stamps of 25 x 25 pixels: 2,060
    objects/s plain, 2,360 folded, 4,300 folded with channels-last inputs.

    Parameters
    ----------
    model : `torch.nn.Module`
        A network from `build_model` (not modified).

    Returns
    -------
    fused : `torch.nn.Module`
        The folded copy, in eval mode.
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        # torchvision's residual blocks and ResNet stem: convN followed by bnN.
        for suffix in ("", "1", "2", "3"):
            conv = getattr(module, f"conv{suffix}", None)
            bn = getattr(module, f"bn{suffix}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, f"conv{suffix}", fuse_conv_bn_eval(conv, bn))
                setattr(module, f"bn{suffix}", nn.Identity())
        # Our stems and torchvision's downsample branches: Sequential(conv, bn, ...).
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = module._modules[first], module._modules[second]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module._modules[first] = fuse_conv_bn_eval(conv, bn)
                    module._modules[second] = nn.Identity()
    return fused


def to_device(x_image, x_catalog, device, *, memory_format=torch.contiguous_format):
    """
    Network inputs from `~astro_starglx.preprocess.prepare_inputs` as tensors on ``device``.

    On CUDA the arrays go through pinned host memory with non-blocking copies,
    so the transfer overlaps with compute.

    Parameters
    ----------
    x_image : `~numpy.ndarray`
        ``(N, C, H, W)`` float32.
    x_catalog : `~numpy.ndarray`
        ``(N, C, F)`` float32.
    device : `torch.device`
    memory_format : `torch.memory_format`, optional
        Layout of the image tensor (``torch.channels_last`` for a network
        converted to it, see `fuse_for_inference`).

    Returns
    -------
    x_image, x_catalog : `torch.Tensor`
    """
    x_image = torch.from_numpy(x_image).contiguous(memory_format=memory_format)
    x_catalog = torch.from_numpy(x_catalog)
    if device.type == "cuda":
        x_image = x_image.pin_memory().to(device, non_blocking=True)
        x_catalog = x_catalog.pin_memory().to(device, non_blocking=True)
    return x_image, x_catalog


#: On the CPU, `predict_batch` runs the network on at most this many sources
#: at a time: a 1024-source batch's activations (16 x 25 x 25 floats per
#: source and layer, 41 MB) spill out of the caches. Measured with the folded
#: ``rbim-lite-v10`` on this project's 2-core AVX2 machine, 4,096 sources
#: in batches of 1,024, median of 7 interleaved runs (objects/s, chunk 1024 /
#: 512 / 256 / 128 / 64): one thread 1,916 / 2,301 / 2,668 / 2,833 / 2,993,
#: two threads 3,803 / 4,151 / 5,543 / 5,372 / 4,990.
CPU_FORWARD_CHUNK = 256


def predict_batch(network, x_image, x_catalog, *, device, memory_format=torch.contiguous_format,
                  bf16=None):
    """
    Logits of an eval-mode network on one batch of prepared numpy inputs.

    The one inference forward shared by `~astro_starglx.StarGalaxyClassifier`
    and the training/evaluation code: `torch.inference_mode`, and bf16
    autocast on CUDA (the precision the networks are trained with there) or
    where ``bf16`` says so. On the CPU a batch larger than `CPU_FORWARD_CHUNK`
    runs in chunks of that size.

    Parameters
    ----------
    network : `torch.nn.Module`
    x_image, x_catalog : `~numpy.ndarray`
        From `~astro_starglx.preprocess.prepare_inputs`.
    device : `torch.device`
    memory_format : `torch.memory_format`, optional
        See `to_device`.
    bf16 : bool or None, optional
        Run the convolutions under bfloat16 autocast (the recurrent catalog
        encoder stays float32). None: on CUDA only, so that training's
        validation and the evaluation code give the same numbers on every CPU.

    Returns
    -------
    logits : `~numpy.ndarray`
        ``(N, n_classes)`` float32.
    """
    n = len(x_image)
    chunk = CPU_FORWARD_CHUNK if device.type == "cpu" else max(n, 1)
    bf16 = device.type == "cuda" if bf16 is None else bool(bf16)
    parts = []
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                                enabled=bf16):
        for start in range(0, max(n, 1), chunk):
            image, catalog = to_device(x_image[start:start + chunk],
                                       x_catalog[start:start + chunk], device,
                                       memory_format=memory_format)
            parts.append(network(image, catalog).float().cpu().numpy())
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _batches(n, batch_size):
    for start in range(0, n, batch_size):
        yield np.arange(start, min(start + batch_size, n))


def predict_logits(network, data, normalization, *, batch_size=1024, device="cpu"):
    """
    Logits of a network over all sources of ``data``.

    Parameters
    ----------
    network : `torch.nn.Module`
        Put in ``eval()`` mode here.
    data : object
        Has ``stamps``, ``noise`` and ``features`` arrays (a
        `~astro_starglx.dataset.SplitData`); memory maps are streamed.
    normalization : `~astro_starglx.preprocess.Normalization`
    batch_size : int, optional
    device : str or `torch.device`, optional

    Returns
    -------
    logits : `~numpy.ndarray`
        ``(N, n_classes)`` float32.
    """
    device = torch.device(device)
    normalization = Normalization.from_dict(normalization)
    network.eval()
    n = len(data.stamps)
    out = None
    for idx in _batches(n, batch_size):
        x_image, x_catalog = prepare_inputs(data.stamps[idx], data.noise[idx],
                                            data.features[idx], normalization)
        logits = predict_batch(network, x_image, x_catalog, device=device)
        if out is None:
            out = np.empty((n, logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return np.empty((0, 2), dtype=np.float32) if out is None else out


def calibrated_proba(logits, meta):
    """
    Class probabilities: the softmax at the model's fitted temperature.

    Parameters
    ----------
    logits : array_like
        ``(N, n_classes)``.
    meta : `~astro_starglx.meta.ModelMeta`

    Returns
    -------
    proba : `~numpy.ndarray`
        ``(N, n_classes)`` float32, columns in ``meta.class_names`` order.
    """
    return softmax(logits, temperature=meta.temperature)


class Predictor:
    """
    Raw inputs -> calibrated probabilities for one loaded model.

    The network is folded (`fuse_for_inference`) and converted to
    channels-last once, at construction.

    Parameters
    ----------
    network : `torch.nn.Module`
        An eval-mode network (not modified).
    meta : `~astro_starglx.meta.ModelMeta`
    device : `torch.device`
        Where the folded copy of the network runs.
    symmetrize : {"none", "canonical", "flips", "d4"} or bool, optional
        Make the answer independent of how the image's pixel grid is
        oriented on the sky: ``"canonical"`` (or ``True``) turns each stamp
        to a pose chosen from its own pixels (`canonical_pose`; one
        forward); ``"d4"`` averages the logits over the 8 flips and
        90-degree rotations (`SYMMETRIES`; 8 forwards), ``"flips"`` over the
        4 flips; ``"none"`` (or ``False``) does neither. The catalog
        features are orientation-invariant and go in unchanged.
    precision : {"auto", "bf16", "fp32"}, optional
        Arithmetic of the convolutions: ``"auto"`` is bfloat16 autocast
        where the device runs it natively (`native_bf16`: CUDA, CPUs with
        AVX-512 BF16 or AMX) and float32 elsewhere. On this project's 2-core
        AVX-512 BF16 machine bfloat16 ran ``rbim-lite-v12``'s forward 2.6
        times as fast on one thread (16,900 against 6,500 objects/s); on the
        20,000 sources of ``benchmarks/bench_survey.py``'s synthetic chip it
        moved ``p_galaxy`` by at most 0.025 (99th percentile 0.006) and
        changed 8 classes (``benchmarks/bench_classify.py --precision fp32
        bf16`` times both).

    Attributes
    ----------
    bf16 : bool
        Whether the convolutions run in bfloat16 (``precision`` resolved).

    Raises
    ------
    ValueError
        If ``symmetrize`` or ``precision`` is not one of the above.
    """

    def __init__(self, network, meta, *, device, symmetrize="none", precision="auto"):
        self.meta = meta
        self.device = torch.device(device)
        self.symmetrize = check_symmetrize(symmetrize)
        self.bf16 = resolve_bf16(precision, self.device)
        # on self.device too: the inputs go there, wherever the network given lives
        self.network = fuse_for_inference(network).to(self.device,
                                                      memory_format=torch.channels_last)

    def prepare(self, stamps, noise, features):
        """
        Network inputs of one batch: the normalisation, and the canonical pose.

        numpy only (no torch, no shared state), so a caller may run it in a
        worker thread for batch k + 1 while `forward` runs batch k:
        ``forward(*prepare(s, n, f))`` is `logits` ``(s, n, f)``, bit for bit.
        Parameters are those of `__call__`.

        Returns
        -------
        x_image, x_catalog : `~numpy.ndarray`
            From `~astro_starglx.preprocess.prepare_inputs`, the stamps
            turned by `canonical_pose` when ``symmetrize="canonical"``.
        """
        x_image, x_catalog = prepare_inputs(stamps, noise, features, self.meta.normalization)
        if self.symmetrize == "canonical":
            x_image = canonical_pose(x_image)
        return x_image, x_catalog

    def forward(self, x_image, x_catalog):
        """
        Logits of one prepared batch (`prepare`), averaged over the orientations of
        ``symmetrize``.

        Returns
        -------
        logits : `~numpy.ndarray`
            ``(N, n_classes)`` float32.
        """
        if self.symmetrize == "canonical":
            return predict_batch(self.network, x_image, x_catalog, device=self.device,
                                 memory_format=torch.channels_last, bf16=self.bf16)
        orientations = SYMMETRIES[self.symmetrize]
        total = None
        for orientation in orientations:
            logits = predict_batch(self.network, _orient(x_image, *orientation), x_catalog,
                                   device=self.device, memory_format=torch.channels_last,
                                   bf16=self.bf16)
            total = logits.astype(np.float64) if total is None else total + logits
        return (total / len(orientations)).astype(np.float32)

    def proba(self, x_image, x_catalog):
        """Calibrated probabilities of one prepared batch (`prepare`): ``(N, n_classes)``."""
        return calibrated_proba(self.forward(x_image, x_catalog), self.meta)

    def logits(self, stamps, noise, features):
        """
        Logits of one batch, averaged over the orientations of ``symmetrize``.

        Parameters are those of `__call__`.

        Returns
        -------
        logits : `~numpy.ndarray`
            ``(N, n_classes)`` float32.
        """
        return self.forward(*self.prepare(stamps, noise, features))

    def __call__(self, stamps, noise, features):
        """
        Probabilities of one batch.

        Parameters
        ----------
        stamps : `~numpy.ndarray`
            ``(N, C, H, W)`` background-subtracted stamps.
        noise : `~numpy.ndarray`
            ``(N, C)`` per-pixel noise.
        features : `~numpy.ndarray`
            ``(N, C, F)`` catalog features.

        Returns
        -------
        proba : `~numpy.ndarray`
            ``(N, n_classes)`` float32.
        """
        return calibrated_proba(self.logits(stamps, noise, features), self.meta)
