"""CNN baselines for comparing with the ViT: ResNet-18, VGG-11 (BatchNorm), and a small plain CNN.

The ResNet and VGG are torchvision's own architectures, adapted for small images the way CIFAR
papers do: a 3x3 stride-1 stem without the early max-pool (ResNet), no final max-pool and a
global-average-pooled linear classifier instead of VGG's 4096-wide layers, and the input channel
count of the dataset (1 for MNIST). They train with the same engine, data and recipe as the ViT.

Shapes: every model maps ``(N, C, H, W) -> (N, num_classes)`` logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["CNNConfig", "CNN_ARCHITECTURES", "SimpleCNN", "CNNClassifier", "build_cnn", "create_cnn"]

CNN_ARCHITECTURES = ("resnet18", "vgg11", "simple_cnn")


@dataclass
class CNNConfig:
    """Rebuilds a CNN baseline; saved in ``config.json``."""

    arch: str = "resnet18"
    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.arch not in CNN_ARCHITECTURES:
            raise ValueError(f"unknown CNN {self.arch!r}; available: {', '.join(CNN_ARCHITECTURES)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CNNConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown CNNConfig field(s) {unknown}")
        return cls(**values)


class SimpleCNN(nn.Module):
    """Two conv blocks and a linear head: the classic small MNIST network.

    ``(N, C, H, W) -> conv 3x3 32 -> pool -> conv 3x3 64 -> pool -> (N, 64, H/4, W/4)``
    ``-> global average -> linear -> (N, classes)``.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def _resnet18(in_channels: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes)
    # Small images: 3x3 stride-1 stem and no max-pool, so 28/32 px keep enough resolution.
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net, net.layer4


def _vgg11(in_channels: int, num_classes: int) -> tuple[nn.Module, nn.Module]:
    from torchvision.models import vgg11_bn

    net = vgg11_bn(weights=None)
    net.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    # Drop the fifth max-pool (28 px would shrink to nothing) and the 4096-wide classifier.
    net.features = nn.Sequential(*list(net.features.children())[:-1])
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Linear(512, num_classes)
    return net, net.features[-1]


class CNNClassifier(nn.Module):
    """A CNN baseline with the interface the rest of vitlab expects (config, family, Grad-CAM layer)."""

    family = "cnn"

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        if config.arch == "resnet18":
            self.net, gradcam_layer = _resnet18(config.in_channels, config.num_classes)
        elif config.arch == "vgg11":
            self.net, gradcam_layer = _vgg11(config.in_channels, config.num_classes)
        else:
            self.net = SimpleCNN(config.in_channels, config.num_classes)
            gradcam_layer = self.net.features[-1]
        # A plain attribute, not a registered submodule: it is already inside self.net.
        object.__setattr__(self, "gradcam_layer", gradcam_layer)

    def forward(self, images: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, classes)``."""
        if images.dim() != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"{self.config.arch} expects (N, {self.config.in_channels}, H, W) images, "
                             f"got shape {tuple(images.shape)}")
        return self.net(images)


def create_cnn(arch: str, image_size: int = 28, in_channels: int = 1, num_classes: int = 10) -> CNNClassifier:
    return CNNClassifier(CNNConfig(arch, image_size, in_channels, num_classes))


def build_cnn(family: str, fields: dict[str, Any]) -> nn.Module:
    """Rebuild from ``config.json`` (used by :func:`vitlab.checkpoint.build_model`)."""
    if family != "cnn":
        raise ValueError(f"unknown model family {family!r}")
    return CNNClassifier(CNNConfig.from_dict(fields))
