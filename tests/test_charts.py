"""Every chart validates, encodes what it claims, and renders to SVG."""
import json

import numpy as np
import pandas as pd
import pytest
import vl_convert as vlc

from rtlib import pareto
from rtlib.report import charts, paper

ROBUST = "robust_acc@2/255"


@pytest.fixture(scope="module")
def frame():
    """Synthetic runs: clean rises; robust rises, peaks early, then falls (strategy-dependent)."""
    rng = np.random.default_rng(0)
    rows = []
    steps = [0, 10, 20, 40, 80, 160, 320]
    for task in ("digits", "fonts"):
        for k, strategy in enumerate(["full", "linear_probe", "bitfit", "lora"]):
            for seed in (0, 1):
                for step in steps:
                    clean = 0.1 + 0.8 * (1 - np.exp(-step / (40 + 20 * k)))
                    robust = clean * (0.7 - 0.3 * step / 320 * (k == 0)) + rng.normal(0, 0.01)
                    rows.append({"task": task, "strategy": strategy, "seed": seed, "step": step,
                                 "test_acc": clean, ROBUST: float(np.clip(robust, 0, clean)),
                                 "ood_acc@outline": clean * 0.8, "ood_acc@clutter": clean * 0.5,
                                 "test_n": 512})
    return pd.DataFrame(rows)


