"""vitlab.precision: the choice of fp32 or bf16 per device (with the hardware query faked), the attention
kernel's dtype under bf16, the legacy ``amp`` field, and opt-in compilation."""

from __future__ import annotations

import shutil
import warnings
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.attention import MultiHeadSelfAttention
from vitlab.configs import ConfigError
from vitlab.precision import (
    attention_dtype,
    autocast_context,
    describe_precision,
    fast_bf16,
    recorded_precision,
    resolve_precision,
)
from vitlab.train import TrainConfig, evaluate, fit


@pytest.fixture
def amx(monkeypatch: pytest.MonkeyPatch):
    """Fake the CPU's AMX answer: ``amx(True)`` makes this CPU look like a Sapphire Rapids."""
    def fake(present: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: present)
    return fake


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch):
    """Fake a CUDA GPU's compute capability (no GPU needed: only the query is answered)."""
    def fake(major: int, minor: int = 0) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
    return fake


def test_auto_picks_bf16_only_on_a_cpu_with_amx(amx) -> None:
    amx(True)
    assert fast_bf16("cpu") and resolve_precision("auto", "cpu") == "bf16"
    assert describe_precision("auto", "cpu") == "bf16 (auto: CPU with AMX)"
    amx(False)
    assert not fast_bf16("cpu") and resolve_precision("auto", "cpu") == "fp32"
    assert describe_precision("auto", "cpu") == "fp32 (auto: CPU without AMX)"


@pytest.mark.parametrize(("capability", "expected"), [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"),
                                                      ((7, 5), "fp32"), ((6, 1), "fp32")])
def test_auto_picks_bf16_on_gpus_with_bf16_tensor_cores(gpu, capability, expected) -> None:
    gpu(*capability)  # Hopper, A100, RTX 30xx: bf16 tensor cores; Turing (T4), Pascal: none
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("fp32", "cuda") == "fp32"


def test_mps_and_other_devices_stay_fp32() -> None:
    assert resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(ValueError, match="not on mps"):
        resolve_precision("bf16", "mps")


def test_explicit_bf16_is_honoured_with_a_warning_where_it_is_emulated(amx, gpu) -> None:
    amx(False)
    with pytest.warns(RuntimeWarning, match="no AMX units"):
        assert resolve_precision("bf16", "cpu") == "bf16"
    gpu(7, 5)
    with pytest.warns(RuntimeWarning, match="no bf16 tensor cores"):
        assert resolve_precision("bf16", "cuda") == "bf16"
    amx(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fast hardware: no warning
        assert resolve_precision("bf16", "cpu") == "bf16"


def test_nonsense_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="precision = 'half' is not allowed"):
        TrainConfig(precision="half")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_context_follows_the_resolved_precision(amx, gpu) -> None:
    amx(False)
    assert isinstance(autocast_context("cpu", "auto"), nullcontext)
    amx(True)
    cpu_bf16 = autocast_context("cpu", "auto")
    assert isinstance(cpu_bf16, torch.autocast) and cpu_bf16.fast_dtype == torch.bfloat16
    assert isinstance(autocast_context("cpu", "fp32"), nullcontext)
    gpu(9)
    cuda_bf16 = autocast_context("cuda", "auto")  # built, not entered: no GPU needed
    assert isinstance(cuda_bf16, torch.autocast) and cuda_bf16.device == "cuda"


