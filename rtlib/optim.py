"""Optimizer and learning-rate schedule shared by pre-training and fine-tuning."""
from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no decay on biases, norms and embeddings (1-D)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay
             ).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def warmup_then(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int,
                total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base rate over ``warmup_steps``, then ``kind``: "cosine" or
    "linear" decay to 0 at ``total_steps`` (Hugging Face Trainer's schedules), or "constant"."""
    decays = {"cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
              "linear": lambda t: 1 - t, "constant": lambda t: 1.0}
    decay = decays[kind]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int,
                       total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base rate over ``warmup_steps``, then cosine decay to 0."""
    return warmup_then(optimizer, "cosine", warmup_steps, total_steps)
