"""The groundwork: the model registry, strict configs, the Run type, train_run, and bad input."""

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import vitlab
from vitlab.augment import Pipeline, get_augmentation
from vitlab.configs import Config, ConfigError
from vitlab.data import normalize
from vitlab.registry import build_model, create_model, get_model, model_config, model_names, register_model
from vitlab.report import build_report
from vitlab.runfolder import run as run_module
from vitlab.runs import Run, RunError, count_flops, model_from_spec, model_spec, train_run
from vitlab.train import TrainConfig, fit, make_optimizer, recipe

# ----------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_builds_saves_and_reloads(name, tmp_path):
    entry = get_model(name)
    config = entry.config
    model = create_model(name, num_classes=3).eval()
    assert type(model).family == entry.family and isinstance(model.config, type(model).config_class)
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}
    images = torch.randn(2, config.in_channels, config.image_size, config.image_size)
    # The saved spec rebuilds the same architecture; the weights then give the same logits.
    rebuilt = model_from_spec(json.loads(json.dumps(model_spec(name, model))))
    rebuilt.load_state_dict(model.state_dict())
    before, after = model(images), rebuilt.eval()(images)
    if isinstance(before, tuple):  # a detector: class logits and boxes
        assert all(torch.equal(a, b) for a, b in zip(after, before))
    else:
        assert torch.equal(after, before)
    recipe(name)  # every tuned recipe is a valid TrainConfig


def test_weight_decay_skips_what_the_model_names():
    model = create_model("vit_mnist")
    decayed = {id(p) for p in make_optimizer(model, TrainConfig()).param_groups[0]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[i] for i in set(names) - decayed}
    assert {"cls_token.token", "pos_embed.table"} <= skipped
    assert all(n in model.no_weight_decay() or model.get_parameter(n).dim() <= 1 for n in skipped)


@dataclass
class _MLPConfig(Config):
    image_size: int = 8
    in_channels: int = 1
    num_classes: int = 2
    hidden: int = 16


class _MLP(nn.Module):
    """A model family in a dozen lines: what a new family module needs to provide."""

    family = "test_mlp"
    config_class = _MLPConfig
    has_attention_maps = False

    def __init__(self, config: _MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(config.in_channels * config.image_size ** 2, config.hidden),
                                  nn.ReLU())
        self.head = nn.Linear(config.hidden, config.num_classes)

    def no_weight_decay(self) -> set[str]:
        return set()

    def gradcam_layer(self, layer: int = -1) -> nn.Module:
        return self.body

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def test_a_new_family_is_one_class_and_one_registration(halves_dataset, tmp_path, monkeypatch):
    from vitlab import registry

    model_names()  # load the real families first; the test's family is dropped again afterwards
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    register_model("test_mlp_tiny", _MLP, _MLPConfig(), recipe={"epochs": 3, "lr": 1e-2})
    assert "test_mlp_tiny" in model_names()
    assert recipe("test_mlp_tiny").epochs == 3
    model = create_model("test_mlp_tiny", image_size=28)
    history = fit(model, halves_dataset(64), None, recipe("test_mlp_tiny", batch_size=16), out_dir=tmp_path,
                  progress=False)
    assert len(history) == 3
    spec = model_spec("test_mlp_tiny", model)
    assert spec["family"] == "test_mlp" and isinstance(build_model("test_mlp", spec["config"]), _MLP)
    with pytest.raises(ValueError, match="already registered"):
        register_model("vit_mnist", _MLP, _MLPConfig())
    with pytest.raises(TypeError, match="lacks"):
        register_model("broken", nn.Linear, _MLPConfig())


def test_unknown_names_are_errors_that_list_the_known_ones():
    with pytest.raises(ValueError, match="registered models: vit_seed, vit_mnist"):
        create_model("vit_huge")
    with pytest.raises(ValueError, match="unknown model family 'mamba'"):
        build_model("mamba", {})
    with pytest.raises(ValueError, match="no config field"):
        model_config("vit_mnist", layers=3)


# ----------------------------------------------------------------------------- configs

