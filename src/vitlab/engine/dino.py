"""DINO: self-distillation with no labels (Caron et al. 2021), and the evaluations that go with it.

A *student* ViT learns to predict the output of a *teacher* that is itself: an exponential moving
average (EMA) of the student's own past weights. Both see different random views of the same image:
the teacher only the two large "global" crops, the student those and several small "local" crops, so
the student must recognize from a small part what the teacher sees in the whole. With a projection
head ``g`` on the backbone ``f`` and ``K`` output dimensions::

    P_t(x) = softmax((g_t(f_t(x)) - c) / tau_t)        teacher: centered by c, sharpened by a low tau_t
    P_s(x) = softmax(g_s(f_s(x)) / tau_s)
    loss   = mean over pairs (global view u, any other view v != u) of  -sum_k P_t(u)_k log P_s(v)_k

Only the student gets gradients; after each step the teacher follows it, ``theta_t <- m theta_t +
(1 - m) theta_s`` with ``m`` rising from ``momentum_teacher`` to 1 on a cosine. Two opposite forces
prevent the trivial solution (every image the same output): the **center** ``c`` (an EMA of the
teacher's mean output) stops one dimension from dominating, but alone pushes towards the uniform
distribution; **sharpening** (``tau_t < tau_s``) pushes away from uniform. The run records the
teacher's per-image entropy (``-> 0``: one-dimension collapse) and the entropy of its mean output
(``-> log K`` together with a per-image entropy ``-> log K``: uniform collapse) every epoch.

The learned features are judged without training the backbone: a weighted k-NN classifier
(:func:`knn_classify`, DINO's evaluation) and a linear probe (:func:`linear_probe`) on frozen
features. :func:`pretrain` writes a run folder whose ``model.safetensors`` is the teacher's
backbone (DINO evaluates and transfers the teacher), which ``vitlab train --init RUN`` fine-tunes.

Following the reference code (github.com/facebookresearch/dino): the head is a 3-layer MLP, an L2-
normalized bottleneck and a weight-normalized last layer with unit norm; the last layer is frozen
for the first epoch; the loss skips the pairs where student and teacher see the same view; local
crops run at their own resolution with the position table interpolated. Left out for CPU budgets:
the weight-decay schedule, Gaussian blur and solarization, and the teacher-temperature warmup's
default is no warmup (as in the reference's default).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align
from tqdm.auto import tqdm

from ..core.configs import Config, ConfigError
from ..core.runtime import seed_everything
from ..data.datasets import ImageTensorDataset, epoch_order, load_dataset, normalize
from ..data.loader import BatchLoader
from ..models.measure import count_parameters
from ..models.registry import create_model, model_config
from ..models.vit import ViT
from ..runfolder.run import Run, model_spec
from ..runfolder.schema import DatasetRecord, ModelRecord, RunConfig
from .budget import BudgetPlan, plan_steps
from .driver import Task, drive
from .loop import DistContext, Trainer
from .recipe import field_help as _help
from .train import load_modules, weight_decay_groups

__all__ = ["DinoConfig", "random_resized_crop", "color_jitter", "multi_crop", "DINOHead", "DINOLoss",
           "MultiCropWrapper", "cosine_schedule", "ema_update", "output_entropies",
           "extract_features", "knn_classify", "linear_probe", "pretrain", "DinoTask", "DINO_HISTORY_FIELDS"]




@dataclass
class DinoConfig(Config):
    """The DINO pretraining recipe; each field is a ``vitlab pretrain`` flag. Saved in ``config.json``."""

    epochs: int = field(default=10, metadata=_help("passes over the (unlabelled) training set"))
    batch_size: int = field(default=128, metadata=_help("images per step (each gives 2 global + local crops)"))
    lr: float = field(default=5e-4, metadata=_help("peak learning rate (AdamW) per 256 images: the step uses "
                                                   "lr * batch_size / 256, DINO's linear scaling rule"))
    min_lr: float = field(default=1e-6, metadata=_help("final learning rate of the cosine schedule"))
    warmup_epochs: float = field(default=1.0, metadata=_help("linear learning-rate warmup, in epochs"))
    weight_decay: float = field(default=0.04, metadata=_help("AdamW weight decay (biases, norms, tokens excluded)"))
    grad_clip: float | None = field(default=3.0, metadata=_help("max gradient norm; 0 disables"))
    out_dim: int = field(default=1024, metadata=_help("K, the number of output dimensions ('prototypes')"))
    hidden_dim: int = field(default=512, metadata=_help("width of the projection head's MLP"))
    bottleneck_dim: int = field(default=128, metadata=_help("the L2-normalized bottleneck before the last layer"))
    student_temp: float = field(default=0.1, metadata=_help("tau_s"))
    teacher_temp: float = field(default=0.04, metadata=_help("tau_t after its warmup (sharpening: below tau_s)"))
    warmup_teacher_temp: float = field(default=0.04, metadata=_help("tau_t at the start of its warmup"))
    warmup_teacher_temp_epochs: float = field(default=0.0, metadata=_help("linear warmup of tau_t, in epochs"))
    centering: bool = field(default=True, metadata=_help("subtract the center from the teacher's output "
                                                         "(switch off only to watch the collapse)"))
    center_momentum: float = field(default=0.9, metadata=_help("EMA rate of the center"))
    momentum_teacher: float = field(default=0.996, metadata=_help("teacher EMA momentum at the start (cosine to 1)"))
    local_crops: int = field(default=4, metadata=_help("number of small crops per image (the student's only)"))
    global_scale: tuple[float, float] = field(default=(0.4, 1.0), metadata=_help("area range of the global crops"))
    local_scale: tuple[float, float] = field(default=(0.05, 0.4), metadata=_help("area range of the local crops"))
    local_size: int | None = field(default=None, metadata=_help("side of the local crops (default: half the image, "
                                                                "a multiple of the patch size)"))
    flip: bool | None = field(default=None, metadata=_help("random horizontal flips (default: for RGB images only; "
                                                           "digits and letters are not mirror-symmetric)"))
    color_jitter: float = field(default=0.4, metadata=_help("brightness/contrast strength (saturation and "
                                                            "grayscale for RGB); 0 disables"))
    freeze_last_layer_epochs: float = field(default=1.0, metadata=_help("keep the head's last layer fixed this "
                                                                        "long (stabilizes the start)"))
    knn_k: int = field(default=20, metadata=_help("neighbours of the k-NN evaluation"))
    knn_temperature: float = field(default=0.07, metadata=_help("temperature of the k-NN vote weights"))
    monitor_bank: int = field(default=10000, metadata=_help("training images in the per-epoch k-NN bank"))
    seed: int = field(default=0, metadata=_help("fixes initialization, crops and data order"))
    max_steps_per_epoch: int | None = field(default=None, metadata=_help("cut epochs short (smoke tests)"))

    def __post_init__(self) -> None:
        self.global_scale = tuple(self.global_scale)  # type: ignore[assignment]  # JSON gives lists
        self.local_scale = tuple(self.local_scale)  # type: ignore[assignment]
        super().__post_init__()
        if self.grad_clip == 0:
            self.grad_clip = None
        for name in ("epochs", "batch_size", "lr", "out_dim", "hidden_dim", "bottleneck_dim", "student_temp",
                     "teacher_temp", "warmup_teacher_temp", "knn_k", "knn_temperature", "monitor_bank"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"DinoConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise ConfigError("DinoConfig.batch_size must be at least 2: the center is a batch mean")
        for name in ("min_lr", "warmup_epochs", "weight_decay", "warmup_teacher_temp_epochs", "local_crops",
                     "color_jitter", "freeze_last_layer_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"DinoConfig.{name} cannot be negative, got {getattr(self, name)!r}")
        for name in ("center_momentum", "momentum_teacher"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"DinoConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("global_scale", "local_scale"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high <= 1.0:
                raise ConfigError(f"DinoConfig.{name} must be (low, high) with 0 < low <= high <= 1, "
                                  f"got {getattr(self, name)!r}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ConfigError(f"DinoConfig.grad_clip must be positive, or 0/None to disable, got {self.grad_clip}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch <= 0:
            raise ConfigError("DinoConfig.max_steps_per_epoch must be positive or None")


# --------------------------------------------------------------------------- multi-crop augmentation


def random_resized_crop(images: Tensor, size: int, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """A random crop of each image, covering a fraction ``scale`` of its area with an aspect ratio in
    ``ratio`` (log-uniform), resized to ``size x size``. ``(N, C, H, W) -> (N, C, size, size)``.

    Vectorized with :func:`torchvision.ops.roi_align`: bilinear, with as many samples per output pixel
    as input pixels it covers (``sampling_ratio=-1``), so downscaling averages instead of skipping
    pixels and a crop of the whole image at its own size is the image. Crops that would not fit are
    shrunk to fit.
    """
    n, _, height, width = images.shape
    device = images.device
    area = torch.empty(n, device=device).uniform_(*scale) * height * width
    log_ratio = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
    crop_w = torch.sqrt(area * aspect).clamp(1.0, width)
    crop_h = torch.sqrt(area / aspect).clamp(1.0, height)
    x0 = torch.rand(n, device=device) * (width - crop_w)
    y0 = torch.rand(n, device=device) * (height - crop_h)
    boxes = torch.stack([torch.arange(n, device=device, dtype=images.dtype), x0, y0, x0 + crop_w, y0 + crop_h], 1)
    return roi_align(images, boxes.to(images.dtype), output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)


def color_jitter(images: Tensor, strength: float = 0.4, grayscale_p: float = 0.2) -> Tensor:
    """Random brightness and contrast (and, for RGB, saturation and grayscale) per image, on images in
    ``[0, 1]``. ``(N, C, H, W) -> (N, C, H, W)``, clamped to ``[0, 1]``. ``strength`` 0 is the identity."""
    if strength <= 0:
        return images
    n, channels = images.shape[:2]
    device = images.device

    def factor() -> Tensor:
        return torch.empty(n, 1, 1, 1, device=device).uniform_(1 - strength, 1 + strength)

    images = images * factor()                                               # brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * factor() + mean                               # contrast
    if channels == 3:
        gray = (images * torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        images = (images - gray) * factor().clamp_min(0) * 0.5 + gray * 0.5 + images * 0.5  # saturation (halved)
        to_gray = torch.rand(n, 1, 1, 1, device=device) < grayscale_p
        images = torch.where(to_gray, gray.expand_as(images), images)
    return images.clamp(0.0, 1.0)


def multi_crop(images: Tensor, mean: Sequence[float], std: Sequence[float], config: DinoConfig, global_size: int,
               local_size: int) -> list[Tensor]:
    """DINO's views of a uint8 batch: 2 global crops at ``global_size`` then ``config.local_crops`` local
    crops at ``local_size``, each augmented and normalized with ``mean``/``std``.
    ``(N, C, H, W) uint8 -> [(N, C, G, G)] * 2 + [(N, C, L, L)] * local_crops``, float32.

    Every view draws its own crop, flip and colours from PyTorch's global RNG (seeded by ``seed``).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"multi_crop takes the uint8 images of a dataset, got {images.dtype}")
    pixels = images.float() / 255
    flip = config.flip if config.flip is not None else images.shape[1] == 3

    def view(size: int, scale: tuple[float, float]) -> Tensor:
        crop = random_resized_crop(pixels, size, scale)
        if flip:
            mirrored = torch.rand(len(crop), 1, 1, 1, device=crop.device) < 0.5
            crop = torch.where(mirrored, crop.flip(-1), crop)
        crop = color_jitter(crop, config.color_jitter)
        return normalize(crop * 255, mean, std)  # vitlab.data.normalize takes pixel values in [0, 255]

    return [view(global_size, config.global_scale) for _ in range(2)] + \
        [view(local_size, config.local_scale) for _ in range(config.local_crops)]


