import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vitlab.checkpoint import CheckpointError, load_model, load_state, load_weights, save_json, save_weights
from vitlab.core.configs import ConfigError
from vitlab.model import create_model
from vitlab.runs import Run, model_spec
from vitlab.train import TrainConfig, evaluate, fit, make_optimizer, warmup_cosine, weight_average

TINY = TrainConfig(epochs=5, batch_size=32, lr=1e-2, warmup_epochs=0.5, seed=0)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("vit_seed", num_classes=2)


def test_fit_learns_and_writes_run_files(halves_dataset, tmp_path):
    train, val = halves_dataset(256, seed=0), halves_dataset(64, seed=1)
    model = tiny_model()
    history = fit(model, train, val, TINY, out_dir=tmp_path, progress=False)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    assert history[-1]["val_accuracy"] >= 0.95, history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("model.safetensors", "checkpoint.pt", "history.csv"):
        assert (tmp_path / name).is_file()
    assert len(Run(tmp_path).history()) == 5
    assert not list(tmp_path.glob("*.tmp")), "temporary files must be renamed away"


def test_same_seed_same_numbers(halves_dataset):
    train, val = halves_dataset(128), halves_dataset(32, seed=1)
    config = TrainConfig(epochs=2, batch_size=32, seed=7, augment="crop")
    runs = []
    for _ in range(2):
        model = tiny_model(seed=7)
        history = fit(model, train, val, config, progress=False)
        runs.append((history, model.state_dict()))
    strip = lambda h: [{k: v for k, v in row.items() if "time" not in k and "per_s" not in k} for row in h]
    assert strip(runs[0][0]) == strip(runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1].values(), runs[1][1].values()))


def test_resume_after_interruption_reaches_the_same_result(halves_dataset, tmp_path):
    train, val = halves_dataset(128), halves_dataset(32, seed=1)
    config = TrainConfig(epochs=3, batch_size=32, seed=3, augment="crop", label_smoothing=0.1)
    straight = tiny_model(3)
    fit(straight, train, val, config, out_dir=tmp_path / "straight", progress=False)

    def interrupt_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    interrupted = tiny_model(3)
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, train, val, config, out_dir=tmp_path / "resumed", progress=False,
            on_epoch_end=interrupt_after_first_epoch)
    assert load_state(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    resumed = tiny_model(99)  # a fresh process would start from other weights: the checkpoint must win
    history = fit(resumed, train, val, config, out_dir=tmp_path / "resumed", resume=True, progress=False)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_weight_average_is_the_exponential_moving_average_by_hand():
    """average_t = decay * average_(t-1) + (1 - decay) * weights_t, starting from a copy of the first weights."""
    model = tiny_model()
    average = weight_average(model, 0.9)
    snapshots = []
    for step in range(4):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.5 * step + 0.1)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        average.update_parameters(model)
    for name, value in average.module.state_dict().items():
        expected = snapshots[0][name].clone()
        for snapshot in snapshots[1:]:
            expected = 0.9 * expected + 0.1 * snapshot[name]
        assert torch.allclose(value, expected, atol=1e-5), name
    assert int(average.n_averaged) == 4
    with pytest.raises(ValueError, match="EMA decay"):
        weight_average(model, 1.0)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_ema_decay_out_of_range_is_refused(decay):
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=decay)


def test_ema_run_saves_validates_and_resumes_the_average(halves_dataset, tmp_path):
    """With --ema-decay the run's validation and saved weights are the average, not the last step's weights,
    and an interrupted run resumes the average too (same weights as a run never interrupted)."""
    train, val = halves_dataset(128), halves_dataset(32, seed=1)
    config = TrainConfig(epochs=3, batch_size=32, seed=5, augment="crop", ema_decay=0.9)
    straight = tiny_model(5)
    history = fit(straight, train, val, config, out_dir=tmp_path / "straight", progress=False)
    saved = load_weights(tiny_model(1), tmp_path / "straight" / "model.safetensors")
    raw = straight.state_dict()
    averaged = saved.state_dict()
    assert any(not torch.allclose(raw[k], averaged[k]) for k in raw), "the saved weights must be the average"
    scored = evaluate(saved, val, precision=config.precision)
    assert abs(scored["accuracy"] - history[-1]["val_accuracy"]) < 1e-9
    assert abs(scored["loss"] - history[-1]["val_loss"]) < 1e-4
    assert "average" in load_state(tmp_path / "straight" / "checkpoint.pt")

    def interrupt_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(5), train, val, config, out_dir=tmp_path / "resumed", progress=False,
            on_epoch_end=interrupt_after_first_epoch)
    fit(tiny_model(99), train, val, config, out_dir=tmp_path / "resumed", resume=True, progress=False)
    resumed = load_weights(tiny_model(2), tmp_path / "resumed" / "model.safetensors").state_dict()
    for name, value in averaged.items():
        assert torch.allclose(value, resumed[name], atol=1e-6), name


