"""Robustness-accuracy Pareto frontiers and the area under them (AUPF): the definitions.

The book's estimates of AUPF over seeds, with intervals and comparisons between strategies,
are :func:`rtlib.report.estimands.aupf` (vectorized forms of the two readings below).

A run gives one (clean accuracy, robust accuracy) point per evaluation point. The paper
summarizes the trade-off a strategy reaches on a task by the *area under the Pareto frontier*
of those points. We define it as the area under the frontier's staircase:

    AUPF = integral_0^1 f(x) dx,   f(x) = max{ robust_i : clean_i >= x }   (0 where none)

f(x) is the best robust accuracy among the points that reach a clean accuracy of at least x, so
AUPF rewards a run for reaching high clean accuracy *and* keeping robust accuracy while it does.
Both axes are accuracies in [0, 1], so 0 <= AUPF <= 1, and AUPF <= max robust x max clean.

The paper does not publish its formula. The other plausible reading, kept as a sensitivity check
(:func:`aupf_trapezoid`), joins the frontier's points by straight lines and integrates over the
frontier's own clean-accuracy span only: it ignores how far the run got from 0 and measures the
shape of the trade-off where the run was (0 for a single-point frontier).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def _points(clean: Sequence[float], robust: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(clean, dtype=float).ravel()
    r = np.asarray(robust, dtype=float).ravel()
    if c.shape != r.shape:
        raise ValueError(f"clean and robust must have the same length, got {len(c)} and {len(r)}")
    for name, v in (("clean", c), ("robust", r)):
        if np.isnan(v).any():
            raise ValueError(f"{name} accuracy contains NaN at positions "
                             f"{np.flatnonzero(np.isnan(v))[:5].tolist()}; allowed: [0, 1]")
        bad = (v < 0) | (v > 1)
        if bad.any():
            raise ValueError(f"{name} accuracy {float(v[bad][0])!r} is outside [0, 1]; "
                             "allowed: accuracies in [0, 1]")
    return c, r


def frontier(clean: Sequence[float], robust: Sequence[float]) -> pd.DataFrame:
    """The non-dominated points, sorted by clean accuracy (ascending).

    A point is dominated when another is at least as good on both axes and better on one.
    Identical points appear once. Returns columns ``clean``, ``robust`` and ``index`` (the
    position of the point in the input).
    """
    c, r = _points(clean, robust)
    order = np.lexsort((-r, -c))  # clean descending, then robust descending
    keep, best = [], -np.inf
    for i in order:
        if r[i] > best:
            keep.append(i)
            best = r[i]
    keep = keep[::-1]
    return pd.DataFrame({"clean": c[keep], "robust": r[keep], "index": np.asarray(keep, int)})


def aupf(clean: Sequence[float], robust: Sequence[float]) -> float:
    """Area under the frontier's staircase, ``integral_0^1 max{robust_i : clean_i >= x} dx``."""
    front = frontier(clean, robust)
    if front.empty:
        return 0.0
    c, r = front["clean"].to_numpy(), front["robust"].to_numpy()
    widths = np.diff(np.concatenate([[0.0], c]))
    return float(np.sum(widths * r))


def aupf_trapezoid(clean: Sequence[float], robust: Sequence[float]) -> float:
    """Trapezoid area under the frontier between its lowest and highest clean accuracy."""
    front = frontier(clean, robust)
    c, r = front["clean"].to_numpy(), front["robust"].to_numpy()
    return float(np.sum(np.diff(c) * (r[1:] + r[:-1]) / 2)) if len(c) >= 2 else 0.0


#: The readings of "area under the Pareto frontier": ours (the default) and the alternative.
AUPF_METHODS = {"staircase": aupf, "trapezoid": aupf_trapezoid}


def wilson_interval(accuracy, n, z: float = 1.96):
    """95% Wilson score interval (lo, hi) of an accuracy measured on ``n`` images.

    Evaluation uses subsets (``test_size`` images): at 256 images an accuracy of 0.5 is known
    to about +-6 points, at 2,000 to about +-2. Works elementwise on arrays and Series.
    """
    p, n = np.asarray(accuracy, dtype=float), np.asarray(n, dtype=float)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def peak(frame: pd.DataFrame, col: str, by: Sequence[str] = ("task", "strategy", "seed")
         ) -> pd.DataFrame:
    """The evaluation point where ``col`` peaks, per run: step, value, final value, drop."""
    rows = []
    for key, g in frame.sort_values("step").groupby(list(by)):
        i = g[col].to_numpy().argmax()
        rows.append({**dict(zip(by, key)), "peak_step": int(g["step"].iloc[i]),
                     "peak": float(g[col].iloc[i]), "final_step": int(g["step"].iloc[-1]),
                     "final": float(g[col].iloc[-1]),
                     "drop": float(g[col].iloc[i] - g[col].iloc[-1])})
    return pd.DataFrame(rows)
