"""What a practitioner can do about the trade-off, judged from the store (the book's fourth
chapter): choosing the checkpoint by robust accuracy on the validation split, and weight
interpolation between the linear probe and the fine-tuned model (:mod:`rtlib.interpolate`).

Every choice here looks at the validation split only; the test set measures what the choice
gained and cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .. import metrics, pareto, store
from ..config import PATH_FORM_LABELS
from . import estimands as E
from .study import Chapter, chapter, failures, signed
from .verdicts import Verdict, majority


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
    grouped = _by_pair(selection)
    return grouped.agg(
        seeds=("seed", "nunique"), gain=("gain", "mean"), gain_min=("gain", "min"),
        gain_max=("gain", "max"), cost=("cost", "mean"), cost_min=("cost", "min"),
        cost_max=("cost", "max"), oracle_gain=("oracle_gain", "mean"),
        kept_last=("picked_step", lambda s: int((s == selection.loc[s.index, "final_step"])
                                                 .sum()))).reset_index()


def _by_pair(rows: pd.DataFrame):
    """``rows`` grouped by task and strategy, the strategies in the book's order."""
    from ..strategies import ordered

    order = {s: k for k, s in enumerate(ordered(rows["strategy"]))}
    rows = rows.sort_values(["task", "strategy"],
                            key=lambda c: c.map(order) if c.name == "strategy" else c)
    return rows.groupby(["task", "strategy"], sort=False)


def interpolation_pooled(interpolation: pd.DataFrame) -> pd.DataFrame:
    """:func:`interpolation_summary` per task and strategy over seeds: the coefficient chosen
    (mean), the robust gain over the better end (mean and lowest seed), in how many seeds an
    interior coefficient beats both ends, the clean cost and the AUPF gain (means)."""
    return _by_pair(interpolation).agg(
        by=("by", "first"), seeds=("seed", "nunique"), best_alpha=("best_alpha", "mean"),
        gain=("gain", "mean"), gain_min=("gain", "min"), beats_both=("beats_both", "sum"),
        clean_cost=("clean_cost", "mean"), aupf_gain=("aupf_gain", "mean")).reset_index()


def interpolation_summary(paths: pd.DataFrame, frame: pd.DataFrame, by: str | None = None,
                          robust: str = metrics.ROBUST, clean: str = metrics.TEST_ACC
                          ) -> pd.DataFrame:
    """Per path (task, strategy, seed; rows of :func:`rtlib.interpolate.path`, ``alpha``
    from 0, the linear probe, to 1, the fine-tuned model): does a coefficient strictly between
    the ends beat both on robust accuracy, at what cost in clean accuracy, and does the path
    reach points that no checkpoint of the run reached?

    The coefficient is chosen by ``by`` (default: robust accuracy on the validation split,
    when the paths have it; else test robust accuracy, an optimistic reading that the ``by``
    column names) and judged on the test set. Columns: ``by``, ``robust_probe``,
    ``robust_tuned`` (the ends), ``best_alpha`` (the interior coefficient with the highest
    ``by``; ties: the largest, nearest the tuned model), ``robust_best`` (its test robust
    accuracy), ``gain`` (robust best - the better end), ``beats_both``, ``clean_cost`` (clean
    at alpha 1 - clean at the best alpha), ``aupf_run`` (AUPF of the run's checkpoints,
    :func:`rtlib.pareto.aupf`), ``aupf_with_path`` (of its checkpoints and the path's points
    together) and ``aupf_gain`` (their difference: 0 when every point of the path is
    dominated by a checkpoint).
    """
    from ..interpolate import ALPHA

    if by is None:
        columns = [c for c in metrics.val_robust_columns(paths) if paths[c].notna().all()]
        by = columns[0] if columns else robust
    rows = []
    for (task, strategy, seed), path in paths.sort_values(ALPHA).groupby(
            ["task", "strategy", "seed"], sort=False):
        ends, inside = path.iloc[[0, -1]], path.iloc[1:-1]
        run = frame[(frame["task"] == task) & (frame["strategy"] == strategy)
                    & (frame["seed"] == seed)]
        best = inside[inside[by] == inside[by].max()].iloc[-1] if len(inside) else None
        better_end = ends[robust].max()
        aupf_run = pareto.aupf(run[clean], run[robust])
        aupf_both = pareto.aupf(pd.concat([run[clean], path[clean]]),
                                pd.concat([run[robust], path[robust]]))
        rows.append({
            "task": task, "strategy": strategy, "seed": int(seed), "by": by,
            "robust_probe": float(ends[robust].iloc[0]),
            "robust_tuned": float(ends[robust].iloc[1]),
            "best_alpha": float(best[ALPHA]) if best is not None else float("nan"),
            "robust_best": float(best[robust]) if best is not None else float("nan"),
            "gain": float(best[robust] - better_end) if best is not None else float("nan"),
            "beats_both": bool(best is not None and best[robust] > better_end),
            "clean_cost": (float(ends[clean].iloc[1] - best[clean]) if best is not None
                           else float("nan")),
            "aupf_run": aupf_run, "aupf_with_path": aupf_both,
            # a superset of points has at least the area: what is left is rounding
            "aupf_gain": round(aupf_both - aupf_run, 12)})
    return pd.DataFrame(rows)


