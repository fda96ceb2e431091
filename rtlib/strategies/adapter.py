"""Bottleneck adapters (Houlsby et al., 2019), written here because peft has none.

An adapter maps ``h -> h + up(act(down(h)))`` and sits on the output of a transformer
sub-layer (attention, MLP), before that sub-layer's residual connection, as the official code's
``adapters`` configuration places it (``mh_adapter`` and ``output_adapter``). Both projections
start as the official "bert" initialization, weights N(0, 0.02) and biases 0: unlike the zero-up
initialization of some implementations, the adapted model does *not* start exactly as the
pre-trained one.
"""
from __future__ import annotations

import math
from typing import Callable

from torch import nn

from . import bounds
from .base import Strategy, check_choice, check_names, freeze

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
POSITIONS = ("attn", "mlp")  # after the attention sub-layer, after the MLP sub-layer


class Bottleneck(nn.Module):
    """``x + scale * up(act(down(x)))`` with any ``down``/``up`` projections; ``scale`` is 1
    except on a weight-interpolation path (:mod:`rtlib.interpolate`), which scales the branch."""

    def __init__(self, down: nn.Module, up: nn.Module, activation: str):
        super().__init__()
        self.down, self.act, self.up = down, ACTIVATIONS[activation](), up
        self.scale = 1.0

    def forward(self, x):
        branch = self.up(self.act(self.down(x)))
        return x + (branch if self.scale == 1.0 else self.scale * branch)


class Adapted(nn.Module):
    """A sub-layer followed by its adapter; keeps the sub-layer's call signature."""

    def __init__(self, sublayer: nn.Module, adapter: nn.Module):
        super().__init__()
        self.sublayer, self.adapter = sublayer, adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.sublayer(*args, **kwargs))


def transformer_blocks(backbone: nn.Module) -> list[nn.Module]:
    """Every module with ``attn`` and ``mlp`` children (timm's ViT, DeiT, Swin, EVA blocks)."""
    blocks = [m for m in backbone.modules()
              if isinstance(getattr(m, "attn", None), nn.Module)
              and isinstance(getattr(m, "mlp", None), nn.Module)]
    if not blocks:
        raise TypeError(f"{type(backbone).__name__} has no transformer blocks with .attn and .mlp "
                        "sub-layers, so adapters have nowhere to go")
    return blocks


def model_width(backbone: nn.Module) -> int:
    width = getattr(backbone, "embed_dim", None) or getattr(backbone, "num_features", None)
    if not width:
        raise TypeError(f"cannot read the token width of {type(backbone).__name__}")
    return int(width)


def insert(backbone: nn.Module, positions, make_adapter: Callable[[int], nn.Module]) -> nn.Module:
    """Freeze the backbone and add ``make_adapter(width)`` after each chosen sub-layer."""
    freeze(backbone)
    width = model_width(backbone)
    for block in transformer_blocks(backbone):
        for pos in positions:
            setattr(block, pos, Adapted(getattr(block, pos), make_adapter(width)))
    return backbone


def bottleneck_width(width: int, reduction_factor: float, multiple: int = 1) -> int:
    """``width / reduction_factor``, rounded up to a positive multiple of ``multiple``."""
    return max(multiple, math.ceil(width / reduction_factor / multiple) * multiple)


def validate_common(prefix: str, hp: dict) -> dict:
    hp = dict(hp)
    hp["reduction_factor"] = bounds.check(prefix, "reduction_factor", hp["reduction_factor"])
    hp["positions"] = check_names(f"{prefix}.positions", hp["positions"], list(POSITIONS))
    hp["activation"] = check_choice(f"{prefix}.activation", hp["activation"], ACTIVATIONS)
    return hp


BERT_INIT_STD = 0.02  # the adapters library's init_weights="bert"


def bert_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.weight, std=BERT_INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


def _adapter(backbone: nn.Module, hp: dict) -> nn.Module:
    def make(width: int) -> nn.Module:
        hidden = bottleneck_width(width, hp["reduction_factor"])
        return Bottleneck(bert_linear(width, hidden), bert_linear(hidden, width),
                          hp["activation"])
    return insert(backbone, hp["positions"], make)


ADAPTER = Strategy(
    name="adapter", title="Adapter", information="intermediate", mechanism="add",
    adapts="bottleneck modules (width/8, GELU) after every attention and every MLP sub-layer",
    defaults={"reduction_factor": 8.0, "positions": POSITIONS, "activation": "gelu"},
    prepare=_adapter, validate=lambda b, hp: validate_common("adapter", hp),
    paper_percent=3.97, official_trainable=3_567_370,
    reference="Houlsby et al., Parameter-efficient transfer learning (ICML 2019)",
    starts_as_identity=False,
    update_is_linear=False,
)
