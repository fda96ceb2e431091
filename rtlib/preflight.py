"""The door: the checks a run config needs beyond its own fields, done once per process.

:meth:`rtlib.config.RunConfig.check` answers for each field alone, without torch. This module
answers what needs the registries: the task and its domain, the strategy (both from light name
lists first, so a misspelled name is answered before torch is imported), then the attack, the
timm model, the strategy's hyper-parameters on the model's architecture (built on the meta
device: no memory, no initialization), the precision, and the weights file. Everything after the
door (sweeps, training, evaluation) trusts a config that passed it.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Sequence

from .config import ConfigError, RunConfig, check_choice, weights_identity

_PASSED: set[str] = set()  # configs that passed in this process (their content, as JSON)


def check(config: RunConfig) -> RunConfig:
    """Raise :class:`~rtlib.config.ConfigError` naming the first bad field; return ``config``."""
    return check_all([config])[0]


def check_all(configs: Sequence[RunConfig]) -> list[RunConfig]:
    """:func:`check` for many configs: every config's fields and names first (no torch, so a
    misspelled name anywhere in a grid is answered at once), then each architecture."""
    # Keyed by content and by what the weights name now: whether a file exists is checked
    # too, and a file may appear or go away within a process.
    todo = [(json.dumps([c.to_dict(), weights_identity(c.weights)], sort_keys=True, default=str),
             c) for c in configs]
    todo = [(key, c) for key, c in todo if key not in _PASSED]
    for _, config in todo:
        config.check()
        check_names(config)
    for key, config in todo:
        if key not in _PASSED:  # (a grid may hold the same config twice)
            arch = _architecture_key(config)
            if arch not in _ARCHITECTURES:  # seeds, rates and tasks of a grid share one
                _check_architecture(config)
                _ARCHITECTURES.add(arch)
            _PASSED.add(key)
    return list(configs)


_ARCHITECTURES: set[str] = set()  # architecture checks that passed (see _architecture_key)


def _architecture_key(config: RunConfig) -> str:
    """What :func:`_check_architecture` depends on: model, its arguments, strategy and
    hyper-parameters, weights (by version) and precision (not the head's size: every strategy
    trains the head whatever its size)."""
    return json.dumps([config.model, config.model_kwargs, config.strategy, config.hparams,
                       weights_identity(config.weights), config.precision], sort_keys=True,
                      default=str)


def check_names(config: RunConfig) -> None:
    """Task, domain and strategy names, without importing torch."""
    from . import data

    task = data.info(config.task)
    data.check_domain(task, config.domain)
    check_strategy_name(config.strategy)


def check_strategy_name(name: str) -> None:
    from . import strategies

    if "rtlib.strategies.registry" in sys.modules:  # strategies registered at run time count
        check_choice("strategy", name, strategies.names())
    else:  # nothing can have been registered: the built-in names answer without torch
        check_choice("strategy", name, strategies.BUILTIN)


def _check_architecture(config: RunConfig) -> None:
    import timm
    import torch

    from . import data, models, strategies

    if not timm.is_model(config.model):
        raise ConfigError("model", config.model, "a timm model name (timm.list_models())",
                          "unknown timm model")
    task = data.info(config.task)
    with torch.device("meta"):
        try:  # initializing weights on the meta device is slow and gives nothing: skip it
            backbone = timm.create_model(config.model, pretrained=False,
                                         num_classes=task.classes, weight_init="skip",
                                         **config.model_kwargs)
        except TypeError:  # a model without that option
            backbone = timm.create_model(config.model, pretrained=False,
                                         num_classes=task.classes, **config.model_kwargs)
    strategies.get(config.strategy).resolve(backbone, config.hparams)
    check_weights_file(config.weights)
    if config.precision == "bf16" and models.keep_first_layer_fp32(
            backbone, backbone.pretrained_cfg.get("first_conv")) is None:
        raise ConfigError("precision", config.precision, ["auto", "fp32"],
                          f"{config.model} has no first layer that can be kept in fp32, so")


def check_weights_file(weights: str | None) -> None:
    """A weights file must be a checkpoint we can read without running code: safetensors, or
    a torch file that loads with ``weights_only=True``; anything else names the file. Read once
    per file version (a grid of runs shares its weights)."""
    from .config import NAMED_WEIGHTS
    from .models import WEIGHT_SUFFIXES

    if weights in NAMED_WEIGHTS:
        return
    path = Path(weights)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError("weights", weights, ["none", "embedded", "embedded_robust", "hub",
                                               *(f"a *{s} file" for s in WEIGHT_SUFFIXES)],
                          "unsupported file type:")
    stat = path.stat()
    _check_readable(str(path.resolve()), stat.st_mtime_ns, stat.st_size, weights)


@functools.lru_cache(maxsize=16)
def _check_readable(path: str, mtime_ns: int, size: int, shown: str) -> None:
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                list(f.keys())
        else:
            import torch

            torch.load(path, map_location="meta", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file: name it, run nothing
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ConfigError("weights", shown, "a .safetensors or .pth checkpoint",
                          f"unreadable ({type(err).__name__}: {reason}):") from None