def _points(values: pd.Series) -> str:
    """The range of accuracy differences as points: ``+0.6 to +6.3 points``."""
    low, high = (round(100 * float(v), 1) + 0.0 for v in (values.min(), values.max()))
    return f"{low:+.1f} points" if low == high else f"{low:+.1f} to {high:+.1f} points"


def findings(selection: pd.DataFrame | None, interpolation: pd.DataFrame | None,
             tasks: Sequence[str]) -> list[str]:
    """Per task (in the order of ``tasks``), what the first two remedies did, as Markdown
    bullets: the range over strategies of the seed-mean test robust gain and clean cost of the
    checkpoint chosen on validation (:func:`selection_summary`), and of the chosen
    interpolation coefficient's gain over the better end, with the strategies whose
    coefficient beat both ends in every seed (:func:`interpolation_pooled`)."""
    bits = []
    chosen = selection_summary(selection) if selection is not None and len(selection) else None
    pooled = (interpolation_pooled(interpolation)
              if interpolation is not None and len(interpolation) else None)
    for task in tasks:
        parts = []
        if chosen is not None and (chosen.task == task).any():
            c = chosen[chosen.task == task]
            parts.append(f"choosing the checkpoint gains {_points(c.gain)} of robust accuracy "
                         f"and gives up {_points(c.cost)} of clean accuracy")
        if pooled is not None and (pooled.task == task).any():
            i = pooled[pooled.task == task]
            every = i[i.beats_both == i.seeds].strategy.tolist()
            parts.append(f"the chosen interpolation coefficient's robust accuracy is "
                         f"{_points(i.gain)} above the better end's, beating both in every "
                         f"seed for "
                         f"{', '.join(every) if every else 'no strategy'}")
        if parts:
            bits.append(f"- **{task}**: " + "; ".join(parts) + ".")
    if bits:
        bits.insert(0, "Ranges over the strategies of their seed means (test set; each choice "
                       "made on the validation split):\n")
    return bits


def by_upstream(frame: pd.DataFrame, robust: pd.DataFrame) -> pd.DataFrame:
    """The runs fine-tuned from the standard upstream model (``frame``, on the tasks of
    ``robust``) and from the robust one (``robust``), with an ``upstream`` column."""
    standard = frame[frame["task"].isin(set(robust["task"]))]
    return pd.concat([standard.assign(upstream="standard"), robust.assign(upstream="robust")],
                     ignore_index=True)


def upstream_comparison(runs: pd.DataFrame, col: str = metrics.ROBUST,
                        rs: E.Resampler | None = None) -> pd.DataFrame:
    """Per upstream model, task and strategy (``runs``: :func:`by_upstream`): robust accuracy
    at the first point after the start (what fine-tuning inherits first), the fall pooled over
    seeds (:func:`rtlib.report.estimands.falls`, with its interval and outcome) and the final
    clean accuracy (seed means)."""
    rs = rs or E.Resampler()
    parts = []
    for upstream, g in runs.groupby("upstream", sort=False):
        fall = E.falls(g, col, rs=rs).drop(columns=["_drop", "_gain"])
        steps = sorted(g[metrics.STEP].unique())
        first = g[g[metrics.STEP] == (steps[1] if len(steps) > 1 else steps[0])]
        fall["first"] = fall.set_index(["task", "strategy"]).index.map(
            first.groupby(["task", "strategy"])[col].mean())
        fall["final_clean"] = fall.set_index(["task", "strategy"]).index.map(
            E.last_points(g).groupby(["task", "strategy"])[metrics.TEST_ACC].mean())
        parts.append(fall.assign(upstream=upstream))
    return pd.concat(parts, ignore_index=True)


