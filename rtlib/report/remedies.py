"""What a practitioner can do about the trade-off, judged from the store (the book's fourth
chapter): choosing the checkpoint by robust accuracy on the validation split.

Every choice here looks at the validation split only; the test set measures what the choice
gained and cost.
"""
from __future__ import annotations

import pandas as pd

from .. import metrics


def checkpoint_selection(frame: pd.DataFrame, by: str | None = None,
                         robust: str = metrics.ROBUST) -> pd.DataFrame:
    """Per run: the evaluation point with the best ``by`` (default: robust accuracy on the
    validation split at the run's first budget; ties: the latest point, the one trained
    longest) against the run's last point.

    Columns: task, strategy, seed, run_id, ``picked_step``, ``final_step``, test robust and
    clean accuracy at both (``robust_picked``, ``robust_final``, ``clean_picked``,
    ``clean_final``), ``gain`` (robust picked - final), ``cost`` (clean final - picked) and
    ``oracle_gain`` (the best test robust accuracy of the run - final: what a choice on the test
    set would claim, the ceiling no honest choice reaches on average).
    """
    if by is None:
        columns = metrics.val_robust_columns(frame)
        if not columns:
            raise KeyError("no validation robust accuracy in these runs (they ran without "
                           "val_robust): pass `by`, e.g. metrics.VAL_ACC")
        by = columns[0]
    rows = []
    for run_id, g in frame.sort_values(metrics.STEP).groupby("run_id", sort=False):
        g = g.dropna(subset=[by])
        if g.empty:
            continue
        picked = g[g[by] == g[by].max()].iloc[-1]
        last = g.iloc[-1]
        rows.append({
            "task": last["task"], "strategy": last["strategy"], "seed": int(last["seed"]),
            "run_id": run_id, "by": by,
            "picked_step": int(picked[metrics.STEP]), "final_step": int(last[metrics.STEP]),
            "robust_picked": float(picked[robust]), "robust_final": float(last[robust]),
            "clean_picked": float(picked[metrics.TEST_ACC]),
            "clean_final": float(last[metrics.TEST_ACC]),
            "gain": float(picked[robust] - last[robust]),
            "cost": float(last[metrics.TEST_ACC] - picked[metrics.TEST_ACC]),
            "oracle_gain": float(g[robust].max() - last[robust])})
    return pd.DataFrame(rows)


def selection_summary(selection: pd.DataFrame) -> pd.DataFrame:
    """:func:`checkpoint_selection` per task and strategy over seeds: the mean gain and cost
    and their range over seeds, and how often the choice was the last point anyway."""
    grouped = selection.groupby(["task", "strategy"], sort=False)
    return grouped.agg(
        seeds=("seed", "nunique"), gain=("gain", "mean"), gain_min=("gain", "min"),
        gain_max=("gain", "max"), cost=("cost", "mean"), cost_min=("cost", "min"),
        cost_max=("cost", "max"), oracle_gain=("oracle_gain", "mean"),
        kept_last=("picked_step", lambda s: int((s == selection.loc[s.index, "final_step"])
                                                 .sum()))).reset_index()
