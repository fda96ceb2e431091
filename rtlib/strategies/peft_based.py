"""Strategies that peft implements: LoRA, (IA)^3, and DoRA (an extension beyond the paper).

peft wraps the timm model directly; targets are the short names of timm's Linear layers
(``qkv`` is timm's fused query/key/value projection, ``fc1``/``fc2`` the MLP).
"""
from __future__ import annotations

from peft import IA3Config, LoraConfig, get_peft_model
from torch import nn

from .base import Strategy, check_float, check_int, check_names, linear_leaf_names


def _validate_lora(prefix: str):
    def validate(backbone: nn.Module, hp: dict) -> dict:
        hp = dict(hp)
        hp["rank"] = check_int(f"{prefix}.rank", hp["rank"], minimum=1)
        hp["alpha"] = check_float(f"{prefix}.alpha", hp["alpha"], low=0, low_open=True)
        hp["dropout"] = check_float(f"{prefix}.dropout", hp["dropout"], low=0, high=1,
                                    high_open=True)
        hp["target_modules"] = check_names(f"{prefix}.target_modules", hp["target_modules"],
                                           linear_leaf_names(backbone))
        return hp
    return validate


def _lora(use_dora: bool):
    def prepare(backbone: nn.Module, hp: dict) -> nn.Module:
        config = LoraConfig(r=hp["rank"], lora_alpha=hp["alpha"], lora_dropout=hp["dropout"],
                            target_modules=list(hp["target_modules"]), bias="none",
                            use_dora=use_dora)
        return get_peft_model(backbone, config)  # freezes everything but the LoRA factors
    return prepare


def _validate_ia3(backbone: nn.Module, hp: dict) -> dict:
    hp = dict(hp)
    allowed = linear_leaf_names(backbone)
    hp["target_modules"] = check_names("ia3.target_modules", hp["target_modules"], allowed)
    ff = hp["feedforward_modules"]
    hp["feedforward_modules"] = () if not ff else check_names(
        "ia3.feedforward_modules", ff, list(hp["target_modules"]))
    return hp


def _ia3(backbone: nn.Module, hp: dict) -> nn.Module:
    config = IA3Config(target_modules=list(hp["target_modules"]),
                       feedforward_modules=list(hp["feedforward_modules"]))
    return get_peft_model(backbone, config)


_LORA_DEFAULTS = {"rank": 8, "alpha": 8.0, "dropout": 0.0, "target_modules": ("qkv", "fc1", "fc2")}

LORA = Strategy(
    name="lora", title="LoRA", information="intermediate", mechanism="reparameterize",
    adapts="rank-8 updates B·A to the attention (qkv) and both MLP weight matrices, and the head",
    defaults=_LORA_DEFAULTS, prepare=_lora(use_dora=False), validate=_validate_lora("lora"),
    paper_percent=1.36, reference="Hu et al., LoRA (ICLR 2022)",
    notes="timm fuses q, k and v into one qkv matrix, so one rank-8 update covers all three; "
          "the official code (separate q, k, v layers) trains three, hence 1.20% instead of 1.36%.",
)
IA3 = Strategy(
    name="ia3", title="(IA)^3", information="intermediate", mechanism="rescale",
    adapts="vectors rescaling the attention keys and values and the MLP's hidden activations",
    defaults={"target_modules": ("qkv", "fc2"), "feedforward_modules": ("fc2",)},
    prepare=_ia3, validate=_validate_ia3, paper_percent=0.08,
    reference="Liu et al., (IA)^3 (NeurIPS 2022)",
    notes="timm's fused qkv also gets a query scale; since logits are sum_i (a_i q_i)(b_i k_i), "
          "it adds no function the key scale lacks.",
)
DORA = Strategy(
    name="dora", title="DoRA (extension)", information="intermediate", mechanism="reparameterize",
    adapts="LoRA's low-rank direction update plus a learned magnitude per output unit",
    defaults=dict(_LORA_DEFAULTS), prepare=_lora(use_dora=True),
    validate=_validate_lora("dora"), in_paper=False,
    reference="Liu et al., DoRA (ICML 2024); not in the paper: an extension",
)