#: The clean accuracy a remedy may cost and still count as cheap (the WiSE-FT reading: a
#: small cost in clean accuracy).
SMALL_COST = 0.02


def _interpolation_pairs(interpolation: pd.DataFrame, small_cost: float
                         ) -> tuple[pd.DataFrame, pd.Series, str]:
    """Per (task, strategy) pair of :func:`interpolation_summary`: whether it beats both ends in
    every seed or in none; the pairs that count (every seed, small clean cost); the outcome."""
    pairs = interpolation.groupby(["task", "strategy"]).agg(
        every_seed=("beats_both", "all"), no_seed=("beats_both", lambda b: not b.any()),
        clean_cost=("clean_cost", "mean"), aupf_gain=("aupf_gain", "mean"))
    hits = pairs["every_seed"] & (pairs["clean_cost"] <= small_cost)
    return pairs, hits, majority(int(hits.sum()), int(pairs["no_seed"].sum()), len(pairs))


def what_helps(frame: pd.DataFrame | None, interpolation: pd.DataFrame | None,
               runs: pd.DataFrame | None = None, small_cost: float = SMALL_COST,
               rs: E.Resampler | None = None,
               form: str = "update", other_forms: Mapping[str, pd.DataFrame] | None = None
               ) -> list[Verdict]:
    """The scorecard's section "What helps": one verdict per remedy measured, over (task,
    strategy) pairs, each pair decided by intervals (three outcomes, :mod:`verdicts`).

    ``frame``: the study's runs (the checkpoint chosen on validation: its gain over the last
    point is the fall of :func:`rtlib.report.estimands.falls`, its cost the clean accuracy
    gained after it); ``interpolation``: :func:`interpolation_summary`; ``runs``: the runs from
    both upstream models (:func:`by_upstream`); ``form``: the paths' form
    (:data:`rtlib.interpolate.FORMS`); ``other_forms``: {form: the summary of the same paths in
    another form}, whose verdicts the interpolation claim shows as its other readings."""
    rs = rs or E.Resampler()
    cards = []
    if frame is not None and len(frame):
        pairs = E.falls(frame, metrics.ROBUST, rs=rs)
        helps = (pairs.drop_low > 0) & (pairs.clean_gain_high <= small_cost)
        fails = (pairs.drop_high < E.MIN_FALL) | (pairs.clean_gain_low > small_cost)
        cards.append(Verdict(
            "Choosing the checkpoint on the validation split recovers robust accuracy cheaply",
            "not studied by the paper",
            f"on {int(helps.sum())} of {len(pairs)} task x strategy pairs it recovers robust "
            f"accuracy at a clean cost of at most {small_cost:.0%}; on {int(fails.sum())} it "
            f"cannot; " + _on_average(len(pairs), pairs["drop"], pairs["clean_gain"]),
            majority(int(helps.sum()), int(fails.sum()), len(pairs)),
            f"per pair, the checkpoint with the best validation robust accuracy against the "
            f"last: it helps if the 95% interval of its test robust gain lies above 0 and that "
            f"of its clean cost below {small_cost:.0%}, it does not if the gain's interval lies "
            f"below {100 * E.MIN_FALL:.0f} points or the cost's above {small_cost:.0%}; holds "
            f"if more than half of the pairs are helped"))
    if interpolation is not None and len(interpolation):
        pairs, hits, outcome = _interpolation_pairs(interpolation, small_cost)
        wider = int((pairs["aupf_gain"] > 0).sum())
        readings = {PATH_FORM_LABELS[name]: _interpolation_pairs(other, small_cost)[2]
                    for name, other in (other_forms or {}).items()}
        cards.append(Verdict(
            "Interpolating the weights (probe to fine-tuned) beats both ends on robust accuracy "
            "at a small clean cost",
            "not studied by the paper (WiSE-FT reports it for distribution shift)",
            f"beats both ends in every seed on {int(hits.sum())} of {len(pairs)} task x "
            f"strategy pairs, in no seed on {int(pairs['no_seed'].sum())}; the path widens the "
            f"run's frontier (a larger AUPF than its checkpoints) on {wider} of {len(pairs)}",
            outcome,
            f"the coefficient is chosen by {metrics.describe(interpolation['by'].iloc[0])}; a "
            f"pair counts if it beats both ends on test robust accuracy in every seed at a "
            f"seed-mean clean cost of at most {small_cost:.0%}, against if it beats them in no "
            f"seed; holds if more than half of the pairs count (an interval over seeds only: "
            f"the paths keep no per-image masks of their ends' better choice)",
            {PATH_FORM_LABELS[form]: outcome, **readings} if readings else {}))
    if runs is not None and len(runs) and set(runs["upstream"]) >= {"standard", "robust"}:
        gain = E.end_difference(runs[runs.upstream == "robust"], runs[runs.upstream == "standard"],
                                metrics.ROBUST, rs)
        cost = E.end_difference(runs[runs.upstream == "standard"], runs[runs.upstream == "robust"],
                                metrics.TEST_ACC, rs)
        both = gain.merge(cost, on=["task", "strategy"], suffixes=("", "_cost"))
        helps = (both.low > 0) & (both.high_cost <= small_cost)
        fails = (both.high < 0) | (both.low_cost > small_cost)
        cards.append(Verdict(
            "A robust upstream model passes more robustness on, at a small clean cost",
            "not studied by the paper (its story: fine-tuning inherits, then exploits)",
            f"{int(helps.sum())} of {len(both)} task x strategy pairs end more robust at a clean "
            f"cost of at most {small_cost:.0%}, {int(fails.sum())} do not; "
            + _on_average(len(both), both["estimate"], both["estimate_cost"]),
            majority(int(helps.sum()), int(fails.sum()), len(both)),
            f"seed means of the last point, runs from both models scored on the same test "
            f"images: a pair counts if the 95% interval of its robust gain lies above 0 and "
            f"that of its clean cost below {small_cost:.0%}, against if the gain's lies below 0 "
            f"or the cost's above {small_cost:.0%}; holds if more than half of the pairs count"))
    return cards


