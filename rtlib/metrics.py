"""What is measured at an evaluation point, and under which names: the one home of the schema.

A run's rows (one per evaluation point) are written by :mod:`rtlib.evaluate` and the training
loop, read back by :func:`rtlib.store.load`, and drawn and judged by the book: all of them take
the names from here. The wide form (one column per metric) is what a run file stores;
:func:`long` gives the tidy form (one row per step x metric x budget or domain) that charts and
pandas want.
"""
from __future__ import annotations

from .config import eps_label, parse_budget

# Where the run is (the training loop writes these).
STEP, EPOCH, IMAGES_SEEN, TRAIN_LOSS = "step", "epoch", "images_seen", "train_loss"
# Clean accuracy on a fixed training subset, the validation split and the test set.
TRAIN_ACC, VAL_ACC, TEST_ACC = "train_acc", "val_acc", "test_acc"
# Robust accuracy at a budget, OOD accuracy on a domain: one column each, named by these.
ROBUST_PREFIX, OOD_PREFIX = "robust_acc@", "ood_acc@"
# Robust accuracy on the validation split at the run's first budget (``val_robust`` runs).
VAL_ROBUST_PREFIX = "val_robust_acc@"
#: The run's first budget under one name, whatever the budget (added by :func:`rtlib.store.load`).
ROBUST = "robust_acc"
# How much was measured: evaluation images per split; images attacked (summed over budgets).
TEST_N, ATTACKED = "test_n", "attacked"
# Where the time went, in seconds (training is cumulative; evaluation per point).
TRAIN_SECONDS, EVAL_SECONDS, ATTACK_SECONDS = "train_seconds", "eval_seconds", "attack_seconds"
#: What the training loop writes; every other column of a row is the evaluation point's.
TRAINING_COLUMNS = (STEP, EPOCH, IMAGES_SEEN, TRAIN_LOSS, TRAIN_SECONDS)
# Which test images were right, clean and at each budget: bit masks (:func:`pack`), so that the
# difference between two points of a run has a paired standard error (:func:`paired_se`).
TEST_MASK, ROBUST_MASK_PREFIX = "test_mask", "robust_mask@"
#: The mask of the run's first budget under one name (added by :func:`rtlib.store.load`).
ROBUST_MASK = "robust_mask"

def robust(eps: float) -> str:
    """The column of robust accuracy at budget ``eps`` (``robust_acc@2/255``)."""
    return f"{ROBUST_PREFIX}{eps_label(eps)}"


def val_robust(eps: float) -> str:
    """The column of robust accuracy on the validation split at budget ``eps``."""
    return f"{VAL_ROBUST_PREFIX}{eps_label(eps)}"


def robust_mask(eps: float) -> str:
    """The column of the per-image robustness mask at budget ``eps``."""
    return f"{ROBUST_MASK_PREFIX}{eps_label(eps)}"


def mask_of(column: str) -> str:
    """The mask column of an accuracy column (``robust_acc@2/255`` -> ``robust_mask@2/255``)."""
    if column == TEST_ACC:
        return TEST_MASK
    if column == ROBUST:
        return ROBUST_MASK
    if column.startswith(ROBUST_PREFIX):
        return ROBUST_MASK_PREFIX + qualifier(column)
    raise KeyError(f"no per-image mask is stored for {column!r}")


def pack(mask) -> str:
    """A boolean mask (tensor or array) as a hex string of its bits (128 bytes per 1,024)."""
    import numpy as np

    return np.packbits(np.asarray(mask, dtype=bool)).tobytes().hex()


def unpack(text: str, n: int):
    """The boolean array of ``n`` images packed by :func:`pack`."""
    import numpy as np

    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)


def paired_se(a: str, b: str, n: int) -> float:
    """Standard error of the difference of two accuracies measured on the same ``n`` images
    (masks ``a`` and ``b``, packed): only the images that changed count (McNemar's view)."""
    import numpy as np

    d = unpack(a, n).astype(np.int8) - unpack(b, n).astype(np.int8)
    return float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def ood(domain: str) -> str:
    """The column of accuracy on OOD domain ``domain`` (``ood_acc@outline``)."""
    return f"{OOD_PREFIX}{domain}"


def qualifier(column: str) -> str:
    """The budget or domain of a robust or OOD column (``"2/255"``, ``"outline"``)."""
    return column.split("@", 1)[1]


def describe(column: str) -> str:
    """A column's name in words, for titles and verdicts (``"validation robust accuracy at
    2/255"``)."""
    for prefix, words in ((VAL_ROBUST_PREFIX, "validation robust accuracy at"),
                          (ROBUST_PREFIX, "test robust accuracy at"),
                          (OOD_PREFIX, "accuracy on the domain")):
        if column.startswith(prefix):
            return f"{words} {qualifier(column)}"
    return {TRAIN_ACC: "training accuracy", VAL_ACC: "validation accuracy",
            TEST_ACC: "test accuracy", ROBUST: "test robust accuracy"}.get(column, column)


def robust_columns(frame) -> list[str]:
    """The robust accuracy columns, smallest budget first."""
    return sorted((c for c in frame.columns if c.startswith(ROBUST_PREFIX)),
                  key=lambda c: parse_budget(qualifier(c)))


def val_robust_columns(frame) -> list[str]:
    return [c for c in frame.columns if c.startswith(VAL_ROBUST_PREFIX)]


def ood_columns(frame) -> list[str]:
    """The OOD accuracy columns ``frame`` has values in: a task's own domain is no OOD
    domain of it, so its column is empty for that task's runs (``ood_acc@texture`` of
    digits_texture) and is left out."""
    return [c for c in frame.columns if c.startswith(OOD_PREFIX) and frame[c].notna().any()]


def long(frame, id_vars=("run_id", "task", "strategy", "seed", STEP)):
    """The tidy form: one row per evaluation point x metric, with ``metric`` (train, val, test,
    robust, val_robust, ood), ``qualifier`` (the budget or domain; empty for clean accuracy)
    and ``value``."""
    import pandas as pd

    ids = [c for c in id_vars if c in frame.columns]
    parts = []
    for name, cols in (("train", [TRAIN_ACC]), ("val", [VAL_ACC]), ("test", [TEST_ACC]),
                       ("robust", robust_columns(frame)),
                       ("val_robust", val_robust_columns(frame)), ("ood", ood_columns(frame))):
        cols = [c for c in cols if c in frame.columns]
        if not cols:
            continue
        part = frame.melt(id_vars=ids, value_vars=cols, var_name="column", value_name="value")
        part.insert(len(ids), "metric", name)
        part.insert(len(ids) + 1, "qualifier",
                    [qualifier(c) if "@" in c else "" for c in part["column"]])
        parts.append(part.drop(columns="column"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=[*ids, "metric", "qualifier", "value"])
