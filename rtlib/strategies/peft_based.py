"""Strategies that peft implements: LoRA, (IA)^3, and DoRA (an extension beyond the paper).

peft wraps the timm model directly; targets are the short names of timm's Linear layers
(``fc1``/``fc2`` the MLP, ``proj`` the attention output). timm fuses the query, key and value
projections into one ``qkv`` layer, while the official code (Hugging Face's ViT, through the
``adapters`` library) has three. Targeting ``q``, ``k`` or ``v`` therefore first replaces each
fused ``qkv`` by :class:`SplitQKV`: three Linear layers whose weights are the fused weight's
slices, concatenated again on the way out, so timm's attention code runs unchanged and computes
the same function. LoRA then learns three independent rank-8 updates (as the official code
does), not one rank-8 update of the fused matrix; (IA)^3 scales the keys and values only.
"""
from __future__ import annotations

import torch
from peft import IA3Config, LoraConfig, get_peft_model
from torch import nn

from . import bounds
from .base import ConfigError, Strategy, check_names, linear_leaf_names

SPLIT_NAMES = ("q", "k", "v")
FUSED_NAME = "qkv"


class SplitQKV(nn.Module):
    """A fused ``qkv`` Linear as three Linear layers ``q``, ``k``, ``v`` (its weight's slices).

    ``forward`` concatenates their outputs, so the module is a drop-in replacement. A state dict
    with the fused ``weight``/``bias`` (a timm checkpoint) still loads: it is sliced on the way in.
    """

    def __init__(self, fused: nn.Linear):
        super().__init__()
        if fused.out_features % 3:
            raise ValueError(f"qkv has {fused.out_features} outputs, not a multiple of 3")
        self.in_features, self.out_features = fused.in_features, fused.out_features
        width = fused.out_features // 3
        has_bias = fused.bias is not None
        for i, name in enumerate(SPLIT_NAMES):
            part = nn.Linear(fused.in_features, width, bias=has_bias,
                             device=fused.weight.device, dtype=fused.weight.dtype)
            with torch.no_grad():
                part.weight.copy_(fused.weight[i * width:(i + 1) * width])
                if has_bias:
                    part.bias.copy_(fused.bias[i * width:(i + 1) * width])
            part.weight.requires_grad_(fused.weight.requires_grad)
            if has_bias:
                part.bias.requires_grad_(fused.bias.requires_grad)
            setattr(self, name, part)
        # The three Linear layers themselves: peft wraps them, but they stay the base layers.
        self._parts = [getattr(self, n) for n in SPLIT_NAMES]
        self._register_load_state_dict_pre_hook(self._split_fused_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def _split_fused_keys(self, state_dict, prefix, *args):
        names = {id(m): n for n, m in self.named_modules()}
        for kind in ("weight", "bias"):
            fused = state_dict.pop(prefix + kind, None)
            if fused is None:
                continue
            for part, chunk in zip(self._parts, fused.chunk(3, dim=0)):
                state_dict[f"{prefix}{names[id(part)]}.{kind}"] = chunk


def split_qkv(backbone: nn.Module) -> int:
    """Replace every Linear named ``qkv`` by :class:`SplitQKV` (in place); returns how many."""
    targets = [(parent, name) for parent in backbone.modules()
               for name, child in parent.named_children()
               if name == FUSED_NAME and isinstance(child, nn.Linear)]
    for parent, name in targets:
        setattr(parent, name, SplitQKV(getattr(parent, name)))
    return len(targets)


def target_names(backbone: nn.Module) -> list[str]:
    """Allowed peft targets: the backbone's Linear layers, plus q, k, v where qkv is fused."""
    names = linear_leaf_names(backbone)
    return sorted(set(names) | set(SPLIT_NAMES)) if FUSED_NAME in names else names


def _check_targets(field_name: str, value, backbone: nn.Module) -> tuple[str, ...]:
    targets = check_names(field_name, value, target_names(backbone))
    if FUSED_NAME in targets and set(targets) & set(SPLIT_NAMES):
        raise ConfigError(field_name, list(targets), "either qkv or any of q, k, v",
                          "qkv and its parts cannot both be targets:")
    return targets


def _inject(backbone: nn.Module, config) -> nn.Module:
    if set(config.target_modules) & set(SPLIT_NAMES):
        split_qkv(backbone)
    return get_peft_model(backbone, config)  # freezes everything but the injected vectors


def _validate_lora(prefix: str):
    def validate(backbone: nn.Module, hp: dict) -> dict:
        hp = dict(hp)
        for name in ("rank", "alpha", "dropout"):  # their bounds: rtlib.strategies.bounds
            hp[name] = bounds.check(prefix, name, hp[name])
        hp["target_modules"] = _check_targets(f"{prefix}.target_modules", hp["target_modules"],
                                              backbone)
        return hp
    return validate


def _lora(use_dora: bool):
    def prepare(backbone: nn.Module, hp: dict) -> nn.Module:
        # peft's default initialization is the official one: A Kaiming-uniform, B zeros.
        config = LoraConfig(r=hp["rank"], lora_alpha=hp["alpha"], lora_dropout=hp["dropout"],
                            target_modules=list(hp["target_modules"]), bias="none",
                            use_dora=use_dora)
        return _inject(backbone, config)
    return prepare


def _validate_ia3(backbone: nn.Module, hp: dict) -> dict:
    hp = dict(hp)
    hp["target_modules"] = _check_targets("ia3.target_modules", hp["target_modules"], backbone)
    ff = hp["feedforward_modules"]
    hp["feedforward_modules"] = () if not ff else check_names(
        "ia3.feedforward_modules", ff, list(hp["target_modules"]))
    return hp


def _ia3(backbone: nn.Module, hp: dict) -> nn.Module:
    # Not a feed-forward module, peft scales a layer's output (bias included), as the
    # official composition_mode="scale" does; a feed-forward module would scale its input.
    config = IA3Config(target_modules=list(hp["target_modules"]),
                       feedforward_modules=list(hp["feedforward_modules"]))
    return _inject(backbone, config)


_LORA_DEFAULTS = {"rank": 8, "alpha": 8.0, "dropout": 0.0,
                  "target_modules": ("q", "k", "v", "fc1", "fc2")}

LORA = Strategy(
    name="lora", title="LoRA", information="intermediate", mechanism="reparameterize",
    adapts="rank-8 updates B·A to the query, key and value projections and both MLP weight "
           "matrices, and the head",
    defaults=_LORA_DEFAULTS, prepare=_lora(use_dora=False), validate=_validate_lora("lora"),
    paper_percent=1.36, official_trainable=1_187_338, reference="Hu et al., LoRA (ICLR 2022)",
    update_is_linear=False,
    notes="timm's fused qkv is split into q, k and v (slices of the same weights) so that each "
          "gets its own update, as in the official code.",
)
IA3 = Strategy(
    name="ia3", title="(IA)^3", information="intermediate", mechanism="rescale",
    adapts="vectors rescaling the outputs of the key, value, first MLP (before GELU) and second "
           "MLP layers",
    defaults={"target_modules": ("k", "v", "fc1", "fc2"), "feedforward_modules": ()},
    prepare=_ia3, validate=_validate_ia3, paper_percent=0.08, official_trainable=72_202,
    reference="Liu et al., (IA)^3 (NeurIPS 2022)",
)
DORA = Strategy(
    name="dora", title="DoRA (extension)", information="intermediate", mechanism="reparameterize",
    adapts="LoRA's low-rank direction update plus a learned magnitude per output unit",
    defaults=dict(_LORA_DEFAULTS), prepare=_lora(use_dora=True),
    validate=_validate_lora("dora"), in_paper=False, update_is_linear=False,
    reference="Liu et al., DoRA (ICML 2024); not in the paper: an extension",
)
