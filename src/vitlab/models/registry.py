"""The model registry: one table from a model name to its family, config class, model class and recipe.

Everything that needs to know about models goes through here: :func:`create_model`, rebuilding a
saved model from ``config.json`` (:func:`build_model`), the command line (``vitlab train --help``
lists :func:`model_names`), explanations and the report.

Adding a model family takes one new module and one line in :data:`FAMILY_MODULES` (importing
:mod:`vitlab.models` imports each, and each registers its presets). The module
defines a config dataclass (inheriting :class:`vitlab.configs.Config`) and a model class with

* ``family``: the family's name, stored in ``config.json``;
* ``config_class``: the config dataclass, so ``model_class(config_class.from_dict(...))`` rebuilds it;
* ``no_weight_decay()``: parameter names kept out of weight decay (timm's convention);
* ``gradcam_layer(layer)``: the module whose output Grad-CAM uses;
* ``has_attention_maps``: whether ``model(images, return_attention=True)`` works;

and registers its named configurations with :func:`register_model` (a preset config and, where
it has been tuned, a training recipe).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["FAMILY_MODULES", "ModelEntry", "register_model", "get_model", "model_names", "model_config",
           "create_model", "family_class", "build_model", "describe_models"]

#: The modules that define model families; each registers its presets when imported.
FAMILY_MODULES: tuple[str, ...] = (
    "vitlab.models.vit",   # ViT presets (vit_seed, vit_mnist, vit_cifar, vit_cifar_small)
    "vitlab.models.cnn",     # CNN baselines (resnet18, vgg11, simple_cnn)
    "vitlab.models.cifar_resnet",  # He et al.'s CIFAR ResNets (resnet20, resnet56)
    "vitlab.models.cct",     # Compact Convolutional Transformers (cct_2_3x2, cct_4_3x2, cct_6_3x2, cct_mnist)
    "vitlab.models.deit",    # DeiT: a ViT with a distillation token (deit_mnist, deit_cifar_small)
    "vitlab.models.swin",    # Swin Transformer: shifted-window attention, a pyramid (swin_mnist, swin_cifar)
    "vitlab.models.early_exit",  # a ViT with early exits (vit_mnist_exits, vit_cifar_small_exits)
    "vitlab.models.segmentation",  # Segmenter: a ViT encoder, linear or mask-transformer decoder (segmenter_*_canvas)
    "vitlab.models.detection",  # YOLOS: a ViT with detection tokens, DETR's set loss (yolos_canvas)
)


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its name, class, preset config and tuned training recipe."""

    name: str
    model_class: type[nn.Module]
    config: Any
    recipe: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def family(self) -> str:
        return self.model_class.family  # type: ignore[attr-defined]

    @property
    def task(self) -> str:
        """``"classify"``, or a dense model class's ``task`` (``"segment"``, ``"detect"``)."""
        return getattr(self.model_class, "task", "classify")


_MODELS: dict[str, ModelEntry] = {}
_FAMILIES: dict[str, type[nn.Module]] = {}


def _check_model_class(model_class: type[nn.Module]) -> None:
    missing = [a for a in ("family", "config_class", "no_weight_decay", "gradcam_layer", "has_attention_maps")
               if not hasattr(model_class, a)]
    if missing:
        raise TypeError(f"{model_class.__name__} cannot be registered: it lacks {missing} (see vitlab.registry)")


def register_model(name: str, model_class: type[nn.Module], config: Any, recipe: dict[str, Any] | None = None,
                   description: str = "") -> ModelEntry:
    """Register ``name``: ``create_model(name)`` builds ``model_class(config)``; ``recipe`` holds the
    :class:`~vitlab.train.TrainConfig` fields tuned for it."""
    _check_model_class(model_class)
    family = model_class.family  # type: ignore[attr-defined]
    if name in _MODELS and _MODELS[name].model_class is not model_class:
        raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].model_class.__name__}")
    known = _FAMILIES.get(family, model_class)
    if known is not model_class:
        raise ValueError(f"model family {family!r} is already registered by {known.__name__}")
    _FAMILIES[family] = model_class
    entry = ModelEntry(name, model_class, config, dict(recipe or {}), description)
    _MODELS[name] = entry
    return entry



def model_names() -> list[str]:
    """Every registered model name, in registration order."""
    return list(_MODELS)


def get_model(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name is an error listing the known ones."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(_MODELS)}")
    return _MODELS[name]


def model_config(name: str, **overrides: Any) -> Any:
    """The preset config of ``name`` with some fields replaced (e.g. ``num_classes=100``)."""
    entry = get_model(name)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(entry.config)})
    if unknown:
        raise ValueError(f"{name} has no config field(s) {unknown}; its fields are "
                         f"{[f.name for f in dataclasses.fields(entry.config)]}")
    return dataclasses.replace(entry.config, **overrides)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("vit_cifar", num_classes=100)`` or
    ``create_model("resnet18", in_channels=3, image_size=32)``."""
    return get_model(name).model_class(model_config(name, **overrides))


def family_class(family: str) -> type[nn.Module]:
    """The model class of a family name (as stored in ``config.json``)."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; registered families: {', '.join(_FAMILIES)}")
    return _FAMILIES[family]


def build_model(family: str, fields: dict[str, Any]) -> nn.Module:
    """Rebuild a model of ``family`` from its saved config fields (strict: unknown fields are errors)."""
    model_class = family_class(family)
    return model_class(model_class.config_class.from_dict(fields))  # type: ignore[attr-defined]


def describe_models() -> str:
    """One line per registered model (name, family, description), for ``--help`` texts."""
    width = max(len(name) for name in _MODELS)
    return "\n".join(f"  {e.name:<{width}}  [{e.family}] {e.description}" for e in _MODELS.values())
