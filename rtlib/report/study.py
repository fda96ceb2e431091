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

from .. import metrics, pareto, plan, store, strategies, sweep


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


def final_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation point of every run."""
    return frame.sort_values("step").groupby("run_id").tail(1)


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
    ends = final_points(frame).groupby("strategy").agg(
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


def task_order(frame: pd.DataFrame) -> list[str]:
    """Tasks from nearest to farthest from upstream: by the linear probe's final clean
    accuracy (a linear read-out of the pre-trained features), highest first. Without linear
    probing runs, by the mean final clean accuracy."""
    last = final_points(frame)
    probe = last[last["strategy"] == "linear_probe"]
    source = probe if len(probe) else last
    return source.groupby("task")["test_acc"].mean().sort_values(ascending=False).index.tolist()


#: The columns that identify a row of a chapter's table, outermost first (the budget and the
#: upstream model keep the order they come in).
TABLE_KEYS = ("task", "strategy", "seed", "budget", "upstream")


def ordered_table(table: pd.DataFrame, frame: pd.DataFrame,
                  columns: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
    """``table`` as a chapter shows it, in the order its charts read: tasks nearest to
    farthest (:func:`task_order` of ``frame``), strategies in the one order
    (:func:`rtlib.strategies.ordered`), then seeds; indexed by those of :data:`TABLE_KEYS` it
    has (rows that tie keep their order), ``columns`` kept, numbers rounded to ``digits``."""
    keys = [k for k in TABLE_KEYS if k in table.columns]
    rank = {"task": {t: i for i, t in enumerate(task_order(frame))},
            "strategy": {s: i for i, s in enumerate(strategies.ordered(table["strategy"]))}}
    sort = pd.DataFrame({k: (table[k].map(rank[k]) if k in rank else table[k]).to_numpy()
                         for k in keys if k not in ("budget", "upstream")})  # positions
    out = table.iloc[sort.sort_values(list(sort.columns), kind="stable").index].set_index(keys)
    return (out if columns is None else out[list(columns)]).round(digits)


def similarity(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task: the linear probe's final clean accuracy (similarity to upstream) and the mean
    final clean and robust accuracy over strategies."""
    last = final_points(frame)
    out = last.groupby("task").agg(clean=("test_acc", "mean"), robust=("robust_acc", "mean"),
                                   eps=("eps", "first"))
    probe = last[last["strategy"] == "linear_probe"].groupby("task")["test_acc"].mean()
    out.insert(0, "linear_probe_accuracy", probe)
    return out.loc[task_order(frame)]


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


def rise_and_fall(frame: pd.DataFrame, col: str = metrics.ROBUST) -> pd.DataFrame:
    """Per run: where ``col`` (robust accuracy) peaks, how much it falls by the end, the
    standard error of that fall (paired over the test images, :func:`_difference_se`), and
    whether the fall exceeds two of them."""
    rows = []
    for run_id, g in frame.sort_values(metrics.STEP).groupby("run_id", sort=False):
        i, last = int(g[col].to_numpy().argmax()), len(g) - 1
        se, paired = _difference_se(g, col, i, last)
        drop = float(g[col].iloc[i] - g[col].iloc[last])
        rows.append({"task": g["task"].iloc[0], "strategy": g["strategy"].iloc[0],
                     "seed": int(g["seed"].iloc[0]), "run_id": run_id,
                     "peak_step": int(g[metrics.STEP].iloc[i]), "peak": float(g[col].iloc[i]),
                     "final_step": int(g[metrics.STEP].iloc[last]),
                     "final": float(g[col].iloc[last]), "drop": drop, "fall_se": se,
                     "paired": paired, "early_peak": i < last,
                     "significant_fall": drop > 2 * se})
    columns = ["task", "strategy", "seed", "run_id", "peak_step", "peak", "final_step",
               "final", "drop", "fall_se", "paired", "early_peak", "significant_fall"]
    return pd.DataFrame(rows, columns=columns).sort_values(["task", "strategy", "seed"],
                                                           ignore_index=True)


