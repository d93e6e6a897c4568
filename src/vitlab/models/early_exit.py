"""Early exits: a ViT with extra classifiers part-way up, trained by self-distillation, that lets easy
images stop early.

"Be Your Own Teacher" (Zhang et al. 2019) attaches shallow classifiers to intermediate layers and
trains each from the labels *and* from the network's own final classifier, a teacher that comes for
free. At inference an image stops at the first exit that is confident enough (BranchyNet, Teerapittayanon
et al. 2016; for transformers e.g. DeeBERT and PABEE): easy images use a few blocks, hard ones all.

:class:`ExitViT` is a :class:`~vitlab.model.ViT` with an exit (LayerNorm + linear, on the pooled
token, like the final head) after each block in ``exit_blocks``. In training mode it returns every
head's logits (:class:`ExitOutputs`); in eval mode only the final head's, so evaluation, Grad-CAM
and the rest of vitlab treat it as a plain ViT. The training loss (:class:`ExitLoss`), with ``h``
heads at depths ``d_1 < ... < d_h = depth`` and final logits ``z_h``::

    L = sum_i d_i L_i / sum_i d_i                         deeper heads weigh more (PABEE's weighting)
    L_h = CE(z_h, y)
    L_i = (1 - alpha) CE(z_i, y) + alpha T^2 KL(softmax(z_h / T) || softmax(z_i / T))   (distill="self")
    L_i = CE(z_i, y)                                                                     (distill="none")

The final head's logits are detached in the KL term: the exits learn from it, not the other way round.
``vitlab train --model vit_mnist_exits --distill self --distill-alpha 0.5 --distill-tau 3`` trains one.

:func:`early_exit_predict` runs the blocks one by one and drops from the batch every image whose
exit confidence (its largest softmax probability) exceeds ``threshold``; ``threshold=1`` never exits
early. :func:`exit_curve` gives accuracy against the average number of blocks run for many thresholds
from one pass that computes every head (:func:`simulate_exits`, which a test checks against the real
early-exit inference).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.configs import ConfigError
from ..core.precision import autocast_context
from .losses import Criterion, soft_distillation_loss
from .registry import get_model, register_model
from .vit import PRESETS, ViT, ViTConfig, zero_head

__all__ = ["ExitViTConfig", "ExitViT", "ExitOutputs", "ExitLoss", "ExitDecision", "early_exit_predict",
           "simulate_exits", "all_exit_logits", "exit_curve", "exit_throughput", "exit_report", "CURVE_THRESHOLDS",
           "TIMED_THRESHOLDS", "LabelledImages"]


class LabelledImages(Protocol):
    """What the curves below read from a dataset (:class:`vitlab.data.ImageTensorDataset` is one): its size,
    its labels ``(N,)`` and normalized float images ``(n, C, H, W)`` for a slice of it."""

    labels: Tensor

    def __len__(self) -> int: ...

    def normalized(self, indices: Any = None) -> Tensor: ...


def _batches(dataset: LabelledImages, batch_size: int, device: torch.device) -> list[Tensor]:
    """``dataset``'s normalized images in order, in batches of ``batch_size`` on ``device``."""
    return [dataset.normalized(slice(start, start + batch_size)).to(device)
            for start in range(0, len(dataset), batch_size)]


@dataclass
class ExitViTConfig(ViTConfig):
    """A :class:`~vitlab.model.ViTConfig` plus ``exit_blocks``: after which blocks (1-based, below ``depth``)
    an exit classifier reads the tokens. The final head after the last block is always there."""

    exit_blocks: tuple[int, ...] = (2, 4)

    def __post_init__(self) -> None:
        self.exit_blocks = tuple(int(b) for b in self.exit_blocks)  # JSON gives a list
        super().__post_init__()
        if list(self.exit_blocks) != sorted(set(self.exit_blocks)) or not all(
                1 <= b < self.depth for b in self.exit_blocks):
            raise ConfigError(f"ExitViTConfig.exit_blocks must be increasing block numbers in [1, {self.depth - 1}] "
                              f"(the final head follows block {self.depth}), got {list(self.exit_blocks)}")

    @property
    def head_depths(self) -> tuple[int, ...]:
        """The number of blocks each head reads after: the exits, then the final head (``depth``)."""
        return (*self.exit_blocks, self.depth)


@dataclass
class ExitOutputs:
    """What an :class:`ExitViT` returns in training: the logits of every head, shallowest first, each
    ``(N, classes)``; the last is the final head's."""

    logits: list[Tensor]

    @property
    def final(self) -> Tensor:
        return self.logits[-1]


