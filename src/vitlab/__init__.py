"""vitlab: a Vision Transformer built from scratch in PyTorch.

The package behind the notebook course. Its folders are its floors; a module imports only from its own
folder and the floors below (``tests/test_layering.py`` fails on any arrow back up)::

    7  cli          python -m vitlab
    6  engine/      training: recipe, train (steps, evaluate, fit), loop (epochs, checkpoints, DDP),
                    budget (time budgets), driver (the one run driver), classify, dense, dino, distill
    5  analysis/    explain (attention maps, rollout, Grad-CAM), plots, report, robustness (occlusion,
                    shuffling, corruptions, attacks, translation)
    4  runfolder/   run (a run folder: Run, load_model), schema (RunConfig, RunMetrics)
    3  data/        datasets (in memory, cached), augment, loader (BatchLoader), canvas (dense tasks)
    2  models/      registry, vit, cnn, deit, swin, early_exit, segmentation, detection, losses, convert,
                    measure; each family one module plus one line in the registry
    1  layers/      patches, tokens, positional, attention, encoder (lessons 01-04)
    0  core/        configs, runtime (device, seed), precision, layout (channels-last), io (atomic files,
                    safetensors)

The canonical name of every module is its folder path, e.g. :mod:`vitlab.layers.patches` or
:mod:`vitlab.engine.train`. The flat names the lessons and earlier versions use (:data:`FLAT_NAMES`:
``vitlab.patches``, ``vitlab.model``, ``vitlab.train``, ``vitlab.runs`` ...) keep working: each is the
canonical module itself (``vitlab.patches is vitlab.layers.patches``), or, where a flat module's names
now live on two floors, a module re-exporting both.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence

from .core.runtime import pick_device, quick_mode, seed_everything
from .data import DatasetNotFoundError, load_dataset
from .engine.classify import train_run
from .layers.attention import MultiHeadSelfAttention, scaled_dot_product_attention
from .layers.encoder import EncoderBlock
from .layers.patches import PatchEmbedding, patchify, unpatchify
from .layers.positional import LearnedPositionalEncoding, SinusoidalPositionalEncoding, sinusoidal_positions
from .layers.tokens import ClassToken
from .models.measure import count_parameters
from .models.registry import create_model, model_names
from .models.vit import PRESETS, ViT, ViTConfig
from .runfolder import Run

__version__ = "0.1.0"

#: The package's floors, lowest first: a module may import from its own folder and from the folders before
#: its own in this list, never from a later one (``cli`` sits above them all).
FLOORS: tuple[str, ...] = ("core", "layers", "models", "data", "runfolder", "analysis", "engine")

#: Flat module names -> the canonical modules that now hold their names (several: a re-exporting module,
#: whose names are taken from each in turn; ``{"name": "module:attr"}`` entries rename one).
FLAT_NAMES: dict[str, tuple[str | dict[str, str], ...]] = {
    "configs": ("core.configs",), "runtime": ("core.runtime",), "precision": ("core.precision",),
    "checkpoint": ("core.io", {"load_model": "runfolder.run:load_model"}),
    "patches": ("layers.patches",), "tokens": ("layers.tokens",), "positional": ("layers.positional",),
    "attention": ("layers.attention",), "encoder": ("layers.encoder",),
    "registry": ("models.registry",), "model": ("models.vit",), "cnn": ("models.cnn",), "deit": ("models.deit",),
    "swin": ("models.swin",), "early_exit": ("models.early_exit",), "segmentation": ("models.segmentation",),
    "detection": ("models.detection",),
    "pretrained": ("models.convert", {"load": "runfolder.run:load_model"}),
    "distill": ("models.losses", "engine.distill"),
    "augment": ("data.augment",), "canvas": ("data.canvas",),
    "runs": ("runfolder.run", "models.measure", "engine.classify",
             {"HISTORY_FIELDS": "engine.train:CLASSIFY_HISTORY_FIELDS"}),
    "explain": ("analysis.explain",), "plots": ("analysis.plots",), "report": ("analysis.report",),
    "robustness": ("analysis.robustness",),
    "train": ("engine.train",), "dense": ("engine.dense",), "dino": ("engine.dino",),
}


def _flat_module(flat: str, sources: Sequence[str | dict[str, str]]) -> types.ModuleType:
    """The module a flat name stands for: the canonical module itself, or one re-exporting several."""
    modules = [importlib.import_module(f"{__name__}.{s}") for s in sources if isinstance(s, str)]
    if len(sources) == 1:
        return modules[0]
    module = types.ModuleType(f"{__name__}.{flat}", f"Flat name kept for the lessons: the names of "
                              f"{', '.join(m.__name__ for m in modules)}.")
    for source in modules:
        for name in getattr(source, "__all__", [n for n in vars(source) if not n.startswith("_")]):
            setattr(module, name, getattr(source, name))
    for renames in (s for s in sources if isinstance(s, dict)):
        for name, target in renames.items():
            path, attr = target.split(":")
            setattr(module, name, getattr(importlib.import_module(f"{__name__}.{path}"), attr))
    module.__all__ = [n for n in vars(module) if not n.startswith("_")]
    return module


class _FlatNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook for :data:`FLAT_NAMES`: ``import vitlab.patches`` gives :mod:`vitlab.layers.patches`."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, flat = fullname.rpartition(".")
        if package != __name__ or flat not in FLAT_NAMES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        flat = spec.name.rpartition(".")[2]
        module = _flat_module(flat, FLAT_NAMES[flat])
        self._own_spec = getattr(module, "__spec__", None)  # importlib replaces it with the flat name's spec
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run (:meth:`create_module` built or found the module); a canonical module keeps its spec."""
        if self._own_spec is not None and self._own_spec.name != module.__spec__.name:
            module.__spec__ = self._own_spec


if not any(isinstance(finder, _FlatNames) for finder in sys.meta_path):
    sys.meta_path.append(_FlatNames())

__all__ = [
    "ClassToken", "DatasetNotFoundError", "EncoderBlock", "FLAT_NAMES", "FLOORS", "LearnedPositionalEncoding",
    "MultiHeadSelfAttention", "PRESETS", "PatchEmbedding", "SinusoidalPositionalEncoding", "ViT", "ViTConfig",
    "count_parameters", "Run", "create_model", "load_dataset", "model_names", "patchify", "pick_device",
    "quick_mode", "scaled_dot_product_attention", "seed_everything", "sinusoidal_positions", "train_run",
    "unpatchify",
]
