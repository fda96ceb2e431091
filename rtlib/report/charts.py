"""The book's charts: one function per figure kind, each returning an Altair chart.

Every chart has tooltips, and a legend that filters: click a strategy (or domain) in the legend
to highlight it, shift-click for several. Inputs are the tidy frames of :func:`rtlib.store.load`
and :func:`rtlib.report.estimands.aupf`.
"""
from __future__ import annotations

from typing import Any, Sequence

import altair as alt
import numpy as np
import pandas as pd

from .. import metrics, pareto
from ..strategies import ordered as strategy_order

WIDTH, HEIGHT = 470, 300
#: The book theme's content column at a 1280 px window (measured in Chromium): a chart, its axes
#: and legends included, must fit in it.
PAGE_WIDTH = 676


def _legend_filter(field: str, values: Sequence[str] | None = None):
    """A selection bound to the legend of ``field`` and the matching colour encoding."""
    sel = alt.selection_point(fields=[field], bind="legend")
    scale = alt.Scale(domain=list(values)) if values is not None else alt.Undefined
    # Solid swatches: the legend would otherwise take the faint opacity of a band layer.
    color = alt.Color(f"{field}:N", scale=scale, title=field,
                      legend=alt.Legend(symbolOpacity=1))
    opacity = alt.condition(sel, alt.value(1.0), alt.value(0.12))
    return sel, color, opacity


def _mean_over_seeds(frame: pd.DataFrame, cols: Sequence[str],
                     by: Sequence[str] = ("task", "strategy", "step")) -> pd.DataFrame:
    return frame.groupby(list(by), as_index=False)[list(cols)].mean()


def _step_axis(last_step: int, title: str | None = "fine-tuning step (symlog)") -> alt.X:
    """The fine-tuning step on a symlog axis (the schedule is dense early), ticked at 1-3-10
    steps up to ``last_step`` and labelled as whole numbers (Vega's SI format gives every
    tick the largest one's prefix: 20 became "0k")."""
    ticks = [t for t in (0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000)
             if t <= last_step]
    return alt.X("step:Q", scale=alt.Scale(type="symlog"), title=title,
                 axis=alt.Axis(values=ticks, format=",d"))


def _accuracy_domain(values: Sequence[float]) -> list[float]:
    """A y domain from 0 to just above the highest of ``values`` (rounded up to 0.05, at most
    1): robust accuracy on a far task stays under 0.15, where [0, 1] would flatten it."""
    return [0, min(1.0, float(np.ceil(np.nanmax(values) * 1.1 * 20) / 20))]


