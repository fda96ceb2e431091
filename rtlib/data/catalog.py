"""Which tasks exist: names, classes, domains, sources (no torch, no data loaded).

The one list of tasks, light enough to answer "is this a task?" before torch is imported:
the glyph world's tasks (:mod:`rtlib.data.glyphs`), a synthetic task for tests, and the
paper's datasets (:data:`HUB`). :func:`rtlib.data.load_task` loads one by its ``family``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..config import ConfigError, check_choice

DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")


@dataclass(frozen=True)
class HubSpec:
    name: str
    repo: str  # Hugging Face dataset ID used by the official code
    classes: int
    image_column: str | None = None  # None: detected
    label_column: str | None = None
    label_offset: int = 0  # subtracted from stored labels (Caltech-256 starts at 1)
    domains: tuple[str, ...] = ()
    description: str = ""


HUB = {s.name: s for s in (
    HubSpec("cifar10", "uoft-cs/cifar10", 10, "img", "label",
            description="CIFAR-10: 10 classes of 32 px photos (simple, close to ImageNet)"),
    HubSpec("cifar100", "uoft-cs/cifar100", 100, "img", "fine_label",
            description="CIFAR-100: 100 classes of 32 px photos"),
    HubSpec("caltech256", "ilee0022/Caltech-256", 257, "image", "label", label_offset=1,
            description="Caltech-256: 257 object classes (labels start at 1 on the hub)"),
    HubSpec("cub200", "efekankavalci/CUB_200_2011", 200, "image", "label",
            description="CUB-200-2011: 200 bird species (fine-grained)"),
    HubSpec("stanford_dogs", "amaye15/stanford-dogs", 120, None, None,
            description="Stanford Dogs: 120 dog breeds (fine-grained)"),
    HubSpec("domainnet", "wltjr1007/DomainNet", 345, "image", "label",
            domains=DOMAINNET_DOMAINS,
            description="DomainNet: 345 classes in 6 domains; train on one, test on the others"),
)}


@dataclass(frozen=True)
class TaskInfo:
    name: str
    classes: int
    domains: tuple[str, ...]
    source: str  # "embedded" (rendered offline) or "hub"
    image_size: int
    description: str
    family: str  # the loader: "glyphs", "synthetic" or "hub"


@functools.lru_cache(maxsize=None)
def registry() -> dict[str, TaskInfo]:
    from . import glyphs

    tasks = {name: TaskInfo(name, len(spec.classes), glyphs.DOMAINS, "embedded", 24,
                            spec.description, "glyphs")
             for name, spec in glyphs.specs().items()}
    tasks["synthetic"] = TaskInfo("synthetic", 4, ("plain", "shifted"), "embedded", 16,
                                  "random noise plus one of 4 planted patterns (for tests)",
                                  "synthetic")
    tasks.update({name: TaskInfo(name, spec.classes, spec.domains, "hub", 224, spec.description,
                                 "hub") for name, spec in HUB.items()})
    return tasks


def task_names() -> list[str]:
    return list(registry())


def info(name: str) -> TaskInfo:
    check_choice("task", name, registry())
    return registry()[name]


def check_domain(task: TaskInfo, domain: str | None) -> None:
    if domain is None:
        return
    if not task.domains:
        raise ConfigError("domain", domain, ["None (this task has no domains)"], "unknown domain")
    check_choice("domain", domain, task.domains)