def test_resume_with_a_different_recipe_is_refused(halves_dataset, tmp_path):
    train = halves_dataset(64)
    fit(tiny_model(), train, None, TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="training config differs"):
        fit(tiny_model(), train, None, TrainConfig(epochs=1, batch_size=32, lr=0.1), out_dir=tmp_path, resume=True,
            progress=False)


def _saved_run(tmp_path: Path) -> Path:
    model = tiny_model()
    save_weights(model, tmp_path / "model.safetensors")
    save_json(tmp_path / "config.json", {"model": model_spec("vit_seed", model)})
    return tmp_path


def test_load_model_round_trip(tmp_path):
    run = _saved_run(tmp_path)
    model = load_model(run)
    images = torch.randn(2, 1, 28, 28)
    assert torch.allclose(model(images), tiny_model().eval()(images), atol=1e-6)


def test_corrupt_weights_give_a_clear_error(tmp_path):
    run = _saved_run(tmp_path)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(run)
    (run / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(run)


def test_corrupt_training_state_gives_a_clear_error(halves_dataset, tmp_path):
    train = halves_dataset(64)
    fit(tiny_model(), train, None, TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        fit(tiny_model(), train, None, TrainConfig(epochs=1, batch_size=32), out_dir=tmp_path, resume=True,
            progress=False)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loading_never_unpickles_code(tmp_path):
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        pickle.dump({"epoch": 1, "payload": _Payload()}, f)
    with pytest.raises(CheckpointError, match="unsafe|corrupt"):
        load_state(path)


def test_mismatched_checkpoint_gives_a_clear_error(tmp_path):
    run = _saved_run(tmp_path)
    with pytest.raises(CheckpointError, match="do not match the model"):
        load_weights(create_model("vit_mnist"), run / "model.safetensors")
    config = json.loads((run / "config.json").read_text())
    config["model"]["config"]["dim"] = 16
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shape mismatch"):
        load_model(run)
    config["model"]["config"]["layers"] = 3
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"invalid vit model: unknown ViTConfig field\(s\) \[.layers.\]"):
        load_model(run)


def test_evaluate_is_consistent(halves_dataset):
    dataset = halves_dataset(100, seed=4)
    result = evaluate(tiny_model().eval(), dataset, batch_size=32)
    confusion = torch.tensor(result["confusion"])
    assert confusion.sum() == 100 == result["n"]
    assert result["accuracy"] == pytest.approx(confusion.trace().item() / 100)
    assert result["per_class_accuracy"][0] == pytest.approx(confusion[0, 0].item() / confusion[0].sum().item())


def test_warmup_cosine_schedule():
    factor = warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.01)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.505, abs=1e-3)
    assert factor(100) == pytest.approx(0.01)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 100))


