"""Tests of astro_starglx.inference: the one inference path."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from astro_starglx import inference
from astro_starglx.inference import (Predictor, calibrated_proba, fuse_for_inference,
                                     predict_batch, predict_logits, resolve_device, to_device)
from astro_starglx.meta import ModelMeta
from astro_starglx.model import MODEL_CONFIGS, build_model
from astro_starglx.preprocess import prepare_inputs

from conftest import seeded_state_dict


def config(name, **kw):
    return dict(MODEL_CONFIGS[name], n_bands=7, n_features=5, n_classes=2, **kw)


def raw_inputs(n, *, seed, size=15):
    rng = np.random.default_rng(seed)
    stamps = rng.normal(0.0, 3.0, (n, 7, size, size)).astype(np.float32)
    stamps[0, 2] = np.nan  # a missing band
    noise = rng.uniform(0.5, 2.0, (n, 7)).astype(np.float32)
    features = rng.normal(0.0, 1.0, (n, 7, 5)).astype(np.float32)
    features[1, 3, 2] = np.nan
    return stamps, noise, features


@pytest.fixture
def tiny(tiny_meta):
    """(eval-mode network with seeded weights and trained-like BatchNorm, ModelMeta)."""
    network = build_model(tiny_meta["architecture"])
    network.load_state_dict(seeded_state_dict(tiny_meta))
    return network.eval(), ModelMeta.from_dict(tiny_meta)


# ---------------------------------------------------------------------- devices


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected


@pytest.mark.parametrize("device", ["meta", "mps", torch.device("meta")])
def test_resolve_device_other_types(device):
    with pytest.raises(ValueError, match=r"device must be None, 'cpu', 'cuda' or 'cuda:N', got "
                                         r"'(meta|mps)'; the models run on CPUs and CUDA GPUs"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["toaster", "cuda:x", 3.5, [0]])
def test_resolve_device_not_a_device(device):
    with pytest.raises(ValueError, match=r"device must be None, 'cpu', 'cuda' or 'cuda:N', "
                                         r"got .*\(.*\)"):
        resolve_device(device)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda:0")])
def test_resolve_device_cuda_without_gpu(device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"device='cuda(:\d)?' was requested but "
                                           r"torch.cuda.is_available\(\) is False.*"
                                           r"use device='cpu', or device=None"):
        resolve_device(device)
    assert resolve_device(None) == torch.device("cpu")


# ------------------------------------------------------------------ fusion, tensors


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_fuse_for_inference_keeps_outputs(name):
    torch.manual_seed(2)
    net = build_model(config(name))
    # Non-trivial BatchNorm statistics, as after training.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    fused = fuse_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # untouched
    assert not fused.training
    x, f = torch.randn(4, 7, 25, 25), torch.randn(4, 7, 5)
    with torch.inference_mode():
        ref = net(x, f)
        plain = fused(x, f)
        np_cl = fused.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last), f)
    torch.testing.assert_close(plain, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(np_cl, ref, rtol=1e-4, atol=1e-4)


def test_to_device_and_predict_batch_on_cpu(tiny):
    network, meta = tiny
    x_image, x_catalog = prepare_inputs(*raw_inputs(3, seed=0), meta.normalization)
    image, catalog = to_device(x_image, x_catalog, torch.device("cpu"),
                               memory_format=torch.channels_last)
    assert image.is_contiguous(memory_format=torch.channels_last)
    assert image.shape == (3, 7, 15, 15) and catalog.shape == (3, 7, 5)
    logits = predict_batch(network, x_image, x_catalog, device=torch.device("cpu"))
    assert logits.dtype == np.float32 and logits.shape == (3, 2)
    with torch.inference_mode():
        expected = network(torch.from_numpy(x_image), torch.from_numpy(x_catalog)).numpy()
    np.testing.assert_array_equal(logits, expected)


def test_predict_batch_chunks_on_cpu(tiny, monkeypatch):
    """A batch larger than CPU_FORWARD_CHUNK runs in chunks, with the same logits."""
    import astro_starglx.inference as inference

    network, meta = tiny
    x_image, x_catalog = prepare_inputs(*raw_inputs(11, seed=1), meta.normalization)
    whole = predict_batch(network, x_image, x_catalog, device=torch.device("cpu"))
    calls = []
    real_forward = network.forward
    monkeypatch.setattr(network, "forward", lambda *a: calls.append(len(a[0])) or real_forward(*a))
    monkeypatch.setattr(inference, "CPU_FORWARD_CHUNK", 4)
    chunked = predict_batch(network, x_image, x_catalog, device=torch.device("cpu"))
    assert calls == [4, 4, 3]
    assert chunked.shape == (11, 2) and chunked.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- probabilities


def test_calibrated_proba(tiny_meta):
    logits = np.array([[0.0, 2.0], [1.0, -1.0], [3.0, 3.0]])
    plain = calibrated_proba(logits, ModelMeta.from_dict(tiny_meta))
    np.testing.assert_allclose(plain, torch.softmax(torch.tensor(logits), 1).numpy(),
                               rtol=1e-6)
    hot = calibrated_proba(logits, ModelMeta.from_dict(dict(tiny_meta, temperature=2.0)))
    np.testing.assert_allclose(hot, torch.softmax(torch.tensor(logits) / 2.0, 1).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(hot.sum(1), 1.0, rtol=1e-6)
    # a higher temperature pulls probabilities towards 1/2, never across it
    assert np.all(np.abs(hot - 0.5) <= np.abs(plain - 0.5) + 1e-7)
    assert np.all(np.sign(hot - 0.5) == np.sign(plain - 0.5))


@pytest.mark.parametrize("temperature", [1.0, 1.8])
def test_predictor_matches_plain_network(tiny, temperature):
    network, meta = tiny
    meta = meta.replace(temperature=temperature)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    predictor = Predictor(network, meta, device="cpu", precision="fp32")
    assert predictor.meta is meta and predictor.device == torch.device("cpu")
    assert predictor.bf16 is False
    stamps, noise, features = raw_inputs(9, seed=1)
    proba = predictor(stamps, noise, features)
    x_image, x_catalog = prepare_inputs(stamps, noise, features, meta.normalization)
    with torch.inference_mode():
        logits = network(torch.from_numpy(x_image), torch.from_numpy(x_catalog))
        expected = torch.softmax(logits / temperature, dim=1).numpy()
    assert proba.shape == (9, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba, expected, rtol=1e-4, atol=1e-5)
    # the network given is not modified (folded on a copy)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    for key, value in network.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_predictor_precision(tiny, monkeypatch):
    network, meta = tiny
    stamps, noise, features = raw_inputs(64, seed=3)
    fp32 = Predictor(network, meta, device="cpu", precision="fp32")
    bf16 = Predictor(network, meta, device="cpu", precision="bf16")
    assert bf16.bf16 is True and fp32.bf16 is False
    p32, p16 = fp32(stamps, noise, features), bf16(stamps, noise, features)
    assert p16.dtype == np.float32 and p16.shape == p32.shape
    np.testing.assert_allclose(p16.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p16, p32, atol=2e-2)  # bfloat16: 8 bits of mantissa
    assert not np.array_equal(p16, p32)  # and bfloat16 really ran
    # "auto" follows the hardware: bfloat16 only where it runs natively
    for native in (False, True):
        monkeypatch.setattr(inference, "_cpu_native_bf16", lambda native=native: native)
        assert inference.native_bf16("cpu") is native
        assert Predictor(network, meta, device="cpu").bf16 is native
    assert inference.native_bf16("cuda") is True and inference.native_bf16("meta") is False
    for bad in ("fp16", None, True):
        with pytest.raises(ValueError, match=r"precision must be one of \['auto', 'bf16', "
                                             r"'fp32'\].*got " + re.escape(repr(bad))):
            Predictor(network, meta, device="cpu", precision=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predictor_on_cuda_matches_cpu(tiny):
    network, meta = tiny  # on the CPU: the predictor puts its copy on the GPU
    stamps, noise, features = raw_inputs(9, seed=1)
    on_cpu = Predictor(network, meta, device="cpu")(stamps, noise, features)
    on_gpu = Predictor(network, meta, device="cuda")(stamps, noise, features)
    assert next(network.parameters()).is_cpu
    np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-2)  # bf16 autocast on CUDA


def test_predictor_empty_batch(tiny):
    network, meta = tiny
    stamps, noise, features = raw_inputs(2, seed=2)
    proba = Predictor(network, meta, device="cpu")(stamps[:0], noise[:0], features[:0])
    assert proba.shape == (0, 2)


# ------------------------------------------------------------------ predict_logits


def test_predict_logits_is_batch_size_invariant(tiny):
    network, meta = tiny
    stamps, noise, features = raw_inputs(23, seed=3)
    data = SimpleNamespace(stamps=stamps, noise=noise, features=features)
    network.train()  # predict_logits puts it in eval mode
    reference = predict_logits(network, data, meta.normalization, batch_size=1024)
    assert not network.training
    assert reference.shape == (23, 2) and reference.dtype == np.float32
    for batch_size in (1, 4, 7, 22, 23):
        logits = predict_logits(network, data, meta.normalization, batch_size=batch_size)
        np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-6)
    # a normalisation dict is accepted too (the form stored in a file)
    as_dict = predict_logits(network, data, meta.normalization.to_dict(), batch_size=5)
    np.testing.assert_allclose(as_dict, reference, rtol=1e-5, atol=1e-6)
    x_image, x_catalog = prepare_inputs(stamps, noise, features, meta.normalization)
    with torch.inference_mode():
        direct = network(torch.from_numpy(x_image), torch.from_numpy(x_catalog)).numpy()
    np.testing.assert_allclose(reference, direct, rtol=1e-5, atol=1e-6)


def test_predict_logits_memmap_and_empty(tiny, tmp_path):
    network, meta = tiny
    stamps, noise, features = raw_inputs(6, seed=4)
    np.save(tmp_path / "stamps.npy", stamps)
    data = SimpleNamespace(stamps=np.load(tmp_path / "stamps.npy", mmap_mode="r"),
                           noise=noise, features=features)
    in_memory = SimpleNamespace(stamps=stamps, noise=noise, features=features)
    np.testing.assert_array_equal(predict_logits(network, data, meta.normalization),
                                  predict_logits(network, in_memory, meta.normalization))
    empty = SimpleNamespace(stamps=stamps[:0], noise=noise[:0], features=features[:0])
    out = predict_logits(network, empty, meta.normalization)
    assert out.shape == (0, 2) and out.dtype == np.float32


# ------------------------------------------------------------------ symmetrised inference

from astro_starglx.inference import SYMMETRIES, canonical_pose, check_symmetrize  # noqa: E402

D4 = SYMMETRIES["d4"]


def orient(a, transpose, flip_y, flip_x):
    a = a.swapaxes(-1, -2) if transpose else a
    a = a[..., ::-1, :] if flip_y else a
    return np.ascontiguousarray(a[..., ::-1] if flip_x else a)


def test_symmetries_are_groups():
    """d4 holds the 8 distinct orientations, flips its 4 flips; both closed under composition."""
    probe = np.arange(12.0).reshape(1, 1, 3, 4)[..., :3, :3]
    for name, size in (("none", 1), ("flips", 4), ("d4", 8)):
        ops = SYMMETRIES[name]
        images = {orient(probe, *op).tobytes() for op in ops}
        assert len(ops) == len(images) == size
        for a in ops:
            for b in ops:
                assert orient(orient(probe, *a), *b).tobytes() in images, (name, a, b)


def test_canonical_pose_is_the_same_for_every_orientation():
    """All 8 orientations of a stamp stack map to one pose, which is one of them."""
    rng = np.random.default_rng(3)
    stamps = rng.normal(size=(64, 3, 9, 9)).astype(np.float32)
    stamps[:, :, 4, 4] += 20.0  # centred sources with noise around them
    posed = canonical_pose(stamps)
    for op in D4:
        np.testing.assert_array_equal(canonical_pose(orient(stamps, *op)), posed)
    for k in range(len(stamps)):
        assert any(np.array_equal(posed[k], orient(stamps[k], *op)) for op in D4)
    # the chosen pose puts the light towards +y first, +x second
    yy, xx = np.mgrid[:9, :9] - 4.0
    light = posed.sum(axis=1)
    my, mx = (light * yy).sum(axis=(1, 2)), (light * xx).sum(axis=(1, 2))
    assert np.all(my >= np.abs(mx) - 1e-9) and np.all(mx >= 0)


def test_canonical_pose_breaks_ties_by_the_pixels():
    """Stamps whose moments tie (symmetric, sparse or empty) still get one pose."""
    rng = np.random.default_rng(0)
    stamps = np.zeros((200, 3, 9, 9), np.float32)
    for i in range(200):  # a few pixels mirrored about the diagonal: |mean_x| = |mean_y|
        for _ in range(int(rng.integers(1, 4))):
            a, b = rng.integers(0, 9, 2)
            stamps[i, rng.integers(0, 3), a, b] = rng.choice([0.5, 1.0, 2.0])
            stamps[i, rng.integers(0, 3), b, a] = rng.choice([0.5, 1.0, 2.0])
    stamps[:20] = 0.0
    stamps[:10, :, 4, 4] = 1.0  # perfectly symmetric; 10-19 stay empty
    posed = canonical_pose(stamps)
    for op in D4:
        np.testing.assert_array_equal(canonical_pose(orient(stamps, *op)), posed)


def test_canonical_predictor_needs_one_forward(tiny, monkeypatch):
    """symmetrize="canonical" runs the network once and is orientation-invariant."""
    import astro_starglx.inference as inference

    network, meta = tiny
    calls = []
    real = inference.predict_batch
    monkeypatch.setattr(inference, "predict_batch",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    predictor = Predictor(network, meta, device="cpu", symmetrize="canonical")
    rng = np.random.default_rng(4)
    n, c, size = 6, meta.n_bands, meta.stamp_size
    stamps = rng.normal(size=(n, c, size, size)).astype(np.float32)
    noise = np.ones((n, c), np.float32)
    features = rng.normal(size=(n, c, len(meta.feature_names))).astype(np.float32)
    ref = predictor(stamps, noise, features)
    assert len(calls) == 1
    for op in D4[1:]:
        np.testing.assert_allclose(predictor(orient(stamps, *op), noise, features), ref,
                                   atol=1e-6)


@pytest.mark.parametrize(("value", "expected"), [
    ("none", "none"), ("flips", "flips"), ("d4", "d4"), ("D4", "d4"), (True, "canonical"),
    ("canonical", "canonical"), (False, "none"), (np.bool_(True), "canonical")])
def test_check_symmetrize(value, expected):
    assert check_symmetrize(value) == expected


@pytest.mark.parametrize("value", ["c4", "", None, 8, 1, ["d4"]])
def test_check_symmetrize_rejects(tiny, value):
    with pytest.raises(ValueError, match=r"symmetrize must be one of \['canonical', 'd4', 'flips', "
                                         r"'none'\] or a bool, got .*; use 'canonical'"):
        check_symmetrize(value)
    with pytest.raises(ValueError, match=r"symmetrize must be one of"):
        Predictor(*tiny, device="cpu", symmetrize=value)


def test_predictor_symmetrize_none_is_the_plain_predictor(tiny):
    network, meta = tiny
    stamps, noise, features = raw_inputs(7, seed=5)
    plain = Predictor(network, meta, device="cpu")
    assert plain.symmetrize == "none"
    np.testing.assert_array_equal(
        Predictor(network, meta, device="cpu", symmetrize=False)(stamps, noise, features),
        plain(stamps, noise, features))


def test_predictor_d4_averages_logits_and_is_invariant(tiny):
    _, meta = tiny
    meta = meta.replace(temperature=1.7)
    torch.manual_seed(3)  # torch's default init: a network that sees orientation
    network = build_model(meta.architecture).eval()
    stamps, noise, features = raw_inputs(6, seed=6)
    stamps[:, :, 2:6, 3:5] += 40.0  # an off-centre, elongated source
    stamps[2, :, 3:5, 6:9] = np.nan  # masked pixels move with the stamp
    plain = Predictor(network, meta, device="cpu")
    d4 = Predictor(network, meta, device="cpu", symmetrize="d4")
    flips = Predictor(network, meta, device="cpu", symmetrize="flips")
    every = np.stack([plain.logits(orient(stamps, *op), noise, features) for op in D4])
    np.testing.assert_allclose(d4.logits(stamps, noise, features), every.mean(0), atol=1e-6)
    np.testing.assert_allclose(flips.logits(stamps, noise, features), every[:4].mean(0),
                               atol=1e-6)
    np.testing.assert_allclose(d4(stamps, noise, features),
                               calibrated_proba(every.mean(0), meta), atol=1e-6)
    # the random-init network itself is not invariant ...
    assert np.abs(every - every[0]).max() > 1e-3
    reference = d4(stamps, noise, features)
    for op in D4:  # ... its D4 average is, to float32 rounding
        np.testing.assert_allclose(d4(orient(stamps, *op), noise, features), reference,
                                   atol=1e-6)
    for op in SYMMETRIES["flips"]:
        np.testing.assert_allclose(flips(orient(stamps, *op), noise, features),
                                   flips(stamps, noise, features), atol=1e-6)
    assert d4(stamps[:0], noise[:0], features[:0]).shape == (0, 2)


@pytest.mark.parametrize("symmetrize", ["canonical", "none", "flips"])
def test_predictor_prepare_then_forward_is_logits(tiny, symmetrize):
    """The split that lets a worker thread prepare batch k + 1: bit for bit the same."""
    network, meta = tiny
    predict = Predictor(network, meta, device="cpu", symmetrize=symmetrize)
    stamps, noise, features = raw_inputs(9, seed=11)
    x_image, x_catalog = predict.prepare(stamps, noise, features)
    np.testing.assert_array_equal(predict.forward(x_image, x_catalog),
                                  predict.logits(stamps, noise, features))
    np.testing.assert_array_equal(predict.proba(x_image, x_catalog),
                                  predict(stamps, noise, features))


def test_torch_threads_reserves_and_restores():
    from astro_starglx.inference import torch_threads

    before = torch.get_num_threads()
    with torch_threads(reserve=1):
        assert torch.get_num_threads() == max(1, before - 1)
    assert torch.get_num_threads() == before
    with torch_threads(reserve=0):
        assert torch.get_num_threads() == before
    with pytest.raises(KeyError), torch_threads(reserve=before + 5):
        assert torch.get_num_threads() == 1
        raise KeyError("restored on errors too")
    assert torch.get_num_threads() == before


def test_torch_threads_shares_among_callers():
    from astro_starglx.inference import torch_threads

    before = torch.get_num_threads()
    torch.set_num_threads(5)
    try:
        with torch_threads(share=2):
            assert torch.get_num_threads() == 2
        with torch_threads(reserve=1, share=2):
            assert torch.get_num_threads() == 2
        with torch_threads(share=8):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 5
    finally:
        torch.set_num_threads(before)
