"""Fine-tuning strategies: a registry of :class:`~rtlib.strategies.base.Strategy` records.

``apply(model, name, **hparams)`` prepares a :class:`rtlib.models.NormalizedModel` in place;
``names()``, ``get(name)``, ``save``, ``load``, ``merged``, ``summary``: see
:mod:`rtlib.strategies.registry`. This package face is light: it knows the built-in names
without importing torch or peft (so a misspelled strategy is answered at once) and loads the
registry on first use of anything else.
"""
from __future__ import annotations

#: The paper's seven strategies in its order, then our extensions: the built-in registry's
#: names (it asserts that they match its records and their ``in_paper`` flags).
PAPER_STRATEGIES = ("full", "linear_probe", "bitfit", "lora", "ia3", "adapter", "compacter")
BUILTIN = PAPER_STRATEGIES + ("dora",)


#: Loaded on first use from :mod:`rtlib.strategies.registry`.
LAZY = ("REGISTRY", "OFFICIAL_COUNT_MODEL", "Strategy", "INFORMATION", "MECHANISMS", "register",
        "names", "ordered", "adapting", "get", "apply", "save", "load", "summary", "trainable_state",
        "merged", "merged_copy")


def __getattr__(name: str):
    if name not in LAZY:  # submodules (base, select, peft_based, ...) are imported as usual
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    # torch and peft: only when a strategy is really used
    return getattr(importlib.import_module(f"{__name__}.registry"), name)