class ExitHead(nn.Module):
    """An exit classifier: LayerNorm, pool (class token or mean), linear. ``(N, T, dim) -> (N, classes)``."""

    def __init__(self, dim: int, num_classes: int, norm_eps: float, pool: str = "cls") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, num_classes)
        self.pool = pool

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = self.norm(tokens)
        return self.head(tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1))


class ExitViT(ViT):
    """A ViT with early-exit classifiers. ``(N, C, H, W) -> (N, classes)`` in eval mode (the final head);
    in training mode :class:`ExitOutputs` with every head's logits."""

    family = "vit_exits"
    config_class = ExitViTConfig

    def __init__(self, config: ExitViTConfig | None = None, **overrides: Any) -> None:
        config = dataclasses.replace(config or ExitViTConfig(), **overrides)
        if not isinstance(config, ExitViTConfig):
            raise TypeError(f"ExitViT needs an ExitViTConfig, got {type(config).__name__}")
        super().__init__(config)
        self.config: ExitViTConfig = config
        self.exit_heads = nn.ModuleList(self._new_exit_head() for _ in config.exit_blocks)
        self.exit_heads.apply(self._init_weights)

    def _new_exit_head(self) -> ExitHead:
        return ExitHead(self.config.dim, self.config.num_classes, self.config.norm_eps, self.config.pool)

    def reset_classifier(self, num_classes: int) -> None:
        """New zero-initialized final and exit heads for ``num_classes`` classes (fine-tuning)."""
        super().reset_classifier(num_classes)
        device = next(self.parameters()).device
        self.exit_heads = nn.ModuleList(self._new_exit_head().to(device) for _ in self.config.exit_blocks)
        for head in self.exit_heads:
            head.head = zero_head(self.config.dim, num_classes, device)

    def layer_id(self, parameter_name: str) -> int:
        """An exit head learns at the rate of the block it reads (see :meth:`ViT.layer_id`)."""
        if parameter_name.startswith("exit_heads."):
            return self.config.exit_blocks[int(parameter_name.split(".")[1])]
        return super().layer_id(parameter_name)

    def forward_exits(self, images: Tensor) -> list[Tensor]:
        """Every head's logits, shallowest first: ``(N, C, H, W) -> [(N, classes)] * (exits + 1)``."""
        x = self.tokens(images)
        heads = dict(zip(self.config.exit_blocks, self.exit_heads))
        logits = []
        for number, block in enumerate(self.blocks, start=1):
            x = block(x)
            if number in heads:
                logits.append(heads[number](x))
        logits.append(self.forward_head(self.norm(x)))
        return logits

    def forward(self, images: Tensor, return_attention: bool = False) -> Any:
        if self.training and not return_attention:
            return ExitOutputs(self.forward_exits(images))
        return super().forward(images, return_attention=return_attention)

    def training_criterion(self, teacher: nn.Module | None = None, kind: str = "none", alpha: float = 0.5,
                           temperature: float = 3.0, label_smoothing: float = 0.0) -> ExitLoss:
        """Its training loss: every head learns from the labels and, with ``kind="self"``, the exits also
        from the final head (:class:`ExitLoss`). A teacher is refused: the model is its own."""
        if teacher is not None or kind in ("soft", "hard"):
            raise ValueError("an early-exit model distils from its own final head: use --distill self (or none)")
        return ExitLoss(self.config.head_depths, "self" if kind == "self" else "none", alpha, temperature,
                        label_smoothing)

    def test_report(self, dataset: LabelledImages, precision: str = "auto") -> dict[str, Any]:
        """What a trained run records beyond accuracy: the accuracy-compute curve (:func:`exit_report`), in the
        run's precision (its final-head accuracy is then the run's test accuracy)."""
        return {"exit_curve": exit_report(self, dataset, precision=precision)}


