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

from . import data
from .config import ConfigError, RunConfig, check_choice, weights_identity

_PASSED: set[str] = set()  # configs that passed in this process (their content, as JSON)


def check(config: RunConfig, available: bool = True) -> RunConfig:
    """Raise :class:`~rtlib.config.ConfigError` naming the first bad field; return ``config``.
    ``available``: also check that the hub's data and weights it needs are at hand (a dry run,
    which reads neither, does not ask)."""
    return check_all([config], available)[0]


def check_all(configs: Sequence[RunConfig], available: bool = True) -> list[RunConfig]:
    """:func:`check` for many configs: every config's fields and names first (no torch, so a
    misspelled name anywhere in a grid is answered at once), then each architecture."""
    # Keyed by content and by what the weights name now: whether a file exists is checked
    # too, and a file may appear or go away within a process.
    todo = [(json.dumps([c.to_dict(), weights_identity(c.weights), available], sort_keys=True,
                        default=str), c) for c in configs]
    todo = [(key, c) for key, c in todo if key not in _PASSED]
    for _, config in todo:
        config.check()
        check_names(config)
        if available and data.info(config.task).family == "hub":
            check_hub_data(config.task, config.data_dir)
    for key, config in todo:
        if key not in _PASSED:  # (a grid may hold the same config twice)
            arch = _architecture_key(config)
            if arch not in _ARCHITECTURES:  # seeds, rates and tasks of a grid share one
                _ARCHITECTURES[arch] = _check_architecture(config)
            if available and config.weights in ("hub", "timm"):
                check_hub_weights(config.model, config.weights)
            check_images_fit(config, _ARCHITECTURES[arch], len(data.info(config.task).domains))
            _PASSED.add(key)
    return list(configs)


#: Architecture checks that passed (see _architecture_key), with the model's input size.
_ARCHITECTURES: dict[str, int] = {}


def _architecture_key(config: RunConfig) -> str:
    """What :func:`_check_architecture` depends on: model, its arguments, strategy and
    hyper-parameters, weights (by version) and precision (not the head's size: every strategy
    trains the head whatever its size)."""
    return json.dumps([config.model, config.model_kwargs, config.strategy, config.hparams,
                       weights_identity(config.weights), config.precision], sort_keys=True,
                      default=str)


def check_names(config: RunConfig) -> None:
    """Task, domain and strategy names, without importing torch."""
    task = data.info(config.task)
    data.check_domain(task, config.domain)
    check_strategy_name(config.strategy)
    from .strategies import bounds

    bounds.check_given(config.strategy, config.hparams)  # ranks, rates: before torch too


def check_strategy_name(name: str) -> None:
    from . import strategies

    if "rtlib.strategies.registry" in sys.modules:  # strategies registered at run time count
        check_choice("strategy", name, strategies.names())
    else:  # nothing can have been registered: the built-in names answer without torch
        check_choice("strategy", name, strategies.BUILTIN)


def _check_architecture(config: RunConfig) -> int:
    """Model, strategy, hyper-parameters, weights and precision; returns the input size."""
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
    check_weights_file(config.weights, backbone)
    size = config.model_kwargs.get("img_size") or backbone.pretrained_cfg["input_size"][-1]
    if config.precision == "bf16" and models.keep_first_layer_fp32(
            backbone, backbone.pretrained_cfg.get("first_conv")) is None:
        raise ConfigError("precision", config.precision, ["auto", "fp32"],
                          f"{config.model} has no first layer that can be kept in fp32, so")
    return int(size if isinstance(size, int) else size[-1])


