"""Benchmark: PGD throughput with peft's updates merged into the weights, against unmerged.

For LoRA, IA3 and DoRA on the embedded model (adapters given random trained-looking values),
attacks the same images both ways, alternating, and prints clean-correct images per second,
the ratio, and the robust accuracies (which must agree: merging changes rounding only).

    python bench/merged_eval.py [--images 256] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from rtlib import attacks, data, models, strategies
from rtlib.train import resolve_device


def _timed(model, images, labels, repeats: int, merged: bool) -> tuple[float, float]:
    """(seconds per attack, robust accuracy), the best of ``repeats``."""
    best, acc = float("inf"), None
    for _ in range(repeats):
        with strategies.merged(model) if merged else contextlib.nullcontext():
            t0 = time.perf_counter()
            acc = attacks.robust_accuracy(model, images, labels, eps=2 / 255, steps=10)
            if images.is_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return best, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="digits test images")
    parser.add_argument("--repeats", type=int, default=3, help="timings per way (best kept)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    task = data.load_task("digits", 64, args.images, 0, None, image_size=24)
    images = task.test.images.to(device).float() / 255
    labels = task.test.labels.to(device)
    print(f"{models.EMBEDDED_MODEL}, {args.images} digits images, PGD-10 at 2/255, "
          f"device {device}, {torch.get_num_threads()} threads; head fitted, adapters random")
    print(f"{'strategy':<10}{'unmerged img/s':>16}{'merged img/s':>14}{'ratio':>8}"
          f"{'robust (unmerged, merged)':>28}")
    for name in ("lora", "ia3", "dora"):
        torch.manual_seed(0)
        model = strategies.apply(models.build(models.EMBEDDED_MODEL, task.num_classes,
                                              weights=str(models.EMBEDDED_WEIGHTS)), name)
        with torch.no_grad():  # trained-looking adapters
            for n, p in model.named_parameters():
                if p.requires_grad and "head" not in n:
                    p.add_(torch.randn_like(p) * 0.02)
        _fit_head(model, task)
        model.to(device).eval()
        correct = int((attacks.predict(model, images) == labels).sum())
        t_plain, acc_plain = _timed(model, images, labels, args.repeats, merged=False)
        t_merged, acc_merged = _timed(model, images, labels, args.repeats, merged=True)
        print(f"{name:<10}{correct / t_plain:16.1f}{correct / t_merged:14.1f}"
              f"{t_plain / t_merged:7.2f}x{acc_plain:14.4f}, {acc_merged:.4f}")


def _fit_head(model, task, steps: int = 60) -> None:
    """A few steps on the head only, so that clean accuracy (and so the attack's work) is real."""
    head = [p for n, p in model.named_parameters() if "head" in n and p.requires_grad]
    opt = torch.optim.AdamW(head, lr=1e-2)
    x, y = task.train.images.float() / 255, task.train.labels
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
