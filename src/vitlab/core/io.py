"""Files, safely: atomic writes, weights (safetensors), training state, and the repository's own folders.

* Weights go to ``model.safetensors`` (no pickle: loading cannot run code) and
  the architecture to ``config.json``; together they rebuild the model.
* The resumable training state (optimizer, scheduler, RNG, history) goes to
  ``checkpoint.pt`` holding only tensors and plain Python values, loaded with
  ``torch.load(weights_only=True)``.
* Every file is written to a temporary name in the same folder and then renamed
  (atomic on POSIX), so a crash mid-write never leaves a half-written file.
* A corrupt file or one that does not fit the model raises :class:`CheckpointError`
  saying which file and what is wrong.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CheckpointError", "atomic_write", "save_json", "save_weights", "load_weights", "save_state",
           "load_state", "unwrap", "shipped_run", "repository_run", "repository_candidates", "REPOSITORY"]

#: The repository root in a source checkout (an editable install): ``src/vitlab/core/io.py`` is three folders down.
REPOSITORY = Path(__file__).resolve().parents[3]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes 0600 files (and some writers recreate the file): give the usual permissions.
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_json(path: str | os.PathLike[str], data: Any) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
    return atomic_write(path, write)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the model's state dict as safetensors (contiguous CPU copies)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / compiled wrapper."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = unwrap(model).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:3]}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[:3]}")
        raise CheckpointError(f"weights in {source} do not match the model ({'; '.join(parts)}); "
                              "was it saved from a different architecture or config?")


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load safetensors weights into ``model`` after checking names and shapes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"weights file {path} is corrupt or not a safetensors file: {error}") from None
    _check_state(model, state, str(path))
    unwrap(model).load_state_dict(state)
    return model


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a resumable training state (tensors and plain values only) atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training state with ``weights_only=True`` (no arbitrary code is unpickled)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # UnpicklingError, RuntimeError (zip), EOFError...
        raise CheckpointError(f"checkpoint {path} is corrupt or unsafe to load: {type(error).__name__}: "
                              f"{' '.join(str(error).split())[:300]}") from None


def shipped_run(name: str = "vit_mnist") -> Path:
    """Folder of weights shipped with the repository (``weights/NAME``): by default the course's plain ViT,
    ``vit_mnist``, that the lessons open (``make train``'s own model is ``cct_mnist``).

    Found next to the package in a source checkout (editable install), else under ``./weights``
    or ``../weights`` (notebooks run in ``notebooks/``).
    """
    return repository_run("weights", name)


def repository_candidates(folder: str) -> list[Path]:
    """Where a folder committed to the repository may be: next to the package in a source checkout
    (editable install), else under the current directory or its parent (notebooks run in ``notebooks/``)."""
    return [REPOSITORY / folder, Path.cwd() / folder, Path.cwd().parent / folder]


def repository_run(folder: str, name: str) -> Path:
    """A run folder committed to the repository under ``folder/NAME`` (``weights`` or ``reports/runs``).

    Looked up next to the package in a source checkout (editable install), else under the current
    directory or its parent (notebooks run in ``notebooks/``).
    """
    candidates = [base / name for base in repository_candidates(folder)]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise CheckpointError(f"{folder}/{name} not found (looked in {', '.join(str(c) for c in candidates)}); "
                          f"it lives in the repository's {folder}/ folder")
