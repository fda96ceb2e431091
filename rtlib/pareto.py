"""Robustness-accuracy Pareto frontiers and the area under them (AUPF).

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


def steepness(clean: Sequence[float], robust: Sequence[float]) -> float:
    """Robust accuracy given up per unit of clean accuracy gained along the frontier.

    The slope between the frontier's two ends, ``(r_first - r_last) / (c_last - c_first)``:
    0 for a flat frontier (no trade-off), large for a steep one; NaN with a single point.
    """
    front = frontier(clean, robust)
    if len(front) < 2:
        return float("nan")
    c, r = front["clean"].to_numpy(), front["robust"].to_numpy()
    return float((r[0] - r[-1]) / (c[-1] - c[0]))


def relative(values: pd.Series) -> pd.Series:
    """``value / mean(values) - 1``: how far above the strategies' mean each value lies."""
    mean = values.mean()
    return values / mean - 1 if mean else values * np.nan


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


def _binomial_resample(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.binomial(n, np.clip(p, 0, 1)) / n


def aupf_table(frame: pd.DataFrame, robust_col: str, clean_col: str = "test_acc",
               by: Sequence[str] = ("task", "strategy"), confidence: float = 0.95,
               n_boot: int = 1000, seed: int = 0, method: str = "staircase") -> pd.DataFrame:
    """AUPF per (task, strategy) with a bootstrap interval and the relative AUPF per task.

    With several seeds, AUPF is the mean over seeds and the interval resamples seeds. With one
    seed, the interval resamples the evaluation images: each accuracy measured on ``test_n``
    images is redrawn from its binomial distribution (robust kept <= clean).
    Columns: ``aupf``, ``ci_low``, ``ci_high``, ``ci_method``, ``seeds``, ``steepness``,
    ``max_clean``, ``max_robust``, ``relative`` (AUPF / mean AUPF of the task's strategies - 1).
    ``method``: a key of :data:`AUPF_METHODS` (``"staircase"``, ours; ``"trapezoid"``).
    """
    from .config import check_choice

    area = AUPF_METHODS[check_choice("method", method, AUPF_METHODS)]
    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    rows = []
    for key, group in frame.groupby(list(by), sort=True):
        per_seed = {s: g for s, g in group.groupby("seed")}
        values = np.array([area(g[clean_col], g[robust_col]) for g in per_seed.values()])
        if len(values) >= 2:
            boots = rng.choice(values, (n_boot, len(values))).mean(1)
            method = f"seeds (n={len(values)})"
        else:
            g = next(iter(per_seed.values()))
            n = int(g["test_n"].iloc[0]) if "test_n" in g else 0
            if n <= 0:
                boots, method = np.array([values[0]]), "none"
            else:
                c, r = g[clean_col].to_numpy(), g[robust_col].to_numpy()
                boots = []
                for _ in range(n_boot):
                    cb = _binomial_resample(c, n, rng)
                    rb = np.minimum(_binomial_resample(r, n, rng), cb)
                    boots.append(area(cb, rb))
                boots, method = np.array(boots), f"binomial over {n} evaluation images"
        pooled = pd.concat(per_seed.values())
        slopes = [steepness(g[clean_col], g[robust_col]) for g in per_seed.values()]
        slopes = [x for x in slopes if not np.isnan(x)]
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     "aupf": values.mean(), "ci_low": np.quantile(boots, alpha),
                     "ci_high": np.quantile(boots, 1 - alpha), "ci_method": method,
                     "seeds": len(values),
                     "steepness": float(np.mean(slopes)) if slopes else float("nan"),
                     "max_clean": pooled[clean_col].max(), "max_robust": pooled[robust_col].max()})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    group_by = [b for b in by if b != "strategy"]
    if group_by:
        table["relative"] = table.groupby(group_by)["aupf"].transform(relative)
    else:
        table["relative"] = relative(table["aupf"])
    return table


def places(table: pd.DataFrame, column: str, group: Sequence[str] = ()) -> pd.Series:
    """Each row's place by ``column`` within its ``group`` (all rows if empty): 1 = the
    highest, ties share the better place, as integers (a place reads 3, not 3.0)."""
    scores = table.groupby(list(group))[column] if group else table[column]
    return scores.rank(ascending=False, method="min").astype("Int64")


def ranking_sensitivity(frame: pd.DataFrame, robust_col: str,
                        by: Sequence[str] = ("task", "strategy")) -> pd.DataFrame:
    """Do the strategies' AUPF rankings depend on the reading of AUPF?

    Per task: each strategy's AUPF and rank (1 = best) under every method of
    :data:`AUPF_METHODS`, whether the best strategy is the same, and the Spearman correlation
    of the two rankings. Where a reading ties for the best (e.g. the trapezoid gives every
    single-point frontier an area of 0), ``same_best`` is None, and where it ranks no
    strategy above another the correlation is NaN: there is nothing to compare.
    """
    tables = {m: aupf_table(frame, robust_col, by=by, n_boot=1, method=m) for m in AUPF_METHODS}
    keys = list(by)
    group = [k for k in keys if k != "strategy"]
    merged = None
    for m, t in tables.items():
        t = t[keys + ["aupf"]].rename(columns={"aupf": f"aupf_{m}"})
        t[f"rank_{m}"] = places(t, f"aupf_{m}", group)
        merged = t if merged is None else merged.merge(t, on=keys)
    first, second = list(AUPF_METHODS)[:2]

    def compare(g: pd.DataFrame) -> pd.Series:
        scores = g.set_index("strategy")
        return pd.Series(compare_rankings(scores[f"aupf_{first}"], scores[f"aupf_{second}"]))

    stats = merged.groupby(group).apply(compare, include_groups=False).reset_index()
    return merged.merge(stats, on=group)


def best_strategies(scores: pd.Series) -> list[str]:
    """The strategies (the index of ``scores``) with the highest score: several on a tie."""
    return list(scores.index[scores == scores.max()])


def compare_rankings(first: pd.Series, second: pd.Series) -> dict:
    """Two scores of the same strategies (indexed by strategy; higher is better): is the best
    strategy the same (None where either score ties for the best: there is no one best to
    compare), and the Spearman correlation of the two rankings (NaN where either ranks no
    strategy above another)."""
    best = [best_strategies(s) for s in (first, second)]
    ranked = first.nunique() > 1 and second.nunique() > 1
    return {"same_best": best[0] == best[1] if all(len(b) == 1 for b in best) else None,
            "spearman": (first.corr(second.reindex(first.index), method="spearman")
                         if ranked else np.nan)}


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