def test_configs_are_strict_and_validated():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field\(s\) \['learning_rate'\]; known fields are"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    assert TrainConfig.from_dict(TrainConfig(lr=0.5).to_dict()) == TrainConfig(lr=0.5)
    for bad, message in (({"epochs": 0}, "epochs must be positive"), ({"augment": "mixup"}, "unknown augmentation"),
                         ({"optimizer": "lion"}, "is not allowed"), ({"label_smoothing": 1.0}, r"\[0, 1\)"),
                         ({"batch_size": -1}, "batch_size must be positive")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**bad)
    assert TrainConfig(grad_clip=0).grad_clip is None  # --grad-clip 0 disables clipping
    with pytest.raises(ConfigError, match="pool = 'max' is not allowed"):
        vitlab.ViTConfig(pool="max")
    with pytest.raises(ConfigError, match="positional = 'rope' is not allowed"):
        vitlab.ViTConfig(positional="rope")


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", ["vit_mnist", "simple_cnn"])
def test_uint8_images_into_a_model_get_a_clear_error(name):
    model = create_model(name)
    with pytest.raises(ValueError, match="expects normalized float images.*dataset.normalized"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


def test_a_pipeline_never_skips_its_uint8_stage_silently():
    strong = get_augmentation("cifar-strong")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.5,) * 3, (0.25,) * 3
    with pytest.raises(ValueError, match="uint8 stage"):
        strong(normalize(images, mean, std))
    with pytest.raises(ValueError, match="mean and std"):
        strong(images)
    torch.manual_seed(3)
    ours = strong(images, mean, std)
    torch.manual_seed(3)
    by_hand = strong.after(normalize(strong.before(images), mean, std))
    assert torch.equal(ours, by_hand)
    # A float-only policy works on a normalized batch, as before.
    assert isinstance(get_augmentation("cifar"), Pipeline)
    assert get_augmentation("cifar")(normalize(images, mean, std)).shape == images.shape


# ----------------------------------------------------------------------------- runs

def test_run_files_missing_or_corrupt_are_clear_errors(tmp_path):
    run = Run(tmp_path / "nothing")
    with pytest.raises(RunError, match="config.json does not exist.*run folder"):
        run.config()
    run.path.mkdir()
    (run.path / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="config.json is corrupt"):
        run.config()
    (run.path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(RunError, match="expected a JSON object"):
        run.metrics()
    assert run.history(missing_ok=True) == []
    with pytest.raises(RunError, match="history.csv does not exist"):
        run.history()


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, folder_dataset):
    """A real (small) train_run on a folder dataset, as a lesson would call it."""
    root = tmp_path_factory.mktemp("data")
    data = folder_dataset(root / "images")
    run = train_run("vit_seed", f"folder:{data}", root / "run", model_args={"image_size": 16}, seed=2,
                    recipe={"epochs": 2, "batch_size": 8}, progress=False, verbose=False)
    return run, data


def test_train_run_writes_a_complete_run(folder_run):
    run, data = folder_run
    assert isinstance(run, Run) and run.is_finished()
    metrics, config = run.metrics(), run.config()
    assert metrics["epochs"] == 2 == len(run.history()) and metrics["test_n"] == 20 and metrics["seed"] == 2
    model = run.model()
    assert metrics["params"] == vitlab.count_parameters(model)
    assert metrics["flops"] == count_flops(model, (1, 16, 16)) > 0
    assert config["train"]["seed"] == 2 and config["model"]["config"]["image_size"] == 16
    # The run reloads its own test split and scores what it recorded.
    test_set = run.dataset("test")
    assert len(test_set) == 20 and test_set.image_shape == (1, 16, 16)
    # Re-scored like with like: on the device it trained on (the default), in the precision it recorded.
    rescored = vitlab.train.evaluate(run.model(map_location=vitlab.pick_device()), test_set,
                                     precision=run.evaluation_precision())
    assert rescored["accuracy"] == pytest.approx(metrics["test_accuracy"])
    for name in ("curves.png", "confusion.png", "model.safetensors", "checkpoint.pt"):
        assert (run.path / name).is_file()


def test_train_run_refuses_to_overwrite_and_resumes_a_finished_run(folder_run):
    run, data = folder_run
    args = dict(model_args={"image_size": 16}, seed=2, recipe={"epochs": 2, "batch_size": 8}, progress=False,
                verbose=False)
    with pytest.raises(RunError, match="already holds a run.*--resume"):
        train_run("vit_seed", f"folder:{data}", run.path, **args)
    before = run.metrics()
    (run.path / "metrics.json").write_text("{damaged")  # a finished run is re-evaluated, which repairs the file
    with pytest.warns(UserWarning, match="metrics.json is corrupt"):
        again = train_run("vit_seed", f"folder:{data}", run.path, resume=True, **args)
    after = again.metrics()
    assert after["test_accuracy"] == before["test_accuracy"] and after["confusion"] == before["confusion"]
    assert after["epochs"] == 2 and len(again.history()) == 2, "a finished run trains no further epoch"
    with pytest.raises(RunError, match="recipe differs"):
        train_run("vit_seed", f"folder:{data}", run.path, resume=True, **{**args, "recipe": {"epochs": 3,
                                                                                           "batch_size": 8}})


