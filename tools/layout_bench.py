"""Seconds per training step of vitlab's models in the two memory layouts (``--memory-format contiguous`` and
``channels_last``; :mod:`vitlab.core.layout`), measured with the time-budget planner's own probe: batch fetch,
augmentation, forward, loss, backward, optimizer step, each model with its registered recipe (batch size,
augmentation, precision ``auto``). The data is random uint8 images of the dataset's shape, so no download is
needed; only the speed is measured.

The ``contiguous`` column is the path every run took before layouts were chosen (PyTorch's default weights,
the batch as augmentation leaves it). ``vit_mnist`` is the control: it has no convolution and its one-channel
batches are both layouts at once, so its two columns do identical work and their ratio is the tool's noise.

Usage: ``python tools/layout_bench.py [--steps 15] [--rounds 3] [--out bench/layout.json]`` (about 12 minutes on a
2-core CPU). Each model is timed in the two layouts in turn, ``--rounds`` times, the first layout alternating
(a shared 2-core VM drifts by 10-20 % within minutes, so one pair of numbers can mislead); each number is the
median of ``--steps`` timed steps after warm-up, and the table gives the median round. Compare rows only within
one run on one machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vitlab.core.io import save_json
from vitlab.core.layout import prefers_channels_last
from vitlab.data.datasets import ImageTensorDataset
from vitlab.engine.recipe import recipe
from vitlab.engine.train import budget_plan
from vitlab.models.registry import create_model
from vitlab.runfolder.run import device_name

#: (label, registered model, model arguments, image shape): the presets of the CIFAR crossover and make train,
#: and the MNIST conv tokenizer the make-train search tried.
CASES: list[tuple[str, str, dict[str, object], tuple[int, int, int]]] = [
    ("cct_2_3x2 (CIFAR-10)", "cct_2_3x2", {}, (3, 32, 32)),
    ("resnet20 (CIFAR-10)", "resnet20", {}, (3, 32, 32)),
    ("resnet18 (CIFAR-10)", "resnet18", {"in_channels": 3}, (3, 32, 32)),
    ("vit_cifar_small (CIFAR-10)", "vit_cifar_small", {}, (3, 32, 32)),
    ("cct_2_3x2, 32-channel tokenizer (MNIST)", "cct_2_3x2",
     {"image_size": 28, "in_channels": 1, "conv_channels": 32}, (1, 28, 28)),
    ("simple_cnn (MNIST)", "simple_cnn", {}, (1, 28, 28)),
    ("vit_mnist (MNIST)", "vit_mnist", {}, (1, 28, 28)),
]


def step_seconds(model_name: str, model_args: dict[str, object], shape: tuple[int, int, int], layout: str,
                 steps: int) -> float:
    """Median seconds of one training step of ``model_name`` with its recipe in ``layout``."""
    torch.manual_seed(0)
    model = create_model(model_name, **model_args)
    config = recipe(model_name, memory_format=layout, epochs=1)
    n = config.batch_size * (steps + 4)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.arange(n) % 10, [str(i) for i in range(10)], (0.5,) * shape[0],
                              (0.25,) * shape[0], "random", "train")
    return budget_plan(model, data, None, config, budget_s=1e6, device="cpu", probe_steps=steps).step_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="timed steps per model, layout and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two layouts per model")
    parser.add_argument("--out", default=None, help="also write the results as JSON")
    args = parser.parse_args()
    rows = []
    machine = device_name(torch.device("cpu"))
    print(f"{machine}, torch {torch.__version__}\n")
    print("| model | auto picks | contiguous | channels-last | speed-up (each round) |\n|---|---|---:|---:|---:|")
    for label, name, model_args, shape in CASES:
        steps = min(args.steps, 5) if name == "resnet18" else args.steps  # 4-5 s a step on a 2-core CPU
        pairs = []
        for round_ in range(args.rounds):  # alternate which layout goes first: no order bias
            order = ("contiguous", "channels_last") if round_ % 2 == 0 else ("channels_last", "contiguous")
            timed = {layout: step_seconds(name, model_args, shape, layout, steps) for layout in order}
            pairs.append((timed["contiguous"], timed["channels_last"]))
        plain, nhwc = sorted(pairs, key=lambda pair: pair[0] / pair[1])[len(pairs) // 2]  # the median speed-up
        auto = "channels-last" if prefers_channels_last(create_model(name, **model_args)) else "contiguous"
        rows.append({"model": label, "auto": auto, "contiguous_s": plain, "channels_last_s": nhwc,
                     "rounds": [{"contiguous_s": a, "channels_last_s": b} for a, b in pairs]})
        spread = ", ".join(f"{a / b:.2f}" for a, b in pairs)
        print(f"| {label} | {auto} | {plain:.3f} s | {nhwc:.3f} s | {plain / nhwc:.2f}x ({spread}) |", flush=True)
    if args.out:
        save_json(Path(args.out), {"torch": torch.__version__, "device": machine, "steps": args.steps,
                                   "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
