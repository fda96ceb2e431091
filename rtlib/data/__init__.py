"""Tasks: which exist (this package face, light) and their data (:mod:`rtlib.data.tasks`).

``task_names()``, ``info(name)`` and ``registry()`` answer without torch, so a misspelled task
is answered at once; ``load_task``, ``hold_out``, ``Split`` and ``TaskData`` are loaded on first
use from :mod:`rtlib.data.tasks`. Sources: ``glyphs`` (the embedded, offline benchmark),
``synthetic`` (for tests) and ``hub`` (the paper's datasets, from the hub or local files).
"""
from __future__ import annotations

from .catalog import HUB, TaskInfo, check_domain, info, registry, task_names  # noqa: F401


#: Loaded on first use from :mod:`rtlib.data.tasks`.
LAZY = ("Split", "TaskData", "load_task", "hold_out", "interleave")


def __getattr__(name: str):
    if name not in LAZY:  # submodules (glyphs, hub) are imported the usual way
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    # torch: only when data is really loaded
    module = "split" if name in ("Split", "TaskData") else "tasks"
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