# --------------------------------------------------------------------------- the networks


class WeightNormalizedLinear(nn.Module):
    """A bias-free linear layer whose weight rows have unit norm: weight normalization with the gain fixed
    to 1 (DINO's ``norm_last_layer``). ``(N, in) -> (N, out)``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    """The projection head: MLP (``layers`` linear layers, GELU) to a bottleneck, L2 normalization, then a
    weight-normalized linear layer to ``out_dim`` logits. ``(N, in_dim) -> (N, out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 128,
                 layers: int = 3) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"the head needs at least one layer, got {layers}")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        modules: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            modules.append(nn.Linear(a, b))
            if i < layers - 1:
                modules.append(nn.GELU())
        self.mlp = nn.Sequential(*modules)
        self.last_layer = WeightNormalizedLinear(bottleneck_dim, out_dim)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of views: consecutive views of one resolution go through the backbone
    as one batch (2 global, then the locals), the head runs once on all features.
    ``[(N, C, h_i, w_i)] * V -> (V * N, out_dim)``, view by view."""

    def __init__(self, backbone: nn.Module, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, views: Sequence[Tensor]) -> Tensor:
        features, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            # Local crops run at their own size: the ViT resamples its position table (any_size).
            features.append(self.backbone.pool(self.backbone.forward_features(torch.cat(list(views[start:end])),
                                                                              any_size=True)))
            start = end
        return self.head(torch.cat(features))


# --------------------------------------------------------------------------- the loss and the schedules


class DINOLoss(nn.Module):
    """Cross-entropy between the centered, sharpened teacher and the student, over view pairs.

    ``forward(student_out (V*N, K), teacher_out (2*N, K), teacher_temp) -> ()``: the views come in
    :func:`multi_crop`'s order; the teacher saw the two global views. Pairs where student and teacher
    see the same view are skipped, leaving ``2 * (V - 1)`` terms, averaged. :meth:`update_center`
    then moves the center towards the teacher's batch mean (call it after the step, with the same
    teacher output). ``centering=False`` leaves the center at zero.
    """

    center: Tensor

    def __init__(self, out_dim: int, num_views: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: bool = True) -> None:
        super().__init__()
        if num_views < 2:
            raise ValueError(f"DINO needs at least the 2 global views, got {num_views}")
        self.num_views = num_views
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probabilities(self, teacher_out: Tensor, teacher_temp: float) -> Tensor:
        """``softmax((t - c) / tau_t)``, without gradient. ``(2N, K) -> (2N, K)``."""
        return F.softmax((teacher_out.detach().float() - self.center) / teacher_temp, dim=-1)

    def forward(self, student_out: Tensor, teacher_out: Tensor, teacher_temp: float) -> Tensor:
        if student_out.shape[0] % self.num_views or teacher_out.shape[0] * self.num_views != \
                2 * student_out.shape[0]:
            raise ValueError(f"expected {self.num_views} student views and 2 teacher views of one batch, got "
                             f"{student_out.shape[0]} and {teacher_out.shape[0]} rows")
        student_log_probs = F.log_softmax(student_out.float() / self.student_temp, dim=-1).chunk(self.num_views)
        teacher_probs = self.teacher_probabilities(teacher_out, teacher_temp).chunk(2)
        total, terms = student_out.new_zeros((), dtype=torch.float32), 0
        for t, q in enumerate(teacher_probs):
            for v, log_p in enumerate(student_log_probs):
                if v == t:  # the same view: nothing to predict
                    continue
                total = total + (-q * log_p).sum(dim=-1).mean()
                terms += 1
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor, world_sum: Any = None) -> None:
        """``c <- m c + (1 - m) mean(teacher_out)`` over the batch (all processes, with ``world_sum``)."""
        if not self.centering:
            return
        batch_sum = teacher_out.detach().float().sum(dim=0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=teacher_out.device)
        if world_sum is not None:
            batch_sum, count = world_sum(batch_sum), world_sum(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)


def cosine_schedule(start: float, end: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> Tensor:
    """Per-step values: linear from ``warmup_start`` to ``start`` over ``warmup_steps``, then a half cosine
    from ``start`` to ``end``. ``-> (total_steps,)`` float64."""
    warmup_steps = min(warmup_steps, total_steps)
    warmup = torch.linspace(warmup_start, start, warmup_steps + 1, dtype=torch.float64)[1:] if warmup_steps else \
        torch.empty(0, dtype=torch.float64)
    steps = torch.arange(total_steps - warmup_steps, dtype=torch.float64)
    cosine = end + 0.5 * (start - end) * (1 + torch.cos(math.pi * steps / max(1, total_steps - warmup_steps)))
    return torch.cat([warmup, cosine])


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``theta_t <- m theta_t + (1 - m) theta_s`` for every parameter (the buffers are copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def output_entropies(probs: Tensor) -> tuple[float, float]:
    """Collapse monitors of the teacher's probabilities ``(N, K)``: the mean entropy of one image's output
    (0 when each output is one-hot) and the entropy of the batch's mean output (0 when every image
    picks the same dimension; ``log K`` when the outputs spread over all). In nats."""
    probs = probs.float().clamp_min(1e-12)
    per_image = -(probs * probs.log()).sum(dim=-1).mean()
    mean = probs.mean(dim=0)
    return per_image.item(), -(mean * mean.log()).sum().item()


# --------------------------------------------------------------------------- evaluation without fine-tuning


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: ImageTensorDataset, batch_size: int = 500,
                     device: torch.device | str | None = None) -> Tensor:
    """Pooled features of a ViT backbone (``pool(forward_features(x))``) for every image (no augmentation), in
    eval mode: ``-> (N, dim)`` on the CPU."""
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    features = [backbone.pool(backbone.forward_features(images)).float().cpu()
                for images, _ in BatchLoader(dataset, batch_size, device=device)]
    backbone.train(was_training)
    return torch.cat(features)


@torch.no_grad()
def knn_classify(train_features: Tensor, train_labels: Tensor, query_features: Tensor, num_classes: int,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1000) -> Tensor:
    """DINO's weighted k-nearest-neighbour classifier on L2-normalized features.

    Each query's ``k`` most cosine-similar training images vote for their class with weight
    ``exp(similarity / temperature)``; the class with the largest total wins.
    ``(M, D), (M,), (Q, D) -> (Q,)`` predicted classes.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} training features but {train_labels.shape[0]} labels")
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(f"feature sizes differ: {train_features.shape[1]} vs {query_features.shape[1]}")
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    predictions = []
    for start in range(0, query_features.shape[0], chunk):
        queries = F.normalize(query_features[start:start + chunk].float(), dim=1)
        similarity, index = (queries @ bank.T).topk(k, dim=1)                     # (q, k)
        votes = torch.zeros(queries.shape[0], num_classes, dtype=torch.float32)
        votes.scatter_add_(1, train_labels[index].long(), (similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 num_classes: int, epochs: int = 30, lr: float = 1e-2, weight_decay: float = 1e-4,
                 batch_size: int = 256, seed: int = 0) -> float:
    """Test accuracy of a linear classifier trained (AdamW, cosine) on frozen features ``(M, D)``; the
    features are standardized with the training set's statistics first. Returns a fraction in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    x_train, x_test = (train_features - mean) / std, (test_features - mean) / std
    probe = nn.Linear(x_train.shape[1], num_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        nn.init.trunc_normal_(probe.weight, std=0.01)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(x_train) // batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(probe(x_train[idx]), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        return (probe(x_test).argmax(1) == test_labels).float().mean().item()


# --------------------------------------------------------------------------- the training loop


DINO_HISTORY_FIELDS = ["epoch", "lr", "loss", "teacher_entropy", "teacher_mean_entropy", "knn_accuracy",
                       "momentum", "teacher_temp", "epoch_time_s", "train_images_per_s"]


def _local_size(image_size: int, patch_size: int, requested: int | None) -> int:
    size = requested if requested is not None else max(patch_size, (image_size // 2) // patch_size * patch_size)
    if size % patch_size or not 0 < size <= image_size:
        raise ConfigError(f"local crops of {size} pixels do not fit: they must be a multiple of the patch size "
                          f"{patch_size} and at most the image size {image_size}")
    return size


class DinoTask(Task):
    """DINO pretraining of a plain ViT on a labelled image set whose labels only the evaluations read."""

    name, method = "pretrain", "dino"
    history_fields = DINO_HISTORY_FIELDS

    def __init__(self, model: str, dataset: str, config: DinoConfig | None = None, *,
                 model_args: dict[str, Any] | None = None, data_root: str | os.PathLike[str] | None = None,
                 subset: int | None = None, val_size: int | float = 0.1, method: str = "dino") -> None:
        if method != "dino":
            raise ValueError(f"unknown self-supervised method {method!r}: vitlab implements dino")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("vitlab pretrain runs in one process: DINO's center is a batch mean that would need "
                             "averaging across processes (not built); run it without torchrun")
        self.model_name, self.dataset, self.config = model, dataset, config or DinoConfig()
        self.model_args, self.subset, self.val_size = dict(model_args or {}), subset, val_size
        self.data_root = data_root

    def prepare(self, device: torch.device, resumed: Run | None) -> None:
        config = self.config
        preset = model_config(self.model_name, **self.model_args)
        common = {"root": self.data_root, "val_size": self.val_size, "seed": config.seed,
                  "image_size": preset.image_size, "channels": preset.in_channels}
        self.train_set = load_dataset(self.dataset, "train", subset=self.subset, **common)
        self.val_set = load_dataset(self.dataset, "val", **common)
        self.test_set = load_dataset(self.dataset, "test", **common)
        channels, height, _ = self.train_set.image_shape
        seed_everything(config.seed)
        backbone = create_model(self.model_name, **{"in_channels": channels, "image_size": height,
                                                    **self.model_args, "num_classes": 0})
        if type(backbone) is not ViT or backbone.config.input_size is not None:
            raise ValueError(f"DINO here pretrains plain ViTs at their own resolution (vit_seed, vit_mnist, vit_cifar, "
                             f"vit_cifar_small); {self.model_name} is a {type(backbone).__name__}")
        self.net, self.input_shape, self.train_n = backbone, (channels, height, height), len(self.train_set)
        self.local_size = _local_size(height, backbone.config.patch_size, config.local_size)
        self.student = MultiCropWrapper(backbone, DINOHead(backbone.config.dim, config.out_dim, config.hidden_dim,
                                                           config.bottleneck_dim)).to(device)
        self.teacher = copy.deepcopy(self.student).eval()  # no stochastic depth in the teacher, as in DINO's
        self.teacher.requires_grad_(False)
        self.criterion = DINOLoss(config.out_dim, 2 + config.local_crops, config.student_temp, config.center_momentum,
                                  config.centering).to(device)
        groups = weight_decay_groups(self.student.backbone, config.weight_decay) + \
            weight_decay_groups(self.student.head, config.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr * config.batch_size / 256)
        self.pixels = self.train_set.images.to(device)  # uint8, moved once; multi_crop decodes each batch's views
        if len(self.train_set) < config.batch_size:
            raise ValueError(f"training set of {len(self.train_set)} images is smaller than one batch of "
                             f"{config.batch_size}")
        self.epochs = config.epochs

    @property
    def steps_per_epoch(self) -> int:
        full_epoch = len(self.train_set) // self.config.batch_size
        return min(full_epoch, self.config.max_steps_per_epoch or full_epoch)

    def step(self, images: Tensor, lr: float, momentum: float, teacher_temp: float,
             freeze_last: bool) -> tuple[float, Tensor]:
        """One DINO step on a uint8 batch: views, the teacher's targets, the student's loss and update, the
        teacher's EMA and the center. Returns the loss and the teacher's probabilities (for the monitors)."""
        config = self.config
        views = multi_crop(images, self.train_set.mean, self.train_set.std, config, self.input_shape[1],
                           self.local_size)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            teacher_out = self.teacher(views[:2])
        loss = self.criterion(self.student(views), teacher_out, teacher_temp)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the DINO loss is {loss.item()}: lower --lr or raise --grad-clip")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(self.student.parameters(), config.grad_clip)
        if freeze_last:
            self.student.head.last_layer.weight.grad = None
        self.optimizer.step()
        ema_update(self.teacher, self.student, momentum)
        self.criterion.update_center(teacher_out)
        return loss.item(), self.criterion.teacher_probabilities(teacher_out, teacher_temp)

    def plan_budget(self, budget_s: float, device: torch.device) -> BudgetPlan:
        snapshot = copy.deepcopy({"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                                  "center": self.criterion.center.clone(), "opt": self.optimizer.state_dict()})
        batches = iter(_epoch_batches(self.pixels, self.config.batch_size, self.config.seed + 1, 0, 8))
        config = self.config

        def eval_seconds(step_s: float) -> float:
            # The per-epoch k-NN costs about monitor_bank + val forward passes (eval, one view, no heads).
            return step_s * (min(config.monitor_bank, len(self.train_set)) + len(self.val_set)) / config.batch_size / 12

        plan = plan_steps(lambda: self.step(next(batches), 0.0, 1.0, config.teacher_temp, True), self.steps_per_epoch,
                          budget_s, eval_seconds, max_epochs=config.epochs, device=device)
        self.student.load_state_dict(snapshot["student"])
        self.teacher.load_state_dict(snapshot["teacher"])
        self.criterion.center.copy_(snapshot["center"])
        self.optimizer.load_state_dict(snapshot["opt"])
        return plan

    def record(self) -> RunConfig:
        data = DatasetRecord(name=self.dataset, source=getattr(self.train_set, "source", ""), val_size=self.val_size,
                             subset=self.subset, train_n=len(self.train_set), val_n=len(self.val_set),
                             test_n=len(self.test_set), classes=list(self.train_set.classes),
                             mean=list(self.train_set.mean), std=list(self.train_set.std))
        views = {"global": [2, self.input_shape[1]], "local": [self.config.local_crops, self.local_size]}
        return RunConfig(task="pretrain", method="dino", model=ModelRecord(**model_spec(self.model_name, self.net)),
                         dataset=data, dino=self.config.to_dict(), views=views)

    def trainer(self, device: torch.device, dist: DistContext, resuming: bool) -> Trainer:
        return DinoTrainer(self, device, resuming)

    def test(self, trainer: Trainer, history: list[dict[str, Any]], dist: DistContext) -> dict[str, Any]:
        """The teacher's features, judged without training the backbone: k-NN and a linear probe, the full
        training set -> the test set."""
        config, backbone, device = self.config, self.teacher.backbone, self.pixels.device
        train_features = extract_features(backbone, self.train_set, device=device)
        test_features = extract_features(backbone, self.test_set, device=device)
        knn = knn_classify(train_features, self.train_set.labels, test_features, self.train_set.num_classes,
                           config.knn_k, config.knn_temperature)
        probe = linear_probe(train_features, self.train_set.labels, test_features, self.test_set.labels,
                             self.train_set.num_classes, seed=config.seed)
        last = history[-1] if history else {}
        return {"method": "dino", "knn_test_accuracy": (knn == self.test_set.labels).float().mean().item(),
                "knn_test_accuracy_at_init": getattr(trainer, "knn_at_init", None),
                "linear_probe_test_accuracy": probe, "test_n": len(self.test_set),
                "final_knn_val_accuracy": last.get("knn_accuracy"),
                "final_teacher_entropy": last.get("teacher_entropy"),
                "final_teacher_mean_entropy": last.get("teacher_mean_entropy"), "log_out_dim": math.log(config.out_dim)}

    def header(self) -> str:
        return (f"DINO pretraining {self.model_name} ({count_parameters(self.net):,} parameters + head) on "
                f"{self.dataset} without labels: {len(self.train_set):,} images, 2 x {self.input_shape[1]}px + "
                f"{self.config.local_crops} x {self.local_size}px views, {self.config.epochs} epoch(s) of "
                f"{self.steps_per_epoch} steps")

    def headline(self, metrics: dict[str, Any]) -> str:
        at_init = metrics.get("knn_test_accuracy_at_init")
        return (f"k-NN test accuracy {100 * metrics['knn_test_accuracy']:.2f}% (at initialization "
                f"{100 * (at_init if at_init is not None else float('nan')):.2f}%), linear probe "
                f"{100 * metrics['linear_probe_test_accuracy']:.2f}%")


class DinoTrainer:
    """The DINO task's training state for the epoch loop: the schedules (learning rate, teacher momentum
    and temperature, the frozen last layer), the k-NN monitor's bank, and the k-NN at initialization."""

    history_fields = DINO_HISTORY_FIELDS
    progress_fields = ("loss", "knn_accuracy")

    def __init__(self, task: DinoTask, device: torch.device, resuming: bool) -> None:
        self.task, config, self.device = task, task.config, device
        steps = self.steps_per_epoch = task.steps_per_epoch
        total = config.epochs * steps
        peak_lr = config.lr * config.batch_size / 256  # the linear scaling rule of DINO's reference code
        self.lrs = cosine_schedule(peak_lr, config.min_lr, total, int(config.warmup_epochs * steps))
        self.momentums = cosine_schedule(config.momentum_teacher, 1.0, total)
        warmup = min(total, int(config.warmup_teacher_temp_epochs * steps))
        self.teacher_temps = torch.cat([
            torch.linspace(config.warmup_teacher_temp, config.teacher_temp, warmup, dtype=torch.float64),
            torch.full((total - warmup,), config.teacher_temp, dtype=torch.float64)])
        self.freeze_steps = int(config.freeze_last_layer_epochs * steps)
        # The baseline DINO must beat: the same k-NN evaluation on the randomly initialized backbone.
        self.knn_at_init = None if resuming else _knn_accuracy(task.teacher.backbone, task.train_set, task.test_set,
                                                                config, device)
        order = torch.randperm(len(task.train_set), generator=torch.Generator().manual_seed(config.seed))
        self.bank = task.train_set.subset(order[: config.monitor_bank])

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, Any]:
        task, config, steps = self.task, self.task.config, self.steps_per_epoch
        task.student.train()
        started = time.perf_counter()
        sums = {"loss": 0.0, "teacher_entropy": 0.0, "teacher_mean_entropy": 0.0}
        batches = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress)
        for done, images in enumerate(_epoch_batches(task.pixels, config.batch_size, config.seed, epoch, steps), 1):
            k = epoch * steps + done - 1
            loss, probs = task.step(images, float(self.lrs[k]), float(self.momentums[k]), float(self.teacher_temps[k]),
                                    k < self.freeze_steps)
            per_image, of_mean = output_entropies(probs)
            sums["loss"] += loss
            sums["teacher_entropy"] += per_image
            sums["teacher_mean_entropy"] += of_mean
            batches.update(1)
            if done % 10 == 0:
                batches.set_postfix(loss=f"{sums['loss'] / done:.3f}", H=f"{sums['teacher_entropy'] / done:.2f}")
        batches.close()
        last = (epoch + 1) * steps - 1
        return {"lr": float(self.lrs[last]), **{name: value / steps for name, value in sums.items()},
                "momentum": float(self.momentums[last]), "teacher_temp": float(self.teacher_temps[last]),
                "train_images_per_s": steps * config.batch_size / (time.perf_counter() - started)}

    def validate(self) -> dict[str, Any]:
        return {"knn_accuracy": _knn_accuracy(self.task.teacher.backbone, self.bank, self.task.val_set,
                                              self.task.config, self.device)}

    def set_epochs(self, epochs: int) -> bool:
        """DINO keeps its first plan: its teacher momentum rises on a cosine over the whole run from the first
        step, so no part of a run is the same at another length."""
        return False

    def state_dict(self) -> dict[str, Any]:
        task = self.task
        return {"student": task.student.state_dict(), "teacher": task.teacher.state_dict(),
                "center": task.criterion.center, "optimizer": task.optimizer.state_dict(),
                "knn_at_init": self.knn_at_init}

    def load_state_dict(self, state: dict[str, Any], source: str | os.PathLike[str]) -> None:
        task = self.task
        load_modules(state, {"student": task.student, "teacher": task.teacher, "optimizer": task.optimizer}, source)
        task.criterion.center.copy_(state["center"])
        self.knn_at_init = state.get("knn_at_init")

    def weights(self) -> nn.Module:
        return self.task.teacher.backbone  # DINO evaluates and transfers the teacher


