"""vitlab: a Vision Transformer built from scratch in PyTorch.

The package behind the notebook course. One module per concept:

* :mod:`vitlab.patches`    patchify / unpatchify, :class:`PatchEmbedding`
* :mod:`vitlab.tokens`     the class token
* :mod:`vitlab.positional` sinusoidal and learned positional encodings
* :mod:`vitlab.attention`  multi-head self-attention
* :mod:`vitlab.encoder`    the transformer encoder block
* :mod:`vitlab.model`      :class:`ViT`, :class:`ViTConfig`, presets
* :mod:`vitlab.data`       in-memory datasets and batch loading
* :mod:`vitlab.augment`    batch augmentations
* :mod:`vitlab.train`      the training engine (:func:`fit`, :func:`evaluate`)
* :mod:`vitlab.checkpoint` safe, atomic saving and loading
* :mod:`vitlab.plots`      figures
* :mod:`vitlab.cli`        ``python -m vitlab``
"""

from __future__ import annotations

from .attention import MultiHeadSelfAttention, scaled_dot_product_attention
from .data import DatasetNotFoundError, load_dataset
from .encoder import EncoderBlock
from .model import PRESETS, ViT, ViTConfig, count_parameters, create_model
from .patches import PatchEmbedding, patchify, unpatchify
from .positional import LearnedPositionalEncoding, SinusoidalPositionalEncoding, sinusoidal_positions
from .runtime import device, quick_mode, seed_everything
from .tokens import ClassToken

__version__ = "0.1.0"

__all__ = [
    "ClassToken", "DatasetNotFoundError", "EncoderBlock", "LearnedPositionalEncoding", "MultiHeadSelfAttention",
    "PRESETS", "PatchEmbedding", "SinusoidalPositionalEncoding", "ViT", "ViTConfig", "count_parameters",
    "create_model", "device", "load_dataset", "patchify", "quick_mode", "scaled_dot_product_attention",
    "seed_everything", "sinusoidal_positions", "unpatchify",
]
