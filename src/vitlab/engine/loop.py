"""The epoch loop every task trains through, and what it needs from a task (:class:`Trainer`).

Each epoch: the task's :meth:`Trainer.train_epoch`, then its :meth:`Trainer.validate`, one history row; then,
for a run folder, the weights, the resumable state (the task's, plus the history and every random generator)
and ``history.csv``, each written atomically. A resumed loop restores that state and continues to the same
result as a run that was never interrupted. Under DDP (``torchrun``) only rank 0 writes, each rank's random
state is kept, and the ranks wait for each other after every epoch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..runfolder.run import Run

__all__ = ["DistContext", "Trainer", "run_epochs", "rng_state", "set_rng_state", "leave_process_group"]


@dataclass
class DistContext:
    """Where this process sits in a (possibly) distributed job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str = "cpu") -> DistContext:
        """Read torchrun's variables and join the process group (gloo on CPU, nccl on CUDA)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def all_sum(self, tensor: Tensor) -> Tensor:
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def place(self, device: torch.device) -> torch.device:
        """This process's device: under DDP on CUDA, the GPU of its local rank; the CPU's cores are shared
        between the processes of one machine."""
        if self.enabled and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if self.enabled and device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        return device

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


def leave_process_group(wait: bool = True) -> None:
    """Leave the torchrun process group, if this process joined one.

    Without this, a process that finishes first (rank 1 returns while rank 0 still writes the run)
    exits with gloo's threads alive, and the C++ runtime can abort it ("terminate called without an
    active exception"), failing the whole job. ``wait`` first lets every rank reach this point; pass
    ``False`` after an error or an interrupt, where another rank may never arrive.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        if wait:
            torch_dist.barrier()
        torch_dist.destroy_process_group()


def rng_state(device: torch.device, dist: DistContext | None = None) -> dict[str, Any]:
    """The random generators' state, for a resumable checkpoint: the CPU's and, on CUDA, the device's.
    Under DDP every rank's state is gathered (``ranks``), so that each resumes with its own."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if dist is not None and dist.enabled:
        ranks: list[Any] = [None] * dist.world_size
        torch_dist.all_gather_object(ranks, {k: v.cpu() for k, v in state.items()})
        state["ranks"] = ranks
    return state


def set_rng_state(state: dict[str, Any], device: torch.device, dist: DistContext | None = None) -> None:
    """Restore what :func:`rng_state` saved (this rank's own state when the checkpoint holds every rank's),
    so a resumed run draws the same numbers."""
    rank = dist.rank if dist is not None else 0
    ranks = state.get("ranks")
    if ranks is not None and dist is not None and len(ranks) == dist.world_size:
        state = ranks[rank]
    # Both setters want CPU ByteTensors; a checkpoint loaded with map_location=cuda moved them.
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class Trainer(Protocol):
    """One task's training, as the loop drives it."""

    #: the columns of ``history.csv``, in order
    history_fields: Sequence[str]
    #: the history keys the progress bar shows
    progress_fields: Sequence[str]

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, Any]:
        """Train one epoch (``epoch`` counts from 0); return its history fields (``lr`` at its start, losses,
        images per second ...)."""

    def validate(self) -> dict[str, Any]:
        """The per-epoch validation fields (empty without a validation set)."""

    def set_epochs(self, epochs: int) -> bool:
        """Change the run's length to ``epochs`` before its next epoch, where the run then goes on exactly as
        one planned to that length from the start (its schedules so far do not depend on the length);
        return whether it changed."""

    def state_dict(self) -> dict[str, Any]:
        """The task's part of ``checkpoint.pt``: tensors and plain values only."""

    def load_state_dict(self, state: dict[str, Any], source: str | os.PathLike[str]) -> None:
        """Restore :meth:`state_dict` (a state that does not fit is a ``CheckpointError`` naming ``source``)."""

    def weights(self) -> nn.Module:
        """The module whose weights ``model.safetensors`` holds."""


def _restore(trainer: Trainer, run: Run, device: torch.device, dist: DistContext) -> tuple[int, list[dict[str, Any]]]:
    state = run.load_state(map_location=device)
    trainer.load_state_dict(state, run.state_path)
    set_rng_state(state["rng"], device, dist)
    return int(state["epoch"]), list(state["history"])


def run_epochs(trainer: Trainer, epochs: int, *, run: Run | None = None, resume: bool = False,
               device: torch.device, dist: DistContext | None = None, progress: bool = True,
               on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
               after_first_epoch: Callable[[dict[str, Any]], int] | None = None) -> list[dict[str, Any]]:
    """Train ``epochs`` epochs (those after the checkpoint of ``run`` when ``resume``); return the history.

    ``after_first_epoch(row)``, called once the first epoch is validated and before its checkpoint is written,
    returns the run's length from then on (the budget's re-plan; the callback has told the trainer).
    ``on_epoch_end(row)`` is called after each epoch, once its checkpoint is written."""
    dist = dist or DistContext()
    show = progress and dist.is_main
    start, history = 0, []
    if resume and run is not None and run.has_state():
        start, history = _restore(trainer, run, device, dist)
    bar = tqdm(desc="epochs", disable=not show, initial=start, total=epochs)
    epoch = start
    while epoch < epochs:
        started = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1, **trainer.train_epoch(epoch, show)}
        row.update(trainer.validate())
        row["epoch_time_s"] = time.perf_counter() - started
        history.append(row)
        if epoch == 0 and after_first_epoch is not None:
            epochs = bar.total = after_first_epoch(row)
        epoch += 1
        bar.update()
        if show:
            bar.set_postfix({k: f"{row[k]:.4f}" for k in trainer.progress_fields if k in row})
        if run is not None:
            randomness = rng_state(device, dist)  # every rank takes part in gathering the states
            if dist.is_main:
                run.save_weights(trainer.weights())
                run.save_state({"epoch": epoch, "history": history, "rng": randomness, **trainer.state_dict()})
                run.write_history(history, trainer.history_fields)
        dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(row)
    bar.close()
    return history