def test_runs_recorded_with_amp_read_as_a_precision() -> None:
    assert TrainConfig.from_dict({"amp": False}).precision == "fp32"
    assert TrainConfig.from_dict({"amp": True, "lr": 2e-3}) == TrainConfig(lr=2e-3, precision="auto")
    # Evaluation: a run that computed in fp32 stays fp32 on every machine; a bf16 run gets auto.
    assert recorded_precision({"amp": False}, {"device": "cuda (H200)"}) == "fp32"
    assert recorded_precision({"amp": True}, {"device": "cpu (2 cores)"}) == "fp32"
    assert recorded_precision({"amp": True}, {"device": "cuda (NVIDIA H200)"}) == "bf16"
    assert recorded_precision({"precision": "auto"}, {"precision": "fp32 (auto: CPU without AMX)"}) == "fp32"
    # A bf16 run is re-scored in bf16 wherever it is re-scored (like with like), not in what auto picks here.
    assert recorded_precision({"precision": "auto"}, {"precision": "bf16 (auto: CPU with AMX)"}) == "bf16"
    assert recorded_precision({"precision": "fp32"}) == "fp32" and recorded_precision({"precision": "bf16"}) == "bf16"
    assert recorded_precision({"precision": "auto"}) == "auto"  # not finished: nothing recorded yet
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"amp": True, "precision": "fp32"})  # both: one of them is a mistake


def test_cpu_attention_runs_its_kernel_in_fp32_when_a_backward_follows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast on a CPU the linear layers run in bf16, but the fused attention kernel gets fp32
    inputs while gradients are on (the CPU's bf16 flash-attention backward is the slow part) and bf16 ones
    in inference; its output is close to the all-fp32 one either way."""
    seen: list[torch.dtype] = []
    kernel = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(q.dtype)
        return kernel(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(64, 4)
    x = torch.randn(2, 17, 64, requires_grad=True)
    reference = attention(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = attention(x)
    trained.float().sum().backward()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inferred = attention(x)
    assert seen == [torch.float32, torch.float32, torch.bfloat16]
    assert trained.dtype == torch.bfloat16 and x.grad is not None and torch.isfinite(x.grad).all()
    for out in (trained, inferred):
        torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)
    assert attention_dtype(torch.zeros(1, dtype=torch.bfloat16, requires_grad=True)) == torch.float32
    assert attention_dtype(torch.zeros(1, dtype=torch.bfloat16)) is None  # nothing to differentiate (frozen)
    assert attention_dtype(torch.zeros(1, requires_grad=True)) is None


def test_bf16_training_keeps_fp32_weights_and_learns(halves_dataset, amx) -> None:
    """A bf16 run (``auto`` on a faked AMX CPU) trains with fp32 master weights and optimizer state, and
    learns the task as the fp32 run does."""
    amx(True)
    data = halves_dataset(256)
    accuracies = {}
    for precision in ("fp32", "auto"):
        torch.manual_seed(0)
        model = vitlab.ViT(vitlab.ViTConfig(image_size=28, patch_size=7, in_channels=1, num_classes=2, dim=32,
                                            depth=2, heads=2))
        config = TrainConfig(epochs=3, batch_size=32, lr=2e-3, warmup_epochs=0.5, precision=precision)
        history = fit(model, data, None, config, progress=False, device="cpu")
        assert all(p.dtype == torch.float32 for p in model.parameters())
        accuracies[precision] = evaluate(model, data, 128, precision=precision)["accuracy"]
        assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert accuracies["fp32"] > 0.9 and abs(accuracies["auto"] - accuracies["fp32"]) <= 0.05, accuracies


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU backend needs a C++ compiler")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compiled_training_matches_eager_and_saves_plain_weights(halves_dataset, tmp_path) -> None:
    """``compile=True`` trains through torch.compile (inductor): the same losses as eager to float
    rounding, and the run's weights are saved under the model's own names (no ``_orig_mod.`` prefix)."""
    data = halves_dataset(64)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = vitlab.ViT(vitlab.ViTConfig(image_size=28, patch_size=7, in_channels=1, num_classes=2, dim=32,
                                            depth=1, heads=2))
        history = fit(model, data, None, TrainConfig(epochs=1, batch_size=32, compile=compiled), progress=False,
                      device="cpu", out_dir=tmp_path / str(compiled))
        losses[compiled] = history[0]["train_loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    reloaded = vitlab.runs.Run(tmp_path / "True").load_state()
    assert not any(name.startswith("_orig_mod") for name in reloaded["model"])
