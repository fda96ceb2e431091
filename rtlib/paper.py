"""What the paper reports, as data, with where each number comes from.

The AUPF table is from a third-party summary of the paper (unverified against the PDF; its
Caltech-256 and Stanford Dogs columns may be swapped: the "+57.5% for Compacter on Caltech-256"
of the abstract comes out of the column labelled Stanford Dogs here). The book shows these
numbers beside ours with that caveat.
"""
from __future__ import annotations

import pandas as pd

SOURCE_AUPF = ("third-party summary of Li et al. (ICCV 2025), unverified; Caltech-256 and "
               "Stanford Dogs columns possibly swapped")

DATASETS = ("CIFAR-10", "CIFAR-100", "Caltech-256", "CUB-200", "Stanford Dogs")

AUPF = {  # strategy -> AUPF per dataset, in the order of DATASETS
    "bitfit": (0.21, 0.10, 0.33, 0.14, 0.08),
    "compacter": (0.09, 0.06, 0.34, 0.15, 0.09),
    "lora": (0.14, 0.07, 0.23, 0.12, 0.06),
    "adapter": (0.12, 0.05, 0.21, 0.07, 0.05),
    "ia3": (0.08, 0.05, 0.31, 0.13, 0.05),
    "linear_probe": (0.06, 0.03, 0.24, 0.08, 0.02),
    "full": (0.11, 0.04, 0.26, 0.09, 0.05),
}

TRAINABLE_PERCENT = {"full": 100.0, "linear_probe": 0.01, "bitfit": 0.13, "lora": 1.36,
                     "ia3": 0.08, "adapter": 3.97, "compacter": 0.07}


def aupf_frame() -> pd.DataFrame:
    """Long table: dataset, strategy, aupf, relative (AUPF / the dataset's mean - 1)."""
    rows = [{"dataset": d, "strategy": s, "aupf": v}
            for s, values in AUPF.items() for d, v in zip(DATASETS, values)]
    frame = pd.DataFrame(rows)
    frame["relative"] = frame.groupby("dataset")["aupf"].transform(lambda v: v / v.mean() - 1)
    frame["source"] = "paper"
    return frame
