"""Floor 2, the model families: each one module that builds on :mod:`vitlab.layers` and registers its presets
in :mod:`vitlab.models.registry` when imported.

* :mod:`~vitlab.models.registry`     name -> family, config, model class, tuned recipe
* :mod:`~vitlab.models.vit`          :class:`ViT`, :class:`ViTConfig`, the ViT presets
* :mod:`~vitlab.models.cnn`          CNN baselines: ResNet-18, VGG-11-BN, a small CNN
* :mod:`~vitlab.models.deit`         DeiT: a ViT with a distillation token
* :mod:`~vitlab.models.swin`         Swin Transformer: shifted windows, a pyramid
* :mod:`~vitlab.models.early_exit`   a ViT with early exits
* :mod:`~vitlab.models.segmentation` Segmenter: linear and mask-transformer decoders
* :mod:`~vitlab.models.detection`    YOLOS: detection tokens, Hungarian matching, DETR's set loss
* :mod:`~vitlab.models.losses`       the training criteria (labels, distillation) a model trains with
* :mod:`~vitlab.models.convert`      timm, torchvision and Hugging Face ViTs converted; ``adapt`` to a new task
* :mod:`~vitlab.models.measure`      parameter and FLOP counts

Importing this package imports every module of :data:`~vitlab.models.registry.FAMILY_MODULES`, so the
registry is complete whichever model module is imported first.
"""

from __future__ import annotations

import importlib

from .registry import FAMILY_MODULES, create_model, get_model, model_names

for _module in FAMILY_MODULES:  # each family registers its presets when imported
    importlib.import_module(_module)

__all__ = ["FAMILY_MODULES", "create_model", "get_model", "model_names"]
