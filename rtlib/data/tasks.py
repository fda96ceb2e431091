"""Task data: every source returns the same small interface, :class:`TaskData`.

Images are uint8 tensors (N, 3, H, W) in [0, 255]; models take ``images.float() / 255``.
Sources: ``glyphs`` (the embedded, offline benchmark), ``synthetic`` (random tensors with a
planted signal, for tests), and ``hub`` (the paper's datasets from the Hugging Face hub or local
files).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..config import OOD_TRAIN_DOMAINS, check_choice, check_int
from .catalog import check_domain, info
from .split import Split, TaskData


def interleave(parts: list[Split]) -> Split:
    """One split taking an image from each part in turn, so any prefix mixes them evenly."""
    longest = max(len(p) for p in parts)
    picks = [(p, j) for j in range(longest) for p in parts if j < len(p)]
    return Split(torch.stack([p.images[j] for p, j in picks]),
                 torch.stack([p.labels[j] for p, j in picks]))


def _glyph_task(name: str, train_size: int, test_size: int, seed: int, domain: str | None,
                image_size: int, train_domains: str = "source") -> TaskData:
    from . import glyphs

    spec = glyphs.specs()[name]
    domain = domain or spec.domains[0]  # the task's own domain: print, except where it says

    def split(kind: str, count: int, dom: str) -> Split:
        x, y = glyphs.generate(name, kind, count, seed=seed, domain=dom, size=image_size)
        return Split(torch.from_numpy(x), torch.from_numpy(y))

    if train_domains == "all":  # the official code's DomainNet default: every domain trains
        n = len(glyphs.DOMAINS)
        train = interleave([split("train", train_size // n + (i < train_size % n), d)
                            for i, d in enumerate(glyphs.DOMAINS)])
    else:
        train = split("train", train_size, domain)
    return TaskData(
        name=name, classes=spec.classes, train=train,
        test=split("test", test_size, domain),
        ood={d: split("test", test_size, d) for d in glyphs.DOMAINS if d != domain},
        domain=domain, source="embedded")


def _synthetic_task(name: str, train_size: int, test_size: int, seed: int, domain: str | None,
                    image_size: int, train_domains: str = "source") -> TaskData:
    """Noise plus a class-specific pattern; the ``shifted`` domain adds a brightness shift."""
    classes = 4
    g = np.random.default_rng(seed)
    patterns = g.uniform(0, 1, (classes, 3, image_size, image_size)).astype(np.float32)
    domain = domain or "plain"

    def split(count: int, offset: int, dom: str) -> Split:
        rng = np.random.default_rng([seed, offset, 0 if dom == "plain" else 1])
        labels = np.arange(count) % classes
        x = 0.5 * patterns[labels] + 0.5 * rng.uniform(0, 1, (count, 3, image_size, image_size))
        if dom == "shifted":
            x = 0.6 * x + 0.4
        return Split(torch.from_numpy((x * 255).round().astype(np.uint8)),
                     torch.from_numpy(labels.astype(np.int64)))

    return TaskData(name=name, classes=tuple(f"pattern {i}" for i in range(classes)),
                    train=split(train_size, 1, domain), test=split(test_size, 2, domain),
                    ood={d: split(test_size, 2, d) for d in ("plain", "shifted") if d != domain},
                    domain=domain, source="embedded")


@functools.lru_cache(maxsize=8)
def _load_cached(name, train_size, test_size, seed, domain, image_size, data_dir,
                 train_domains) -> TaskData:
    family = info(name).family
    if family == "hub":
        from .hub import load_hub_task

        return load_hub_task(name, train_size=train_size, test_size=test_size, seed=seed,
                             domain=domain, image_size=image_size, train_domains=train_domains,
                             data_dir=data_dir)
    loader = {"glyphs": _glyph_task, "synthetic": _synthetic_task}[family]
    return loader(name, train_size=train_size, test_size=test_size, seed=seed, domain=domain,
                  image_size=image_size, train_domains=train_domains)


def hold_out(task: TaskData, count: int) -> TaskData:
    """``task`` with its last ``count`` training images moved to a validation split.

    Sources order training images so that any stretch is close to class-balanced, so the
    held-out tail is too; the training prefix (and ``train.subset``) is unchanged by it.
    """
    if count <= 0:
        return task
    from dataclasses import replace

    train = task.train
    keep = len(train) - count
    return replace(task, train=Split(train.images[:keep], train.labels[:keep]),
                   val=Split(train.images[keep:], train.labels[keep:]))


def load_task(name: str, train_size: int = 2000, test_size: int = 512, seed: int = 0,
              domain: str | None = None, image_size: int | None = None,
              data_dir: str | None = None, train_domains: str = "source") -> TaskData:
    """Load (or render) task ``name``; ``domain`` is the domain trained and tested in-domain.

    ``train_domains="all"`` trains on every domain of a task that has domains (the official
    code's DomainNet default, which leaks the OOD domains into training), for comparison.

    ``data_dir`` (hub tasks only): a local folder of parquet files or image folders, or
    ``"hub"`` to download the official code's dataset once. Results are cached in memory, so
    runs of one process that share a task share its tensors.
    """
    task = info(name)
    check_int("train_size", train_size, minimum=1)
    check_int("test_size", test_size, minimum=1)
    check_domain(task, domain)
    check_choice("train_domains", train_domains, OOD_TRAIN_DOMAINS)
    return _load_cached(name, train_size, test_size, seed, domain, image_size or task.image_size,
                        None if data_dir is None else str(data_dir), train_domains)