def trajectories(frame: pd.DataFrame, robust_cols: str | Sequence[str],
                 title: str | None = None) -> alt.Chart:
    """RQ1: clean test accuracy (top) and robust test accuracy at each budget of
    ``robust_cols`` (a panel each, below) against the step (symlog axis), per strategy, mean
    over seeds; with several seeds a band shows their range (lowest to highest); a diamond
    marks each strategy's robust peak.

    Each robust panel has its own scale (from 0 to a little above its highest value): on a far
    task robust accuracy lives between 0.02 and 0.14, where a fall of a third would be a few
    pixels on the clean panel's [0, 1].
    """
    robust_cols = [robust_cols] if isinstance(robust_cols, str) else list(robust_cols)
    cols = ["test_acc", *robust_cols]
    has_n = "test_n" in frame
    runs = _mean_over_seeds(frame, cols + (["test_n"] if has_n else []))
    long = runs.melt(id_vars=["task", "strategy", "step"] + (["test_n"] if has_n else []),
                     value_vars=cols, var_name="metric", value_name="accuracy")
    tooltip = ["strategy:N", "step:Q", alt.Tooltip("accuracy:Q", format=".3f")]
    if has_n:  # the evaluation subset's uncertainty, stated where the number is read
        lo, hi = pareto.wilson_interval(long["accuracy"], long["test_n"])
        long["ci95"] = [f"{a:.3f} to {b:.3f} ({n:.0f} images)"
                        for a, b, n in zip(lo, hi, long["test_n"])]
        tooltip.append(alt.Tooltip("ci95:N", title="95% interval"))
    order = strategy_order(long["strategy"])
    sel, color, opacity = _legend_filter("strategy", order)
    band = None
    if "seed" in frame and frame["seed"].nunique() > 1:
        per_seed = frame.melt(id_vars=["strategy", "step", "seed"], value_vars=cols,
                              var_name="metric", value_name="accuracy")
        band = per_seed.groupby(["strategy", "step", "metric"], as_index=False)["accuracy"].agg(
            low="min", high="max", seeds="count")
    panels = []
    for col in cols:
        values = [*long.loc[long.metric == col, "accuracy"],
                  *(band.loc[band.metric == col, "high"] if band is not None else [])]
        domain = [0, 1] if col == "test_acc" else _accuracy_domain(values)
        label = ("clean test accuracy" if col == "test_acc" else
                 f"robust test accuracy ({col.split('@')[-1]})")
        y = alt.Y("accuracy:Q", title=label, scale=alt.Scale(domain=domain))
        x = _step_axis(long["step"].max(), title="fine-tuning step (symlog)"
                       if col == cols[-1] else None)  # one title, under the lowest panel
        layers = [alt.Chart(long[long.metric == col]).mark_line(point=True).encode(
            x=x, y=y, color=color, opacity=opacity, tooltip=tooltip)]
        if band is not None:
            layers.insert(0, alt.Chart(band[band.metric == col]).mark_area(
                opacity=0.15).encode(
                x=x, y=alt.Y("low:Q", scale=alt.Scale(domain=domain)), y2="high:Q",
                color=color, opacity=alt.condition(sel, alt.value(0.18), alt.value(0.03)),
                tooltip=["strategy:N", "step:Q", "seeds:Q",
                         alt.Tooltip("low:Q", format=".3f", title="lowest seed"),
                         alt.Tooltip("high:Q", format=".3f", title="highest seed")]))
        if col != "test_acc":
            peaks = pareto.peak(runs.assign(seed=0), col, by=("task", "strategy", "seed"))
            layers.append(alt.Chart(peaks).mark_point(shape="diamond", size=160,
                                                      filled=True).encode(
                x="peak_step:Q", y="peak:Q", color=color, opacity=opacity,
                tooltip=["strategy:N", alt.Tooltip("peak_step:Q", title="robust peaks at step"),
                         alt.Tooltip("peak:Q", format=".3f", title="peak robust accuracy"),
                         alt.Tooltip("final:Q", format=".3f", title="final robust accuracy"),
                         alt.Tooltip("drop:Q", format=".3f", title="peak - final")]))
        panels.append(alt.layer(*layers).properties(width=WIDTH, height=HEIGHT * 0.5))
    panels[0] = panels[0].add_params(sel)
    budgets = ", ".join(c.split("@")[-1] for c in robust_cols)
    return alt.vconcat(*panels, spacing=8).properties(
        title=title or f"Clean and robust accuracy during fine-tuning ({budgets})")


def _staircase(front: pd.DataFrame) -> pd.DataFrame:
    """Vertices of f(x) = max{robust_i : clean_i >= x} from x = 0 to the last frontier point."""
    xs, ys, x_prev = [], [], 0.0
    for c, r in zip(front["clean"], front["robust"]):
        xs += [x_prev, c]
        ys += [r, r]
        x_prev = c
    return pd.DataFrame({"clean": xs, "robust": ys, "order": np.arange(len(xs))})


def _frontier_stairs(runs: pd.DataFrame, robust_col: str) -> pd.DataFrame:
    """Each strategy's Pareto frontier of its (seed-mean) checkpoints as staircase vertices
    (:func:`_staircase`; ``vertex`` marks the checkpoints themselves), with its AUPF."""
    stairs = []
    for strategy, g in runs.groupby("strategy"):
        s = _staircase(pareto.frontier(g["test_acc"], g[robust_col]))
        s["strategy"] = strategy
        s["aupf"] = pareto.aupf(g["test_acc"], g[robust_col])
        s["vertex"] = s["order"] % 2 == 1  # (previous x, r), then the checkpoint (c, r)
        stairs.append(s)
    return pd.concat(stairs)


