"""What the book's notebooks call: get the runs a chapter needs, and judge the paper's claims.

Notebooks stay thin: parameters, one call here, a chart, prose. Every verdict of the
replication scorecard is computed here from the numbers in the store, with its rule stated.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import metrics, plan, store, strategies, sweep
from . import estimands as E


def runs(tasks: Sequence[str] | None = None, strategies: Sequence[str] | None = None,
         seeds: Sequence[int] | None = None, preset: str = "study",
         results_dir: str | Path | None = None, executor: str = "local",
         progress: bool | str = True, workers: int | None = None,
         study_plan: plan.Plan | None = None, **overrides: Any
         ) -> tuple[pd.DataFrame, pd.DataFrame, plan.Plan]:
    """Run what is missing from the preset's study (its learning-rate sweep first, where it has
    one), then load it: (tidy frame, sweep summary, plan).

    Runs are keyed by their config hash, so chapters that share runs train them once, and a
    committed store is read, not recomputed. ``None`` means the preset's tasks, the paper's
    seven strategies, the preset's seeds and the preset's store. ``study_plan``: these
    arguments' plan when the caller has made it already (it is not made again).
    """
    from ..config import EXECUTORS, check_choice, preset_store

    check_choice("executor", executor, EXECUTORS)
    results_dir = results_dir or preset_store(preset)
    study_plan = study_plan or plan.plan(preset, tasks, strategies, seeds, results_dir,
                                         executor=executor, workers=workers,
                                         progress=progress, **overrides)
    summary = sweep.run(study_plan.main, results_dir, executor=executor, progress=progress,
                        workers=workers)
    failed = summary[summary["status"] == "failed"]
    if len(failed) == len(summary) and len(summary):  # nothing to show: say why, not later
        raise RuntimeError("every run failed:\n" + sweep.summarize(summary))
    if len(failed):
        print(sweep.summarize(summary))
    return store.load(results_dir, study_plan.main), summary, study_plan


@dataclass
class Chapter:
    """What a chapter's notebook starts from: its runs, the sweep's summary, the study's plan
    (its runs and chosen learning rates), and a status line for the reader (which setting,
    how many runs, trained now or read from the store)."""

    frame: pd.DataFrame
    summary: pd.DataFrame
    status: str
    plan: plan.Plan | None = None


def chapter(preset: str | None = None, tasks: Sequence[str] | None = None,
            strategies: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            results_dir: str | Path | None = None, executor: str = "local",
            workers: int | None = None, progress: bool | str = "lines",
            study_plan: plan.Plan | None = None, **overrides: Any) -> Chapter:
    """The one call a chapter makes: its runs (computing only what the store lacks).

    ``preset`` defaults to the book's (:data:`rtlib.config.BOOK_PRESET`), ``tasks`` to the
    preset's, ``strategies`` to the paper's seven, ``seeds`` and
    ``results_dir`` to the preset's; ``overrides`` (e.g. ``eps``, ``steps``; ``None`` values are
    ignored) replace the preset's values; ``study_plan``: see :func:`runs`."""
    from ..config import book_preset, preset_description, preset_store, shown_path

    preset = book_preset(preset)
    results_dir = results_dir or preset_store(preset)
    frame, summary, study_plan = runs(tasks, strategies, seeds, preset=preset,
                                      results_dir=results_dir, executor=executor,
                                      progress=progress, workers=workers,
                                      study_plan=study_plan, **overrides)
    done, read = int((summary.status == "done").sum()), int((summary.status == "skipped").sum())
    seeds_used = sorted(frame["seed"].unique()) if len(frame) else []
    status = (f"**Setting: `{preset}`**, {preset_description(preset)}. "
              f"{frame['run_id'].nunique()} runs ({len(seeds_used)} seed"
              f"{'s' if len(seeds_used) != 1 else ''}), {len(frame)} evaluation points: "
              f"{read} read from the store `{shown_path(results_dir)}`, {done} trained now.")
    if study_plan.lrs:
        status += (" Learning rates chosen on the validation split: " + ", ".join(
            f"{s} {lr:g}" for s, lr in study_plan.lrs.items()) + ".")
    status += failures(summary, "runs")
    return Chapter(frame, summary, status, study_plan)