def _fields(spec):
    """Every field name an encoding in the spec refers to."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            if "field" in node and isinstance(node["field"], str):
                found.add(node["field"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return found


def _check(chart, fields, legend=True):
    spec = chart.to_dict(validate=True)
    assert fields <= _fields(spec), fields - _fields(spec)
    if legend:
        assert any(p.get("bind") == "legend" for p in spec.get("params", [])), "legend filter"
    assert "tooltip" in json.dumps(spec)
    svg = vlc.vegalite_to_svg(json.dumps(spec))
    assert svg.startswith("<svg") and "<path" in svg
    return spec


def test_trajectories(frame):
    spec = _check(charts.trajectories(frame[frame.task == "fonts"], ROBUST),
                  {"step", "accuracy", "strategy", "peak_step", "peak", "ci95"})
    # The tooltip states the evaluation subset's 95% interval (512 images: about +-4 points).
    intervals = [v["ci95"] for rows in spec["datasets"].values() for v in rows if "ci95" in v]
    assert intervals and all(i.endswith("(512 images)") for i in intervals)


def test_trajectories_give_robust_accuracy_its_own_scale(frame):
    """On a far task robust accuracy lives near 0: its panel is zoomed to its values (bands
    included), so a fall of a third is not a few pixels on [0, 1]; clean keeps [0, 1]."""
    far = frame[frame.task == "fonts"].assign(**{ROBUST: lambda f: f[ROBUST] * 0.2})
    spec = charts.trajectories(far, ROBUST).to_dict(validate=True)
    clean, robust = spec["vconcat"]
    # A panel per budget, each on its own scale
    both = far.assign(**{"robust_acc@4/255": far[ROBUST] * 0.3})
    two = charts.trajectories(both, [ROBUST, "robust_acc@4/255"]).to_dict(validate=True)
    assert len(two["vconcat"]) == 3
    tops = [[layer["encoding"]["y"]["scale"]["domain"][1] for layer in panel["layer"]
             if "scale" in layer["encoding"]["y"]][0] for panel in two["vconcat"]]
    assert tops[0] == 1 and tops[2] < tops[1] <= 0.2
    domains = [layer["encoding"]["y"]["scale"]["domain"] for layer in robust["layer"]
               if "scale" in layer["encoding"]["y"]]
    assert clean["layer"][-1]["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert domains and all(d == domains[0] for d in domains)
    lo, hi = domains[0]
    assert lo == 0 and far[ROBUST].max() <= hi <= 0.2
    assert any("robust" in str(layer["encoding"]["y"].get("title")) for layer in robust["layer"])
    # The robust upstream comparison reads robust accuracy alone: zoomed the same way
    spec = charts.by_upstream(far.assign(upstream="standard"), ROBUST).to_dict(validate=True)
    lines = [layer for layer in spec["layer"] if layer["mark"]["type"] == "line"][0]
    assert lines["encoding"]["y"]["scale"]["domain"][1] <= 0.2


def test_step_axis_labels_read_as_steps(frame):
    """A 1,000-step run's axis reads 0, 1, 3, 10, ... 1,000 (Vega's SI format once labelled
    every tick with the largest one's prefix: "0k" for 10)."""
    import re

    long_run = frame.assign(step=frame["step"] * 1000 // 320)
    for chart in (charts.trajectories(long_run, ROBUST),
                  charts.by_upstream(long_run.assign(upstream="standard"), ROBUST)):
        svg = vlc.vegalite_to_svg(json.dumps(chart.to_dict(validate=True)))
        labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
        ticks = ["0", "1", "3", "10", "30", "100", "300", "1,000"]
        assert all(t in labels for t in ticks), labels
        assert not any(label.endswith("k") for label in labels), labels


def test_frontier_path(frame):
    fonts = frame[frame.task == "fonts"]
    spec = _check(charts.frontier_path(fonts, ROBUST),
                  {"test_acc", ROBUST, "strategy", "step", "clean", "robust", "aupf"})
    # Zoomed to the frontiers and the last points (shared by both layers), not [0, 1]: at the
    # study's scale every strategy ends within a few points of clean accuracy 1.
    path, front = (layer["encoding"] for layer in spec["layer"])
    lo, hi = path["x"]["scale"]["domain"]
    last = fonts[fonts.step == fonts.step.max()]["test_acc"]
    assert 0 < lo <= last.min() and last.max() <= hi and front["x"]["scale"]["domain"] == [lo, hi]


def test_aupf_heatmap(frame):
    """Relative AUPF on a diverging scale centred on 0 (the rows are the strategies: no
    legend to filter them), the intervals on hover."""
    from rtlib.report import estimands

    table = estimands.aupf(frame, ROBUST, rs=estimands.Resampler(n_boot=50)).table
    spec = _check(charts.aupf_heatmap(table), {"task", "strategy", "aupf", "label", "relative",
                                               "relative_low", "aupf_high"}, legend=False)
    colour = spec["layer"][0]["encoding"]["color"]
    assert colour["field"] == "relative" and colour["scale"]["scheme"] == "redblue"
    low, high = colour["scale"]["domain"]
    assert low == -high and high > 0


def test_ood_scatter(frame):
    spec = _check(charts.ood_scatter(frame), {"test_acc", "ood_acc", "domain_r", "strategy"})
    assert "outline (r = 1.00)" in json.dumps(spec)


def test_paper_vs_ours(frame):
    from rtlib.report import estimands

    table = estimands.aupf(frame, ROBUST, rs=estimands.Resampler(n_boot=50)).table
    spec = _check(charts.paper_vs_ours(table, paper.aupf_frame()),
                  {"setting", "strategy", "relative", "source"})
    text = json.dumps(spec)
    assert "paper: CIFAR-10" in text and "ours: fonts" in text


def _params(spec):
    """The chart's params, wherever Vega-Lite keeps them (top level, or a facet's spec)."""
    return spec.get("params", []) + spec.get("spec", {}).get("params", [])


def test_selection_gains(frame):
    from rtlib import metrics
    from rtlib.report import remedies

    frame = frame.assign(run_id=frame["task"] + frame["strategy"] + frame["seed"].astype(str),
                         **{metrics.VAL_ACC: frame["test_acc"]}).rename(
        columns={ROBUST: metrics.ROBUST})
    selection = remedies.checkpoint_selection(frame, by=metrics.ROBUST)
    spec = charts.selection_gains(selection).to_dict(validate=True)
    assert {"strategy", "mean", "low", "high", "measure", "task"} <= _fields(spec)
    assert any(p.get("bind") == "legend" for p in _params(spec))
    svg = vlc.vegalite_to_svg(json.dumps(spec))
    assert svg.startswith("<svg") and "robust gained" in svg and "clean given up" in svg
    assert spec["resolve"]["scale"]["y"] == "independent"  # gains and costs differ in size
    tasks = sorted(selection["task"].unique(), reverse=True)  # e.g. nearest to farthest
    ordered = charts.selection_gains(selection, tasks=tasks).to_dict(validate=True)
    assert ordered["facet"]["row"]["sort"] == tasks and len(tasks) > 1  # a row per task


def test_interpolation_paths(frame):
    fonts = frame[frame.task == "fonts"]
    ends = fonts[fonts.step == fonts.step.max()]
    paths = pd.concat([ends.assign(alpha=a, test_acc=ends["test_acc"] * (0.5 + a / 2))
                       for a in (0.0, 0.5, 1.0)])
    spec = _check(charts.interpolation_paths(paths, fonts, ROBUST),
                  {"test_acc", ROBUST, "alpha", "strategy", "clean", "robust", "aupf"})
    # Zoomed to the paths and the frontiers' checkpoints, not to the staircases' start at
    # clean 0 (which squeezed a near task's paths against the right edge).
    path_layer = spec["layer"][1]["encoding"]
    lo, hi = path_layer["x"]["scale"]["domain"]
    assert 0 < lo <= paths["test_acc"].min() and hi >= paths["test_acc"].max(), (lo, hi)
    assert spec["layer"][0]["encoding"]["x"]["scale"]["domain"] == [lo, hi]


def test_by_upstream(frame):
    both = pd.concat([frame.assign(upstream="standard"),
                      frame.assign(upstream="robust", **{ROBUST: frame[ROBUST] + 0.1})])
    spec = _check(charts.by_upstream(both[both.task == "fonts"], ROBUST),
                  {"step", "mean", "upstream", "strategy", "low", "high"})
    assert "upstream model" in json.dumps(spec)
