"""The interface every task source returns: :class:`TaskData`, made of :class:`Split` s.

Images are uint8 tensors (N, 3, H, W) in [0, 255]; the model converts them
(:func:`rtlib.models.to_unit`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self):
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4, self.images.shape
        assert len(self.images) == len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int) -> "Split":
        """The first ``count`` images (sources order them so that any prefix is balanced)."""
        return Split(self.images[:count], self.labels[:count])


@dataclass
class TaskData:
    name: str
    classes: tuple[str, ...]
    train: Split
    test: Split
    #: Test splits of the other domains, for OOD accuracy (empty when the task has no domains).
    ood: dict[str, Split] = field(default_factory=dict)
    domain: str | None = None
    source: str = ""
    #: Held out of the training images (:func:`hold_out`); ``None`` when nothing is.
    val: Split | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])