def stored(preset: str, results_dir: str | Path | None = None) -> Chapter:
    """A setting's runs as far as its store holds them, computing nothing (not even a missing
    learning-rate sweep run: that is an error naming it): for reading one setting beside
    another. The status line says how many of the setting's runs the store holds."""
    from ..config import preset_description, preset_store, shown_path

    results_dir = results_dir or preset_store(preset)
    study_plan = plan.plan(preset, results_dir=results_dir, compute_selection=False)
    frame = store.load(results_dir, study_plan.main)
    have = frame["run_id"].nunique() if len(frame) else 0
    status = (f"**Setting: `{preset}`**, {preset_description(preset)}: {have} of "
              f"{len(study_plan.main)} runs read from the store `{shown_path(results_dir)}`"
              + (", nothing computed." if have == len(study_plan.main) else
                 f"; **{len(study_plan.main) - have} are not in it**, and its verdicts "
                 "read the others."))
    return Chapter(frame, pd.DataFrame(), status, study_plan)


def failures(summary: pd.DataFrame, what: str) -> str:
    """The status line's account of what failed in a summary of :func:`rtlib.sweep.run`
    (empty when nothing did)."""
    failed = summary[summary["status"] == "failed"]
    if not len(failed):
        return ""
    return f" **{len(failed)} {what} failed**: " + "; ".join(
        f"{r.task}/{r.strategy}/seed {r.seed}: {r.error}" for r in failed.itertuples())


def signed(value: float, digits: int = 3) -> str:
    """``value`` with its sign, as the book prints differences of accuracy: ``+0.013``; a
    difference that rounds to zero prints as ``+0.000``, not ``-0.000``."""
    return f"{round(float(value), digits) + 0.0:+.{digits}f}"


def compute_cost(frame: pd.DataFrame) -> pd.DataFrame:
    """Where the time went, per strategy (summed over its runs).

    Columns: ``runs``; ``train_img_s`` (training images per second); ``attack_img_s``
    (attacked images per second: clean-correct ones, then the survivors of each smaller
    budget); ``attacked_share`` (attacked images / test images x budgets, what attacking
    every image at every budget would cost); ``eval_share`` (evaluation's share of the runs'
    time); ``precision``. Runs stored before the attack columns existed give NaN there.
    """
    frame = frame.copy()
    for col in ("attacked", "attack_seconds"):
        if col not in frame:
            frame[col] = np.nan
    if "precision" not in frame:
        frame["precision"] = "fp32"
    # The budgets each run attacked (tasks may use different ones).
    frame["offered"] = frame["test_n"] * frame[metrics.robust_columns(frame)].notna().sum(axis=1)
    sums = frame.groupby("strategy").agg(
        eval_s=("eval_seconds", "sum"), attacked=("attacked", lambda a: a.sum(min_count=1)),
        attack_s=("attack_seconds", lambda a: a.sum(min_count=1)), offered=("offered", "sum"))
    ends = E.last_points(frame).groupby("strategy").agg(
        runs=("run_id", "nunique"), images=("images_seen", "sum"),
        train_s=("train_seconds", "sum"), precision=("precision", _joined))
    out = ends.join(sums)
    return pd.DataFrame({
        "runs": out["runs"],
        "train_img_s": out["images"] / out["train_s"],
        "attack_img_s": out["attacked"] / out["attack_s"],
        "attacked_share": out["attacked"] / out["offered"],
        "eval_share": out["eval_s"] / (out["eval_s"] + out["train_s"]),
        "precision": out["precision"],
    }).reindex(strategies.ordered(out.index))


def _joined(values: pd.Series) -> str:
    return ", ".join(sorted(set(map(str, values))))


#: The columns that identify a row of a chapter's table, outermost first (the budget and the
#: upstream model keep the order they come in).
TABLE_KEYS = ("task", "strategy", "seed", "domain", "budget", "upstream")
#: Keys whose rows keep the order they come in (not sorted).
_KEPT_ORDER = ("domain", "budget", "upstream")


