"""The strategy record and the checks its hyper-parameters share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from ..config import ConfigError, check_choice, check_float, check_int
from .bounds import MAX_RANK

#: The paper's first axis: *which* information a strategy adapts.
INFORMATION = {
    "peripheral": "the edges of the network: the head, biases",
    "intermediate": "the attention and MLP blocks, through added or reparameterized weights",
    "excessive": "every weight of the network",
}
#: The paper's second axis: *how* it adapts it.
MECHANISMS = {
    "select": "train a chosen subset of the existing parameters",
    "reparameterize": "learn a low-rank update to existing weight matrices",
    "rescale": "learn vectors that rescale existing activations",
    "add": "insert new trainable modules",
}


@dataclass(frozen=True)
class Strategy:
    """One fine-tuning strategy: what it trains, where it sits in the paper's decomposition,
    and how to prepare a timm backbone for it."""

    name: str
    title: str
    information: str
    mechanism: str
    adapts: str
    defaults: Mapping[str, Any]
    #: ``prepare(backbone, hparams) -> backbone``: freeze, inject, and mark trainable.
    prepare: Callable[[nn.Module, dict], nn.Module]
    #: ``validate(backbone, hparams) -> hparams``: raises ConfigError naming the bad field.
    validate: Callable[[nn.Module, dict], dict] = lambda backbone, hp: hp
    in_paper: bool = True
    #: Trainable share on ViT-B/16 with a 10-class head, as the paper reports it.
    paper_percent: float | None = None
    #: Trainable parameters of the official configuration on ViT-B/16 with a 10-class head
    #: (counted with the ``adapters`` library, pooler excluded; tests/test_official.py).
    official_trainable: int | None = None
    reference: str = ""
    notes: str = ""
    #: Whether the prepared backbone computes what the pre-trained one does until it is
    #: trained (a zero LoRA update, unit (IA)^3 scales, the backbone's own weights); the
    #: bottleneck adapters start from a small random update instead.
    starts_as_identity: bool = True
    #: Whether the network's weights are linear in the trainable parameters (the backbone's
    #: own weights, biases, (IA)^3 scales). A product (LoRA's B·A) or a nonlinear branch (an
    #: adapter) is not: scaling its parameters does not scale the update (rtlib.interpolate).
    update_is_linear: bool = True

    @property
    def path_form(self) -> str:
        """How a weight-interpolation path scales the learned update (:mod:`rtlib.interpolate`):
        ``"branch"`` for added modules (their residual branch's output times alpha), else
        ``"weights"`` (the update merged into the backbone's own weights, times alpha)."""
        return "branch" if self.mechanism == "add" else "weights"

    def __post_init__(self):
        assert self.information in INFORMATION, self.information
        assert self.mechanism in MECHANISMS, self.mechanism

    def resolve(self, backbone: nn.Module, hparams: Mapping[str, Any]) -> dict:
        """Defaults overlaid with ``hparams``; unknown names and bad values raise ConfigError."""
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            allowed = sorted(self.defaults) or ["(none: this strategy has no hyper-parameters)"]
            raise ConfigError(f"{self.name}.{unknown[0]}", hparams[unknown[0]], allowed,
                              "unknown hyper-parameter with value")
        merged = {**self.defaults, **hparams}
        return self.validate(backbone, merged)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def linear_leaf_names(backbone: nn.Module) -> list[str]:
    """Short names of the backbone's Linear layers, the classifier excluded (LoRA/IA3 targets)."""
    head = backbone.get_classifier() if hasattr(backbone, "get_classifier") else None
    names = {name.rsplit(".", 1)[-1] for name, m in backbone.named_modules()
             if isinstance(m, nn.Linear) and m is not head}
    return sorted(names)


def check_names(field_name: str, value: Any, allowed: list[str]) -> tuple[str, ...]:
    """A non-empty list of names, each among ``allowed``."""
    if isinstance(value, str):
        value = [value]
    try:
        value = tuple(value)
    except TypeError:
        raise ConfigError(field_name, value, allowed, "not a list of names:") from None
    if not value:
        raise ConfigError(field_name, value, allowed, "empty list:")
    for v in value:
        check_choice(field_name, v, allowed)
    return value


__all__ = ["Strategy", "INFORMATION", "MECHANISMS", "freeze", "linear_leaf_names", "check_names",
           "check_int", "check_float", "check_choice", "ConfigError", "MAX_RANK"]
