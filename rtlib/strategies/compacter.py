"""Compacter (Karimi Mahabadi et al., NeurIPS 2021), written here because peft has none.

A Compacter is a bottleneck adapter whose two projections are PHM (parameterized hypercomplex
multiplication) layers: the weight is a sum of ``n`` Kronecker products

    W = sum_i  A_i ⊗ B_i,      A_i: n x n ("rules"),  B_i = s_i t_i^T: (in/n) x (out/n), rank r

This follows the official code's configuration (the ``adapters`` library's ``CompacterConfig``
defaults): one rule tensor A (n x n x n) shared by every PHM layer of the network, down- and
up-projections alike, initialized N(0, 1e-4); the factors ``s_i``, ``t_i`` of each layer
Xavier-normal; biases zero. Nothing is zeroed, so an adapted model starts within ~1e-4 of the
pre-trained one, not exactly at it.
"""
from __future__ import annotations

import torch
from torch import nn

from .adapter import Bottleneck, bottleneck_width, insert, model_width, validate_common
from . import bounds
from .base import ConfigError, Strategy


class PHMRule(nn.Module):
    """The Kronecker "rules" A (n x n x n)."""

    def __init__(self, n: int, std: float):
        super().__init__()
        self.rule = nn.Parameter(torch.randn(n, n, n) * std)


class PHMLinear(nn.Module):
    """``x @ W + b`` with ``W = sum_i A_i ⊗ (s_i t_i^T)``."""

    def __init__(self, in_features: int, out_features: int, n: int, rank: int, rule: PHMRule):
        super().__init__()
        if in_features % n or out_features % n:
            raise ValueError(f"PHM sizes {in_features}->{out_features} not divisible by n={n}")
        self.in_features, self.out_features, self.n = in_features, out_features, n
        # A list, not an attribute: a shared rule must be registered (and saved) only once.
        self._rule = [rule]
        p, q = in_features // n, out_features // n
        self.s = nn.Parameter(torch.empty(n, p, rank))
        self.t = nn.Parameter(torch.empty(n, rank, q))
        self.bias = nn.Parameter(torch.zeros(out_features))
        for i in range(n):  # Xavier-normal per Kronecker term, as adapters' init_W does
            nn.init.xavier_normal_(self.s.data[i])
            nn.init.xavier_normal_(self.t.data[i])

    @property
    def rules(self) -> torch.Tensor:
        return self._rule[0].rule

    def weight(self) -> torch.Tensor:
        blocks = self.s @ self.t  # (n, in/n, out/n): the B_i
        n, p, q = blocks.shape
        # kron(A_i, B_i)[a*p + b, c*q + d] = A_i[a, c] * B_i[b, d], summed over i
        return torch.einsum("iac,ibd->abcd", self.rules, blocks).reshape(n * p, n * q)

    def forward(self, x):
        return x @ self.weight() + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, n={self.n}, rank={self.s.shape[-1]}"


def _validate(backbone: nn.Module, hp: dict) -> dict:
    hp = validate_common("compacter", hp)
    for name in ("n", "rank"):  # their bounds: rtlib.strategies.bounds
        hp[name] = bounds.check("compacter", name, hp[name])
    width = model_width(backbone)
    if width % hp["n"]:
        divisors = [d for d in range(1, width + 1) if width % d == 0 and d <= 64]
        raise ConfigError("compacter.n", hp["n"], divisors,
                          f"must divide the model width {width}:")
    if not isinstance(hp["shared_rules"], bool):
        raise ConfigError("compacter.shared_rules", hp["shared_rules"], [True, False])
    hp["rule_init_std"] = bounds.check("compacter", "rule_init_std", hp["rule_init_std"])
    return hp


def _compacter(backbone: nn.Module, hp: dict) -> nn.Module:
    n, rank, std = hp["n"], hp["rank"], hp["rule_init_std"]
    shared = PHMRule(n, std) if hp["shared_rules"] else None
    backbone.compacter_rule = shared

    def make(width: int) -> nn.Module:
        hidden = bottleneck_width(width, hp["reduction_factor"], multiple=n)
        down_rule, up_rule = (shared, shared) if shared else (PHMRule(n, std), PHMRule(n, std))
        module = Bottleneck(PHMLinear(width, hidden, n, rank, down_rule),
                            PHMLinear(hidden, width, n, rank, up_rule), hp["activation"])
        if not shared:  # registered with their layer
            module.down_rule, module.up_rule = down_rule, up_rule
        return module

    backbone = insert(backbone, hp["positions"], make)
    if shared:
        shared.requires_grad_(True)  # insert() froze it with the rest of the backbone
    return backbone


COMPACTER = Strategy(
    name="compacter", title="Compacter", information="intermediate", mechanism="add",
    adapts="PHM adapters (one n=4 rule tensor shared by all layers, rank-1 factors, width/32) "
           "after every attention and every MLP sub-layer",
    defaults={"reduction_factor": 32.0, "n": 4, "rank": 1, "shared_rules": True,
              "rule_init_std": 1e-4, "positions": ("attn", "mlp"), "activation": "gelu"},
    prepare=_compacter, validate=_validate, paper_percent=0.07, official_trainable=64_778,
    reference="Karimi Mahabadi et al., Compacter (NeurIPS 2021)",
    notes="The bottleneck width is rounded up to a multiple of n.",
    starts_as_identity=False,
    update_is_linear=False,
)
