"""Run configurations: typed, validated before any compute, identified by a stable hash.

A :class:`RunConfig` says everything that determines a run's numbers. Its :meth:`run_id` is a
hash of that content, so a results store can tell a completed run from a new one. Presets give
the sizes of the three scales (DESIGN 3): ``paper`` (ViT-B/16 and the hub datasets, on a GPU),
``embedded`` (the glyph world, offline on a CPU in minutes) and ``smoke`` (toy size, for CI).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError, check_choice, check_float, check_int

SCHEDULE_KINDS = ("official", "log", "every")
PRECISION_CHOICES = ("auto", "fp32", "bf16")
#: Learning-rate schedules (after the linear warm-up): Hugging Face Trainer's "cosine" and
#: "linear" (decay to 0 at the last step), or "constant".
LR_SCHEDULES = ("cosine", "linear", "constant")
#: What a task with domains trains on: the source domain only (correct), or every domain (the
#: official code's default for DomainNet, which leaks the "OOD" domains into training).
OOD_TRAIN_DOMAINS = ("source", "all")
#: Fields that say where or how fast things run, not what is computed: they do not change a
#: run's identity (compiling and merging adapters for evaluation change rounding, not results).
NOT_IDENTITY = ("data_dir", "compile", "merge_for_eval")
#: Fields added after stores existed: hashed only when set away from their default, so that
#: the stores made before them stay valid.
HASHED_UNLESS_DEFAULT = {"precision": "auto", "epochs": 0, "val_fraction": 0.0,
                         "lr_schedule": "cosine", "ood_train_domains": "source"}


@dataclass(frozen=True)
class RunConfig:
    task: str
    strategy: str
    hparams: dict = field(default_factory=dict)  # strategy hyper-parameters beyond the defaults
    # model
    model: str = "vit_glyph_p4_24"
    weights: str | None = None  # None: random; "hub"; "embedded" (our checkpoint); or a path
    model_kwargs: dict = field(default_factory=dict)  # passed to timm (e.g. depth=2 in tests)
    # data
    domain: str | None = None  # domain trained on (and tested in-domain); others are OOD
    ood_train_domains: str = "source"  # "source": train on `domain` only; "all": every domain
    data_dir: str | None = None  # hub tasks: local copy or "hub"; not part of the run's identity
    train_size: int = 2000
    test_size: int = 512  # evaluation images per split (test and each OOD domain)
    train_eval_size: int = 512  # fixed subset of the training set scored at each point
    data_seed: int = 0
    # held out from the training images as a validation split, scored at every point (the
    # official code holds out 10%); choices such as the learning rate are made on it
    val_fraction: float = 0.0
    # optimization
    steps: int = 300
    epochs: int = 0  # > 0: train this many passes over the training split (replaces steps)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"  # after the warm-up: "cosine", "linear" (to 0) or "constant"
    grad_clip: float = 1.0
    seed: int = 0
    # evaluation
    schedule: str = "log:12"  # "official", "log:N" (N points) or "every:K"
    eps: tuple[float, ...] = (1 / 255,)
    attack_steps: int = 15
    step_size_ratio: float = 0.25  # PGD step = ratio * eps (0.25/255 at 1/255)
    attack: str = "pgd"
    # execution (DESIGN 5): "auto" is bf16 autocast on a GPU that has it (first layer and
    # perturbation in fp32), fp32 elsewhere; the precision used is in the run's metadata.
    precision: str = "auto"
    compile: bool = False  # torch.compile the model (worth it on a GPU for long runs)
    merge_for_eval: bool = True  # evaluate LoRA/IA3/DoRA with their updates merged

    def __post_init__(self):
        object.__setattr__(self, "eps", tuple(float(e) for e in _as_list(self.eps)))
        object.__setattr__(self, "hparams", dict(self.hparams or {}))
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs or {}))

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> "RunConfig":
        """Raise :class:`~rtlib.errors.ConfigError` naming the first bad field."""
        from . import data, strategies
        from .attacks import ATTACKS

        check_choice("task", self.task, data.task_names())
        check_choice("strategy", self.strategy, strategies.names())
        task = data.info(self.task)
        if self.domain is not None:
            if not task.domains:
                raise ConfigError("domain", self.domain, ["None (this task has no domains)"],
                                  "unknown domain")
            check_choice("domain", self.domain, task.domains)
        for name in ("train_size", "test_size", "train_eval_size", "steps", "batch_size",
                     "attack_steps"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "seed", "data_seed", "epochs"):
            check_int(name, getattr(self, name), minimum=0)
        check_float("val_fraction", self.val_fraction, low=0, high=0.5, high_open=True)
        if self.val_fraction and not 1 <= self.val_count() < self.train_size:
            raise ConfigError("val_fraction", self.val_fraction,
                              f"a share that leaves 1 to {self.train_size - 1} validation images "
                              f"of train_size {self.train_size}", "out of range:")
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("ood_train_domains", self.ood_train_domains, OOD_TRAIN_DOMAINS)
        check_float("lr", self.lr, low=0, low_open=True, high=10)
        check_float("weight_decay", self.weight_decay, low=0)
        check_float("grad_clip", self.grad_clip, low=0)
        check_float("step_size_ratio", self.step_size_ratio, low=0, low_open=True, high=1)
        check_choice("attack", self.attack, ATTACKS)
        check_choice("precision", self.precision, PRECISION_CHOICES)
        for name in ("compile", "merge_for_eval"):
            check_choice(name, getattr(self, name), (True, False))
        if not self.eps:
            raise ConfigError("eps", self.eps, "one or more budgets in [0, 1]", "empty:")
        for e in self.eps:
            check_float("eps", e, low=0, high=1)
        parse_schedule(self.schedule, self.total_steps())
        if self.weights not in (None, "hub", "timm", "embedded"):
            from pathlib import Path

            if not Path(self.weights).is_file():
                raise ConfigError("weights", self.weights, "None, hub, or an existing file",
                                  "file not found:")
        import timm
        import torch

        if not timm.is_model(self.model):
            raise ConfigError("model", self.model, "a timm model name (timm.list_models())",
                              "unknown timm model")
        # The strategy's hyper-parameters, checked against the architecture (built on the meta
        # device: no memory, no initialization, milliseconds even for ViT-B).
        with torch.device("meta"):
            backbone = timm.create_model(self.model, pretrained=False,
                                         num_classes=task.classes, **self.model_kwargs)
        strategies.get(self.strategy).resolve(backbone, self.hparams)
        if self.precision == "bf16":
            from .models import keep_first_layer_fp32

            if keep_first_layer_fp32(backbone, backbone.pretrained_cfg.get("first_conv")) is None:
                raise ConfigError("precision", self.precision, ["auto", "fp32"], f"{self.model} "
                                  "has no first layer that can be kept in fp32, so")
        return self

    # -- derived sizes ------------------------------------------------------------------------
    def val_count(self) -> int:
        """Validation images held out of the ``train_size`` training images."""
        return int(round(self.train_size * self.val_fraction))

    def planned_train_images(self) -> int:
        """Images trained on: ``train_size`` less the validation split (a hub task with fewer
        images than ``train_size`` trains on what it has, less the same share)."""
        return self.train_size - self.val_count()

    def total_steps(self, train_images: int | None = None) -> int:
        """Optimizer steps: ``steps``, or ``epochs`` passes of ``ceil(train_images / batch)``
        steps (a short last batch, as Hugging Face's Trainer does). ``train_images`` defaults
        to :meth:`planned_train_images`."""
        if not self.epochs:
            return self.steps
        if train_images is None:
            train_images = self.planned_train_images()
        return self.epochs * math.ceil(train_images / self.batch_size)

    def eval_steps(self, train_images: int | None = None) -> list[int]:
        return parse_schedule(self.schedule, self.total_steps(train_images))

    # -- identity -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eps"] = list(self.eps)
        for key in ("hparams", "model_kwargs"):
            d[key] = {k: list(v) if isinstance(v, tuple) else v
                      for k, v in sorted(getattr(self, key).items())}
        return d

    def run_id(self) -> str:
        """Stable hash of the full config (16 hex digits)."""
        identity = {k: v for k, v in self.to_dict().items() if k not in NOT_IDENTITY
                    and not (k in HASHED_UNLESS_DEFAULT and v == HASHED_UNLESS_DEFAULT[k])}
        # Weights are identified by content, so a store is valid wherever the checkout lives.
        identity["weights"] = weights_identity(self.weights)
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(unknown[0], d[unknown[0]], sorted(names), "unknown field with value")
        return cls(**d)

    def replace(self, **changes) -> "RunConfig":
        return replace(self, **changes)


def _as_list(value) -> list:
    if isinstance(value, (int, float)):
        return [value]
    return list(value)


def parse_schedule(spec: str, total_steps: int) -> list[int]:
    """Evaluation steps (sorted, unique, from 0 to ``total_steps`` inclusive) for ``spec``.

    - ``official``: the official code's ``should_log(step)`` (:func:`official_should_log`): 0, 50,
      100; 120 to 300 every 30; 400 to 1,000 every 200; 2,000; 4,000, 8,000; 12,000 to 30,000
      every 6,000; then every 20,000; plus the last step (its ``on_train_end``);
    - ``log:N``: 0, then N - 1 points spaced evenly in log(step) from ``total_steps // 50`` to
      the last step;
    - ``every:K``: every K steps, plus the last step.
    """
    allowed = "official, log:N (N >= 2), every:K (K >= 1)"
    if not isinstance(spec, str):
        raise ConfigError("schedule", spec, allowed, "not a schedule:")
    kind, _, arg = spec.partition(":")
    if kind not in SCHEDULE_KINDS:
        raise ConfigError("schedule", spec, allowed, "unknown schedule")
    if kind == "official":
        if arg:
            raise ConfigError("schedule", spec, allowed, "unknown schedule")
        points = [s for s in range(total_steps + 1) if official_should_log(s)]
    else:
        try:
            n = int(arg)
        except ValueError:
            raise ConfigError("schedule", spec, allowed, "not a schedule:") from None
        if kind == "log":
            if n < 2:
                raise ConfigError("schedule", spec, allowed, "too few points:")
            # From total/50 (no point spending attacks on steps 1, 2, 3) to the last step.
            first = max(1, total_steps // 50)
            ratio = math.log(total_steps / first)
            points = [0] + [round(first * math.exp(ratio * i / (n - 2))) for i in range(n - 1)] \
                if n > 2 else [0, total_steps]
        else:
            if n < 1:
                raise ConfigError("schedule", spec, allowed, "out of range:")
            points = list(range(0, total_steps + 1, n))
    return sorted({p for p in points if 0 <= p <= total_steps} | {0, total_steps})


def official_should_log(step: int) -> bool:
    """The official code's evaluation rule (scripts/finetune.py, ``should_log``), transcribed."""
    for bound, every in ((100, 50), (300, 30), (1000, 200), (3000, 2000), (10_000, 4000),
                         (30_000, 6000)):
        if step <= bound:
            return step % every == 0
    return step % 20_000 == 0


def eps_label(eps: float) -> str:
    """``1/255``-style label of a budget (as the paper writes them)."""
    return f"{eps * 255:.4g}/255"


#: Sizes and sources of each scale. ``run``: RunConfig fields; ``tasks``: the tasks the book
#: studies at this scale; ``task_overrides`` and ``strategy_overrides``: RunConfig fields per
#: task (e.g. a task's eps) and per strategy (e.g. its learning rate); ``sources``: where each
#: value of the preset comes from (the book's page on differences from the official code reads
#: it). Nothing downstream branches on a preset's name.
PRESETS: dict[str, dict[str, Any]] = {
    # The official setting (kyangl/robustness-finetuning): the paper's model and datasets; needs
    # a GPU and the internet for the first download.
    "paper": {
        "run": dict(model="vit_base_patch16_224.orig_in21k", weights="hub", data_dir="hub",
                    train_size=50_000, test_size=2_000, train_eval_size=2_000, val_fraction=0.1,
                    epochs=20, batch_size=128, lr=5e-4, weight_decay=0.01, lr_schedule="cosine",
                    warmup_steps=800, grad_clip=1.0, schedule="official", eps=(1 / 255,),
                    attack_steps=15, step_size_ratio=0.25),
        "tasks": ["cifar10", "cifar100", "caltech256", "cub200", "stanford_dogs"],
        "ood_task": "domainnet",
        "task_overrides": {},
        "strategy_overrides": {
            "full": dict(lr=2e-5, lr_schedule="linear", warmup_steps=0),
        },
        "sources": {
            "batch_size": "main.py: --batch_size default 128",
            "epochs": "README's command (--epoch 20); main.py's default is 3",
            "val_fraction": "finetune.py: train_ds.train_test_split(test_size=0.1)",
            "lr": "PEFT strategies: the README's LoRA command (--learning_rate 5e-4); "
                  "finetune.py's comment suggests 5e-3, main.py's default is 2e-5",
            "weight_decay": "README's command and main.py's default (0.01); finetune.py's "
                            "comment suggests 0 for the PEFT strategies",
            "lr_schedule": "finetune.py: TrainingArguments(lr_scheduler_type='cosine') for the "
                           "PEFT strategies; the Trainer's default 'linear' for full fine-tuning",
            "warmup_steps": "finetune.py: warmup_steps=800 for the PEFT strategies; none for full "
                            "fine-tuning",
            "full.lr": "finetune.py and main.py: learning_rate=2e-5 'for finetuning'",
            "grad_clip": "the Trainer's default max_grad_norm=1.0",
            "schedule": "finetune.py: should_log(step), plus the end of training",
            "eps": "finetune.py: PGD(eps=1/255, alpha=1/1020, steps=15, random_start=True)",
            "test_size": "ours: 2,000 test images per evaluation (the official code attacks the "
                         "whole test set at every point)",
        },
    },
    # The embedded glyph world, offline on a CPU in minutes. The same shape of configuration as
    # the paper's (a validation split; full fine-tuning with its own rate and a linear decay, the
    # other strategies cosine after a warm-up), with values of its own.
    "embedded": {
        "run": dict(model="vit_glyph_p4_24", weights="embedded", train_size=2000,
                    val_fraction=0.1, test_size=256, train_eval_size=256, steps=200,
                    batch_size=32, lr=1e-3, weight_decay=0.01, warmup_steps=10,
                    schedule="log:8", eps=(2 / 255,), attack_steps=10),
        "tasks": ["digits", "greek", "symbols", "fonts"],
        "ood_task": "digits",
        "task_overrides": {},
        "strategy_overrides": {
            "full": dict(lr=5e-4, lr_schedule="linear", warmup_steps=0),
        },
        "sources": {
            "lr": "ours: calibrated on the CPU (bench/calibrate_embedded.py), not selected on "
                  "validation yet",
            "full.lr": "ours: half the other strategies' rate, in the official shape (full "
                       "fine-tuning takes a smaller rate and a linear decay)",
            "schedule": "ours: 8 points spaced in log(step), for a 200-step run",
            "eps": "ours: 2/255, where the 24 px glyph model is informative (1/255 tracks clean "
                   "accuracy)",
        },
    },
    # Toy size for CI: the same pipeline in seconds.
    "smoke": {
        "run": dict(model="vit_glyph_p4_24", weights="embedded", train_size=256,
                    val_fraction=0.1, test_size=64, train_eval_size=64, steps=24, batch_size=32,
                    lr=1e-3, schedule="log:4", eps=(2 / 255,), attack_steps=3),
        "tasks": ["digits", "fonts"],
        "ood_task": "digits",
        "task_overrides": {},
        "strategy_overrides": {},
        "sources": {},
    },
}


def _preset(name: str) -> dict[str, Any]:
    check_choice("preset", name, PRESETS)
    return PRESETS[name]


def resolve_weights(weights: str | None) -> str | None:
    """``"embedded"`` means the committed upstream checkpoint (random init if it is absent)."""
    if weights == "embedded":
        from .models import EMBEDDED_WEIGHTS

        return str(EMBEDDED_WEIGHTS) if EMBEDDED_WEIGHTS.is_file() else None
    return weights


def weights_identity(weights: str | None) -> str | None:
    if weights in (None, "hub", "timm"):
        return weights
    path = resolve_weights(weights)
    if path is None:
        return None  # "embedded" without a checkpoint: random initialization
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        return str(weights)  # validate() reports it
    return _file_digest(str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def preset_defaults(name: str, task: str | None = None, strategy: str | None = None
                    ) -> dict[str, Any]:
    """RunConfig fields of preset ``name``, with ``task``'s and ``strategy``'s overrides."""
    preset = _preset(name)
    return {**preset["run"], **preset["task_overrides"].get(task, {}),
            **preset["strategy_overrides"].get(strategy, {})}


def preset_tasks(name: str) -> list[str]:
    return list(_preset(name)["tasks"])




def preset_ood_task(name: str) -> str:
    return _preset(name)["ood_task"]
