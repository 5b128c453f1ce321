"""
The RBiM network: a ResNet image encoder and a bidirectional LSTM catalog
encoder whose feature vectors are fused by a classification head.

Follows Han et al. (2026, arXiv:2604.10086). Every variant is built from a
plain ``config`` dict stored in the weights metadata, so a weights file alone
says how to rebuild its network (torchvision's "weights as data" idea).
This module imports torch and torchvision only.
"""

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from .meta import MODEL_CONFIGS, validate_architecture

__all__ = ["RBiM", "ImageEncoder", "CatalogEncoder", "build_model", "MODEL_CONFIGS"]


def _small_stem(in_channels, width):
    # 3x3 stride-1 stem: keeps full resolution of the small stamps (see
    # MODEL_CONFIGS) instead of torchvision's 7x7/2 conv + 3x3/2 max-pool.
    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    )


class ImageEncoder(nn.Module):
    """
    ResNet encoder over an ``(N, C, H, W)`` stamp stack.

    Parameters
    ----------
    in_channels : int
        Number of bands ``C``.
    config : dict
        ``{"name": "resnet50" | "resnet18" | "resnet34", "stem": "small" |
        "standard"}`` for torchvision's networks, or ``{"name": "resnet",
        "block": "basic" | "bottleneck", "layers": [...], "widths": [...]}``
        for a narrow custom ResNet built from torchvision's residual blocks.

    Attributes
    ----------
    out_features : int
        Length of the feature vector returned by ``forward``.
    """

    def __init__(self, in_channels, config):
        super().__init__()
        name = config["name"]
        stem = config.get("stem", "small")
        if name in ("resnet50", "resnet18", "resnet34"):
            net = getattr(tv_resnet, name)(weights=None)
            if stem == "small":
                net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1,
                                      bias=False)
                net.maxpool = nn.Identity()
            else:
                net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3,
                                      bias=False)
            self.out_features = net.fc.in_features
            net.fc = nn.Identity()
            self.body = net
        else:
            block = {"basic": tv_resnet.BasicBlock,
                     "bottleneck": tv_resnet.Bottleneck}[config.get("block", "basic")]
            layers = list(config["layers"])
            widths = list(config["widths"])
            if len(layers) != len(widths) or not layers:
                msg = (f"image_encoder layers and widths must be non-empty lists of equal "
                       f"length, got {layers} and {widths}")
                raise ValueError(msg)
            modules = [_small_stem(in_channels, widths[0])]
            inplanes = widths[0]
            for i, (n_blocks, width) in enumerate(zip(layers, widths)):
                stride = 1 if i == 0 else 2
                out = width * block.expansion
                downsample = None
                if stride != 1 or inplanes != out:
                    downsample = nn.Sequential(tv_resnet.conv1x1(inplanes, out, stride),
                                               nn.BatchNorm2d(out))
                modules.append(block(inplanes, width, stride, downsample))
                inplanes = out
                for _ in range(1, n_blocks):
                    modules.append(block(inplanes, width))
            modules.append(nn.AdaptiveAvgPool2d(1))
            modules.append(nn.Flatten())
            self.body = nn.Sequential(*modules)
            self.out_features = inplanes

    def forward(self, x):
        """(N, C, H, W) float32 -> (N, out_features)."""
        return self.body(x)


class CatalogEncoder(nn.Module):
    """
    Bidirectional LSTM over the per-band catalog sequence.

    The catalog is read band by band in wavelength order (NUV -> y), one step
    per band, each step holding that band's features, as in the paper.

    Parameters
    ----------
    n_features : int
        Features per band ``F``.
    config : dict
        ``{"hidden_size": int, "num_layers": int, "dropout": float}``.
    """

    def __init__(self, n_features, config):
        super().__init__()
        hidden = int(config.get("hidden_size", 64))
        num_layers = int(config.get("num_layers", 1))
        dropout = float(config.get("dropout", 0.0)) if num_layers > 1 else 0.0
        self.lstm = nn.LSTM(n_features, hidden, num_layers=num_layers, batch_first=True,
                            bidirectional=True, dropout=dropout)
        self.out_features = 2 * hidden

    def forward(self, x):
        """(N, C, F) float32 -> (N, 2 * hidden_size)."""
        # Always float32: under CPU bfloat16 autocast oneDNN has no LSTM
        # primitive without native bf16 ("could not create a primitive
        # descriptor"), and the LSTM is a negligible share of the cost.
        with torch.autocast(device_type=x.device.type, enabled=False):
            _, (h_n, _) = self.lstm(x.float())
        # Last layer's final states: forward direction saw NUV..y, backward y..NUV.
        return torch.cat([h_n[-2], h_n[-1]], dim=1)


class RBiM(nn.Module):
    """
    The fused star-galaxy network (image encoder + BiLSTM + head).

    Parameters
    ----------
    config : dict
        A validated architecture config, see `build_model`.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.mode = config["mode"]
        n_in = 0
        self.image_encoder = None
        self.catalog_encoder = None
        if self.mode in ("fused", "image"):
            self.image_encoder = ImageEncoder(config["n_bands"], config["image_encoder"])
            n_in += self.image_encoder.out_features
        if self.mode in ("fused", "catalog"):
            self.catalog_encoder = CatalogEncoder(config["n_features"],
                                                  config["catalog_encoder"])
            n_in += self.catalog_encoder.out_features
        head = config["head"]
        hidden = int(head.get("hidden", 128))
        self.head = nn.Sequential(
            nn.Linear(n_in, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(float(head.get("dropout", 0.0))),
            nn.Linear(hidden, config["n_classes"]),
        )

    def forward(self, x_image, x_catalog):
        """
        Class logits.

        Parameters
        ----------
        x_image : torch.Tensor
            ``(N, C, H, W)`` float32 normalised stamps (ignored by the
            catalog-only variant).
        x_catalog : torch.Tensor
            ``(N, C, F)`` float32 normalised features (ignored by the
            image-only variant).

        Returns
        -------
        logits : torch.Tensor
            ``(N, n_classes)``.
        """
        parts = []
        if self.image_encoder is not None:
            parts.append(self.image_encoder(x_image))
        if self.catalog_encoder is not None:
            parts.append(self.catalog_encoder(x_catalog))
        return self.head(torch.cat(parts, dim=1))


def build_model(config):
    """
    Build an `RBiM` network from its architecture config.

    Parameters
    ----------
    config : dict
        Architecture config as stored in ``meta["architecture"]``: ``mode``
        (``"fused"``, ``"image"`` or ``"catalog"``), ``n_bands``,
        ``n_features``, ``n_classes``, ``image_encoder``, ``catalog_encoder``
        and ``head`` (see `MODEL_CONFIGS`).

    Returns
    -------
    model : RBiM
        Randomly initialised network (load a state dict to use it).

    Examples
    --------
    >>> import torch
    >>> from astro_starglx.model import build_model, MODEL_CONFIGS
    >>> config = dict(MODEL_CONFIGS["rbim-lite"], n_bands=7, n_features=5, n_classes=2)
    >>> net = build_model(config).eval()
    >>> net(torch.zeros(3, 7, 25, 25), torch.zeros(3, 7, 5)).shape
    torch.Size([3, 2])
    """
    return RBiM(validate_architecture(config))
