"""The CIFAR ResNets of He et al. (2016), section 4.2: the CNNs whose CIFAR-10 numbers the literature quotes.

Unlike the ImageNet ResNets (a 7x7 stem, four stages of 64-512 channels), the CIFAR ResNets are small and
sized for 32x32 images::

    images (N, 3, 32, 32)
      -> 3x3 conv, 16 channels, BN, ReLU          (N, 16, 32, 32)
      -> stage 1: n basic blocks, 16 channels     (N, 16, 32, 32)
      -> stage 2: n basic blocks, 32 channels     (N, 32, 16, 16)    the first block strides by 2
      -> stage 3: n basic blocks, 64 channels     (N, 64, 8, 8)
      -> global average pool, linear              (N, classes)

``depth = 6n + 2`` weighted layers: ResNet-20 (n = 3, 0.27M parameters), ResNet-56 (n = 9, 0.85M).
A basic block is ``conv3x3-BN-ReLU-conv3x3-BN`` plus the shortcut, then ReLU. Where a block halves the
resolution and doubles the channels, the shortcut is **option A** (the paper's choice for CIFAR): the
input subsampled by 2 and zero-padded with the new channels, no parameters; option B (a 1x1 strided
convolution with BN) is available as ``shortcut="B"``.

The paper trains them 164 epochs (64k iterations of 128 images, SGD momentum 0.9, weight decay 1e-4,
learning rate 0.1 divided by 10 at 32k and 48k iterations, pad-4 crop + flip) to 91.25 % (ResNet-20) and
93.03 % (ResNet-56) test accuracy (Table 6: 8.75 % and 6.97 % error). The registered recipe keeps the
optimizer, the weight decay and the augmentation, with vitlab's warmup + cosine schedule in place of the steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ..core.configs import Config, ConfigError
from ..layers.patches import check_image_batch
from .registry import register_model

__all__ = ["CIFARResNetConfig", "CIFARResNet", "BasicBlock", "PUBLISHED_ACCURACY"]

#: He et al. 2016, Table 6: CIFAR-10 test accuracy with the 164-epoch schedule (100 - error, %).
PUBLISHED_ACCURACY: dict[str, float] = {"resnet20": 91.25, "resnet32": 92.49, "resnet44": 92.83, "resnet56": 93.03,
                                        "resnet110": 93.39}


@dataclass
class CIFARResNetConfig(Config):
    """A CIFAR ResNet: ``depth = 6n + 2``, stages of ``widths`` channels, option-A or option-B shortcuts."""

    depth: int = 20
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    widths: tuple[int, int, int] = (16, 32, 64)
    shortcut: Literal["A", "B"] = "A"

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)  # type: ignore[assignment]  # JSON gives a list
        super().__post_init__()
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ConfigError(f"CIFARResNetConfig.depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), "
                              f"got {self.depth}")
        if len(self.widths) != 3 or min(self.widths) <= 0:
            raise ConfigError(f"CIFARResNetConfig.widths must be three positive channel counts, got {self.widths}")
        if self.image_size % 4:
            raise ConfigError(f"CIFARResNetConfig.image_size must be divisible by 4 (two stride-2 stages), "
                              f"got {self.image_size}")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``. ``(N, C_in, H, W) -> (N, C_out, H/s, W/s)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.stride, self.pad = stride, out_channels - in_channels
        self.projection: nn.Module | None = None
        if (stride != 1 or self.pad) and shortcut == "B":
            self.projection = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def shortcut(self, x: Tensor) -> Tensor:
        """Option A: subsample by the stride, zero-pad the new channels (half before, half after, as the
        reference implementations do); option B: the 1x1 projection."""
        if self.projection is not None:
            return self.projection(x)
        if self.stride == 1 and not self.pad:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CIFARResNet(nn.Module):
    """He et al.'s CIFAR ResNet. Shapes: ``(N, C, H, W) -> (N, num_classes)`` logits."""

    family = "cifar_resnet"
    config_class = CIFARResNetConfig
    has_attention_maps = False
    is_transformer = False
    prefers_channels_last = True  # oneDNN convolutions run faster on NHWC batches (vitlab.core.layout)

    def __init__(self, config: CIFARResNetConfig | None = None) -> None:
        super().__init__()
        config = config or CIFARResNetConfig()
        self.config = config
        first, *_ = config.widths
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, first, 3, 1, 1, bias=False), nn.BatchNorm2d(first),
                                  nn.ReLU(inplace=True))
        stages, channels = [], first
        for index, width in enumerate(config.widths):
            blocks = []
            for block in range(config.blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, config.shortcut))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, config.num_classes)
        for module in self.modules():  # He initialization, as the paper
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        return set()  # biases and BatchNorm are left out by rule (vitlab.engine.train.weight_decay_groups)

    def gradcam_layer(self, layer: int = -1) -> nn.Module:
        """The last stage's output (8x8 for CIFAR): where Grad-CAM reads a CNN."""
        return self.stages[layer]

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, images: Tensor) -> Tensor:
        check_image_batch(images, self.config.in_channels, (self.config.image_size, self.config.image_size))
        features = self.stages(self.stem(images))
        return self.head(features.mean(dim=(2, 3)))


#: He et al.'s optimizer and augmentation; a warmup + cosine schedule instead of the step decay.
RECIPE = {"epochs": 164, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
          "warmup_epochs": 1.0, "min_lr": 0.0, "grad_clip": 0.0, "augment": "cifar"}
register_model("resnet20", CIFARResNet, CIFARResNetConfig(depth=20), recipe=RECIPE,
               description="He et al.'s CIFAR ResNet-20 (0.27M; 91.25 % published)")
register_model("resnet56", CIFARResNet, CIFARResNetConfig(depth=56), recipe=RECIPE,
               description="He et al.'s CIFAR ResNet-56 (0.85M; 93.03 % published)")
