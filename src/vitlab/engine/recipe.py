"""The training recipe: :class:`TrainConfig` (one ``vitlab train`` flag per field), the models' tuned recipes
(:func:`recipe`), the fine-tuning and linear-probe defaults, and what a resumed run may change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.configs import Config, ConfigError
from ..core.layout import MemoryFormat
from ..core.precision import Precision
from ..data.augment import AUGMENTATIONS
from ..models.registry import get_model

__all__ = ["TrainConfig", "recipe", "FINETUNE_RECIPE", "PROBE_RECIPE", "SPEED_ONLY_FIELDS", "recipe_differences",
           "field_help"]


Optimizer = Literal["adamw", "adam", "sgd"]
Freeze = Literal["none", "backbone"]
Distill = Literal["none", "soft", "hard", "self"]

#: Fine-tuning a pretrained model (``vitlab train --init``): the fields that replace the model's recipe.
#: A lower peak learning rate than training from scratch (the features are already good: large steps
#: would wreck them before the new head has learned to read them), a short warmup while the
#: zero-initialized head settles, and a cosine down to almost nothing.
FINETUNE_RECIPE: dict[str, Any] = {"lr": 3e-4, "min_lr": 1e-6, "warmup_epochs": 0.5, "weight_decay": 0.05,
                                   "epochs": 10}
#: A linear probe (``--freeze backbone``): only the head trains, a convex problem: a larger step,
#: no weight decay, no warmup.
PROBE_RECIPE: dict[str, Any] = {"lr": 1e-3, "min_lr": 1e-6, "warmup_epochs": 0.0, "weight_decay": 0.0,
                                "epochs": 10}


def field_help(text: str) -> dict[str, str]:
    """Field metadata: the ``--flag`` help text the command line shows (defaults are added from the field)."""
    return {"help": text}


_help = field_help


@dataclass
class TrainConfig(Config):
    """The training recipe. Saved in ``config.json`` and checked on ``--resume``.

    Each field becomes a ``vitlab train`` flag (``lr`` -> ``--lr``) with the help text in its metadata,
    so the command line never repeats a default by hand.
    """

    epochs: int = field(default=10, metadata=_help("passes over the training set"))
    batch_size: int = field(default=128, metadata=_help("images per optimizer step"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate"))
    min_lr: float = field(default=1e-5, metadata=_help("final learning rate of the cosine schedule"))
    weight_decay: float = field(default=0.05, metadata=_help("decoupled weight decay (biases, norms, tokens "
                                                             "and position tables excluded)"))
    optimizer: Optimizer = field(default="adamw", metadata=_help("optimizer"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum (SGD only)"))
    warmup_epochs: float = field(default=1.0, metadata=_help("linear warmup length, in epochs"))
    label_smoothing: float = field(default=0.0, metadata=_help("label smoothing of the cross-entropy loss"))
    grad_clip: float | None = field(default=1.0, metadata=_help("max gradient norm; 0 disables"))
    augment: str = field(default="none", metadata=_help("batch augmentation (vitlab.augment.AUGMENTATIONS)"))
    seed: int = field(default=0, metadata=_help("fixes initialization, data order and splits"))
    eval_batch_size: int = field(default=1000, metadata=_help("images per evaluation batch"))
    precision: Precision = field(default="auto", metadata=_help(
        "fp32, bf16 (autocast), or auto: bf16 where the device has fast bf16 units (a CUDA GPU with bf16 tensor "
        "cores, a CPU with AMX), else fp32 (vitlab.precision)"))
    compile: bool = field(default=False, metadata=_help("torch.compile the model for training (opt-in: slower on "
                                                        "some presets and machines; `make bench` measures it)"))
    memory_format: MemoryFormat = field(default="auto", metadata=_help(
        "layout of image batches and convolution weights: channels_last (faster CPU convolutions: CNNs and CCT), "
        "contiguous, or auto: the model family's choice (vitlab.core.layout)"))
    max_steps_per_epoch: int | None = field(default=None, metadata=_help("cut epochs short (smoke tests)"))
    freeze: Freeze = field(default="none", metadata=_help("'backbone': train only the classifier head (a linear "
                                                          "probe); frozen layers also run in eval mode"))
    layer_decay: float = field(default=1.0, metadata=_help("layer-wise learning-rate decay: block i of L learns at "
                                                           "lr * decay^(L + 1 - i); 1 disables"))
    teacher: str | None = field(default=None, metadata=_help("knowledge distillation: the teacher, a run folder or a "
                                                             "pretrained spec (see vitlab.distill)"))
    distill: Distill = field(default="none", metadata=_help("distillation loss: soft (KL to the teacher's softened "
                                                            "probabilities), hard (its argmax as a label), or self "
                                                            "(an early-exit model's exits learn from its final head)"))
    distill_alpha: float = field(default=0.5, metadata=_help("weight of the distillation term (the labels get "
                                                             "1 - alpha)"))
    distill_tau: float = field(default=1.0, metadata=_help("temperature of soft distillation"))
    ema_decay: float = field(default=0.0, metadata=_help("exponential moving average of the weights, updated after "
                                                         "every step (e.g. 0.999): validation, test and the saved "
                                                         "model use the average; 0 disables"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """As :meth:`Config.from_dict`, and reads the runs recorded before ``precision`` existed: their
        ``amp`` flag meant bf16 on CUDA and fp32 on CPUs, which ``auto`` now does (``amp: false``: fp32)."""
        if isinstance(values, dict) and "amp" in values and "precision" not in values:
            legacy = values["amp"]
            values = {k: v for k, v in values.items() if k != "amp"}
            values["precision"] = "fp32" if legacy is False else "auto"
        return super().from_dict(values)

    def __post_init__(self) -> None:
        super().__post_init__()  # optimizer and precision: checked against their Literal types
        if self.grad_clip == 0:  # --grad-clip 0 means "no clipping"
            self.grad_clip = None

        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"TrainConfig.{name} must be positive, got {value!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch <= 0:
            raise ConfigError("TrainConfig.max_steps_per_epoch must be positive or None, "
                              f"got {self.max_steps_per_epoch}")
        if self.min_lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.momentum < 0:
            raise ConfigError("TrainConfig.min_lr, weight_decay, warmup_epochs and momentum cannot be negative")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"TrainConfig.grad_clip must be positive, or None to disable, got {self.grad_clip}")
        if (self.teacher is None) != (self.distill in ("none", "self")):
            raise ConfigError("distillation needs both a teacher and a kind: --teacher RUN --distill soft|hard "
                              "(self-distillation, --distill self, takes no teacher) "
                              f"(got teacher={self.teacher!r}, distill={self.distill!r})")
        if not 0.0 <= self.distill_alpha <= 1.0 or not self.distill_tau > 0:
            raise ConfigError(f"TrainConfig.distill_alpha must be in [0, 1] and distill_tau positive, got "
                              f"{self.distill_alpha} and {self.distill_tau}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"TrainConfig.ema_decay must be in [0, 1) (0 disables it), got {self.ema_decay}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"TrainConfig.layer_decay must be in (0, 1] (1 disables it), got {self.layer_decay}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {self.augment!r}; available: {', '.join(AUGMENTATIONS)}")


def recipe(model_name: str | None = None, **overrides: Any) -> TrainConfig:
    """The tuned :class:`TrainConfig` of a registered model (generic defaults for ``None`` or a model
    without one), with fields replaced. ``None`` overrides are ignored, so command-line flags left
    unset keep the recipe's value."""
    tuned = get_model(model_name).recipe if model_name is not None else {}
    return TrainConfig.from_dict({**tuned, **{k: v for k, v in overrides.items() if v is not None}})


#: Fields that change how fast a run goes, not what it computes: a resumed run may change them.
SPEED_ONLY_FIELDS = ("compile", "memory_format")


def recipe_differences(saved: dict[str, Any], config: Config) -> dict[str, tuple[Any, Any]]:
    """What a resumed run's recipe changes: ``{field: (saved, now)}`` between a recorded recipe section (read by
    ``type(config).from_dict``: old runs' ``amp`` as :meth:`TrainConfig.from_dict` reads it) and ``config``,
    leaving out :data:`SPEED_ONLY_FIELDS`. Raises :class:`ConfigError` for a recorded section that is not valid."""
    before = type(config).from_dict(saved).to_dict()
    now = config.to_dict()
    return {k: (before[k], now[k]) for k in now if k not in SPEED_ONLY_FIELDS and before[k] != now[k]}