def pretrain(model: str, dataset: str, out: str | os.PathLike[str], config: DinoConfig | None = None, *,
             model_args: dict[str, Any] | None = None, data_root: str | os.PathLike[str] | None = None,
             subset: int | None = None, val_size: int | float = 0.1, time_budget: float | None = None,
             resume: bool = False, device: str | torch.device | None = None, progress: bool = True,
             verbose: bool = True, command: str | None = None, experiment: str | None = None,
             method: str = "dino") -> Run:
    """DINO-pretrain the registered ViT ``model`` on ``dataset`` without its labels; returns the :class:`Run`.

    The run folder holds the teacher's backbone (``num_classes=0``: a feature extractor) as
    ``model.safetensors``, the heads and optimizer in ``checkpoint.pt`` (``resume=True`` continues
    after the last finished epoch, after the same checks as every task: model, recipe and data), ``history.csv``
    with the collapse monitors and the k-NN accuracy per epoch, and ``metrics.json`` with the final k-NN and
    linear-probe test accuracies. Labels are read only by those evaluations, never by training.
    ``time_budget`` (seconds) fixes the number of epochs (or steps) from a measured step, before training
    starts, at most ``config.epochs``.
    """
    task = DinoTask(model, dataset, config, model_args=model_args, data_root=data_root, subset=subset,
                    val_size=val_size, method=method)
    return drive(task, out, resume=resume, time_budget=time_budget, device=device, progress=progress,
                 verbose=verbose, command=command, experiment=experiment)



def _epoch_batches(images: Tensor, batch_size: int, seed: int, epoch: int, steps: int) -> list[Tensor]:
    """The first ``steps`` full batches of an epoch's seeded shuffle (:func:`vitlab.data.epoch_order`, the
    rule of :class:`BatchLoader`), as uint8 image batches ``(B, C, H, W)``."""
    order = epoch_order(len(images), seed, epoch).to(images.device)
    return [images[order[i * batch_size:(i + 1) * batch_size]] for i in range(steps)]


def _knn_accuracy(backbone: nn.Module, bank: ImageTensorDataset, queries: ImageTensorDataset, config: DinoConfig,
                  device: torch.device) -> float:
    """k-NN accuracy of ``queries`` (validation images) against the labelled ``bank`` of training images."""
    if not len(queries):
        return float("nan")
    predictions = knn_classify(extract_features(backbone, bank, device=device), bank.labels,
                               extract_features(backbone, queries, device=device), bank.num_classes,
                               config.knn_k, config.knn_temperature)
    return (predictions == queries.labels).float().mean().item()
