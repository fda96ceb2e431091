"""Compacter (Karimi Mahabadi et al., NeurIPS 2021), written here because peft has none.

A Compacter is a bottleneck adapter whose two projections are PHM (parameterized hypercomplex
multiplication) layers: the weight is a sum of ``n`` Kronecker products

    W = sum_i  A_i ⊗ B_i,      A_i: n x n ("rules"),  B_i = s_i t_i^T: (in/n) x (out/n), rank r

The rules ``A`` are shared by every adapter of the network (one set for down-projections, one for
up-projections); the low-rank factors ``s, t`` belong to each layer. ``t`` of every
up-projection starts at zero, so the adapted model starts as the pre-trained one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .adapter import Bottleneck, bottleneck_width, insert, model_width, validate_common
from .base import ConfigError, Strategy, check_int


class PHMRules(nn.Module):
    """The shared Kronecker "rules" A (n x n x n), one set per projection direction."""

    def __init__(self, n: int):
        super().__init__()
        # Variance-preserving: Var(W) = n Var(A) Var(B), so Var(A) = 1/n keeps W at B's scale.
        self.down = nn.Parameter(torch.randn(n, n, n) / math.sqrt(n))
        self.up = nn.Parameter(torch.randn(n, n, n) / math.sqrt(n))


class PHMLinear(nn.Module):
    """``x @ W + b`` with ``W = sum_i A_i ⊗ (s_i t_i^T)``."""

    def __init__(self, in_features: int, out_features: int, n: int, rank: int,
                 rules: PHMRules, direction: str, zero_init: bool = False):
        super().__init__()
        if in_features % n or out_features % n:
            raise ValueError(f"PHM sizes {in_features}->{out_features} not divisible by n={n}")
        self.in_features, self.out_features, self.n, self.direction = (
            in_features, out_features, n, direction)
        # A list, not an attribute: the shared rules must be registered (and saved) only once.
        self._rules = [rules]
        p, q = in_features // n, out_features // n
        self.s = nn.Parameter(torch.empty(n, p, rank))
        self.t = nn.Parameter(torch.empty(n, rank, q))
        self.bias = nn.Parameter(torch.zeros(out_features))
        bound = math.sqrt(6.0 / (p + q))  # Glorot-uniform on the factors
        nn.init.uniform_(self.s, -bound, bound)
        if zero_init:
            nn.init.zeros_(self.t)
        else:
            nn.init.uniform_(self.t, -bound, bound)

    @property
    def rules(self) -> torch.Tensor:
        return getattr(self._rules[0], self.direction)

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
    hp["n"] = check_int("compacter.n", hp["n"], minimum=1)
    hp["rank"] = check_int("compacter.rank", hp["rank"], minimum=1)
    width = model_width(backbone)
    if width % hp["n"]:
        divisors = [d for d in range(1, width + 1) if width % d == 0 and d <= 64]
        raise ConfigError("compacter.n", hp["n"], divisors,
                          f"must divide the model width {width}:")
    if not isinstance(hp["shared_rules"], bool):
        raise ConfigError("compacter.shared_rules", hp["shared_rules"], [True, False])
    return hp


def _compacter(backbone: nn.Module, hp: dict) -> nn.Module:
    n, rank = hp["n"], hp["rank"]
    shared = PHMRules(n)
    backbone.compacter_rules = shared if hp["shared_rules"] else None

    def make(width: int) -> nn.Module:
        rules = shared if hp["shared_rules"] else PHMRules(n)
        hidden = bottleneck_width(width, hp["reduction_factor"], multiple=n)
        module = Bottleneck(PHMLinear(width, hidden, n, rank, rules, "down"),
                            PHMLinear(hidden, width, n, rank, rules, "up", zero_init=True),
                            hp["activation"])
        if not hp["shared_rules"]:
            module.rules = rules
        return module

    backbone = insert(backbone, hp["positions"], make)
    if hp["shared_rules"]:
        shared.requires_grad_(True)  # insert() froze it with the rest of the backbone
    return backbone


COMPACTER = Strategy(
    name="compacter", title="Compacter", information="intermediate", mechanism="add",
    adapts="PHM adapters (n=4 Kronecker rules shared by all layers, rank-1 factors, width/32) "
           "after every attention and every MLP sub-layer",
    defaults={"reduction_factor": 32.0, "n": 4, "rank": 1, "shared_rules": True,
              "positions": ("attn", "mlp"), "activation": "gelu"},
    prepare=_compacter, validate=_validate, paper_percent=0.07,
    reference="Karimi Mahabadi et al., Compacter (NeurIPS 2021)",
    notes="The bottleneck width is rounded up to a multiple of n.",
)
