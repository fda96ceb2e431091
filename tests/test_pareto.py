"""Frontiers and AUPF on point sets worked out by hand."""
import warnings

import numpy as np
import pandas as pd
import pytest

from rtlib import pareto
from rtlib.report import study


def fr(clean, robust):
    f = pareto.frontier(clean, robust)
    return list(zip(f["clean"].round(6), f["robust"].round(6)))


def test_frontier_of_a_small_cloud():
    clean = [0.5, 0.9, 0.7, 0.6, 0.8]
    robust = [0.4, 0.1, 0.3, 0.2, 0.3]
    # (0.6, 0.2) is dominated by (0.7, 0.3); (0.7, 0.3) is dominated by (0.8, 0.3).
    assert fr(clean, robust) == [(0.5, 0.4), (0.8, 0.3), (0.9, 0.1)]
    # area: 0.5*0.4 + (0.8-0.5)*0.3 + (0.9-0.8)*0.1 = 0.2 + 0.09 + 0.01
    assert pareto.aupf(clean, robust) == pytest.approx(0.30)


def test_unsorted_input_gives_the_same_answer_and_indices_point_back():
    clean = np.array([0.9, 0.5, 0.8])
    robust = np.array([0.1, 0.4, 0.3])
    f = pareto.frontier(clean, robust)
    assert f["clean"].tolist() == [0.5, 0.8, 0.9]
    assert f["index"].tolist() == [1, 2, 0]
    perm = [2, 0, 1]
    assert pareto.aupf(clean[perm], robust[perm]) == pareto.aupf(clean, robust)


def test_ties():
    # Exact duplicates appear once; equal clean keeps the better robust; equal robust keeps
    # the better clean.
    assert fr([0.5, 0.5, 0.5], [0.2, 0.2, 0.1]) == [(0.5, 0.2)]
    assert fr([0.4, 0.6], [0.3, 0.3]) == [(0.6, 0.3)]
    assert pareto.aupf([0.4, 0.6], [0.3, 0.3]) == pytest.approx(0.18)


def test_single_point_is_a_rectangle():
    assert fr([0.7], [0.2]) == [(0.7, 0.2)]
    assert pareto.aupf([0.7], [0.2]) == pytest.approx(0.14)
    assert np.isnan(pareto.steepness([0.7], [0.2]))


def test_points_at_zero_and_one():
    assert pareto.aupf([1.0], [1.0]) == 1.0
    assert pareto.aupf([0.0], [1.0]) == 0.0  # reaches no clean accuracy above 0
    assert pareto.aupf([1.0, 0.3], [0.0, 0.0]) == 0.0
    assert pareto.aupf([0.0, 1.0], [1.0, 0.5]) == pytest.approx(0.5)
    assert pareto.aupf([], []) == 0.0


def test_all_points_dominated_by_one():
    clean = [0.2, 0.3, 0.9, 0.5]
    robust = [0.1, 0.2, 0.6, 0.4]
    assert fr(clean, robust) == [(0.9, 0.6)]
    assert pareto.aupf(clean, robust) == pytest.approx(0.54)


def test_aupf_matches_a_numerical_integral():
    rng = np.random.default_rng(0)
    clean, robust = rng.uniform(0, 1, 30), rng.uniform(0, 1, 30)
    xs = np.linspace(0, 1, 200_001)[1:]
    f = [robust[clean >= x].max() if (clean >= x).any() else 0.0 for x in xs[::100]]
    assert pareto.aupf(clean, robust) == pytest.approx(np.mean(f), abs=2e-3)


@pytest.mark.parametrize("clean,robust,match", [
    ([0.5, np.nan], [0.1, 0.2], "clean accuracy contains NaN"),
    ([0.5, 0.6], [0.1, np.nan], "robust accuracy contains NaN"),
    ([1.2], [0.1], r"clean accuracy 1\.2 is outside \[0, 1\]"),
    ([0.5], [-0.1], r"robust accuracy -0\.1 is outside \[0, 1\]"),
    ([0.5, 0.6], [0.1], "same length"),
])
def test_bad_values_are_rejected(clean, robust, match):
    with pytest.raises(ValueError, match=match):
        pareto.aupf(clean, robust)


def test_steepness():
    assert pareto.steepness([0.2, 0.8], [0.5, 0.2]) == pytest.approx(0.5)
    assert pareto.steepness([0.2, 0.8, 0.5], [0.5, 0.5, 0.5]) != pareto.steepness(
        [0.2, 0.8], [0.5, 0.1])


def _frame(seeds=(0,)):
    rows = []
    for task, scale in (("near", 1.0), ("far", 0.5)):
        for strategy, r in (("full", 0.3), ("bitfit", 0.5), ("lora", 0.4)):
            for seed in seeds:
                for step, c in zip((0, 10, 100), (0.1, 0.6, 0.9)):
                    rows.append({"task": task, "strategy": strategy, "seed": seed, "step": step,
                                 "test_acc": c * scale, "robust_acc@1/255": r * c * scale
                                 * (1 + 0.01 * seed), "test_n": 500})
    return pd.DataFrame(rows)


def test_aupf_table_relative_and_binomial_interval():
    table = pareto.aupf_table(_frame(), "robust_acc@1/255", n_boot=200)
    assert len(table) == 6
    for task, g in table.groupby("task"):
        assert g["relative"].mean() == pytest.approx(0.0, abs=1e-12)
        best = g.set_index("strategy")["relative"]
        assert best["bitfit"] > best["lora"] > best["full"]
    assert (table["ci_low"] <= table["aupf"] + 1e-9).all()
    assert (table["aupf"] <= table["ci_high"] + 1e-9).all()
    assert (table["ci_high"] > table["ci_low"]).all()
    assert table["ci_method"].str.startswith("binomial").all()
    near_full = table.set_index(["task", "strategy"]).loc[("near", "full"), "aupf"]
    assert near_full == pytest.approx(pareto.aupf([0.1, 0.6, 0.9], [0.03, 0.18, 0.27]))


