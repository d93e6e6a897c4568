"""CNN baselines for comparing with the ViT: ResNet-18, VGG-11 (BatchNorm), and a small plain CNN.

The ResNet and VGG are torchvision's own architectures, adapted for small images the way CIFAR
papers do: a 3x3 stride-1 stem without the early max-pool (ResNet), no final max-pool and a
global-average-pooled linear classifier instead of VGG's 4096-wide layers, and the input channel
count of the dataset (1 for MNIST). They train with the same engine, data and recipe as the ViT.

Shapes: every model maps ``(N, C, H, W) -> (N, num_classes)`` logits.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn
from torchvision.models import resnet18, vgg11_bn

from ..core.configs import Config
from ..layers.patches import check_image_batch
from .registry import register_model

__all__ = ["CNNConfig", "CNN_ARCHITECTURES", "SimpleCNN", "CNNClassifier"]

Architecture = Literal["resnet18", "vgg11", "simple_cnn"]
CNN_ARCHITECTURES: tuple[str, ...] = typing.get_args(Architecture)


@dataclass
class CNNConfig(Config):
    """Rebuilds a CNN baseline; saved in ``config.json``. ``arch`` must be one of :data:`CNN_ARCHITECTURES`."""

    arch: Architecture = "resnet18"
    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10


class SimpleCNN(nn.Module):
    """Three conv blocks (conv 3x3 + BatchNorm + ReLU) and a linear head: the classic small MNIST network.

    ``(N, C, H, W) -> conv 32 -> pool -> conv 64 -> pool -> conv 128 -> (N, 128, H/4, W/4)``
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


def _resnet18(in_channels: int, num_classes: int) -> tuple[nn.Module, str]:
    net = resnet18(weights=None, num_classes=num_classes)
    # Small images: 3x3 stride-1 stem and no max-pool, so 28/32 px keep enough resolution.
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net, "layer4"


def _vgg11(in_channels: int, num_classes: int) -> tuple[nn.Module, str]:
    net = vgg11_bn(weights=None)
    net.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    # Drop the fifth max-pool (28 px would shrink to nothing) and the 4096-wide classifier.
    net.features = nn.Sequential(*list(net.features.children())[:-1])
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Linear(512, num_classes)
    return net, f"features.{len(net.features) - 1}"


class CNNClassifier(nn.Module):
    """A CNN baseline with the interface every registered vitlab model has (see :mod:`vitlab.registry`)."""

    family = "cnn"
    config_class = CNNConfig
    has_attention_maps = False
    prefers_channels_last = True  # oneDNN convolutions run faster on NHWC batches (vitlab.core.layout)

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        if config.arch == "resnet18":
            self.net, gradcam_path = _resnet18(config.in_channels, config.num_classes)
        elif config.arch == "vgg11":
            self.net, gradcam_path = _vgg11(config.in_channels, config.num_classes)
        else:
            self.net = SimpleCNN(config.in_channels, config.num_classes)
            gradcam_path = f"features.{len(self.net.features) - 1}"
        self._gradcam_path = "net." + gradcam_path  # a name, not a second reference to a submodule

    def no_weight_decay(self) -> set[str]:
        """Nothing beyond biases and norm weights (which the optimizer always excludes)."""
        return set()

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm's name): what a linear probe trains."""
        if self.config.arch == "resnet18":
            return self.net.fc
        if self.config.arch == "vgg11":
            return self.net.classifier
        return self.net.head[-1]

    def gradcam_layer(self, layer: int = -1) -> nn.Module:
        """Grad-CAM's layer: the last convolutional stage (``layer`` is for ViTs and ignored here)."""
        return self.get_submodule(self._gradcam_path)

    def forward(self, images: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, classes)``."""
        check_image_batch(images, self.config.in_channels)
        return self.net(images)


register_model("resnet18", CNNClassifier, CNNConfig(arch="resnet18"),
               description="ResNet-18 baseline (3x3 stem, no max-pool; torchvision)")
register_model("vgg11", CNNClassifier, CNNConfig(arch="vgg11"),
               description="VGG-11-BN baseline (global pooling, linear head; torchvision)")
register_model("simple_cnn", CNNClassifier, CNNConfig(arch="simple_cnn"),
               description="small plain CNN (three conv layers)")