def _on_average(pairs: int, gain: pd.Series, cost: pd.Series) -> str:
    """A remedy's mean effect over all its pairs, counted or not: robust gain, clean change."""
    return (f"over all {pairs}, robust accuracy changes by {signed(gain.mean())} and clean "
            f"accuracy by {signed(-cost.mean())} on average")


@dataclass
class Remedies:
    """What the remedies chapter starts from: the study's runs (``chapter``), the checkpoint
    each run would keep if chosen on validation (``selection``), the interpolation paths'
    rows (``paths``) and their summary (``interpolation``), the runs fine-tuned from the
    robust upstream model (``robust``: empty when none were asked for) and a status line."""

    chapter: Chapter
    selection: pd.DataFrame
    paths: pd.DataFrame
    interpolation: pd.DataFrame
    robust: pd.DataFrame
    status: str
    #: The paths' form, and {form: :func:`interpolation_summary`} of the same paths in the other
    #: form where the store holds all of them (the first study's first paths, issue 30).
    form: str = "update"
    other_forms: dict = field(default_factory=dict)

    def upstream_runs(self) -> pd.DataFrame:
        """The robust tasks' runs from both upstream models (:func:`by_upstream`); empty when
        no task was fine-tuned from the robust one."""
        if not len(self.robust):
            return self.robust.assign(upstream=pd.Series(dtype=str))
        return by_upstream(self.chapter.frame, self.robust)

    def upstream(self) -> pd.DataFrame | None:
        """:func:`upstream_comparison` of :meth:`upstream_runs`; None without robust runs."""
        return upstream_comparison(self.upstream_runs()) if len(self.robust) else None

    def verdicts(self) -> list[Verdict]:
        """The scorecard's "What helps" (:func:`what_helps`) for these remedies."""
        runs = self.upstream_runs() if len(self.robust) else None
        return what_helps(self.chapter.frame, self.interpolation, runs, form=self.form,
                          other_forms=self.other_forms)


def _serves(base: Chapter, tasks: Sequence[str], strategies: Sequence[str],
            seeds: Sequence[int] | None) -> bool:
    """Whether ``base`` holds the study's runs these remedies need: its plan's strategies are
    ``strategies`` (the linear probe among them), its tasks include ``tasks`` and its seeds
    are ``seeds`` (None: any, the preset's)."""
    if base.plan is None:
        return False
    main = base.plan.main
    return ({c.strategy for c in main} == set(strategies) and {c.task for c in main} >= set(tasks)
            and (seeds is None or {c.seed for c in main} == set(seeds)))


