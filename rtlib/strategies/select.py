"""Strategies that select existing parameters: full fine-tuning, linear probing, BitFit."""
from __future__ import annotations

from torch import nn

from .base import Strategy, freeze


def _full(backbone: nn.Module, hp: dict) -> nn.Module:
    for p in backbone.parameters():
        p.requires_grad_(True)
    return backbone


def _head_only(backbone: nn.Module, hp: dict) -> nn.Module:
    freeze(backbone)  # the head is unfrozen by apply() for every strategy
    return backbone


def _biases(backbone: nn.Module, hp: dict) -> nn.Module:
    freeze(backbone)
    for name, p in backbone.named_parameters():
        if name.endswith("bias"):
            p.requires_grad_(True)
    return backbone


FULL = Strategy(
    name="full", title="Full fine-tuning", information="excessive", mechanism="select",
    adapts="every parameter", defaults={}, prepare=_full, paper_percent=100.0,
    official_trainable=85_806_346,
)
LINEAR_PROBE = Strategy(
    name="linear_probe", title="Linear probing", information="peripheral", mechanism="select",
    adapts="the classification head only", defaults={}, prepare=_head_only, paper_percent=0.01,
    official_trainable=7_690,
)
BITFIT = Strategy(
    name="bitfit", title="BitFit", information="peripheral", mechanism="select",
    adapts="every bias term (attention, MLP, LayerNorm, patch embedding) and the head",
    defaults={}, prepare=_biases, paper_percent=0.13, official_trainable=110_602,
    reference="Ben Zaken et al., BitFit (ACL 2022)",
)