def ordered_table(table: pd.DataFrame, frame: pd.DataFrame,
                  columns: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
    """``table`` as a chapter shows it, in the order its charts read: tasks nearest to
    farthest (:func:`rtlib.report.estimands.order` of ``frame``), strategies in the one order
    (:func:`rtlib.strategies.ordered`), then seeds; indexed by those of :data:`TABLE_KEYS` it
    has (rows that tie keep their order), ``columns`` kept, numbers rounded to ``digits``."""
    # A key no row fills (e.g. the source domain of runs on the default one) says nothing.
    table = table.drop(columns=[k for k in TABLE_KEYS if k in table and table[k].isna().all()])
    keys = [k for k in TABLE_KEYS if k in table.columns]
    rank = {"task": lambda: {t: i for i, t in enumerate(E.order(frame))},
            "strategy": lambda: {s: i for i, s in enumerate(strategies.ordered(table["strategy"]))}}
    sort = pd.DataFrame({k: (table[k].map(rank[k]()) if k in rank else table[k]).to_numpy()
                         for k in keys if k not in _KEPT_ORDER})  # positions
    out = table.iloc[sort.sort_values(list(sort.columns), kind="stable").index].set_index(keys)
    return (out if columns is None else out[list(columns)]).round(digits)


def standard_error(p: float, n: int) -> float:
    return float(np.sqrt(max(p * (1 - p), 1e-12) / max(n, 1)))


def _difference_se(g: pd.DataFrame, col: str, i: int, j: int) -> tuple[float, bool]:
    """Standard error of ``g[col]`` at row ``i`` minus row ``j`` (rows of one run): paired over
    the images when the run stored its per-image masks, else from two binomials (larger)."""
    n = int(g[metrics.TEST_N].iloc[0])
    try:
        mask = metrics.mask_of(col)
    except KeyError:
        mask = None
    if mask in g and isinstance(g[mask].iloc[i], str) and isinstance(g[mask].iloc[j], str):
        return metrics.paired_se(g[mask].iloc[i], g[mask].iloc[j], n), True
    return float(np.hypot(standard_error(g[col].iloc[i], n), standard_error(g[col].iloc[j], n))
                 ), False


def plateau(frame: pd.DataFrame, col: str = metrics.TEST_ACC, points: int = 3,
            tolerance: float = 0.01) -> pd.DataFrame:
    """Per run: whether ``col`` (clean test accuracy) has plateaued, i.e. its last ``points``
    evaluation points lie within ``tolerance`` of each other (max - min).

    A run that has not plateaued is told apart by its ``trend`` over those points: ``rising``
    or ``falling`` when the change from the first to the last of them exceeds two standard
    errors (paired over the test images, :func:`_difference_se`), else ``noise`` (it moves,
    but no more than evaluation noise explains); a plateaued run's trend is ``plateau``."""
    rows = []
    for run_id, g in frame.sort_values(metrics.STEP).groupby("run_id", sort=False):
        tail, last = g[col].iloc[-points:], len(g) - 1
        first = max(last - points + 1, 0)
        change = float(g[col].iloc[last] - g[col].iloc[first])
        se = _difference_se(g, col, last, first)[0]
        flat = bool(len(g) >= points and tail.max() - tail.min() <= tolerance)
        trend = ("plateau" if flat else "rising" if change > 2 * se
                 else "falling" if change < -2 * se else "noise")
        rows.append({"task": g["task"].iloc[0], "strategy": g["strategy"].iloc[0],
                     "seed": int(g["seed"].iloc[0]), "run_id": run_id,
                     "last_steps": ", ".join(map(str, g[metrics.STEP].iloc[-points:])),
                     "spread": float(tail.max() - tail.min()), "change": change,
                     "change_se": se, "plateaued": flat, "trend": trend})
    return pd.DataFrame(rows)


def at_each_budget(measure: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """``measure(frame, col)`` (e.g. :func:`rtlib.report.estimands.falls`) at every attack
    budget of ``frame`` (:func:`rtlib.report.estimands.budgets`), stacked with a ``budget``
    column (``"2/255"``)."""
    return pd.concat([measure(frame, col).assign(budget=label)
                      for label, col in E.budgets(frame).items()], ignore_index=True)


def fall_table(frame: pd.DataFrame, by: Sequence[str] = ("task", "strategy"),
               rs: E.Resampler | None = None) -> pd.DataFrame:
    """:func:`rtlib.report.estimands.falls` at every budget, as the book's tables show it."""
    rs = rs or E.Resampler()
    return at_each_budget(lambda f, col: E.falls(f, col, by, rs), frame).drop(
        columns=["_drop", "_gain"])


def rq1_findings(frame: pd.DataFrame, falls: pd.DataFrame | None = None) -> list[str]:
    """RQ1's findings as Markdown bullets, at every attack budget: per task, which task x
    strategy pairs fall (:func:`fall_table`, decided by intervals), and how wide a fall's
    interval is; then which runs have plateaued."""
    falls = fall_table(frame) if falls is None else falls
    flat = plateau(frame)
    seeds = int(frame["seed"].nunique()) if len(frame) else 0
    bits = [f"Pooled over {seeds} seed{'s' if seeds != 1 else ''}. A pair **falls** when the "
            f"seed-mean drop from each run's robust peak (chosen on the validation split) to "
            f"its end is at least {100 * E.MIN_FALL:.0f} points with its 95% interval above 0; "
            f"it **does not fall** when the interval lies below {100 * E.MIN_FALL:.0f} points; "
            "else it is **undecided**.", ""]
    for label, g in falls.groupby("budget", sort=False):
        counts = g["outcome"].value_counts()
        bits.append(f"- **At {label}:** {int(counts.get('falls', 0))} of {len(g)} task x "
                    f"strategy pairs fall, {int(counts.get('does not fall', 0))} do not, "
                    f"{int(counts.get('undecided', 0))} undecided.")
        for task in E.order(frame):
            sub = g[g.task == task]
            names = ", ".join(f"{r.strategy} ({signed(r.drop)} "
                              f"[{r.drop_low:+.3f}, {r.drop_high:+.3f}])"
                              for r in sub[sub.outcome == "falls"].itertuples()) or "none"
            bits.append(f"  - {task}: robust accuracy peaks at a median step of "
                        f"{int(sub.peak_step.median())}; falls: {names}.")
        width = (g.drop_high - g.drop_low) / 2
        bits.append(f"  - precision: a pair's 95% interval reaches {width.median():.1%} either "
                    f"side of its drop (median; at most {width.max():.1%}).")
    bits.append(f"- **Plateau:** {int(flat.plateaued.sum())} of {len(flat)} runs end with clean "
                "test accuracy on a plateau (the last three points within 1 point)"
                + ("." if flat.plateaued.all() else "; of the others, " + "; ".join(
                    _moving(flat, trend) for trend in ("rising", "falling", "noise")
                    if (flat.trend == trend).any()) + "."))
    return bits


_TRENDS = {"rising": "still rising by more than 2 standard errors over those points",
           "falling": "falling by more than 2 standard errors over those points",
           "noise": "moving by no more than evaluation noise (within 2 standard errors)"}


def _moving(flat: pd.DataFrame, trend: str) -> str:
    """The runs of :func:`plateau` with ``trend``, by task and strategy with their seeds."""
    runs_ = flat[flat.trend == trend]
    groups = ", ".join(
        f"{task}/{strategy} (seed{'s' if len(g) > 1 else ''} "
        f"{', '.join(map(str, sorted(g.seed)))}; {signed(g.change.mean())})"
        for (task, strategy), g in runs_.groupby(["task", "strategy"], sort=False))
    return f"{len(runs_)} {_TRENDS[trend]}: {groups}"


def takeaways(frame: pd.DataFrame, aupf: E.Aupf, falls: pd.DataFrame) -> list[str]:
    """The takeaways chapter's findings, as Markdown bullets computed from the runs (``aupf``:
    :func:`rtlib.report.estimands.aupf` of them; ``falls``: :func:`fall_table`)."""
    tasks = E.order(frame)
    near, far = tasks[0], tasks[-1]

    def best(task: str) -> str:
        b = aupf.best(task)
        return b["best"] or "no single strategy (tied: " + ", ".join(b["candidates"]) + ")"

    lp = aupf.table[aupf.table.strategy == "linear_probe"].set_index("task").relative
    first_peak = falls.groupby("strategy").peak_step.median().sort_values()
    last = E.last_points(frame)
    gap = (last[metrics.TEST_ACC] - last[metrics.ROBUST]).groupby(last["task"]).mean()
    bits = [f"- **The same strategy does not win everywhere.** Best AUPF (beating every other "
            f"strategy beyond its interval) on {near} (nearest): {best(near)}; on {far} "
            f"(farthest): {best(far)}."]
    if len(lp):
        bits.append(f"- **Linear probing** ranges from {lp.min():+.0%} to {lp.max():+.0%} vs "
                    "the mean: it keeps the pre-trained features, so its robustness is whatever "
                    "they give.")
    bits.append(f"- **Robust accuracy peaks earliest** for {first_peak.index[0]} (median step "
                f"{int(first_peak.iloc[0])}) and latest for {first_peak.index[-1]} (median step "
                f"{int(first_peak.iloc[-1])}), the peak chosen on the validation split.")
    bits.append("- **Clean minus robust accuracy at the end**, averaged over strategies: "
                + ", ".join(f"{t} {gap[t]:.2f}" for t in tasks) + ".")
    return bits


def precision_summary(frame: pd.DataFrame, falls: pd.DataFrame | None = None) -> str:
    """One Markdown bullet: how precisely these runs measure (test images per evaluation point,
    seeds per task and strategy, the standard error of one accuracy, the width of a fall's
    interval) and what the intervals cover."""
    n = int(frame[metrics.TEST_N].median())
    seeds = frame.groupby(["task", "strategy"])["seed"].nunique()
    falls = fall_table(frame) if falls is None else falls
    width = (falls.drop_high - falls.drop_low) / 2
    fall = (f" A pair's fall from its robust peak to its end is known to within "
            f"{100 * width.median():.1f} points either side (median over pairs and budgets; "
            f"at most {100 * width.max():.1f})." if len(falls) else "")
    if seeds.max() == 1:
        pooling = ("One seed: the intervals resample the test images only; the spread from "
                   "training noise is not measured.")
    else:
        pooling = (f"{seeds.min()}" + (f" to {seeds.max()}" if seeds.max() > seeds.min() else "")
                   + " seeds per task and strategy: the intervals resample seeds and test "
                   "images together (every seed is scored on the same images).")
    return (f"- **Evaluation size and seeds.** {n:,} test images at every evaluation point: "
            f"one accuracy near 0.5 has a standard error of {100 * standard_error(0.5, n):.1f} "
            f"points.{fall} {pooling}")


def cost_summary(frame: pd.DataFrame, cost: pd.DataFrame) -> str:
    """One paragraph: the run time, evaluation's share of it, and what attacking only the
    clean-correct images saved (``cost``: :func:`compute_cost`)."""
    train_s = E.last_points(frame)[metrics.TRAIN_SECONDS].sum()
    eval_s = frame[metrics.EVAL_SECONDS].sum()
    saving = (f"Attacking only the images still classified correctly (and at a larger budget "
              f"only those that survived the smaller) attacked {cost['attacked_share'].mean():.0%}"
              f" of the test images, on average over the strategies. "
              if cost["attacked_share"].notna().any() else "")
    return (f"In all, {(train_s + eval_s) / 60:.0f} minutes of run time, "
            f"**{eval_s / (train_s + eval_s):.0%}** of it evaluating. {saving}"
            "`bench/continuous_eval.py` measures the whole saving against a loop written the "
            "official code's way.")


def upstream_runs(chapter: Chapter, results_dir: str | Path | None = None) -> pd.DataFrame:
    """The study's runs from every upstream model it fine-tuned from, with an ``upstream``
    column (the checkpoint's name, :data:`rtlib.config.UPSTREAM_CHECKPOINTS`): the chapter's
    own runs, the upstream arms' (:attr:`rtlib.plan.Plan.arms`) and the robust upstream
    remedy's (:func:`rtlib.plan.remedies_plan`), each as far as the store holds them. Nothing
    is computed."""
    from ..config import ConfigError, preset_store

    study_plan = chapter.plan
    results_dir = results_dir or preset_store(study_plan.preset)
    try:
        robust = plan.remedies_plan(study_plan).robust
    except ConfigError:  # no robust upstream model in this setting
        robust = []
    extra = list({c.run_id(): c for c in [*study_plan.arms, *robust]}.values())
    runs = pd.concat([chapter.frame, store.load(results_dir, extra)], ignore_index=True)
    return runs.assign(upstream=runs["weights"].astype(str))


def memorization_findings(chapter: Chapter, results_dir: str | Path | None = None,
                          rs: E.Resampler | None = None) -> tuple[str, pd.DataFrame]:
    """The memorization control (:attr:`rtlib.plan.Plan.control`: the farthest task with four
    times the training images) against the chapter's runs of that task, as far as the store
    holds them: (the verdict as a Markdown bullet, the table of
    :func:`rtlib.report.estimands.memorization`). Nothing is computed."""
    from ..config import preset_store
    from .verdicts import memorization_claim, what_we_found

    configs = chapter.plan.control if chapter.plan else []
    if not configs:
        return ("This setting has no memorization control (the `ladder` study has one: its "
                "farthest task with four times the training images).", pd.DataFrame())
    control = store.load(results_dir or preset_store(chapter.plan.preset), configs)
    have = control["run_id"].nunique() if len(control) else 0
    if have < len(configs):
        return (f"The memorization control's runs are not all in the store yet ({have} of "
                f"{len(configs)}): `python -m rtlib study --preset {chapter.plan.preset}` "
                "computes them.", pd.DataFrame())
    study = chapter.frame[chapter.frame.task.isin(set(control.task))]
    table = E.memorization(study, control, rs=rs)
    return what_we_found([memorization_claim(table)], "Ours"), table
