"""What is measured at each evaluation point of a run (the continuous-evaluation framework)."""
from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch import nn

from . import metrics, strategies
from .attacks import eps_masks, predict
from .config import RunConfig
from .data.split import Split, TaskData


def accuracy(model: nn.Module, split: Split) -> tuple[float, torch.Tensor]:
    """(accuracy, per-image correctness mask)."""
    correct = predict(model, split.images) == split.labels
    return correct.float().mean().item(), correct


def evaluate_point(model: nn.Module, task: TaskData, config: RunConfig,
                   train_eval: Split) -> dict[str, Any]:
    """Clean train, validation and test accuracy, robust accuracy at every eps (and on the
    validation split at the first, for ``val_robust`` runs), OOD accuracy per domain; which
    test images were right, clean and at each eps (packed masks).

    Also how much the attack did (``attacked``: images attacked, summed over the budgets) and
    took (``attack_seconds``), so throughput can be read off any run.
    """
    t0 = time.perf_counter()
    row: dict[str, Any] = {}
    context = strategies.merged(model) if config.merge_for_eval else contextlib.nullcontext()
    attack = dict(step_size_ratio=config.step_size_ratio, steps=config.attack_steps,
                  attack=config.attack, num_classes=task.num_classes, seed=config.seed)
    with context:
        row[metrics.TRAIN_ACC], _ = accuracy(model, train_eval)
        if task.val is not None:
            row[metrics.VAL_ACC], val_correct = accuracy(model, task.val)
            if config.val_robust:  # the first budget only: enough to choose a checkpoint by
                eps = config.eps[0]
                row[metrics.val_robust(eps)] = eps_masks(
                    model, task.val.images, task.val.labels, [eps], clean_correct=val_correct,
                    **attack)[eps].float().mean().item()
        row[metrics.TEST_ACC], correct = accuracy(model, task.test)
        t_attack = time.perf_counter()
        masks = eps_masks(model, task.test.images, task.test.labels, config.eps,
                          clean_correct=correct, **attack)
        _synchronize(task.test.images)
        row[metrics.ATTACK_SECONDS] = time.perf_counter() - t_attack
        robust = {e: m.float().mean().item() for e, m in masks.items()}
        row[metrics.TEST_MASK] = metrics.pack(correct.cpu())
        for eps in config.eps:
            row[metrics.robust(eps)] = robust[eps]
            row[metrics.robust_mask(eps)] = metrics.pack(masks[eps].cpu())
        for domain, split in task.ood.items():
            row[metrics.ood(domain)], _ = accuracy(model, split)
    # Each budget attacks the survivors of the smaller one (eps_sweep); budget 0 attacks none.
    budgets = sorted(e for e in set(config.eps) if e > 0)
    survivors = [row[metrics.TEST_ACC]] + [robust[e] for e in budgets[:-1]]
    row[metrics.ATTACKED] = int(round(len(task.test) * sum(survivors))) if budgets else 0
    row[metrics.TEST_N] = len(task.test)
    row[metrics.EVAL_SECONDS] = time.perf_counter() - t0
    return row


def _synchronize(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)
