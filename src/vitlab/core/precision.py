"""Numeric precision: which float format the forward and backward passes run in, chosen per device.

``--precision`` takes three values:

* ``fp32``: everything in 32-bit floats, everywhere;
* ``bf16``: bf16 autocast (the matrix products of linear layers and convolutions run in bfloat16;
  the weights, the optimizer state and reductions such as softmax, norms and the loss stay fp32,
  so no loss scaling is needed: bf16 has fp32's exponent range);
* ``auto`` (the default): ``bf16`` where the device has fast bf16 matrix units, ``fp32`` elsewhere.
  Fast bf16 means a CUDA GPU of compute capability 8.0 or newer (Ampere, Hopper: bf16 tensor cores),
  or a CPU with Intel AMX tiles (Sapphire Rapids and later), detected at run time. On any other CPU
  bf16 is emulated and far slower than fp32 (a 512x512 matmul measured at 1.4 GFLOP/s in bf16
  against 100 in fp32 on a 2-core AMD EPYC without AMX), so ``auto`` keeps fp32 there.

Attention is where bf16 goes wrong on CPUs: PyTorch's fused CPU flash-attention *backward* in bf16
took 80 % of a ``vit_cifar`` training step on an AMX machine (235 ms a call, against 130 ms for
every matrix product together). :func:`attention_dtype` therefore runs the fused attention kernel
in fp32 on CPUs whenever a backward pass will go through it, while the linear layers around it run in bf16;
inference keeps the bf16 kernel (its forward is not the slow part). On CUDA, bf16 flash attention
is the fast kernel and is used as is.

:func:`autocast_context` is the one place that turns a precision into a context for a forward pass;
training, evaluation, the bench and the lessons all go through it.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch

__all__ = ["Precision", "PRECISIONS", "cpu_has_amx", "fast_bf16", "resolve_precision", "autocast_context",
           "attention_dtype", "describe_precision", "recorded_precision"]

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def cpu_has_amx() -> bool:
    """True when this CPU has Intel AMX tiles (PyTorch's run-time check of the CPU's features, the one its
    own oneDNN kernels rely on; every AMX CPU so far has the bf16 unit). False on a PyTorch too old to ask."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def cuda_has_bf16_units(device: torch.device) -> bool:
    """True when the GPU has bf16 tensor cores (compute capability 8.0 or newer; older GPUs emulate bf16)."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matrix products faster than fp32: a CUDA GPU with bf16 tensor cores,
    or a CPU with AMX. Apple's MPS and every other CPU: no."""
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_has_bf16_units(device)
    if device.type == "cpu":
        return cpu_has_amx()
    return False


def resolve_precision(precision: str, device: torch.device | str) -> Literal["fp32", "bf16"]:
    """The precision a run actually uses on ``device``: ``auto`` becomes ``bf16`` where
    :func:`fast_bf16` says so, else ``fp32``. An explicit ``bf16`` is honoured where bf16 works at all
    (CPU, CUDA), with a warning where it is emulated and slow; it is an error on MPS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return "fp32"
    fast = fast_bf16(device)
    if precision == "auto":
        return "bf16" if fast else "fp32"
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"precision 'bf16' is supported on CPU and CUDA, not on {device.type}: use fp32 or auto")
    if not fast:
        hardware = "this CPU has no AMX units" if device.type == "cpu" else "this GPU has no bf16 tensor cores"
        warnings.warn(f"precision 'bf16' requested but {hardware}: bf16 is emulated and much slower than fp32 "
                      "here (precision 'auto' would pick fp32)", RuntimeWarning, stacklevel=2)
    return "bf16"


def autocast_context(device: torch.device | str, precision: str = "auto") -> AbstractContextManager[Any]:
    """The context of every forward pass, in training and evaluation alike: bf16 autocast when
    ``precision`` resolves to bf16 on ``device`` (:func:`resolve_precision`), nothing (fp32) otherwise.
    The backward pass follows the forward's dtypes; weights and optimizer state stay fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def attention_dtype(q: torch.Tensor) -> torch.dtype | None:
    """The dtype the fused attention kernel should compute in for these queries, or ``None`` for "as they are": fp32
    for bf16 queries on a CPU when a backward pass will go through them (they require gradients; not in
    inference, nor in a frozen backbone), because the CPU's bf16 flash-attention backward is several times
    slower than the fp32 one (see the module docstring). The attention's matmuls are a small share of a ViT's
    FLOPs at these token counts, so fp32 there costs little."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        return torch.float32
    return None


def describe_precision(precision: str, device: torch.device | str) -> str:
    """One line for logs and run metadata, e.g. ``"bf16 (auto: CPU with AMX)"``."""
    device = torch.device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        resolved = resolve_precision(precision, device)
    if precision != "auto":
        return resolved
    if device.type == "cuda":
        why = "GPU with bf16 tensor cores" if resolved == "bf16" else "GPU without bf16 tensor cores"
    elif device.type == "cpu":
        why = "CPU with AMX" if resolved == "bf16" else "CPU without AMX"
    else:
        why = f"{device.type}: fp32 only"
    return f"{resolved} (auto: {why})"


def recorded_precision(train_config: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
    """The precision a recorded run computed in, ``fp32`` or ``bf16``: the precision to re-score it in, so
    that every number of one run is measured alike (a model trained in fp32 is never scored in bf16 on an
    AMX machine, nor a bf16 GPU run in fp32 on a CPU: there bf16 is emulated, slower but the same
    arithmetic). Read from ``metrics.json``'s resolved ``precision`` when there is one, else from
    ``config.json``'s ``train`` section (``auto`` without metrics: ``auto``, decided by this device); runs
    recorded before ``precision`` existed say ``amp``, which meant bf16 on CUDA and fp32 on CPUs (their
    ``metrics.json`` names the device)."""
    metrics = metrics or {}
    if metrics.get("precision"):  # e.g. "fp32 (auto: CPU without AMX)"
        return "fp32" if str(metrics["precision"]).startswith("fp32") else "bf16"
    if "precision" in train_config:
        return train_config["precision"]
    if train_config.get("amp") is False:
        return "fp32"
    return "bf16" if str(metrics.get("device", "")).startswith("cuda") else "fp32"
