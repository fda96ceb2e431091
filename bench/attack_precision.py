"""Benchmark: does a bf16 attack find what an fp32 attack finds? Four ways, one model.

The committed upstream checkpoint (with its own 74-way head) on upstream test images, PGD-15
with steps of eps/4, attacked four ways:

- ``fp32``: everything in fp32 (the yardstick);
- ``rtlib bf16``: rtlib's mixed precision (backbone under bf16 autocast; input, normalization,
  first layer and perturbation in fp32);
- ``autocast, bf16 first layer``: autocast everywhere, the perturbation still fp32;
- ``all bf16``: model and images cast to bf16, so the perturbation is bf16 too.

Prints robust accuracy and seconds per way and budget. The CPU's autocast has bf16 too, so
this runs anywhere; ``--device cuda`` on a GPU.

    python bench/attack_precision.py [--images 512] [--eps 1 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from safetensors.torch import load_file
from torch import nn

from rtlib import attacks, data, models
from rtlib.train import resolve_device


def _ways(model: models.NormalizedModel):
    fp32 = copy.deepcopy(model).set_precision("fp32")
    mixed = copy.deepcopy(model).set_precision("bf16")
    bf16_first = copy.deepcopy(model)
    bf16_first.backbone.patch_embed.proj.__class__ = nn.Conv2d  # undo the fp32 first layer
    bf16_first.compute_dtype = torch.bfloat16
    all_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    return {"fp32": (fp32, torch.float32), "rtlib bf16": (mixed, torch.float32),
            "autocast, bf16 first layer": (bf16_first, torch.float32),
            "all bf16": (all_bf16, torch.bfloat16)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="upstream test images")
    parser.add_argument("--eps", type=float, nargs="+", default=[1, 2],
                        help="budgets in 1/255 units (default: 1 2)")
    parser.add_argument("--steps", type=int, default=15, help="PGD steps (default 15)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = models.build(models.EMBEDDED_MODEL, 74).eval()
    model.backbone.load_state_dict(load_file(str(models.EMBEDDED_WEIGHTS)))
    model.to(device)
    task = data.load_task("upstream", 64, args.images, 0, None, image_size=24)
    images, labels = task.test.images.float().div(255).to(device), task.test.labels.to(device)
    print(f"{models.EMBEDDED_MODEL}, upstream checkpoint, {args.images} upstream test images, "
          f"PGD-{args.steps}, step eps/4, device {device}")
    print(f"{'':<30}" + "".join(f"{f'{e:g}/255':>16}" for e in args.eps) + f"{'seconds':>10}")
    for name, (way, dtype) in _ways(model).items():
        t0 = time.perf_counter()
        accs = [attacks.robust_accuracy(way, images.to(dtype), labels, eps=e / 255,
                                        steps=args.steps) for e in args.eps]
        seconds = time.perf_counter() - t0
        print(f"{name:<30}" + "".join(f"{a:16.4f}" for a in accs) + f"{seconds:10.1f}")


if __name__ == "__main__":
    main()