def pooled_fall(frame: pd.DataFrame, col: str = metrics.ROBUST) -> pd.DataFrame:
    """Per task and strategy, the fall pooled over seeds: the peak of the seed-mean curve, its
    drop to the final point, the standard error of that drop (each seed's paired error,
    combined: sqrt(sum se^2) / seeds), and each seed's own drop at the same two steps.

    ``significant``: the pooled drop exceeds two standard errors **and** every seed falls.
    """
    rows = []
    for (task, strategy), g in frame.groupby(["task", "strategy"], sort=False):
        mean = g.groupby(metrics.STEP)[col].mean().sort_index()
        peak_step, final_step = int(mean.idxmax()), int(mean.index[-1])
        drops, ses = [], []
        for _, run in g.sort_values(metrics.STEP).groupby("run_id", sort=False):
            steps = run[metrics.STEP].tolist()
            if peak_step not in steps or steps[-1] != final_step:
                continue  # a run on another schedule: not poolable at these steps
            i = steps.index(peak_step)
            se, _ = _difference_se(run, col, i, len(run) - 1)
            drops.append(float(run[col].iloc[i] - run[col].iloc[-1]))
            ses.append(se)
        k = len(drops)
        se = float(np.sqrt(np.sum(np.square(ses))) / k) if k else float("nan")
        drop = float(mean.loc[peak_step] - mean.loc[final_step])
        rows.append({"task": task, "strategy": strategy, "seeds": k, "peak_step": peak_step,
                     "peak": float(mean.loc[peak_step]), "final": float(mean.loc[final_step]),
                     "drop": drop, "drop_se": se,
                     "seed_min_drop": min(drops) if drops else float("nan"),
                     "seed_max_drop": max(drops) if drops else float("nan"),
                     "significant": bool(k and drop > 2 * se and min(drops) > 0)})
    return pd.DataFrame(rows)


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


def budgets(frame: pd.DataFrame) -> dict[str, str]:
    """The robust accuracy column of each attack budget of ``frame`` by its label
    (``{"2/255": "robust_acc@2/255", ...}``), smallest first; a frame with the run's first
    budget only (``robust_acc``) has that one, labelled by its ``eps`` column."""
    columns = metrics.robust_columns(frame)
    if columns:
        return {metrics.qualifier(c): c for c in columns}
    label = str(frame["eps"].iloc[0]) if "eps" in frame and len(frame) else "the budget"
    return {label: metrics.ROBUST}