def compute(preset: str | None = None, tasks: Sequence[str] | None = None,
            strategies: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            alphas: Sequence[float] | None = None, robust_tasks: Sequence[str] | None = None,
            results_dir: str | Path | None = None, executor: str = "local",
            workers: int | None = None, progress: bool | str = "lines",
            base: Chapter | None = None, **overrides: Any) -> Remedies:
    """The one call the remedies chapter makes. The learning-rate sweep first (where the store
    lacks it), then every remedy is checked (:func:`rtlib.plan.remedies_plan`) before the study's
    runs (:func:`rtlib.report.study.chapter`: the linear probe is always among them, every path
    starts there), the interpolation paths between each run and its probe, and the runs
    fine-tuned from the robust upstream model on ``robust_tasks`` at the study's learning
    rates: computed only where the store lacks them. ``None``: the preset's
    (:func:`rtlib.config.preset_remedies`; ``robust_tasks=[]`` leaves the robust model out).
    ``base``: the study's runs a caller already has (:func:`rtlib.report.study.chapter` with
    the same arguments, e.g. the takeaways page's), not read from the store again when they
    include the linear probe.
    """
    from .. import interpolate, plan, sweep
    from ..config import book_preset, preset_store, preset_tasks
    from ..strategies import PAPER_STRATEGIES

    preset = book_preset(preset)
    strategies = list(strategies or PAPER_STRATEGIES)
    if "linear_probe" not in strategies:
        strategies.insert(0, "linear_probe")
    tasks = tasks or preset_tasks(preset)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    results_dir = results_dir or preset_store(preset)
    if base is not None and not _serves(base, tasks, strategies, seeds):
        base = None  # other runs than these remedies start from: load those
    if base is None:
        # The sweep first (where the store lacks it), then every remedy checked before any run.
        study_plan = plan.plan(preset, tasks, strategies, seeds, results_dir,
                               executor=executor, workers=workers, progress=progress,
                               **overrides)
        extra = plan.remedies_plan(study_plan, alphas, robust_tasks, **overrides)
        base = chapter(preset, tasks, strategies, seeds, results_dir=results_dir,
                       executor=executor, workers=workers, progress=progress,
                       study_plan=study_plan, **overrides)
    else:
        extra = plan.remedies_plan(base.plan, alphas, robust_tasks, **overrides)
    path_jobs, robust_configs = extra.paths, extra.robust
    path_summary = sweep.run(path_jobs, results_dir, executor=executor, workers=workers,
                             progress=progress, desc="interpolation paths")
    robust_summary = sweep.run(robust_configs, results_dir, executor=executor,
                               workers=workers, progress=progress, desc="robust upstream runs")
    alphas = path_jobs[0].alphas if path_jobs else ()
    robust_tasks = list(dict.fromkeys(c.task for c in robust_configs))
    paths = interpolate.load(results_dir, path_jobs)
    robust = (store.load(results_dir, robust_configs) if robust_configs
              else base.frame.iloc[:0])
    by = None if metrics.val_robust_columns(base.frame) else metrics.VAL_ACC
    selection = checkpoint_selection(base.frame, by=by)
    interpolation = interpolation_summary(paths, base.frame) if len(paths) else pd.DataFrame()
    form = path_jobs[0].form if path_jobs else "update"
    status = base.status + (
        f" Interpolation: {len(path_jobs)} paths of {len(alphas)} coefficients, "
        + ("the learned update scaled linearly for every strategy; " if form == "update" else
           "**each the trainable parameters' straight line**, which for LoRA, Adapter and "
           "Compacter is not a straight line in the update they learned (LoRA's is quadratic in "
           "the coefficient; the update form, every preset's, scales it linearly); ")
        + f"coefficients "
        f"({', '.join(f'{a:g}' for a in alphas)}), "
        f"{int((path_summary.status == 'done').sum())} computed now. Robust upstream model: "
        f"{len(robust_configs)} runs on {', '.join(robust_tasks) or 'no task'}, "
        f"{int((robust_summary.status == 'done').sum())} trained now."
    ) + failures(pd.concat([path_summary, robust_summary]), "paths or runs")
    return Remedies(base, selection, paths, interpolation, robust, status, form,
                    _other_forms(path_jobs, form, results_dir, base.frame))


def _other_forms(path_jobs: Sequence[Any], form: str, results_dir: str | Path,
                 frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{form: :func:`interpolation_summary`} of ``path_jobs`` (made in ``form``) in each other
    form whose paths differ and are all in the store (nothing is computed for them)."""
    from .. import interpolate, sweep

    out = {}
    for other in (f for f in interpolate.FORMS if f != form):
        jobs = [replace(job, form=other) for job in path_jobs]
        if (any(j.run_id() != k.run_id() for j, k in zip(jobs, path_jobs))
                and all(sweep.complete(j, results_dir) for j in jobs)):
            out[other] = interpolation_summary(interpolate.load(results_dir, jobs), frame)
    return out