def test_runs_recorded_with_amp_still_resume(folder_run, tmp_path):
    """A run recorded before ``precision`` existed (``amp: true`` in config.json and in its checkpoint)
    resumes under today's default recipe instead of being refused as a different one."""
    import shutil

    run, data = folder_run
    old = Run(shutil.copytree(run.path, tmp_path / "old"))
    config = old.config()
    legacy = {k: v for k, v in config["train"].items() if k not in ("precision", "compile")} | {"amp": True}
    old.write_config({**config, "train": legacy})
    state = old.load_state()
    old.save_state({**state, "train_config": legacy})
    args = dict(model_args={"image_size": 16}, seed=2, progress=False, verbose=False)
    again = train_run("vit_seed", f"folder:{data}", old.path, resume=True, recipe={"epochs": 2, "batch_size": 8},
                      **args)
    assert again.metrics()["test_accuracy"] == run.metrics()["test_accuracy"]
    with pytest.raises(RunError, match="precision"):  # a real change of precision is still refused
        train_run("vit_seed", f"folder:{data}", old.path, resume=True,
                  recipe={"epochs": 2, "batch_size": 8, "precision": "bf16"}, **args)


def test_evaluations_are_recorded_without_replacing_numbers_from_other_images(folder_run, tmp_path):
    import shutil

    source, _ = folder_run
    run = Run(shutil.copytree(source.path, tmp_path / "run"))
    model, recorded = run.model(), run.metrics()
    val = run.dataset("val")
    merged = run.record_evaluation(vitlab.train.evaluate(model, val), val, command="test")
    assert merged["val_n"] == len(val) == 8 and merged["test_accuracy"] == recorded["test_accuracy"]
    fewer = run.dataset("test", subset=5)  # other images than the recorded 20: their own keys
    merged = run.record_evaluation(vitlab.train.evaluate(model, fewer), fewer, command="test")
    assert merged[f"{fewer.name}_test_n"] == 5 and merged["test_n"] == 20
    assert merged["test_accuracy"] == recorded["test_accuracy"] and merged["confusion"] == recorded["confusion"]
    # The data folder now holds another copy than the run was made with: refused, not switched silently.
    config = run.config()
    config["dataset"]["test_n"] = 999
    (run.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="holds another copy"):
        run.dataset("test")


def test_report_reads_runs_and_escapes_its_title(folder_run, tmp_path):
    run, _ = folder_run
    report = build_report([run.path], tmp_path / "reports", title="<b>mine</b>")
    html = (tmp_path / "reports" / "REPORT.html").read_text()
    assert "<title>&lt;b&gt;mine&lt;/b&gt;</title>" in html and "<b>mine" not in html
    assert f"{run.metrics()['flops'] / 1e6:.1f}" in report.read_text()  # FLOPs as recorded at training time


# ----------------------------------------------------------------------------- command line

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitlab", *args], capture_output=True, text=True, timeout=300)


def test_cli_lists_every_registered_model_and_generates_recipe_flags():
    text = run_cli("train", "--help").stdout
    for name in model_names():
        assert name in text
    for field in dataclasses.fields(TrainConfig):
        if field.name != "seed":
            assert "--" + field.name.replace("_", "-") in text, field.name


def test_cli_nonsense_flags_are_one_line_errors(tmp_path):
    for args, message in ((["--epochs", "0"], "epochs must be positive"),
                          (["--model-arg", "layers=3"], "no config field"),
                          (["--time-budget", "-5"], "time budget must be a positive")):
        result = run_cli("train", "--dataset", f"folder:{tmp_path}", "--out", str(tmp_path / "r"), *args)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and message in result.stderr, result.stderr
    assert not (tmp_path / "r").exists(), "a refused command writes nothing"


def test_device_name_names_the_cpu_model(tmp_path, monkeypatch) -> None:
    """A budgeted run's record says which CPU it ran on: the same budget buys 2-3x more steps on one 2-core
    machine than on another, so the report must be able to tell them apart."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t:  AMD   EPYC 9R14\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    assert run_module.cpu_model(cpuinfo) == "AMD EPYC 9R14"
    monkeypatch.setattr(run_module.platform, "processor", lambda: "")
    assert run_module.cpu_model(tmp_path / "missing") is None
    monkeypatch.setattr(run_module, "cpu_model", lambda: "AMD EPYC 9R14")
    assert run_module.device_name(torch.device("cpu")).startswith("cpu (") \
        and "AMD EPYC 9R14" in run_module.device_name(torch.device("cpu"))
    monkeypatch.setattr(run_module, "cpu_model", lambda: None)
    assert "None" not in run_module.device_name(torch.device("cpu"))
