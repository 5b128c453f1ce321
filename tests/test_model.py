"""
Tests of the RBiM network variants built from config dicts.

The configs' validation is tested in test_meta.py too, BatchNorm folding in
test_inference.py.
"""

import pytest
import torch

from astro_starglx.meta import validate_architecture
from astro_starglx.model import MODEL_CONFIGS, build_model


def config(name, **kw):
    return dict(MODEL_CONFIGS[name], n_bands=7, n_features=5, n_classes=2, **kw)


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
@pytest.mark.parametrize("mode", ["fused", "image", "catalog"])
def test_every_variant_builds_and_runs(name, mode):
    net = build_model(dict(config(name), mode=mode)).eval()
    x = torch.randn(2, 7, 25, 25)
    f = torch.randn(2, 7, 5)
    with torch.inference_mode():
        out = net(x, f)
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()
    # The ablations really drop a branch.
    assert (net.image_encoder is None) == (mode == "catalog")
    assert (net.catalog_encoder is None) == (mode == "image")


def test_image_only_ignores_catalog_and_vice_versa():
    torch.manual_seed(0)
    img = build_model(dict(config("rbim-lite"), mode="image")).eval()
    cat = build_model(dict(config("rbim-lite"), mode="catalog")).eval()
    x, f = torch.randn(3, 7, 25, 25), torch.randn(3, 7, 5)
    with torch.inference_mode():
        assert torch.equal(img(x, f), img(x, torch.zeros_like(f)))
        assert torch.equal(cat(x, f), cat(torch.zeros_like(x), f))


def test_bilstm_reads_band_order():
    """The catalog encoder is sequence-aware: reversing the bands changes the output."""
    torch.manual_seed(1)
    net = build_model(dict(config("rbim-lite"), mode="catalog")).eval()
    f = torch.randn(4, 7, 5)
    with torch.inference_mode():
        assert not torch.allclose(net(None, f), net(None, f.flip(1)))


def test_stamp_size_agnostic():
    net = build_model(config("rbim-lite")).eval()
    with torch.inference_mode():
        for size in (15, 25, 33):
            assert net(torch.zeros(1, 7, size, size), torch.zeros(1, 7, 5)).shape == (1, 2)


def test_resnet50_is_paper_scale():
    net = build_model(config("rbim-resnet50"))
    n_params = sum(p.numel() for p in net.parameters())
    # torchvision's ResNet-50 body (23.5 M) + BiLSTM + head; fp16 fits in 50 MB.
    assert 23e6 < n_params < 25e6
    assert net.image_encoder.body.conv1.in_channels == 7
    assert net.image_encoder.body.conv1.stride == (1, 1)


def test_config_errors():
    with pytest.raises(ValueError, match=r"missing \['n_bands'"):
        validate_architecture({k: v for k, v in config("rbim-lite").items() if k != "n_bands"})
    with pytest.raises(ValueError, match="mode must be one of"):
        validate_architecture(dict(config("rbim-lite"), mode="both"))
    with pytest.raises(ValueError, match="n_features must be a positive int"):
        validate_architecture(dict(config("rbim-lite"), n_features=0))
    with pytest.raises(ValueError, match="image_encoder name must be"):
        validate_architecture(dict(config("rbim-lite"), image_encoder={"name": "vit"}))
    with pytest.raises(TypeError, match="config must be a dict"):
        validate_architecture(["resnet"])
    with pytest.raises(ValueError, match="image_encoder name must be"):
        build_model(dict(config("rbim-lite"), image_encoder={"name": "vit"}))
    with pytest.raises(ValueError, match="layers and widths must be non-empty lists"):
        build_model(dict(config("rbim-lite"), image_encoder={"name": "resnet", "layers": [1],
                                                             "widths": [8, 16]}))