class ExitLoss(Criterion):
    """The training loss of an :class:`ExitViT` (see the module docstring), called as
    ``loss(images, outputs, labels)`` like :class:`vitlab.distill.DistillationLoss`.
    ``kind``: ``"self"`` (exits also learn from the final head) or ``"none"`` (labels only)."""

    def __init__(self, head_depths: Sequence[int], kind: str = "self", alpha: float = 0.5, temperature: float = 3.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if kind not in ("self", "none"):
            raise ValueError(f"an early-exit model learns from its own final head ('self') or the labels only "
                             f"('none'), got {kind!r}")
        if not 0.0 <= alpha <= 1.0 or not temperature > 0:
            raise ValueError(f"alpha must be in [0, 1] and temperature positive, got {alpha} and {temperature}")
        self.kind, self.alpha, self.temperature, self.label_smoothing = kind, alpha, temperature, label_smoothing
        weights = torch.tensor([float(d) for d in head_depths])
        self.weights = (weights / weights.sum()).tolist()

    def head_losses(self, outputs: ExitOutputs, labels: Tensor) -> list[Tensor]:
        """Each head's loss ``L_i``, shallowest first."""
        if len(outputs.logits) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} heads' logits, got {len(outputs.logits)}")
        final = outputs.final.float()
        losses = []
        for logits in outputs.logits[:-1]:
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
            if self.kind == "self":
                loss = (1 - self.alpha) * loss + self.alpha * soft_distillation_loss(
                    logits, final.detach(), self.temperature)
            losses.append(loss)
        losses.append(F.cross_entropy(final, labels, label_smoothing=self.label_smoothing))
        return losses

    def forward(self, images: Tensor, outputs: ExitOutputs, labels: Tensor) -> Tensor:
        if not isinstance(outputs, ExitOutputs):
            raise TypeError("ExitLoss needs an early-exit model's training outputs (ExitOutputs)")
        return sum(w * loss for w, loss in zip(self.weights, self.head_losses(outputs, labels)))  # type: ignore

    def logits(self, outputs: ExitOutputs) -> Tensor:
        """The final head's logits: an early-exit model is scored by its final head, as in evaluation."""
        return outputs.final


@dataclass
class ExitDecision:
    """Early-exit predictions for a batch: ``predictions (N,)``, the head each image left at ``head (N,)``
    (0 = the first exit, ``exits`` = the final head) and the blocks it ran ``blocks (N,)``."""

    predictions: Tensor
    head: Tensor
    blocks: Tensor


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"an exit threshold is a probability in [0, 1] (1: never exit early), got {threshold}")


@torch.no_grad()
def early_exit_predict(model: ExitViT, images: Tensor, threshold: float) -> ExitDecision:
    """Real early-exit inference: the blocks run one by one, and after each exit the images whose largest
    softmax probability exceeds ``threshold`` leave the batch with that exit's prediction; the rest go
    on (the final head decides for whoever is left). ``(N, C, H, W) -> ExitDecision``."""
    _check_threshold(threshold)
    if not isinstance(model, ExitViT):
        raise TypeError(f"early exits need an ExitViT, got {type(model).__name__}")
    n = images.shape[0]
    device = images.device
    predictions = torch.empty(n, dtype=torch.long, device=device)
    head = torch.empty(n, dtype=torch.long, device=device)
    blocks = torch.empty(n, dtype=torch.long, device=device)
    active = torch.arange(n, device=device)
    heads = {b: (i, h) for i, (b, h) in enumerate(zip(model.config.exit_blocks, model.exit_heads))}
    x = model.tokens(images)
    for number, block in enumerate(model.blocks, start=1):
        x = block(x)
        if number not in heads:
            continue
        index, exit_head = heads[number]
        confidence, predicted = F.softmax(exit_head(x).float(), dim=-1).max(dim=-1)
        leave = confidence > threshold
        done = active[leave]
        predictions[done], head[done], blocks[done] = predicted[leave], index, number
        x, active = x[~leave], active[~leave]
        if not len(active):
            return ExitDecision(predictions, head, blocks)
    predictions[active] = model.forward_head(model.norm(x)).argmax(dim=-1)
    head[active], blocks[active] = len(model.exit_heads), model.config.depth
    return ExitDecision(predictions, head, blocks)


def simulate_exits(logits: Tensor, threshold: float, head_depths: Sequence[int]) -> ExitDecision:
    """What :func:`early_exit_predict` decides, computed from every head's logits ``(heads, N, classes)``
    at once (for threshold sweeps): each image takes the first head whose confidence exceeds ``threshold``,
    the final head otherwise."""
    _check_threshold(threshold)
    confidence, predicted = F.softmax(logits.float(), dim=-1).max(dim=-1)       # (heads, N)
    exceeds = confidence > threshold
    exceeds[-1] = True                                                            # the final head always decides
    head = exceeds.int().argmax(dim=0)                                            # the first True
    depths = torch.tensor(list(head_depths), device=logits.device)
    return ExitDecision(predicted.gather(0, head[None])[0], head, depths[head])


