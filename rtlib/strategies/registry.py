"""The registry of fine-tuning strategies (loaded on first use through :mod:`rtlib.strategies`).

``apply(model, name, **hparams)`` prepares a :class:`rtlib.models.NormalizedModel` in place and
returns it: the backbone's parameters are frozen or not, modules are injected, and the
classification head always trains. Adding a strategy is one :func:`register` call (see DoRA).
"""
from __future__ import annotations

import contextlib
import copy
import json
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ConfigError, check_choice
from ..models import NormalizedModel, classifier_names, count_parameters
from .adapter import ADAPTER
from .base import INFORMATION, MECHANISMS, Strategy
from .compacter import COMPACTER
from .peft_based import DORA, IA3, LORA
from .select import BITFIT, FULL, LINEAR_PROBE

REGISTRY: dict[str, Strategy] = {}
#: The model the official trainable counts (``Strategy.official_trainable``) are for.
OFFICIAL_COUNT_MODEL = "vit_base_patch16_224"


def register(strategy: Strategy) -> Strategy:
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is already registered")
    REGISTRY[strategy.name] = strategy
    return strategy


for _s in (FULL, LINEAR_PROBE, BITFIT, LORA, IA3, ADAPTER, COMPACTER, DORA):
    register(_s)
from . import BUILTIN, PAPER_STRATEGIES  # noqa: E402 - the light lists of the package face

assert tuple(REGISTRY) == BUILTIN, (tuple(REGISTRY), BUILTIN)
assert tuple(n for n, s in REGISTRY.items() if s.in_paper) == PAPER_STRATEGIES



def names(include_extensions: bool = True) -> list[str]:
    return [n for n, s in REGISTRY.items() if include_extensions or s.in_paper]


def ordered(values: Iterable[str]) -> list[str]:
    """The strategies among ``values`` in the registry's order (the paper's seven first), then
    any unknown names alphabetically: the one order of every table and chart."""
    present = list(dict.fromkeys(values))
    return [n for n in REGISTRY if n in present] + sorted(n for n in present if n not in REGISTRY)


def adapting(*information: str) -> list[str]:
    """The strategies that adapt the given kinds of information (``"intermediate"``, ...)."""
    for kind in information:
        check_choice("information", kind, INFORMATION)
    return [n for n, s in REGISTRY.items() if s.information in information]


def get(name: str) -> Strategy:
    check_choice("strategy", name, REGISTRY)
    return REGISTRY[name]


def apply(model: NormalizedModel, name: str, **hparams: Any) -> NormalizedModel:
    """Prepare ``model`` for fine-tuning with strategy ``name`` (in place) and return it.

    Raises :class:`~rtlib.config.ConfigError` naming the field for an unknown strategy, an
    unknown hyper-parameter, or a bad value, before the model is touched.
    """
    if not isinstance(model, NormalizedModel):
        raise TypeError("apply() takes a model made by rtlib.models.build()")
    if getattr(model, "strategy", None):
        raise ValueError(f"this model is already prepared for {model.strategy!r}; build a new one")
    strategy = get(name)
    hp = strategy.resolve(model.backbone, hparams)
    model.backbone = strategy.prepare(model.backbone, hp)
    for head_param in classifier_names(model):
        model.get_parameter(head_param).requires_grad_(True)
    model.strategy, model.strategy_hparams = name, hp
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save(model: NormalizedModel, path: str | Path) -> Path:
    """Write the trainable parameters and the strategy's name and hyper-parameters (safetensors).

    The frozen weights are not saved: :func:`load` needs the same base model.
    """
    path = Path(path)
    meta = {"strategy": model.strategy, "hparams": json.dumps(_jsonable(model.strategy_hparams)),
            "model": getattr(model, "model_name", ""), "weights": str(getattr(model, "weights", ""))}
    from ..store import atomic_write

    state = trainable_state(model)
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def load(base: NormalizedModel, path: str | Path) -> NormalizedModel:
    """Apply the saved strategy to ``base`` (an unprepared model) and load its trained weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ConfigError("path", str(path), "a file written by rtlib.strategies.save",
                          "file not found:")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "strategy" not in meta:
        raise ValueError(f"{path} was not written by rtlib.strategies.save (no strategy metadata)")
    model = apply(base, meta["strategy"], **json.loads(meta["hparams"]))
    state = load_file(str(path))
    expected = set(trainable_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path} does not match this model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    model.load_state_dict(state, strict=False)
    return model


@contextlib.contextmanager
def merged(model: NormalizedModel):
    """Evaluate with peft's updates (LoRA, IA3, DoRA) merged into the frozen weights.

    A merged layer is one matrix product instead of two paths (LoRA) or an extra rescale (IA3),
    which speeds up the many forward and backward passes of an attack. On exit the frozen
    weights are restored bit for bit (unmerging by subtraction or division would leave rounding
    in weights that training goes on from). For other strategies this does nothing.
    """
    backbone = model.backbone
    if not hasattr(backbone, "merge_adapter"):
        yield model
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    saved = []
    for module in backbone.modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            bias = getattr(base, "bias", None)
            saved.append((base, base.weight.data.clone(),
                          None if bias is None else bias.data.clone()))
    backbone.merge_adapter()
    try:
        yield model
    finally:
        with warnings.catch_warnings():  # peft warns that IA3's unmerge is inexact: we restore
            warnings.simplefilter("ignore", UserWarning)
            backbone.unmerge_adapter()
        for base, weight, bias in saved:
            base.weight.data = weight
            if bias is not None:
                base.bias.data = bias


def merged_copy(model: NormalizedModel) -> NormalizedModel:
    """A copy of ``model`` whose backbone computes with plain weights: peft's update (LoRA,
    IA3, DoRA) merged into them and its wrapper removed; for other strategies, a copy."""
    out = copy.deepcopy(model)
    if hasattr(out.backbone, "merge_and_unload"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out.backbone = out.backbone.merge_and_unload()
    return out


def _jsonable(hp: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}


def summary(model: NormalizedModel, strategies: Iterable[str] | None = None) -> list[dict]:
    """For each strategy: trainable and total parameters of ``model`` prepared with it."""
    rows = []
    for name in strategies or names():
        s = get(name)
        prepared = apply(copy.deepcopy(model), name)
        trainable, total = count_parameters(prepared)
        rows.append({"strategy": name, "title": s.title, "trainable": trainable, "total": total,
                     "percent": 100.0 * trainable / total, "paper_percent": s.paper_percent,
                     "official_trainable": s.official_trainable,
                     "information": s.information, "mechanism": s.mechanism,
                     "in_paper": s.in_paper, "adapts": s.adapts})
        del prepared
    return rows


__all__ = ["REGISTRY", "Strategy", "INFORMATION", "MECHANISMS", "register",
           "names", "ordered", "adapting", "get", "apply", "save", "load", "summary",
           "trainable_state", "merged", "merged_copy"]
