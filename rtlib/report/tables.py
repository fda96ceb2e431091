"""Tables as a reader reads them: an estimate and its interval in one cell, words for names.

The chapters' tables come from :mod:`.estimands` and :mod:`.study` with machine names
(``drop``, ``drop_low``, ``drop_high``, ``probe_val_acc``): the right names for code, too wide
and too cryptic for a page. :func:`readable` joins each value with its interval
(``0.052 [0.021, 0.083]``; a range over seeds as ``0.052 (0.010 to 0.090)``), names columns in
words, and leaves the data itself alone. The book's notebooks show every DataFrame through it
(:func:`rtlib.report.book.setup_notebook`), in full (no rows elided).
"""
from __future__ import annotations

import numbers

import pandas as pd

#: Column and index names in words (others: underscores become spaces).
LABELS = {
    "drop": "fall", "peak_step": "peak step", "final": "end", "clean_gain": "clean gain",
    "probe_val_acc": "linear-probe val. accuracy", "test_acc": "clean", "robust_acc": "robust",
    "val_acc": "val. clean", "seen_upstream": "seen upstream", "beats_both": "beats both ends",
    "best_alpha": "best coefficient", "clean_cost": "clean given up", "oracle_gain":
    "gain if chosen on test", "tied_with": "tied with", "method_minus_domain":
    "strategy minus domain", "by_domain": "domain share", "by_strategy": "strategy share",
    "by_interaction": "interaction share", "aupf": "AUPF", "relative": "relative AUPF",
    "r": "correlation r", "gap": "gap", "pairs": "pairs", "outcome": "outcome",
    "images": "training images", "control_images": "control's images",
    "control_drop": "fall (control)", "control_outcome": "outcome (control)",
    "drop_change": "change of the fall", "control_gap": "gap (control)",
    "gap_change": "change of the gap", "gap_shrinks": "gap shrinks",
}
#: Suffixes of an interval's ends, and how the joined cell reads.
INTERVALS = (("_low", "_high", "{} [{}, {}]", " (95% interval)"),
             ("_min", "_max", "{} ({} to {})", " (seed range)"))


def label(name) -> str:
    if not isinstance(name, str):
        return name
    if name.startswith("ood_acc@"):
        return f"OOD {name.split('@', 1)[1]}"
    return LABELS.get(name, name.replace("_", " "))


def _cell(value) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return "" if pd.isna(value) else f"{value:.3f}"
    return str(value)


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` for a page: intervals joined into their value's cell, names in words."""
    out = frame.copy()
    columns = list(out.columns)
    if "low" in columns and "high" in columns:  # a bare pair belongs to the column before it
        base = columns[columns.index("low") - 1]
        out = out.rename(columns={"low": f"{base}_low", "high": f"{base}_high"})
        columns = list(out.columns)
    for low, high, form, suffix in INTERVALS:
        for name in [c for c in columns if isinstance(c, str) and f"{c}{low}" in columns
                     and f"{c}{high}" in columns]:
            joined = [form.format(_cell(v), _cell(lo), _cell(hi)) if not pd.isna(v) else ""
                      for v, lo, hi in zip(out[name], out[f"{name}{low}"], out[f"{name}{high}"])]
            at = list(out.columns).index(name)
            out = out.drop(columns=[name, f"{name}{low}", f"{name}{high}"])
            out.insert(at, label(name) + suffix, joined)
            columns = list(out.columns)
    out = out.rename(columns=label)
    out.index = out.index.rename([label(n) for n in out.index.names]) \
        if isinstance(out.index, pd.MultiIndex) else out.index.rename(label(out.index.name))
    return out


def html(frame: pd.DataFrame) -> str:
    """:func:`readable` as HTML, every row (a book page elides nothing)."""
    return readable(frame).to_html(max_rows=None, max_cols=None, float_format=_cell,
                                   classes="dataframe", border=0)
