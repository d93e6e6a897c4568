"""Throughput benchmark: vitlab's ViT and Swin presets vs timm's VisionTransformer and SwinTransformer.

    make bench                      (installs the `bench` extra: timm)
    python bench/bench.py --help

For each preset (timm's twin has the identical architecture) it measures, in one process on one machine:
  * training throughput: images/s of forward + backward + AdamW step (batch 128, fp32 on CPU,
    bf16 autocast on CUDA: vitlab.train.train_step, as training uses);
  * inference throughput: images/s of a no-grad forward (batch 512);
  * parameters and FLOPs per image (torch.utils.flop_counter, forward pass; 1 multiply-add = 2 FLOPs);
and then the data-loading throughput of vitlab's in-memory BatchLoader vs torchvision's
per-image PIL pipeline on MNIST.

Timings are medians over repeated windows after warm-up, with vitlab and timm measured in
alternation so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import vitlab
from vitlab.model import ViTConfig
from vitlab.registry import create_model
from vitlab.runs import count_flops
from vitlab.swin import SwinConfig
from vitlab.train import TrainConfig, autocast_context, train_step


def timm_twin(model: torch.nn.Module) -> torch.nn.Module:
    """timm's model with the same architecture: VisionTransformer for a ViT (learned positions, class
    token, pre-norm), SwinTransformer for a Swin."""
    config = model.config
    if isinstance(config, SwinConfig):
        from timm.models.swin_transformer import SwinTransformer

        return SwinTransformer(img_size=config.image_size, patch_size=config.patch_size, in_chans=config.in_channels,
                               num_classes=config.num_classes, embed_dim=config.embed_dim, depths=config.depths,
                               num_heads=config.heads, window_size=config.window_size, mlp_ratio=config.mlp_ratio,
                               qkv_bias=config.qkv_bias, drop_rate=0.0, proj_drop_rate=config.dropout,
                               attn_drop_rate=config.attn_dropout, drop_path_rate=config.drop_path)
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=config.image_size, patch_size=config.patch_size, in_chans=config.in_channels,
                             num_classes=config.num_classes, embed_dim=config.dim, depth=config.depth,
                             num_heads=config.heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                             class_token=True, global_pool="token", drop_rate=0.0, proj_drop_rate=config.dropout,
                             attn_drop_rate=config.attn_dropout, drop_path_rate=config.drop_path)


def describe(config: ViTConfig | SwinConfig) -> dict:
    """The columns that say what was measured (for a Swin: its first stage's tokens and width)."""
    if isinstance(config, SwinConfig):
        return {"patch": config.patch_size, "tokens": config.stage_resolutions[0] ** 2, "dim": config.embed_dim,
                "depth": sum(config.depths), "heads": "/".join(map(str, config.heads)),
                "window": config.window_size}
    return {"patch": config.patch_size, "tokens": config.num_tokens, "dim": config.dim, "depth": config.depth,
            "heads": config.heads, "positional": config.positional}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: The bench measures the bare step: no label smoothing, no gradient clipping (timm's models get the same).
BENCH_RECIPE = TrainConfig(grad_clip=None)


def train_window(model, optimizer, images, labels, steps: int, device: torch.device) -> float:
    """Images/s over ``steps`` training steps (vitlab.train.train_step, for vitlab and timm alike)."""
    model.train()
    autocast = autocast_context(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, images, labels, optimizer, BENCH_RECIPE, autocast)
    _sync(device)
    return steps * len(images) / (time.perf_counter() - start)


@torch.no_grad()
def infer_window(model, images, steps: int, device: torch.device) -> float:
    model.eval()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast_context(device):
            model(images)
    _sync(device)
    return steps * len(images) / (time.perf_counter() - start)


def bench_preset(name: str, device: torch.device, repeats: int, steps: int, with_timm: bool) -> list[dict]:
    torch.manual_seed(0)
    models = {"vitlab": create_model(name).to(device)}
    config = models["vitlab"].config
    if with_timm:
        models["timm"] = timm_twin(models["vitlab"]).to(device)
    batch = torch.randn(128, config.in_channels, config.image_size, config.image_size, device=device)
    labels = torch.randint(0, config.num_classes, (128,), device=device)
    big_batch = torch.randn(512, config.in_channels, config.image_size, config.image_size, device=device)
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    train_rates: dict[str, list[float]] = {k: [] for k in models}
    infer_rates: dict[str, list[float]] = {k: [] for k in models}
    for k, m in models.items():  # warm-up
        train_window(m, optimizers[k], batch, labels, 3, device)
        infer_window(m, big_batch, 1, device)
    for _ in range(repeats):     # alternate, so both see the same machine load
        for k, m in models.items():
            train_rates[k].append(train_window(m, optimizers[k], batch, labels, steps, device))
            infer_rates[k].append(infer_window(m, big_batch, max(1, steps // 2), device))
    rows = []
    for k, m in models.items():
        rows.append({
            "model": name, "implementation": k, **describe(config),
            "params": sum(p.numel() for p in m.parameters()),
            "mflops_per_image": count_flops(m, (config.in_channels, config.image_size, config.image_size)) / 1e6,
            "train_images_per_s": statistics.median(train_rates[k]),
            "infer_images_per_s": statistics.median(infer_rates[k]),
        })
    return rows


def bench_data(device: torch.device) -> dict:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from vitlab.data import BatchLoader, data_root, load_dataset

    train = load_dataset("mnist", "train+val")
    start = time.perf_counter()
    for _batch in BatchLoader(train, 128, shuffle=True, device=device):
        pass
    _sync(device)
    fast = len(train) / (time.perf_counter() - start)
    classic = datasets.MNIST(data_root(), train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    n = 10000
    start = time.perf_counter()
    for _batch in DataLoader(Subset(classic, range(n)), batch_size=128, shuffle=True):
        pass
    slow = n / (time.perf_counter() - start)
    return {"vitlab_batchloader_images_per_s": fast, "torchvision_dataloader_images_per_s": slow}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit_seed,vit_mnist,vit_cifar,swin_cifar",
                        help="registered ViT or Swin models, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="timing windows per model (median reported)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per window")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-timm", action="store_true", help="skip the timm comparison")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    device = vitlab.pick_device(args.device)
    with_timm = not args.no_timm
    if with_timm:
        try:
            import timm  # noqa: F401
        except ImportError:
            print("timm is not installed: pip install -e '.[bench]' (make bench does it), or pass --no-timm")
            return 2
    print(f"device {device} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{platform.processor() or platform.machine()}" + (f" | timm {timm.__version__}" if with_timm else ""))
    rows = []
    for name in args.models.split(","):
        rows += bench_preset(name.strip(), device, args.repeats, args.steps, with_timm)
    header = (f"{'model':11} {'impl':7} {'patch':>5} {'tokens':>6} {'params':>10} {'MFLOPs/img':>10} "
              f"{'train img/s':>11} {'infer img/s':>11} {'train vs timm':>13}")
    print(header)
    print("-" * len(header))
    for row in rows:
        twin = next((r for r in rows if r["model"] == row["model"] and r["implementation"] == "timm"), None)
        ratio = f"{row['train_images_per_s'] / twin['train_images_per_s']:.2f}x" if twin and row is not twin else ""
        print(f"{row['model']:11} {row['implementation']:7} {row['patch']:5d} {row['tokens']:6d} {row['params']:10,d} "
              f"{row['mflops_per_image']:10.2f} {row['train_images_per_s']:11,.0f} {row['infer_images_per_s']:11,.0f} "
              f"{ratio:>13}")
    from vitlab.data import DatasetNotFoundError

    try:
        data = bench_data(device)
    except DatasetNotFoundError:
        print("data loading: skipped, MNIST not found (set VITLAB_DATA to the folder that holds it)")
        data = {}
    if data:
        print("data loading (MNIST, batch 128): "
              f"vitlab BatchLoader {data['vitlab_batchloader_images_per_s']:,.0f} images/s, "
              f"torchvision DataLoader + PIL {data['torchvision_dataloader_images_per_s']:,.0f} images/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "data": data, "device": str(device),
                                               "torch": torch.__version__}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
