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


def test_paper_readings_swap_only_the_two_suspect_columns():
    from rtlib.report import paper

    both = paper.aupf_frame(paper.READINGS).set_index(["reading", "dataset", "strategy"]).sort_index()
    compacter = both.xs("compacter", level="strategy")["relative"]
    assert compacter[("as published", "Stanford Dogs")] == pytest.approx(0.575, abs=0.001)
    assert compacter[("columns swapped", "Caltech-256")] == pytest.approx(0.575, abs=0.001)
    assert compacter[("columns swapped", "CUB-200")] == pytest.approx(0.346, abs=0.001)
    for d in ("CIFAR-10", "CIFAR-100", "CUB-200"):
        assert both.loc[("as published", d)].equals(both.loc[("columns swapped", d)])
