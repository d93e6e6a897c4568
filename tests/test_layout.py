"""Memory layout (vitlab.core.layout): which models train channels-last, that the layout changes no value,
and that a run trained channels-last learns what a contiguous one learns and saves the same kind of files."""

from __future__ import annotations

import pytest
import torch

from vitlab.analysis import report
from vitlab.checkpoint import load_weights
from vitlab.core.configs import ConfigError
from vitlab.core.layout import (
    format_batch,
    model_memory_format,
    prefers_channels_last,
    resolve_memory_format,
    to_memory_format,
)
from vitlab.data.loader import BatchLoader
from vitlab.engine.dense import DenseTask
from vitlab.engine.recipe import SPEED_ONLY_FIELDS, recipe_differences
from vitlab.model import create_model
from vitlab.train import TrainConfig, budget_plan, evaluate, fit


@pytest.mark.parametrize("name, expected", [("cct_2_3x2", True), ("resnet20", True), ("simple_cnn", True),
                                            ("resnet18", True), ("vit_mnist", False), ("swin_mnist", False)])
def test_auto_follows_the_model_family(name: str, expected: bool) -> None:
    model = create_model(name)
    assert prefers_channels_last(model) is expected
    assert resolve_memory_format(model) == (torch.channels_last if expected else torch.contiguous_format)
    assert resolve_memory_format(model, "contiguous") == torch.contiguous_format
    assert resolve_memory_format(model, "channels_last") == torch.channels_last


def test_wrappers_are_looked_through_and_nonsense_is_refused() -> None:
    model = create_model("resnet20")
    assert prefers_channels_last(torch.nn.Sequential()) is False
    assert prefers_channels_last(torch.compile(model)) is True
    with pytest.raises(ValueError, match="unknown memory format 'nhwc'"):
        resolve_memory_format(model, "nhwc")
    with pytest.raises(ConfigError, match="memory_format"):
        TrainConfig(memory_format="nhwc")


def test_format_batch_keeps_values_and_changes_only_the_layout() -> None:
    images = torch.randn(4, 3, 8, 8)
    nhwc = format_batch(images, torch.channels_last)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
    assert torch.equal(nhwc, images)
    assert format_batch(nhwc, torch.channels_last) is nhwc  # already laid out: no copy
    # Contiguous models get the batch as it comes, as before layouts existed (random_crop's is channels-last).
    assert format_batch(images, torch.contiguous_format) is images
    assert format_batch(nhwc, torch.contiguous_format) is nhwc
    tokens = torch.randn(4, 16, 8)
    assert format_batch(tokens, torch.channels_last) is tokens  # not an image batch


def test_model_memory_format_reads_the_weights() -> None:
    model = create_model("simple_cnn")  # its first convolution has one input channel: both layouts at once
    assert model_memory_format(model) == torch.contiguous_format
    assert to_memory_format(model) == torch.channels_last
    assert model_memory_format(model) == torch.channels_last
    assert model_memory_format(create_model("vit_mnist")) == torch.contiguous_format
    assert model_memory_format(torch.nn.Linear(3, 3)) == torch.contiguous_format


def test_channels_last_changes_no_output() -> None:
    torch.manual_seed(0)
    model = create_model("cct_2_3x2", image_size=28, in_channels=1, num_classes=10, dim=32, heads=2,
                         conv_channels=8).eval()
    images = torch.randn(16, 1, 28, 28)
    expected = model(images)
    to_memory_format(model, "channels_last")
    assert torch.allclose(model(format_batch(images, torch.channels_last)), expected, atol=1e-5)


def test_loader_lays_batches_out_as_asked(halves_dataset) -> None:
    data = halves_dataset(64, channels=3, size=16)
    plain = BatchLoader(data, 32, augment=None)
    nhwc = BatchLoader(data, 32, augment=None, memory_format=torch.channels_last)
    for (a, labels_a), (b, labels_b) in zip(plain, nhwc):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last) and not b.is_contiguous()
        assert torch.equal(a, b) and torch.equal(labels_a, labels_b)