def at_each_budget(measure: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """``measure(frame, col)`` (e.g. :func:`pooled_fall`) at every attack budget of ``frame``
    (:func:`budgets`), stacked with a ``budget`` column (``"2/255"``)."""
    return pd.concat([measure(frame, col).assign(budget=label)
                      for label, col in budgets(frame).items()], ignore_index=True)


def rq1_findings(frame: pd.DataFrame) -> list[str]:
    """RQ1's findings as Markdown bullets, at every attack budget: the falls pooled over seeds
    per task, the runs that fall on their own and how precise a run's fall is; then which runs
    have plateaued."""
    flat = plateau(frame)
    seeds = int(frame["seed"].nunique()) if len(frame) else 0
    n = int(frame[metrics.TEST_N].max())
    bits = [f"Pooled over {seeds} seed{'s' if seeds != 1 else ''}; a pair falls significantly "
            "when the seed-mean drop exceeds 2 standard errors and every seed drops.", ""]
    for label, col in budgets(frame).items():
        pooled, rf = pooled_fall(frame, col), rise_and_fall(frame, col)
        kind = "paired over the" if rf["paired"].all() else "binomial, from the"
        bits.append(f"- **At {label}: {int(pooled.significant.sum())} of "
                    f"{len(pooled)} task x strategy pairs** fall significantly from their "
                    "robust peak.")
        for task in task_order(frame):
            sub, runs_ = pooled[pooled.task == task], rf[rf.task == task]
            names = ", ".join(f"{r.strategy} ({signed(r.drop)} +- {r.drop_se:.3f})"
                              for r in sub[sub.significant].itertuples()) or "none"
            bits.append(f"  - {task}: robust accuracy peaks at a median step of "
                        f"{int(runs_.peak_step.median())} of {int(runs_.final_step.max())}; "
                        f"significant falls: {names}.")
        bits.append(f"  - precision: the standard error of a run's peak-to-final difference "
                    f"is at most {rf.fall_se.max():.1%} (median {rf.fall_se.median():.1%}; "
                    f"{kind} {n:,} test images); {int(rf.significant_fall.sum())} of {len(rf)} "
                    "runs fall significantly on their own.")
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


def budget_ranking(frame: pd.DataFrame) -> pd.DataFrame:
    """AUPF per task, strategy and attack budget (point estimates, :func:`budgets`), with its
    rank among the strategies of its task and budget (1 = best)."""
    table = at_each_budget(lambda f, col: pareto.aupf_table(f, col, n_boot=1), frame)
    table["rank"] = pareto.places(table, "aupf", ["task", "budget"])
    return table


def budget_findings(ranking: pd.DataFrame, tasks: Sequence[str]) -> list[str]:
    """One line per task of :func:`budget_ranking`: the best strategy at each budget, and how
    alike the rankings at the smallest and the largest budget are (Spearman)."""
    labels = list(dict.fromkeys(ranking["budget"]))
    if len(labels) < 2:
        return [f"This setting attacks at one budget ({', '.join(labels)}): exercise 1 below "
                "adds another."]
    lines = []
    for task in tasks:
        sub = ranking[ranking.task == task]
        wide = sub.pivot(index="strategy", columns="budget", values="aupf").reindex(
            strategies.ordered(sub["strategy"]))  # the book's strategy order, not a-z
        best = {b: " and ".join(pareto.best_strategies(wide[b])) for b in labels}
        compared = pareto.compare_rankings(wide[labels[0]], wide[labels[-1]])
        same = {True: "the same", False: "**different**", None: "a tie"}[compared["same_best"]]
        rho = (f"rank correlation between {labels[0]} and {labels[-1]} "
               f"{signed(compared['spearman'], 2)}" if pd.notna(compared["spearman"]) else
               "one budget ranks no strategy above another")
        lines.append(f"- **{task}**: best " + ", ".join(f"{best[b]} at {b}" for b in labels)
                     + f" ({same}); {rho}")
    return lines


def sensitivity_findings(sensitivity: pd.DataFrame, tasks: Sequence[str]) -> list[str]:
    """One line per task of :func:`rtlib.pareto.ranking_sensitivity`: do the two readings of
    AUPF pick the same best strategy, and how alike are their rankings?"""
    lines = []
    per_task = sensitivity.groupby("task")[["same_best", "spearman"]].first()
    for task in tasks:
        same, rho = per_task.loc[task, "same_best"], per_task.loc[task, "spearman"]
        if pd.isna(same):
            lines.append(f"- **{task}**: one reading ties for the best (every single-point "
                         "frontier has a trapezoid area of 0): no best strategy to compare")
            continue
        text = "the same" if same else "**different**"
        corr = (f"rank correlation {signed(rho, 2)}" if pd.notna(rho) else
                "one reading ranks no strategy above another")
        lines.append(f"- **{task}**: best strategy {text} under both readings; {corr}")
    return lines


def ood_correlation(frame: pd.DataFrame) -> pd.DataFrame:
    """Pearson r between in-domain and OOD accuracy over all evaluation points, per domain."""
    rows = []
    for col in metrics.ood_columns(frame):
        sub = frame[["test_acc", col]].dropna()
        rows.append({"domain": col.split("@")[1], "pearson_r": sub["test_acc"].corr(sub[col]),
                     "points": len(sub)})
    return pd.DataFrame(rows)


def ood_variance_shares(frame: pd.DataFrame) -> dict[str, float]:
    """Share of the variance of final OOD accuracy explained by the domain, by the strategy
    and, where ``frame`` holds several tasks, by the task (between-group sum of squares over
    total, each factor on its own)."""
    last = final_points(frame)
    long = last.melt(id_vars=["strategy", "task"], value_vars=metrics.ood_columns(last),
                     var_name="domain", value_name="ood")
    total = ((long["ood"] - long["ood"].mean()) ** 2).sum()
    share = {}
    for factor in ("domain", "strategy") + (("task",) if long["task"].nunique() > 1 else ()):
        means = long.groupby(factor)["ood"].transform("mean")
        share[factor] = float(((means - long["ood"].mean()) ** 2).sum() / total) if total else 0.0
    return share


@dataclass
class Verdict:
    claim: str
    paper: str
    ours: str
    verdict: str  # "holds", "partly", "does not hold", "not testable here"
    rule: str


def _verdict(hits: int, total: int) -> str:
    if total == 0:
        return "not testable here"
    if hits == total:
        return "holds"
    return "partly" if hits > 0 else "does not hold"


def majority_verdict(hits: int, total: int) -> str:
    """The rule "holds if at least half count, partly if some do"."""
    if total and 2 * hits >= total:
        return "holds"
    return _verdict(hits, total)


def scorecard(frame: pd.DataFrame, table: pd.DataFrame, ood_frame: pd.DataFrame | None = None
              ) -> pd.DataFrame:
    """The paper's claims, our measurement, and a verdict computed by the stated rule.

    ``frame``: runs (store.load); ``table``: pareto.aupf_table of those runs; ``ood_frame``:
    runs with OOD domains (default: ``frame``).
    """
    cards: list[Verdict] = []
    order = task_order(frame)
    rel = table.set_index(["task", "strategy"])["relative"]

    columns = budgets(frame)  # judged at the smallest; the others reported beside it
    labels = list(columns)
    rf = rise_and_fall(frame, columns[labels[0]])
    falls = at_each_budget(pooled_fall, frame)
    falls = falls[falls["strategy"].isin(strategies.adapting("intermediate", "excessive"))]
    intermediate = falls[falls["budget"] == labels[0]]
    hits = int(intermediate["significant"].sum())
    seeds = int(intermediate["seeds"].max()) if len(intermediate) else 0
    others = "".join(f"; at {b}: {int(falls[falls.budget == b].significant.sum())} of "
                     f"{int((falls.budget == b).sum())}" for b in labels[1:])
    cards.append(Verdict(
        "RQ1: robust accuracy first rises (inherited), peaks early, then falls as fine-tuning "
        "exploits non-robust features",
        "rise-then-fall in most settings",
        f"{hits} of {len(intermediate)} task x strategy pairs of full fine-tuning and "
        f"intermediate strategies fall from their robust peak by more than 2 standard errors "
        f"({seeds} seed{'s' if seeds != 1 else ''} pooled, at {labels[0]}{others}); median "
        f"peak at step {int(rf['peak_step'].median())} of {int(rf['final_step'].max())}",
        majority_verdict(hits, len(intermediate)),
        "a pair falls if its seed-mean robust accuracy drops from its peak to the end by more "
        "than 2 standard errors (paired over the test images) and every seed drops; holds if "
        "at least half of the pairs fall, partly if some do; judged at the smallest budget"))

    simple = order[0] if order else None
    if simple is not None and (simple, "bitfit") in rel.index:
        r = rel[(simple, "bitfit")]
        best = table[table["task"] == simple].sort_values("aupf").iloc[-1]["strategy"]
        cards.append(Verdict(
            "RQ2: on simple tasks, peripheral updates (BitFit) balance best",
            "BitFit > 75% above the strategies' mean AUPF on CIFAR-10/100",
            f"on {simple} (nearest to upstream) BitFit is {r:+.0%} vs the mean; best: {best}",
            "holds" if best == "bitfit" else ("partly" if r > 0 else "does not hold"),
            "holds if BitFit has the highest AUPF on the nearest task, partly if above mean"))
    complex_ = order[-1] if order else None
    if complex_ is not None and (complex_, "compacter") in rel.index:
        r = rel[(complex_, "compacter")]
        best = table[table["task"] == complex_].sort_values("aupf").iloc[-1]["strategy"]
        cards.append(Verdict(
            "RQ2: on complex tasks, information-heavy intermediate updates (Compacter) balance "
            "best",
            "Compacter +57.5% (Caltech-256) and +34.6% (CUB-200) above the mean",
            f"on {complex_} (farthest from upstream) Compacter is {r:+.0%} vs the mean; "
            f"best: {best}",
            "holds" if best == "compacter" else ("partly" if r > 0 else "does not hold"),
            "holds if Compacter has the highest AUPF on the farthest task, partly if above "
            "mean"))
    worst = [t for t in order if (t, "full") in rel.index and (t, "linear_probe") in rel.index]
    below = sum(rel[(t, "full")] < 0 and rel[(t, "linear_probe")] < 0 for t in worst)
    cards.append(Verdict(
        "RQ2: linear probing and full fine-tuning balance worst",
        "both below the mean AUPF on most datasets",
        f"both below the mean on {below} of {len(worst)} tasks",
        majority_verdict(below, len(worst)),
        "holds if both are below the mean on at least half of the tasks"))
    steep = table.groupby("task")["steepness"].mean().reindex(order).dropna()
    if len(steep) >= 3:
        rho = pd.Series(range(len(steep)), index=steep.index).corr(steep, method="spearman")
        cards.append(Verdict(
            "RQ2: the more complex the task (the less similar to upstream), the steeper the "
            "frontier",
            "steeper frontiers on complex tasks",
            f"Spearman correlation between distance from upstream and steepness: {signed(rho, 2)} "
            f"over {len(steep)} tasks",
            "holds" if rho >= 0.5 else ("partly" if rho > 0 else "does not hold"),
            "holds if rho >= 0.5, partly if positive"))
    else:
        cards.append(Verdict("RQ2: the more complex the task, the steeper the frontier",
                             "steeper frontiers on complex tasks",
                             f"only {len(steep)} tasks with a measurable steepness",
                             "not testable here", "needs at least 3 tasks"))

    of = ood_frame if ood_frame is not None else frame
    corr = ood_correlation(of)
    if len(corr):
        tracks = int((corr["pearson_r"] > 0.7).sum())
        cards.append(Verdict(
            "RQ3: OOD accuracy tracks in-domain accuracy (no trade-off)",
            "OOD accuracy rises with in-domain accuracy during fine-tuning",
            "Pearson r per OOD domain: " + ", ".join(
                f"{d} {r:.2f}" for d, r in zip(corr["domain"], corr["pearson_r"])),
            "holds" if tracks == len(corr) else _verdict(tracks, len(corr)),
            "holds if r > 0.7 on every OOD domain, partly on some"))
        shares = ood_variance_shares(of)
        cards.append(Verdict(
            "RQ3: OOD robustness depends on the domain shift more than on the method",
            "domain and extent of adaptation matter more than the strategy",
            f"share of the variance of final OOD accuracy explained by the domain "
            f"{shares['domain']:.0%}, by the strategy {shares['strategy']:.0%}",
            "holds" if shares["domain"] > shares["strategy"] else "does not hold",
            "holds if the domain explains more variance than the strategy"))
    else:
        cards.append(Verdict("RQ3: OOD accuracy tracks in-domain accuracy", "", "no OOD domains",
                             "not testable here", ""))
    return verdict_table(cards)


def verdict_table(cards: Sequence[Verdict]) -> pd.DataFrame:
    """Verdicts as the scorecard's table: claim, paper, ours, verdict, rule."""
    return pd.DataFrame([c.__dict__ for c in cards], columns=list(Verdict.__dataclass_fields__))


#: The scorecard's colour per verdict.
VERDICT_COLOURS = {"holds": "#d4edda", "partly": "#fff3cd", "does not hold": "#f8d7da"}


def styled(card: pd.DataFrame):
    """A scorecard table as the book shows it: no index, each verdict on its colour."""
    return card.style.hide(axis="index").map(
        lambda v: f"background-color: {VERDICT_COLOURS[v]}" if v in VERDICT_COLOURS else "",
        subset=["verdict"])


def takeaways(frame: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """The takeaways chapter's findings, as Markdown bullets computed from the runs."""
    rf, sim = rise_and_fall(frame), similarity(frame)
    near, far = sim.index[0], sim.index[-1]

    def best(task: str) -> str:
        return table[table.task == task].sort_values("aupf").strategy.iloc[-1]

    lp = table[table.strategy == "linear_probe"].set_index("task").relative
    first_peak = rf.groupby("strategy").peak_step.median().sort_values()
    last = final_points(frame)
    gap = (last[metrics.TEST_ACC] - last[metrics.ROBUST]).groupby(last["task"]).mean()
    bits = [f"- **The same strategy does not win everywhere.** Best AUPF on {near} (nearest): "
            f"{best(near)}; on {far} (farthest): {best(far)}."]
    if len(lp):
        bits.append(f"- **Linear probing** ranges from {lp.min():+.0%} to {lp.max():+.0%} vs "
                    "the mean: it keeps the pre-trained features, so its robustness is whatever "
                    "they give.")
    bits.append(f"- **Robust accuracy peaks earliest** for {first_peak.index[0]} (median step "
                f"{int(first_peak.iloc[0])}) and latest for {first_peak.index[-1]} (median step "
                f"{int(first_peak.iloc[-1])}).")
    bits.append("- **Clean minus robust accuracy at the end**, averaged over strategies: "
                + ", ".join(f"{t} {gap[t]:.2f}" for t in sim.index) + ".")
    return bits


def precision_summary(frame: pd.DataFrame) -> str:
    """One Markdown bullet: how precisely these runs measure (test images per evaluation point,
    seeds per task and strategy, the standard error of one accuracy and of a run's
    peak-to-final robust difference) and what that means for the verdicts."""
    n = int(frame[metrics.TEST_N].median())
    seeds = frame.groupby(["task", "strategy"])["seed"].nunique()
    falls = at_each_budget(rise_and_fall, frame)
    falls = falls[falls.early_peak]  # a run that peaks at its end has no fall to measure
    fall = (f" The standard error of a run's fall from its robust peak to its end: median "
            f"{100 * falls.fall_se.median():.1f}, at most {100 * falls.fall_se.max():.1f} points"
            f" ({len(falls)} runs and budgets with a peak before the end)." if len(falls) else "")
    if seeds.max() == 1:
        pooling = ("One seed: the spread from training noise is not measured, so claims that "
                   "hinge on differences between strategies are marked *partly* at best.")
    else:
        pooling = (f"{seeds.min()}" + (f" to {seeds.max()}" if seeds.max() > seeds.min() else "")
                   + " seeds per task and strategy: the verdicts pool them, and a fall counts "
                   "only when every seed falls.")
    return (f"- **Evaluation size and seeds.** {n:,} test images at every evaluation point: "
            f"one accuracy near 0.5 has a standard error of {100 * standard_error(0.5, n):.1f} "
            f"points.{fall} {pooling}")


def cost_summary(frame: pd.DataFrame, cost: pd.DataFrame) -> str:
    """One paragraph: the run time, evaluation's share of it, and what attacking only the
    clean-correct images saved (``cost``: :func:`compute_cost`)."""
    train_s = final_points(frame)[metrics.TRAIN_SECONDS].sum()
    eval_s = frame[metrics.EVAL_SECONDS].sum()
    saving = (f"Attacking only the images still classified correctly (and at a larger budget "
              f"only those that survived the smaller) attacked {cost['attacked_share'].mean():.0%}"
              f" of the test images, on average over the strategies. "
              if cost["attacked_share"].notna().any() else "")
    return (f"In all, {(train_s + eval_s) / 60:.0f} minutes of run time, "
            f"**{eval_s / (train_s + eval_s):.0%}** of it evaluating. {saving}"
            "`bench/continuous_eval.py` measures the whole saving against a loop written the "
            "official code's way.")
