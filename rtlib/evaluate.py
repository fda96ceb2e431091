"""What is measured at each evaluation point of a run (the continuous-evaluation framework)."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from .attacks import eps_sweep, predict
from .config import RunConfig, eps_label
from .data import Split, TaskData


def accuracy(model: nn.Module, split: Split) -> tuple[float, torch.Tensor]:
    """(accuracy, per-image correctness mask)."""
    correct = predict(model, split.images) == split.labels
    return correct.float().mean().item(), correct


def evaluate_point(model: nn.Module, task: TaskData, config: RunConfig,
                   train_eval: Split) -> dict[str, Any]:
    """Clean train and test accuracy, robust accuracy at every eps, OOD accuracy per domain."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {}
    row["train_acc"], _ = accuracy(model, train_eval)
    row["test_acc"], correct = accuracy(model, task.test)
    robust = eps_sweep(model, task.test.images, task.test.labels, config.eps,
                       step_size_ratio=config.step_size_ratio, steps=config.attack_steps,
                       attack=config.attack, num_classes=task.num_classes, seed=config.seed,
                       clean_correct=correct)
    for eps in config.eps:
        row[f"robust_acc@{eps_label(eps)}"] = robust[eps]
    for domain, split in task.ood.items():
        row[f"ood_acc@{domain}"], _ = accuracy(model, split)
    row["test_n"] = len(task.test)
    row["eval_seconds"] = time.perf_counter() - t0
    return row