def _frontiers(stairs: pd.DataFrame, x_scale: alt.Scale, y_scale: alt.Scale, color, opacity,
               stroke_width: float, aupf_title: str) -> alt.Chart:
    """The frontiers' staircases (:func:`_frontier_stairs`) as dotted lines, with each AUPF in
    the tooltip; clipped to the plot, whose scales are zoomed (:func:`_zoomed_scales`)."""
    return alt.Chart(stairs).mark_line(
        strokeWidth=stroke_width, strokeDash=[2, 2], clip=True).encode(
        x=alt.X("clean:Q", scale=x_scale), y=alt.Y("robust:Q", scale=y_scale),
        order="order:Q", color=color, opacity=opacity,
        tooltip=["strategy:N", alt.Tooltip("aupf:Q", format=".3f", title=aupf_title)])


def _zoom(values: Sequence[float], pad: float = 0.1) -> list[float]:
    """An axis domain around ``values`` (accuracies), ``pad`` of their range (at least half a
    point) either side, within [0, 1]."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    margin = max((hi - lo) * pad, 0.005)
    return [max(0.0, lo - margin), min(1.0, hi + margin)]


def _zoomed_scales(stairs: pd.DataFrame, clean: pd.Series, robust: pd.Series
                   ) -> tuple[alt.Scale, alt.Scale]:
    """The (clean, robust) plane's scales zoomed to the frontiers' checkpoints and the points
    (``clean``, ``robust``) a chart draws beside them: where strategies differ by a few points
    (the staircases start at clean 0, out of the picture)."""
    vertices = stairs[stairs["vertex"]]
    return (alt.Scale(domain=_zoom(pd.concat([clean, vertices["clean"]]))),
            alt.Scale(domain=_zoom(pd.concat([robust, vertices["robust"]]))))


def _plane(robust_col: str, x_scale: alt.Scale, y_scale: alt.Scale, tooltip: list
           ) -> dict[str, Any]:
    """The encodings of the robustness-accuracy plane (clean accuracy across, robust accuracy
    at ``robust_col``'s budget up), with ``tooltip`` followed by both accuracies."""
    return {"x": alt.X("test_acc:Q", title="clean accuracy", scale=x_scale),
            "y": alt.Y(f"{robust_col}:Q", scale=y_scale,
                       title=f"robust accuracy ({robust_col.split('@')[-1]})"),
            "tooltip": [*tooltip, alt.Tooltip("test_acc:Q", format=".3f", title="clean"),
                        alt.Tooltip(f"{robust_col}:Q", format=".3f", title="robust")]}


def frontier_path(frame: pd.DataFrame, robust_col: str, title: str | None = None) -> alt.Chart:
    """The path of each run in the (clean, robust) plane, with its Pareto frontier (staircase),
    zoomed to the frontiers' checkpoints and the runs' last points (where the strategies
    differ; the early steps enter from the lower left)."""
    runs = _mean_over_seeds(frame, ["test_acc", robust_col])
    order = strategy_order(runs["strategy"])
    sel, color, opacity = _legend_filter("strategy", order)
    stairs = _frontier_stairs(runs, robust_col)
    last = runs.sort_values("step").groupby("strategy").tail(1)
    x_scale, y_scale = _zoomed_scales(stairs, last["test_acc"], last[robust_col])
    path = alt.Chart(runs).mark_line(point=True, strokeWidth=1, clip=True).encode(
        **_plane(robust_col, x_scale, y_scale, ["strategy:N", "step:Q"]), order="step:Q",
        color=color, opacity=opacity)
    front = _frontiers(stairs, x_scale, y_scale, color, opacity, stroke_width=3,
                       aupf_title="AUPF")
    return (path + front).add_params(sel).properties(
        width=HEIGHT + 80, height=HEIGHT + 80,
        title=title or "Each run's path (thin) and its Pareto frontier (dotted)")


def _invisible_legend(base: alt.Chart, field: str, order: list[str]) -> alt.Chart:
    """A layer that draws nothing but a clickable legend of ``field`` (heat maps have none)."""
    return base.mark_point(opacity=0).encode(
        shape=alt.Shape(f"{field}:N", sort=order, title=field,
                        legend=alt.Legend(symbolOpacity=1)))


def aupf_heatmap(table: pd.DataFrame, title: str | None = None,
                 task_order: Sequence[str] | None = None) -> alt.Chart:
    """Relative AUPF per strategy (rows) and task (columns, in ``task_order``) on a diverging
    scale (blue above the task's mean, red below: which strategy balances best on a task, not
    which task is hard), labelled with AUPF and the relative AUPF; the 95% intervals on hover
    (``table``: :func:`rtlib.report.estimands.aupf`'s table)."""
    t = table.copy()
    tasks = list(task_order) if task_order is not None else sorted(t["task"].unique())
    t["label"] = [f"{a:.3f} ({r:+.0%})" for a, r in zip(t["aupf"], t["relative"])]
    order = strategy_order(t["strategy"])
    base = alt.Chart(t).encode(
        x=alt.X("task:N", title="task", sort=tasks),
        y=alt.Y("strategy:N", sort=order, title="strategy"))
    reach = float(max(t["relative"].abs().max(), 0.01))
    cells = base.mark_rect().encode(
        color=alt.Color("relative:Q", title="vs task mean",
                        scale=alt.Scale(scheme="redblue", domain=[-reach, reach]),
                        legend=alt.Legend(format="+.0%")),
        tooltip=["task:N", "strategy:N", alt.Tooltip("aupf:Q", format=".3f"),
                 alt.Tooltip("aupf_low:Q", format=".3f", title="AUPF 95% from"),
                 alt.Tooltip("aupf_high:Q", format=".3f", title="AUPF 95% to"),
                 alt.Tooltip("relative:Q", format="+.1%", title="vs mean of strategies"),
                 alt.Tooltip("relative_low:Q", format="+.1%", title="vs mean, 95% from"),
                 alt.Tooltip("relative_high:Q", format="+.1%", title="vs mean, 95% to")])
    text = base.mark_text(fontSize=11).encode(
        text="label:N",  # dark text on the pale middle of the scale, light on its strong ends
        color=alt.condition(f"abs(datum.relative) > {0.6 * reach}", alt.value("white"),
                            alt.value("black")))
    return (cells + text).properties(
        width=max(120, 110 * t["task"].nunique()), height=30 * len(order),
        title=title or "Relative AUPF: how far each strategy is above its task's mean")


def ood_scatter(frame: pd.DataFrame, title: str | None = None) -> alt.Chart:
    """RQ3: accuracy on each OOD domain against in-domain accuracy, with the correlation."""
    ood_cols = metrics.ood_columns(frame)
    long = frame.melt(id_vars=["task", "strategy", "seed", "step", "test_acc"],
                      value_vars=ood_cols, var_name="domain", value_name="ood_acc")
    long["domain"] = long["domain"].str.split("@").str[1]
    corr = long.groupby("domain").apply(
        lambda g: g["test_acc"].corr(g["ood_acc"]), include_groups=False)
    long["domain_r"] = [f"{d} (r = {corr[d]:.2f})" for d in long["domain"]]
    sel, color, opacity = _legend_filter("domain_r")
    color = alt.Color("domain_r:N", title="OOD domain (Pearson r)")
    # Either legend singles out its entries: a domain, a strategy, or both.
    by_strategy = alt.selection_point(fields=["strategy"], bind="legend")
    points = alt.Chart(long).mark_point(filled=True, size=40).encode(
        x=alt.X("test_acc:Q", title="in-domain test accuracy", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("ood_acc:Q", title="OOD accuracy", scale=alt.Scale(domain=[0, 1])),
        color=color, opacity=alt.condition(sel & by_strategy, alt.value(1.0), alt.value(0.12)),
        shape=alt.Shape("strategy:N", title="strategy", sort=strategy_order(long["strategy"])),
        tooltip=["domain:N", "strategy:N", "step:Q",
                 alt.Tooltip("test_acc:Q", format=".3f", title="in-domain"),
                 alt.Tooltip("ood_acc:Q", format=".3f", title="OOD")])
    fits = alt.Chart(long).transform_regression(
        "test_acc", "ood_acc", groupby=["domain_r"]).mark_line().encode(
        x="test_acc:Q", y="ood_acc:Q", color=color, opacity=opacity)
    diagonal = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(
        color="gray", strokeDash=[4, 4]).encode(x="x:Q", y="y:Q")
    # Both selections on the points (the view with both legends): Altair would put a layer's
    # parameters on its first layer, the diagonal, which no legend binds.
    return (diagonal + points.add_params(sel, by_strategy) + fits).properties(
        width=HEIGHT + 80, height=HEIGHT + 80,
        title=title or "OOD accuracy against in-domain accuracy over fine-tuning")


def paper_vs_ours(ours: pd.DataFrame, paper: pd.DataFrame, title: str | None = None,
                  task_order: Sequence[str] | None = None) -> alt.Chart:
    """Relative AUPF per strategy: our tasks first (in ``task_order``, nearest first), then
    the paper's datasets; within the page's width (:data:`PAGE_WIDTH`).

    ``ours``: the table of :func:`rtlib.report.estimands.aupf`; ``paper``:
    :func:`rtlib.paper.aupf_frame`.
    """
    if task_order is not None:
        ours = ours.assign(_k=ours["task"].map({t: i for i, t in enumerate(task_order)})
                           ).sort_values("_k", kind="stable").drop(columns="_k")
    # With several readings of the paper's table (rtlib.paper.READINGS), each is its own column.
    label = (paper["reading"] + ": " if "reading" in paper and paper["reading"].nunique() > 1
             else "") + paper["dataset"]
    a = paper.assign(setting="paper: " + label, source="paper")
    b = ours.assign(setting="ours: " + ours["task"], source="ours")
    both = pd.concat([b[["setting", "source", "strategy", "aupf", "relative"]],
                      a[["setting", "source", "strategy", "aupf", "relative"]]])
    both["label"] = [f"{r:+.0%}" for r in both["relative"]]
    order = strategy_order(both["strategy"])
    sel = alt.selection_point(fields=["source"], bind="legend")
    base = alt.Chart(both).encode(
        x=alt.X("setting:N", sort=list(dict.fromkeys(both["setting"])), title=None,
                axis=alt.Axis(labelAngle=-45, labelLimit=160)),
        y=alt.Y("strategy:N", sort=order))
    cells = base.mark_rect().encode(
        color=alt.Color("relative:Q", title="AUPF vs mean",
                        scale=alt.Scale(scheme="redblue", domainMid=0)),
        opacity=alt.condition(sel, alt.value(1.0), alt.value(0.25)),
        tooltip=["setting:N", "strategy:N", alt.Tooltip("aupf:Q", format=".3f"),
                 alt.Tooltip("relative:Q", format="+.1%")])
    text = base.mark_text(fontSize=9).encode(text="label:N")
    legend = _invisible_legend(base, "source", ["ours", "paper"])
    # The page's column less the strategy axis and the legends (about 200 px).
    width = min(62 * both["setting"].nunique(), PAGE_WIDTH - 240)
    return (cells + text + legend.add_params(sel)).properties(
        width=width, height=30 * len(order),
        title=title or "Which strategies balance best: the paper's datasets and our tasks")


def upstream_curve(curve: pd.DataFrame, final_accuracy: float | None = None,
                   title: str | None = None) -> alt.Chart:
    """The upstream model's test accuracy over its pre-training steps, one colour per stage
    (``curve``: :func:`rtlib.pretrain.learning_curve`), with its final accuracy as a rule."""
    curve = curve.assign(stage=curve["stage"].map(lambda k: f"stage {k}"))
    line = alt.Chart(curve).mark_line(point=True).encode(
        x=alt.X("step:Q", title="pre-training step"),
        y=alt.Y("accuracy:Q", title="upstream test accuracy (2,048 images)",
                scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("stage:N", title="stage"),
        tooltip=["stage:N", "step:Q", alt.Tooltip("accuracy:Q", format=".3f"),
                 alt.Tooltip("loss:Q", format=".3f", title="training loss")])
    layers = [line]
    if final_accuracy is not None:
        layers.append(alt.Chart(pd.DataFrame({"y": [final_accuracy]})).mark_rule(
            strokeDash=[4, 4]).encode(y="y:Q", tooltip=[alt.Tooltip(
                "y:Q", format=".3f", title="final accuracy (whole test set)")]))
    return alt.layer(*layers).properties(
        width=WIDTH, height=HEIGHT, title=title or "Pre-training the upstream model")


def upstream_curves(curves: pd.DataFrame, title: str | None = None) -> alt.Chart:
    """Several upstream models' test accuracy over their pre-training steps, a line per model
    (``curves``: :func:`rtlib.pretrain.learning_curve` frames with a ``model`` column); a model
    made in stages runs on from where its first stage ended."""
    sel, color, opacity = _legend_filter("model")
    return alt.Chart(curves).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("step:Q", title="pre-training step (all stages)"),
        y=alt.Y("accuracy:Q", title="upstream test accuracy (2,048 images)",
                scale=alt.Scale(domain=[0, 1])),
        color=color, opacity=opacity,
        tooltip=["model:N", "stage:Q", "step:Q", alt.Tooltip("accuracy:Q", format=".3f")]
    ).add_params(sel).properties(width=WIDTH, height=HEIGHT,
                                 title=title or "Pre-training the upstream models")


def selection_gains(selection: pd.DataFrame, title: str | None = None,
                    tasks: Sequence[str] | None = None) -> alt.Chart:
    """Remedies: what choosing the checkpoint on validation gains in test robust accuracy and
    costs in test clean accuracy, per strategy (points: the mean over seeds; bars: the lowest
    to the highest seed), one row per task (in the order of ``tasks``, e.g. nearest to
    farthest; None: alphabetical) and a column per measure."""
    long = selection.melt(id_vars=["task", "strategy", "seed"], value_vars=["gain", "cost"],
                          var_name="measure", value_name="value")
    names = {"gain": "test robust gained (picked - last)",
             "cost": "test clean given up (last - picked)"}
    long["measure"] = long["measure"].map(names)
    summary = long.groupby(["task", "strategy", "measure"], as_index=False)["value"].agg(
        mean="mean", low="min", high="max", seeds="count")
    order = strategy_order(summary["strategy"])
    sel, color, opacity = _legend_filter("strategy", order)
    x = alt.X("strategy:N", sort=order, title=None, axis=alt.Axis(labelAngle=-40))
    base = alt.Chart(summary)
    bars = base.mark_rule(strokeWidth=2).encode(x=x, y="low:Q", y2="high:Q", color=color,
                                                opacity=opacity)
    points = base.mark_point(filled=True, size=70).encode(
        x=x, y=alt.Y("mean:Q", title=None, axis=alt.Axis(format="+.2~%")),  # the row says
        color=color, opacity=opacity,
        tooltip=["task:N", "strategy:N", "measure:N", "seeds:Q",
                 alt.Tooltip("mean:Q", format="+.3f", title="mean over seeds"),
                 alt.Tooltip("low:Q", format="+.3f", title="lowest seed"),
                 alt.Tooltip("high:Q", format="+.3f", title="highest seed")])
    zero = base.mark_rule(color="grey", strokeDash=[3, 3]).encode(y=alt.datum(0))
    # The selection on the points, whose colour is the strategy legend's: Altair puts a
    # layer's parameters on its first layer, and a legend binds only a view that encodes it.
    return alt.layer(zero, bars, points.add_params(sel)).properties(
        # a column per measure, each with its own y axis (about 60 px); the task names and the
        # legend take about 170 px: together they fit the page at any number of tasks
        width=(PAGE_WIDTH - 170) // len(names) - 60, height=110).facet(
        column=alt.Column("measure:N", title=None, sort=list(names.values())),
        row=alt.Row("task:N", title=None, sort=list(tasks) if tasks else "ascending")
    ).resolve_scale(y="independent").properties(
        title=title or f"Choosing the checkpoint by {metrics.describe(selection['by'].iloc[0])}")


def interpolation_paths(paths: pd.DataFrame, frame: pd.DataFrame, robust_col: str,
                        title: str | None = None) -> alt.Chart:
    """Remedies: each strategy's interpolation path (solid, from the linear probe at alpha 0 to
    the fine-tuned model at 1; mean over seeds) beside its training-time Pareto frontier
    (dotted staircase of its checkpoints, mean over seeds), in the (clean, robust) plane."""
    from ..interpolate import ALPHA

    mixed = paths.groupby(["strategy", ALPHA], as_index=False)[["test_acc", robust_col]].mean()
    runs = _mean_over_seeds(frame, ["test_acc", robust_col])  # the probe's frontier included
    order = strategy_order(runs["strategy"])  # the colours of the book's other charts
    sel, color, opacity = _legend_filter("strategy", order)
    # Zoomed to the paths and the frontiers: a path's difference is a few points of accuracy.
    stairs = _frontier_stairs(runs, robust_col)
    x_scale, y_scale = _zoomed_scales(stairs, mixed["test_acc"], mixed[robust_col])
    line = alt.Chart(mixed).mark_line(point=alt.OverlayMarkDef(size=50), strokeWidth=2.5,
                                      clip=True).encode(
        **_plane(robust_col, x_scale, y_scale,
                 ["strategy:N", alt.Tooltip(f"{ALPHA}:Q", title="mixing coefficient")]),
        order=f"{ALPHA}:Q", color=color, opacity=opacity)
    front = _frontiers(stairs, x_scale, y_scale, color, opacity, stroke_width=1.5,
                       aupf_title="AUPF of checkpoints")
    return (front + line).add_params(sel).properties(
        width=HEIGHT + 80, height=HEIGHT + 80,
        title=title or "Interpolation paths (solid) and training-time frontiers (dotted)")


def by_upstream(frame: pd.DataFrame, robust_col: str, title: str | None = None) -> alt.Chart:
    """Remedies: robust test accuracy during fine-tuning from each upstream model (``upstream``
    column: solid the standard one, dashed the robust one), per strategy; mean over seeds, with
    the range over seeds as a band when there are several; the y axis from 0 to just above
    the highest value."""
    runs = frame.groupby(["upstream", "strategy", "step"], as_index=False)[robust_col].agg(
        mean="mean", low="min", high="max", seeds="count")
    order = strategy_order(runs["strategy"])
    sel, color, opacity = _legend_filter("strategy", order)
    x = _step_axis(runs["step"].max())
    dash = alt.StrokeDash("upstream:N", sort=["standard", "robust"], title="upstream model")
    lines = alt.Chart(runs).mark_line(point=True).encode(
        x=x, y=alt.Y("mean:Q", title=f"robust accuracy ({robust_col.split('@')[-1]})",
                     scale=alt.Scale(domain=_accuracy_domain(runs["high"]))),
        color=color, strokeDash=dash, opacity=opacity, detail="upstream:N",
        tooltip=["strategy:N", "upstream:N", "step:Q", "seeds:Q",
                 alt.Tooltip("mean:Q", format=".3f", title="mean over seeds")])
    layers = [lines]
    if runs["seeds"].max() > 1:
        layers.insert(0, alt.Chart(runs).mark_area(opacity=0.12).encode(
            x=x, y="low:Q", y2="high:Q", color=color, detail="upstream:N",
            opacity=alt.condition(sel, alt.value(0.15), alt.value(0.03))))
    return alt.layer(*layers).add_params(sel).properties(
        width=WIDTH, height=HEIGHT,
        title=title or "Robust accuracy from the standard and the robust upstream model")