def check_weights_file(weights: str | None, backbone=None, field: str = "weights") -> None:
    """A weights file must be a checkpoint we can read without running code: safetensors, or
    a torch file that loads with ``weights_only=True``; and, given the ``backbone`` it is for
    (on the meta device), it must provide that backbone's tensors
    (:func:`rtlib.models.check_weights_fit`). Anything else names the file. Read once per file
    version (a grid of runs shares its weights). ``run --weights`` and ``pretrain --init``
    alike."""
    from .config import NAMED_WEIGHTS, UPSTREAM_CHECKPOINTS, resolve_weights
    from .models import WEIGHT_SUFFIXES, check_weights_fit

    if weights in (None, "hub", "timm"):
        return
    shown, weights = weights, resolve_weights(weights) if weights in NAMED_WEIGHTS else weights
    if weights is None:  # "embedded" without its checkpoint: random initialization
        return
    path = Path(weights)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(field, shown, ["none", *UPSTREAM_CHECKPOINTS, "hub",
                                         *(f"a *{s} file" for s in WEIGHT_SUFFIXES)],
                          "unsupported file type:")
    if not path.is_file():
        raise ConfigError(field, shown, "an existing weights file", "file not found:")
    stat = path.stat()
    _check_readable(str(path.resolve()), stat.st_mtime_ns, stat.st_size, shown, field)
    if backbone is not None:
        check_weights_fit(path, backbone, field=field, shown=shown)


@functools.lru_cache(maxsize=16)
def _check_readable(path: str, mtime_ns: int, size: int, shown: str, field: str) -> None:
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
        raise ConfigError(field, shown, "a .safetensors or .pth checkpoint",
                          f"unreadable ({type(err).__name__}: {reason}):") from None


def check_images_fit(config: RunConfig, image_size: int, domains: int) -> None:
    """Refuse sizes whose images would not fit in this machine's memory (they are held as
    uint8 tensors: training and validation, then the test set and each OOD domain's), with the
    numbers, before anything is rendered or read."""
    from .config import check_memory

    test = config.test_size * (1 + max(0, domains - 1))
    field = "train_size" if config.train_size >= test else "test_size"
    check_memory(field, getattr(config, field), config.train_size + test, 3 * image_size ** 2)


# -- the paper's path offline (the hub's weights and datasets) -------------------------------
def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be reached: never asked when HF_HUB_OFFLINE is set (as
    the tests set it), else one connection attempt of at most 3 s per process."""
    import os

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    return _connects("huggingface.co", 443)


@functools.lru_cache(maxsize=None)
def _connects(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def check_hub_data(task: str, data_dir: str | None) -> None:
    """A hub task's data must be at hand before a run starts (no lock, no retry loop): a given
    folder must exist; ``data_dir="hub"`` needs the local copy or a reachable hub; none given
    needs ``$RTLIB_DATA/<task>``."""
    from .data import hub

    spec = hub.HUB[task]
    local = hub.data_root() / task
    how = (f"a local copy: --data-dir FOLDER (parquet files in the hub's layout or image "
           f"folders), or put it in {local} (RTLIB_DATA sets the root)")
    if data_dir not in (None, "hub"):
        if not Path(data_dir).is_dir():
            raise ConfigError("data_dir", data_dir, how, "not a folder:")
        return
    if local.is_dir() and (data_dir is None or any(local.rglob("*.parquet"))):
        return
    if data_dir is None:
        raise ConfigError("data_dir", data_dir, f"{how}, or --data-dir hub to download "
                          f"{spec.repo}", f"no local copy of {task}:")
    if not hub_reachable():
        raise ConfigError("data_dir", data_dir, how, f"the dataset {spec.repo} is not "
                          "downloaded and the hub cannot be reached (offline):")


def check_hub_weights(model: str, weights: str) -> None:
    """``weights="hub"`` needs timm's pretrained weights in the local cache or a reachable hub;
    otherwise one line says what is missing and how to give a local file."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if repo and _in_hub_cache(repo):
        return
    if not hub_reachable():
        raise ConfigError("weights", weights, f"a local file: --weights PATH (the model's "
                          "model.safetensors, downloaded elsewhere)",
                          f"{model}'s weights ({repo or 'no hub id'}) are not in the local "
                          "cache and the hub cannot be reached (offline):")


def _in_hub_cache(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo.partition("@")
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(found, str):
            return True
    return False