def test_optimizers_and_weight_decay_groups():
    model = tiny_model()
    for name, cls in (("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)):
        optimizer = make_optimizer(model, TrainConfig(optimizer=name))
        assert isinstance(optimizer, cls)
    decayed = {id(p) for p in make_optimizer(model, TrainConfig()).param_groups[0]["params"]}
    assert id(model.head.weight) in decayed and id(model.head.bias) not in decayed
    assert id(model.cls_token.token) not in decayed
    with pytest.raises(ValueError, match="optimizer = 'lion' is not allowed"):
        TrainConfig(optimizer="lion")


# ----------------------------------------------------------------------------- command line

def run_cli(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vitlab", *args], capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("command", ["train", "evaluate", "download"])
def test_cli_help(command):
    assert "usage: vitlab " + command in run_cli(command, "--help").stdout


@pytest.mark.usefixtures("mnist_available")
def test_cli_train_and_evaluate_tiny_mnist_run(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--model", "vit_seed", "--dataset", "mnist", "--epochs", "2", "--subset", "512",
                     "--max-steps-per-epoch", "4", "--batch-size", "64", "--test-subset", "300", "--out", str(out),
                     "--quiet", "--seed", "1")
    assert "test accuracy:" in result.stdout and str(out) in result.stdout
    for name in ("config.json", "model.safetensors", "history.csv", "metrics.json", "curves.png", "confusion.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "per_class_accuracy", "confusion", "params", "wall_time_s", "device", "torch",
                "seed", "command"):
        assert key in metrics, key
    assert metrics["test_n"] == 300 and metrics["seed"] == 1 and metrics["epochs"] == 2
    evaluation = run_cli("evaluate", str(out), "--subset", "300")
    assert "test accuracy" in evaluation.stdout
    again = json.loads((out / "metrics.json").read_text())
    assert again["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    refused = run_cli("train", "--model", "vit_seed", "--subset", "512", "--out", str(out), check=False)
    assert refused.returncode != 0 and "--resume" in refused.stderr


def test_cli_missing_dataset_is_one_clear_line(tmp_path):
    result = run_cli("train", "--dataset", "mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "r"),
                     check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "vitlab train: error: Dataset 'mnist' was not found" in result.stderr
    assert str(tmp_path / "MNIST" / "raw") in result.stderr


def test_cli_interrupted_run_resumes_to_a_valid_run_folder(folder_dataset, tmp_path):
    data = folder_dataset(tmp_path / "images")
    out = tmp_path / "run"
    args = ["train", "--model", "vit_seed", "--dataset", f"folder:{data}", "--model-arg", "image_size=16",
            "--epochs", "30", "--batch-size", "8", "--out", str(out), "--quiet"]
    # A shell that starts jobs in the background makes them ignore SIGINT, and Python then installs no
    # KeyboardInterrupt handler: restore the default, as in an interactive terminal.
    process = subprocess.Popen([sys.executable, "-m", "vitlab", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "--resume" in stderr
    done = load_state(out / "checkpoint.pt")["epoch"]
    assert 1 <= done < 30 and not (out / "metrics.json").exists()
    result = run_cli(*args, "--resume", timeout=300)
    assert "test accuracy" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 30 and metrics["test_n"] == 20
    assert len(Run(out).history()) == 30


def test_distributed_two_processes_on_cpu(folder_dataset, tmp_path):
    """torchrun with the gloo backend: each process trains on its own shard, rank 0 writes the run."""
    data = folder_dataset(tmp_path / "images")
    out = tmp_path / "ddp"
    # --device cpu: on a machine with one GPU both ranks would otherwise pick CUDA, and rank 1 cuda:1.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vitlab", "train", "--model", "vit_seed", "--dataset", f"folder:{data}", "--device", "cpu",
               "--model-arg", "image_size=16", "--epochs", "2", "--batch-size", "8", "--augment", "crop",
               "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test accuracy") == 1, "only rank 0 reports"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["test_n"] == 20 and metrics["epochs"] == 2
    history = Run(out).history()
    # 72 training images (80 minus the 10 % validation split), 2 processes x batch 8, drop_last:
    # 36 images per process -> 4 full batches -> 2 x 4 x 8 = 64 images per epoch across both.
    assert history[0]["train_samples"] == 64
    # Every rank's random state is in the checkpoint (each resumes with its own: they were seeded seed + rank).
    ranks = Run(out).load_state()["rng"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["cpu"], ranks[1]["cpu"])


def test_cli_label_noise_out_of_range_is_one_clear_line(folder_dataset, tmp_path):
    data = folder_dataset(tmp_path / "images")
    result = run_cli("train", "--model", "vit_seed", "--dataset", f"folder:{data}", "--label-noise", "1.5",
                     "--out", str(tmp_path / "run"), "--quiet", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "label noise (--label-noise) is a fraction in [0, 1), got 1.5" in result.stderr