def _record_input_layouts(model: torch.nn.Module, seen: list[tuple[bool, bool]]) -> None:
    """Note, for every forward pass, whether the batch arrived channels-last and whether the model was training."""
    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.append((inputs[0].is_contiguous(memory_format=torch.channels_last) and not inputs[0].is_contiguous(),
                     module.training))
    model.register_forward_pre_hook(hook)


def test_a_channels_last_run_learns_as_a_contiguous_one_and_saves_plain_weights(halves_dataset, tmp_path) -> None:
    """The same seed in both layouts, on 3-channel images (a 1-channel batch is both layouts at once): every
    training and evaluation batch reaches a channels-last model channels-last; the numbers agree to float
    rounding, not bit for bit (the convolutions sum in another order); the saved weights are contiguous and load
    into a fresh model."""
    train, val = halves_dataset(256, seed=0, channels=3), halves_dataset(64, seed=1, channels=3)
    cct = dict(image_size=28, in_channels=3, num_classes=2, dim=32, heads=2, conv_channels=8)
    results = {}
    for layout in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        model = create_model("cct_2_3x2", **cct)
        seen: list[tuple[bool, bool]] = []
        _record_input_layouts(model, seen)
        config = TrainConfig(epochs=4, batch_size=32, lr=2e-3, warmup_epochs=0.5, augment="none",
                             memory_format=layout)
        history = fit(model, train, val, config, out_dir=tmp_path / layout, progress=False, device="cpu")
        assert model_memory_format(model) == resolve_memory_format(model, layout)
        assert {training for _, training in seen} == {True, False}  # training steps and validation passes
        assert all(nhwc == (layout == "channels_last") for nhwc, _ in seen), layout
        results[layout] = (history, model)
    (plain_history, plain), (nhwc_history, nhwc) = results["contiguous"], results["channels_last"]
    assert nhwc_history[-1]["val_accuracy"] >= 0.9, nhwc_history
    for a, b in zip(plain_history, nhwc_history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    for (name, a), b in zip(plain.state_dict().items(), nhwc.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-2), name  # 32 steps amplify rounding differences
    fresh = create_model("cct_2_3x2", **cct)
    load_weights(fresh, tmp_path / "channels_last" / "model.safetensors")
    assert model_memory_format(fresh) == torch.contiguous_format
    assert evaluate(fresh, val)["accuracy"] == pytest.approx(evaluate(nhwc, val)["accuracy"], abs=1 / 64)


def test_the_time_budget_probe_times_the_layout_the_run_trains_in(halves_dataset) -> None:
    data = halves_dataset(128, channels=3, size=32)
    for layout, nhwc in (("channels_last", True), ("contiguous", False)):
        model = create_model("resnet20", in_channels=3, num_classes=2)
        seen: list[tuple[bool, bool]] = []
        _record_input_layouts(model, seen)  # the probe deep-copies the model, hook included
        budget_plan(model, data, None, TrainConfig(batch_size=16, memory_format=layout), budget_s=60, device="cpu")
        assert seen and all(arrived == nhwc for arrived, _ in seen), layout
        assert model_memory_format(model) == torch.contiguous_format  # the caller's model is not touched


def test_dense_runs_refuse_a_layout_they_do_not_apply() -> None:
    with pytest.raises(ValueError, match="--memory-format: classification-only"):
        DenseTask("segment", None, recipe_overrides={"memory_format": "channels_last"})
    DenseTask("segment", None, recipe_overrides={"memory_format": "auto"})  # the default is accepted


def test_the_layout_is_a_speed_setting_a_resumed_run_may_change() -> None:
    saved = TrainConfig(memory_format="contiguous").to_dict()
    assert recipe_differences(saved, TrainConfig(memory_format="channels_last")) == {}
    recorded_before_the_field = {k: v for k, v in saved.items() if k != "memory_format"}
    assert TrainConfig.from_dict(recorded_before_the_field).memory_format == "auto"


def test_the_report_ignores_every_speed_only_field() -> None:
    """The report (a floor below the engine) keeps its own list of fields that do not make two runs different
    settings; every speed-only field must be on it, or a run with ``memory_format`` recorded and one from
    before the field existed would be reported as two recipes."""
    assert set(SPEED_ONLY_FIELDS) <= set(report._NOT_A_SETTING)