def test_aupf_table_over_seeds():
    table = pareto.aupf_table(_frame(seeds=(0, 1, 2)), "robust_acc@1/255", n_boot=200)
    assert (table["seeds"] == 3).all()
    assert table["ci_method"].str.startswith("seeds").all()


def test_peak():
    frame = pd.DataFrame({"task": "t", "strategy": "s", "seed": 0, "step": [0, 10, 20, 30],
                          "r": [0.1, 0.5, 0.4, 0.3]})
    p = pareto.peak(frame, "r").iloc[0]
    assert (p["peak_step"], p["peak"], p["final"]) == (10, 0.5, 0.3)
    assert p["drop"] == pytest.approx(0.2)


def test_wilson_interval_matches_hand_computed_values():
    from rtlib.pareto import wilson_interval

    lo, hi = wilson_interval([0.5, 0.0, 1.0], [256, 256, 256])
    # p = 0.5, n = 256: centre 0.5, half-width 1.96 sqrt(1/1024 + 1.96^2/(4 * 256^2)) / (1 + 1.96^2/256)
    assert lo[0] == pytest.approx(0.5 - 0.060796, abs=1e-5)
    assert hi[0] == pytest.approx(0.5 + 0.060796, abs=1e-5)
    # p = 0: [0, z^2/n / (1 + z^2/n)]; p = 1 mirrors it
    assert lo[1] == 0 and hi[1] == pytest.approx(0.014784, abs=1e-5)
    assert hi[2] == 1 and lo[2] == pytest.approx(1 - 0.014784, abs=1e-5)
    narrow = wilson_interval(0.5, 2000)
    assert narrow[1] - narrow[0] < hi[0] - lo[0]  # more images, tighter interval


def test_trapezoid_reading_integrates_the_frontier_over_its_own_span():
    from rtlib.pareto import aupf_trapezoid

    # Frontier (0.5, 0.4) -> (0.9, 0.2); the dominated (0.4, 0.1) is ignored.
    assert aupf_trapezoid([0.5, 0.9, 0.4], [0.4, 0.2, 0.1]) == pytest.approx(0.4 * 0.3)
    assert aupf_trapezoid([0.7], [0.5]) == 0.0  # one point: no span
    # The staircase reading counts from clean accuracy 0 instead.
    assert pareto.aupf([0.5, 0.9], [0.4, 0.2]) == pytest.approx(0.5 * 0.4 + 0.4 * 0.2)


def test_ranking_sensitivity_reports_a_flip_between_readings():
    # Strategy a: one point far right (staircase large, trapezoid 0); b: a long sloped frontier.
    rows = [("t", "a", 0, 0.9, 0.3), ("t", "b", 0, 0.3, 0.6), ("t", "b", 0, 0.8, 0.1)]
    frame = pd.DataFrame(rows, columns=["task", "strategy", "seed", "test_acc", "robust_acc"])
    table = pareto.ranking_sensitivity(frame, "robust_acc")
    a, b = (table.set_index("strategy").loc[s] for s in "ab")
    assert a.aupf_staircase == pytest.approx(0.27) and a.aupf_trapezoid == 0
    assert b.aupf_staircase == pytest.approx(0.3 * 0.6 + 0.5 * 0.1)
    assert (a.rank_staircase, a.rank_trapezoid) == (1, 2)
    assert not table["same_best"].iloc[0] and table["spearman"].iloc[0] == pytest.approx(-1)


def test_ranking_sensitivity_compares_nothing_where_a_reading_ties_every_strategy():
    # Every frontier a single point: the trapezoid gives each an area of 0, so it has no best
    # strategy and no ranking (the staircase still ranks them).
    rows = [("t", "a", 0, 0.9, 0.3), ("t", "b", 0, 0.8, 0.2), ("u", "a", 0, 0.3, 0.6),
            ("u", "a", 0, 0.8, 0.1), ("u", "b", 0, 0.5, 0.1)]
    frame = pd.DataFrame(rows, columns=["task", "strategy", "seed", "test_acc", "robust_acc"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConstantInputWarning on the console
        table = pareto.ranking_sensitivity(frame, "robust_acc").set_index("task")
    assert table.loc["t", "same_best"].isna().all() and table.loc["t", "spearman"].isna().all()
    assert (table.loc["u", "same_best"] == True).all()  # noqa: E712 - a tie-free task compares
    findings = study.sensitivity_findings(table.reset_index(), ["t", "u"])
    assert "no best strategy" in findings[0] and "the same" in findings[1]


def test_paper_readings_swap_only_the_two_suspect_columns():
    from rtlib.report import paper

    both = paper.aupf_frame(paper.READINGS).set_index(["reading", "dataset", "strategy"]).sort_index()
    compacter = both.xs("compacter", level="strategy")["relative"]
    assert compacter[("as published", "Stanford Dogs")] == pytest.approx(0.575, abs=0.001)
    assert compacter[("columns swapped", "Caltech-256")] == pytest.approx(0.575, abs=0.001)
    assert compacter[("columns swapped", "CUB-200")] == pytest.approx(0.346, abs=0.001)
    for d in ("CIFAR-10", "CIFAR-100", "CUB-200"):
        assert both.loc[("as published", d)].equals(both.loc[("columns swapped", d)])