@torch.no_grad()
@torch.no_grad()
def all_exit_logits(model: ExitViT, dataset: LabelledImages, batch_size: int = 500, precision: str = "auto") -> Tensor:
    """Every head's logits on every image of ``dataset`` in ``precision`` (:mod:`vitlab.core.precision`):
    ``(heads, N, classes)``, on the CPU."""
    device = next(model.parameters()).device
    model.eval()
    autocast = autocast_context(device, precision)
    chunks = []
    for images in _batches(dataset, batch_size, device):
        with autocast:
            chunks.append(torch.stack(model.forward_exits(images)).float().cpu())
    return torch.cat(chunks, dim=1)


def exit_curve(model: ExitViT, dataset: LabelledImages, thresholds: Sequence[float],
               logits: Tensor | None = None, precision: str = "auto") -> list[dict[str, Any]]:
    """Accuracy against compute as the threshold varies: one row per threshold with ``accuracy``,
    ``mean_blocks`` (blocks run per image, averaged), ``compute`` (that over ``depth``) and
    ``exit_share`` (the share of images leaving at each head). ``logits``: :func:`all_exit_logits`,
    if already computed."""
    logits = all_exit_logits(model, dataset, precision=precision) if logits is None else logits
    labels = dataset.labels
    depths = model.config.head_depths
    rows = []
    for threshold in thresholds:
        decision = simulate_exits(logits, threshold, depths)
        rows.append({"threshold": float(threshold),
                     "accuracy": (decision.predictions == labels).float().mean().item(),
                     "mean_blocks": decision.blocks.float().mean().item(),
                     "compute": decision.blocks.float().mean().item() / model.config.depth,
                     "exit_share": torch.bincount(decision.head, minlength=len(depths)).div(len(labels)).tolist()})
    return rows


@torch.no_grad()
def exit_throughput(model: ExitViT, dataset: LabelledImages, threshold: float, batch_size: int = 500,
                    min_seconds: float = 1.0, precision: str = "auto") -> float:
    """Measured images per second of :func:`early_exit_predict` over ``dataset`` (repeated until
    ``min_seconds`` have passed; the first batch is a warm-up and not timed). On a GPU each pass waits for
    the device to finish, so the clock measures the work, not its queueing."""
    device = next(model.parameters()).device
    model.eval()
    batches = _batches(dataset, batch_size, device)
    with autocast_context(device, precision):
        early_exit_predict(model, batches[0], threshold)
        _synchronize(device)
        images_done, started = 0, time.perf_counter()
        while True:
            for images in batches:
                early_exit_predict(model, images, threshold)
                images_done += len(images)
            _synchronize(device)
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                return images_done / elapsed


#: The thresholds of a recorded curve (a run's ``metrics.json``), and those whose speed is measured.
#: Low thresholds matter too: a model trained with label smoothing eps is rarely more confident than
#: 1 - eps + eps / K (0.91 for eps = 0.1 and 10 classes), so higher thresholds never let it exit.
CURVE_THRESHOLDS: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.995,
                                       0.999, 0.9999, 1.0)
TIMED_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.9, 0.99, 0.999, 1.0)


def _synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (CUDA runs asynchronously); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def exit_report(model: ExitViT, dataset: LabelledImages, thresholds: Sequence[float] = CURVE_THRESHOLDS,
                timed: Sequence[float] = TIMED_THRESHOLDS, min_seconds: float = 1.0,
                precision: str = "auto") -> list[dict[str, Any]]:
    """:func:`exit_curve` over ``thresholds``, plus the measured ``images_per_s`` of real early-exit
    inference (:func:`exit_throughput`) for those in ``timed``, all in ``precision``. What a trained run
    records."""
    rows = exit_curve(model, dataset, thresholds, precision=precision)
    for row in rows:
        if row["threshold"] in timed:
            row["images_per_s"] = exit_throughput(model, dataset, row["threshold"], min_seconds=min_seconds,
                                                  precision=precision)
    return rows


def _exit_preset(base: str, exit_blocks: tuple[int, ...]) -> ExitViTConfig:
    return ExitViTConfig(**dataclasses.asdict(PRESETS[base]), exit_blocks=exit_blocks)


# An exit after every block but the last: the finest accuracy-compute curve.
register_model("vit_mnist_exits", ExitViT, _exit_preset("vit_mnist", (1, 2, 3, 4, 5)),
               description="vit_mnist with an exit after blocks 1-5 (early exits)",
               recipe=get_model("vit_mnist").recipe)
register_model("vit_cifar_small_exits", ExitViT, _exit_preset("vit_cifar_small", (1, 2, 3, 4, 5)),
               description="vit_cifar_small with an exit after blocks 1-5 (early exits)",
               recipe=get_model("vit_cifar_small").recipe)
