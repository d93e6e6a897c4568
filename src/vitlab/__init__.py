"""vitlab: a Vision Transformer built from scratch in PyTorch.

The package behind the notebook course: one module per concept, all at ``vitlab.<concept>``,
grouped here by role.

The course's building blocks (lessons 01-05)

* :mod:`vitlab.patches`    patchify / unpatchify, :class:`PatchEmbedding`, the input check
* :mod:`vitlab.tokens`     the class token
* :mod:`vitlab.positional` sinusoidal and learned positional encodings
* :mod:`vitlab.attention`  multi-head self-attention
* :mod:`vitlab.encoder`    the transformer encoder block

Model families (one module each, registered in :mod:`vitlab.registry`)

* :mod:`vitlab.model`      :class:`ViT`, :class:`ViTConfig`, the ViT presets
* :mod:`vitlab.cnn`        CNN baselines: ResNet-18, VGG-11-BN, a small CNN
* :mod:`vitlab.deit`       DeiT: a ViT with a distillation token (lesson 13)
* :mod:`vitlab.swin`       Swin Transformer: shifted windows, a pyramid (lesson 14)
* :mod:`vitlab.early_exit` a ViT with early exits (lesson 15)
* :mod:`vitlab.segmentation` Segmenter: linear and mask-transformer decoders, mIoU (lesson 16)
* :mod:`vitlab.detection`  YOLOS: detection tokens, Hungarian matching, DETR's set loss, mAP (lesson 16)

Beyond one training run

* :mod:`vitlab.pretrained` timm, torchvision and Hugging Face ViTs converted; ``adapt`` to a new task (lesson 12)
* :mod:`vitlab.distill`    knowledge distillation losses (lesson 13)
* :mod:`vitlab.dino`       DINO self-supervised pretraining, k-NN and linear probes (lesson 15)
* :mod:`vitlab.canvas`     MNIST canvases: masks and boxes from real digits (lesson 16)
* :mod:`vitlab.dense`      training and evaluating segmentation and detection run folders (lesson 16)

The engine

* :mod:`vitlab.configs`    strict config dataclasses (``from_dict``, ``Literal`` checks)
* :mod:`vitlab.registry`   model name -> family, config, model class, tuned recipe
* :mod:`vitlab.data`       in-memory datasets (decoded once, cached) and batch loading
* :mod:`vitlab.augment`    batch augmentations
* :mod:`vitlab.train`      ``train_step``, ``train_one_epoch``, ``evaluate``, ``fit``
* :mod:`vitlab.runs`       a run folder (:class:`Run`) and the experiment driver :func:`train_run`
* :mod:`vitlab.checkpoint` safe, atomic saving and loading
* :mod:`vitlab.runtime`    device choice, seeding, quick mode

Looking at results

* :mod:`vitlab.explain`    attention maps, rollout, Grad-CAM
* :mod:`vitlab.plots`      figures
* :mod:`vitlab.report`     the results report
* :mod:`vitlab.cli`        ``python -m vitlab``
"""

from __future__ import annotations

from .attention import MultiHeadSelfAttention, scaled_dot_product_attention
from .data import DatasetNotFoundError, load_dataset
from .encoder import EncoderBlock
from .model import PRESETS, ViT, ViTConfig, count_parameters
from .patches import PatchEmbedding, patchify, unpatchify
from .positional import LearnedPositionalEncoding, SinusoidalPositionalEncoding, sinusoidal_positions
from .registry import create_model, model_names
from .runs import Run, train_run
from .runtime import pick_device, quick_mode, seed_everything
from .tokens import ClassToken

__version__ = "0.1.0"

__all__ = [
    "ClassToken", "DatasetNotFoundError", "EncoderBlock", "LearnedPositionalEncoding", "MultiHeadSelfAttention",
    "PRESETS", "PatchEmbedding", "SinusoidalPositionalEncoding", "ViT", "ViTConfig", "count_parameters",
    "Run", "create_model", "load_dataset", "model_names", "patchify", "pick_device", "quick_mode",
    "scaled_dot_product_attention", "seed_everything", "sinusoidal_positions", "train_run", "unpatchify",
]
