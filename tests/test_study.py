"""The scorecard's verdicts follow from the numbers: change the numbers, the verdict changes."""
import numpy as np
import pandas as pd
import pytest

from rtlib import metrics, pareto
from rtlib.report import estimands, study, verdicts

STRATEGIES = ["full", "linear_probe", "bitfit", "lora", "ia3", "adapter", "compacter"]


def make_frame(fall: float, best_near: str, best_far: str, ood_noise: float):
    rows = []
    rng = np.random.default_rng(0)
    for t, (task, top) in enumerate((("near", 0.95), ("mid", 0.8), ("far", 0.6))):
        for strategy in STRATEGIES:
            best = best_near if task == "near" else best_far if task == "far" else None
            keep = 0.7 if strategy == best else 0.5
            for step in (0, 10, 30, 100, 300):
                clean = 0.05 + (top - 0.05) * (1 - np.exp(-step / 60))
                robust = clean * keep * (1 - fall * (step == 300) * (1 + t))
                rows.append({"run_id": f"{task}-{strategy}", "task": task, "strategy": strategy,
                             "seed": 0, "step": step, "test_acc": clean, "robust_acc": robust,
                             "eps": "2/255", "test_n": 2000,
                             "ood_acc@a": clean * 0.9 + rng.normal(0, ood_noise),
                             "ood_acc@b": clean * 0.4 + rng.normal(0, ood_noise)})
            if strategy == "linear_probe":
                for r in rows[-5:]:
                    r["test_acc"] *= 0.9
    frame = pd.DataFrame(rows)
    frame[["ood_acc@a", "ood_acc@b"]] = frame[["ood_acc@a", "ood_acc@b"]].clip(0, 1)
    return frame


def judged(frame):
    cards = verdicts.scorecard(frame, rs=estimands.Resampler(n_boot=200))
    card = verdicts.verdict_table(cards)
    return {claim[:24]: verdict for claim, verdict in zip(card["claim"], card["verdict"])}, card


def test_verdicts_follow_the_numbers():
    v, card = judged(make_frame(fall=0.3, best_near="bitfit", best_far="compacter",
                                ood_noise=0.01))
    assert list(card.columns) == ["claim", "verdict", "ours", "paper", "under other readings",
                                  "rule"]
    assert v["RQ1: robust accuracy fir"] == "holds"
    assert v["RQ2: on simple tasks, pe"] == "holds"
    assert v["RQ2: on complex tasks, i"] == "holds"
    assert v["RQ3: OOD accuracy tracks"] == "holds"
    assert v["RQ3: OOD robustness depe"] == "holds"

    v, _ = judged(make_frame(fall=0.0, best_near="lora", best_far="full", ood_noise=0.4))
    assert v["RQ1: robust accuracy fir"] == "does not hold"
    assert v["RQ2: on simple tasks, pe"] == "does not hold"
    assert v["RQ2: on complex tasks, i"] == "does not hold"
    assert v["RQ3: OOD accuracy tracks"] != "holds"


def test_task_order_is_read_on_validation_and_overlapping_tasks_tie():
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    # the test set says near > mid > far; the validation split (what decides) says otherwise
    val = {"near": 0.5, "mid": 0.9, "far": 0.2}
    frame = frame.assign(val_acc=frame.task.map(val), train_size=2000, val_fraction=0.1)
    assert estimands.order(frame) == ["mid", "near", "far"]
    table = estimands.distance(frame).set_index("task")
    assert (table.split == "validation").all() and table.loc["mid", "tied_with"] == []
    close = frame.assign(val_acc=frame.task.map({"near": 0.90, "mid": 0.89, "far": 0.2}))
    tied = estimands.distance(close).set_index("task")  # 200 validation images: 1 point apart
    assert tied.loc["near", "tied_with"] == ["mid"] and tied.loc["far", "tied_with"] == []
    assert estimands.ends(close, "nearest") == ["near", "mid"]
    assert estimands.ends(close, "farthest") == ["far"]


def test_tables_read_in_the_charts_order():
    """Tasks nearest to farthest (not alphabetically: far < mid < near), strategies in the
    one order, then seeds; rows that tie keep their order."""
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    last = estimands.last_points(pd.concat([frame, frame.assign(seed=1,
                                                                 run_id=frame.run_id + "/1")]))
    shuffled = last.sample(frac=1, random_state=0)
    shown = study.ordered_table(shuffled, frame, ["test_acc"])
    assert shown.index.names == ["task", "strategy", "seed"]
    assert list(dict.fromkeys(shown.index.get_level_values("task"))) == ["near", "mid", "far"]
    assert list(shown.loc["far"].index) == [(s, seed) for s in STRATEGIES for seed in (0, 1)]
    assert shown["test_acc"].equals(shown["test_acc"].round(3))
    pooled = study.ordered_table(
        shuffled.groupby(["task", "strategy"], as_index=False)["test_acc"].mean(), frame)
    assert pooled.index.names == ["task", "strategy"]
    assert list(pooled.index)[:2] == [("near", "full"), ("near", "linear_probe")]
    ties = pd.DataFrame({"task": ["near"] * 2, "strategy": ["full"] * 2,
                         "upstream": ["standard", "robust"], "v": [1.0, 2.0]})
    assert list(study.ordered_table(ties, frame).index.get_level_values("upstream")) == [
        "standard", "robust"]
    # a key no row fills (the source domain of runs on the default one) is not a level
    unfilled = study.ordered_table(shuffled.assign(domain=None), frame)
    assert unfilled.index.names == ["task", "strategy", "seed"] and "domain" not in unfilled


def test_the_rq2_verdicts_are_judged_again_under_each_reading_and_budget():
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    rank = {s: i for i, s in enumerate(STRATEGIES)}
    # at 4/255 the near task's ranking is reversed: BitFit is no longer best there
    two = frame.assign(**{"robust_acc@2/255": frame["robust_acc"],
                          "robust_acc@4/255": frame["robust_acc"] * np.where(
                              frame["task"] == "near", 0.1 + 0.1 * frame["strategy"].map(rank),
                              0.5)})
    claims = verdicts.rq2(two, estimands.Resampler(n_boot=100))
    table = verdicts.sensitivity_table(claims)
    assert list(table.columns) == ["staircase 2/255", "staircase 4/255", "trapezoid 2/255",
                                   "trapezoid 4/255"]
    simple = table.loc["on simple tasks, peripheral updates (BitFit) balance best"]
    assert simple["staircase 2/255"] == "holds" and simple["staircase 4/255"] == "does not hold"


def test_a_tie_for_the_best_strategy_is_no_best():
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    tie = frame.assign(robust_acc=np.where(frame.strategy.isin(["lora", "bitfit"]),
                                           frame.test_acc * 0.7, frame.test_acc * 0.5))
    aupf = estimands.aupf(tie, rs=estimands.Resampler(n_boot=100))
    best = aupf.best("near")
    assert best["best"] is None and best["candidates"] == ["bitfit", "lora"]
    assert best["beaten_by"]["full"] == ["bitfit", "lora"]
    assert aupf.best("mid")["best"] is None
    (simple, *_) = verdicts.best_strategy_claims(tie, {"staircase": aupf})
    assert simple.verdict == "undecided" and "tied for the best: bitfit, lora" in simple.ours


def test_the_vectorized_areas_are_the_frontier_definitions():
    rng = np.random.default_rng(3)
    for points in (1, 2, 5, 10):
        for _ in range(40):
            c = np.round(rng.random(points), 2)  # ties in clean accuracy included
            r = np.minimum(np.round(rng.random(points), 2), c)
            assert abs(estimands.staircase_area(c, r) - pareto.aupf(c, r)) < 1e-12
            assert abs(estimands.trapezoid_area(c, r) - pareto.aupf_trapezoid(c, r)) < 1e-12
    batch = rng.random((4, 3, 6))
    assert estimands.staircase_area(batch, batch / 2).shape == (4, 3)


def test_ood_shares_split_domain_strategy_and_interaction():
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    shares = estimands.ood_variance(frame, estimands.Resampler(n_boot=50)).set_index("task")
    assert list(shares.index) == ["near", "mid", "far"]
    row = shares.loc["near"]
    assert 0 <= row.by_interaction
    assert row.by_domain + row.by_strategy + row.by_interaction <= 1 + 1e-9
    assert row.by_domain > 0.5 and row.method_minus_domain_high < 0


def test_ood_shares_of_each_replicate_are_the_sums_of_squares_of_its_layout():
    """The shares are computed for every replicate at once: each equals the two-way sums of
    squares of its own long table (observation by observation, unequal seeds included)."""
    rng = np.random.default_rng(11)
    cells = {s: rng.random((4, n, 3)) for s, n in (("a", 2), ("b", 3), ("c", 4))}
    shares = estimands._shares(cells)
    for b in range(4):
        long = pd.DataFrame([{"strategy": s, "domain": d, "y": v[b, i, d]} for s, v in
                             cells.items() for i in range(v.shape[1]) for d in range(3)])
        dev = {k: ((long.groupby(k)["y"].transform("mean") - long.y.mean()) ** 2).sum()
               for k in ("strategy", "domain")}
        cell = ((long.groupby(["strategy", "domain"])["y"].transform("mean")
                 - long.y.mean()) ** 2).sum()
        total = ((long.y - long.y.mean()) ** 2).sum()
        assert abs(shares["domain"][b] - dev["domain"] / total) < 1e-12
        assert abs(shares["strategy"][b] - dev["strategy"] / total) < 1e-12
        assert abs(shares["interaction"][b]
                   - max(cell - dev["domain"] - dev["strategy"], 0) / total) < 1e-12
    flat = estimands._shares({s: np.full((2, 2, 3), 0.5) for s in "ab"})
    assert all((x == 0).all() for x in flat.values())  # no variance: no shares


def test_compute_cost_adds_up_per_strategy():
    rows = []
    for strategy, attacked in (("full", [40, 30]), ("lora", [50, 45])):
        for seed in (0, 1):
            for i, step in enumerate((0, 10)):
                rows.append({"run_id": f"{strategy}{seed}", "task": "t", "strategy": strategy,
                             "seed": seed, "step": step, "test_acc": 0.5, "robust_acc@2/255": 0.2,
                             "test_n": 100, "images_seen": step * 32,
                             "train_seconds": step * 0.5, "eval_seconds": 2.0,
                             "attack_seconds": 1.0, "attacked": attacked[i],
                             "precision": "fp32"})
    cost = study.compute_cost(pd.DataFrame(rows))
    assert list(cost.index) == ["full", "lora"]  # the paper's order
    assert cost.loc["full", "runs"] == 2
    assert cost.loc["full", "train_img_s"] == 320 / 5  # 320 images in 5 s per run
    assert cost.loc["full", "attack_img_s"] == (40 + 30) * 2 / 4  # 140 images in 4 s
    assert cost.loc["lora", "attacked_share"] == (50 + 45) * 2 / 400
    assert cost.loc["full", "eval_share"] == 8 / (8 + 10)
    old = pd.DataFrame(rows).drop(columns=["attacked", "attack_seconds", "precision"])
    legacy = study.compute_cost(old)  # a store from before the attack columns
    assert legacy["attack_img_s"].isna().all() and (legacy["precision"] == "fp32").all()


def test_takeaways_follow_the_numbers():
    rs = estimands.Resampler(n_boot=100)

    def bits(frame):
        return study.takeaways(frame, estimands.aupf(frame, rs=rs),
                               estimands.falls(frame, rs=rs))

    frame = make_frame(fall=0.3, best_near="bitfit", best_far="compacter", ood_noise=0.01)
    lines = bits(frame)
    assert "on near (nearest): bitfit; on far (farthest): compacter" in lines[0]
    other = make_frame(fall=0.3, best_near="lora", best_far="adapter", ood_noise=0.01)
    assert "on near (nearest): lora; on far (farthest): adapter" in bits(other)[0]
    last = estimands.last_points(frame)
    gap = (last.test_acc - last.robust_acc)[last.task == "far"].mean()
    assert f"far {gap:.2f}" in lines[-1]


def test_cost_summary_sums_the_runs():
    frame = pd.DataFrame({"run_id": ["a", "a", "b"], "strategy": ["full", "full", "lora"],
                          "task": "t", "seed": 0, "step": [0, 10, 10],
                          "train_seconds": [0.0, 60.0, 120.0], "eval_seconds": [30.0, 30.0, 60.0],
                          "images_seen": [0, 640, 640], "test_n": 100,
                          "robust_acc@1/255": 0.5, "attacked": [50, 50, 50],
                          "attack_seconds": [20.0, 20.0, 40.0]})
    text = study.cost_summary(frame, study.compute_cost(frame))
    assert text.startswith("In all, 5 minutes of run time, **40%** of it evaluating.")
    assert "attacked 50% of the test images" in text


def test_a_chapter_whose_runs_all_fail_says_why(tmp_path, monkeypatch):
    from rtlib import train

    def broken(*args, **kwargs):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(train, "prepare", broken)
    import pytest

    with pytest.raises(RuntimeError, match="(?s)every run failed.*the GPU caught fire"):
        study.chapter("smoke", ["digits"], ["lora"], results_dir=tmp_path, workers=1)


def _masked_run(run_id, seed, curve, n=400, rng=None):
    """A run whose robust masks realise ``curve`` exactly, each point flipping images of the
    previous one (so consecutive points share most images, as real runs do)."""
    from rtlib import metrics

    rng = rng or np.random.default_rng(seed)
    mask = np.zeros(n, bool)
    rows = []
    for step, value in curve:
        want = int(round(value * n))
        on, off = np.flatnonzero(mask), np.flatnonzero(~mask)
        if want > len(on):
            mask[rng.choice(off, want - len(on), replace=False)] = True
        elif want < len(on):
            mask[rng.choice(on, len(on) - want, replace=False)] = False
        rows.append({"run_id": run_id, "task": "t", "strategy": "full", "seed": seed,
                     "step": step, "test_acc": 0.9, "robust_acc": mask.mean(), "test_n": n,
                     metrics.ROBUST_MASK: metrics.pack(mask)})
    return rows


def test_paired_standard_error_counts_only_the_images_that_changed():
    from rtlib import metrics

    n = 1000
    a = np.zeros(n, bool)
    a[:500] = True
    b = a.copy()
    b[:20] = False  # 20 of 1,000 images changed: a difference of 0.02
    se = metrics.paired_se(metrics.pack(a), metrics.pack(b), n)
    assert abs(se - np.sqrt((20 - 20 ** 2 / n) / (n - 1) / n)) < 1e-12  # 0.0044
    assert se < study.standard_error(0.5, n)  # far below the unpaired error at 50%
    assert metrics.unpack(metrics.pack(b), n).tolist() == b.tolist()


def test_the_fall_is_read_from_the_masks_with_its_interval():
    falling = [(0, 0.1), (10, 0.5), (100, 0.45), (1000, 0.35)]
    rising = [(0, 0.1), (10, 0.3), (100, 0.4), (1000, 0.42)]
    rs = estimands.Resampler(n_boot=300)
    frame = pd.DataFrame(sum((_masked_run(f"f{s}", s, falling) for s in range(3)), []))
    per_run = estimands.falls(frame, by=("task", "strategy", "seed"), rs=rs)
    assert (per_run.peak_on == "test").all() and (per_run.peak_step == 10).all()
    assert np.allclose(per_run["drop"], 0.15) and (per_run.outcome == "falls").all()
    # by hand: 60 of 400 images lost, each run's flips independent -> se about 0.018
    assert 0.01 < (per_run.drop_high - per_run.drop_low).mean() / 4 < 0.03
    pooled = estimands.falls(frame, rs=rs).iloc[0]
    assert pooled.seeds == 3 and abs(pooled["drop"] - 0.15) < 1e-9 and pooled.outcome == "falls"

    frame = pd.DataFrame(sum((_masked_run(f"r{s}", s, rising) for s in range(3)), []))
    assert (estimands.falls(frame, rs=rs).outcome == "does not fall").all()
    # a one-point fall, however well measured, is not a fall of practical size
    small = [(0, 0.1), (10, 0.5), (1000, 0.49)]
    frame = pd.DataFrame(sum((_masked_run(f"s{s}", s, small, n=4000) for s in range(3)), []))
    assert estimands.falls(frame, rs=rs).iloc[0].outcome != "falls"


def test_the_peak_is_chosen_on_validation_when_the_runs_have_it():
    curve = [(0, 0.1), (10, 0.5), (100, 0.45), (1000, 0.35)]
    frame = pd.DataFrame(_masked_run("v", 0, curve))
    frame["val_robust_acc@2/255"] = [0.1, 0.2, 0.3, 0.4]  # validation: still rising at the end
    row = estimands.falls(frame, rs=estimands.Resampler(n_boot=100)).iloc[0]
    assert row.peak_on == "validation" and row.peak_step == 1000 and row["drop"] == 0
    assert row.outcome == "does not fall"


def test_a_flat_curve_falls_no_more_often_than_the_nominal_level():
    """Flat robust accuracy at every point, every seed scored on the same test images: the
    fall rule may call a pair "falls" in at most 2.5% of studies (one side of a 95% interval);
    choosing the peak on the test curve instead would be far above it."""
    rng = np.random.default_rng(0)
    n, seeds, points, studies = 768, 3, 10, 200
    hits = {"validation": 0, "test": 0}
    significant = 0
    for k in range(studies):
        p = rng.beta(2, 2, n)  # each image's chance of surviving the attack, shared by seeds
        rows = []
        for seed in range(seeds):
            for i, step in enumerate(range(points)):
                mask = rng.random(n) < p
                rows.append({"run_id": f"{seed}", "task": "t", "strategy": "full",
                             "seed": seed, "step": step, "test_acc": 0.9,
                             "robust_acc": mask.mean(), "test_n": n,
                             "robust_mask": metrics.pack(mask),
                             "val_robust_acc@2/255": rng.binomial(200, 0.5) / 200})
        frame = pd.DataFrame(rows)
        rs = estimands.Resampler(n_boot=200, seed=k)
        row = estimands.falls(frame, rs=rs).iloc[0]
        hits["validation"] += row.outcome == "falls"
        significant += row.drop_low > 0
        row = estimands.falls(frame.drop(columns="val_robust_acc@2/255"), rs=rs).iloc[0]
        hits["test"] += row.drop_low > 0
    assert hits["validation"] / studies <= 0.025
    assert significant / studies <= 0.05  # the interval alone, without the 2-point size
    assert hits["test"] / studies > 0.1  # what the validation split protects against
    print(f"flat curve: falls {hits}, interval above 0 {significant} of {studies}")


def test_steepness_is_not_testable_on_a_one_image_clean_span():
    from rtlib import metrics as m

    n = 768
    rows = []
    for seed in range(3):
        # the digits/Compacter case: clean 0.9974 -> 0.9987 (one image), robust 0.8438 -> 0.7669
        for step, clean, robust in ((0, 0.5, 0.4), (100, 0.9974, 0.8438), (1000, 0.9987, 0.7669)):
            rows.append({"run_id": f"{seed}", "task": "t", "strategy": "compacter", "seed": seed,
                         "step": step, m.TEST_ACC: clean, "robust_acc": robust, "test_n": n})
    row = estimands.falls(pd.DataFrame(rows), rs=estimands.Resampler(n_boot=300)).iloc[0]
    assert not row.steepness_testable and np.isnan(row.steepness)  # not 59
    assert row.outcome == "falls"  # the fall itself is real


def test_ood_that_is_flat_after_the_start_does_not_track():
    rows = []
    for strategy in ("full", "lora"):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            for step, clean in zip((0, 10, 30, 100, 300, 1000),
                                   (0.1, 0.5, 0.7, 0.8, 0.85, 0.9)):
                rows.append({"run_id": f"{strategy}{seed}", "task": "digits",
                             "strategy": strategy, "seed": seed, "step": step,
                             "test_acc": clean, "test_n": 768,
                             # at chance at step 0 with the head, flat (noise) afterwards
                             "ood_acc@outline": 0.1 if step == 0 else 0.6 + rng.normal(0, 0.01),
                             "ood_acc@texture": 0.1 + 0.8 * (clean - 0.1)})
    frame = pd.DataFrame(rows)
    pooled_r = frame["test_acc"].corr(frame["ood_acc@outline"])
    assert pooled_r > 0.7  # what the old rule read: the climb from step 0
    track = estimands.ood_tracking(frame, estimands.Resampler(n_boot=200)).set_index("domain")
    assert track.loc["outline", "outcome"] == "does not track"
    assert track.loc["texture", "outcome"] == "tracks"
    # Against another accuracy (RQ3's exercise 3): texture follows clean accuracy, so it tracks
    # a robust accuracy that does too, and not one that is noise after the start.
    rng = np.random.default_rng(9)
    frame["robust_acc"] = np.where(frame.step == 0, 0.0, 0.3 + rng.normal(0, 0.01, len(frame)))
    frame["val_acc"] = 0.5 * frame["test_acc"]
    noise = estimands.ood_tracking(frame, estimands.Resampler(n_boot=200), against="robust_acc")
    assert noise.set_index("domain").loc["texture", "outcome"] == "does not track"
    follows = estimands.ood_tracking(frame, estimands.Resampler(n_boot=200), against="val_acc")
    assert follows.set_index("domain").loc["texture", "r"] > 0.99


def test_plateau_reads_the_last_three_points_and_tells_a_trend_from_noise():
    rows = []
    for run_id, curve in (("flat", [0.5, 0.8, 0.895, 0.9, 0.899]),
                          ("rising", [0.5, 0.7, 0.8, 0.85, 0.9]),
                          ("falling", [0.5, 0.9, 0.9, 0.85, 0.8]),
                          ("noisy", [0.5, 0.8, 0.9, 0.88, 0.895])):
        rows += [{"run_id": run_id, "task": "t", "strategy": run_id, "seed": 0, "step": s,
                  "test_acc": v, "test_n": 768} for s, v in zip((0, 10, 100, 500, 1000), curve)]
    frame = pd.DataFrame(rows)
    p = study.plateau(frame).set_index("run_id")
    assert p.loc["flat", "plateaued"] and not p.loc["rising", "plateaued"]
    assert p.loc["rising", "last_steps"] == "100, 500, 1000"
    # 768 images: two binomial errors near 0.85 combine to about 1.8 points; 10 points is a
    # trend, a 2-point wobble ending 0.5 points down is not.
    assert p["trend"].to_dict() == {"flat": "plateau", "rising": "rising", "falling": "falling",
                                    "noisy": "noise"}
    assert abs(p.loc["rising", "change"] - 0.1) < 1e-9
    assert 0.015 < p.loc["rising", "change_se"] < 0.02
    plateau_bullet = study.rq1_findings(frame.assign(**{"robust_acc": 0.1, "eps": "2/255"}))[-1]
    assert plateau_bullet.startswith("- **Plateau:** 1 of 4 runs")
    assert "1 still rising" in plateau_bullet and "t/rising (seed 0; +0.100)" in plateau_bullet
    assert "1 moving by no more than evaluation noise" in plateau_bullet


def test_verdicts_render_as_the_scorecard_with_their_colours():
    cards = [verdicts.Verdict("a claim", "paper", "ours", "holds", "rule"),
             verdicts.Verdict("another", "paper", "ours", "undecided", "rule",
                              {"staircase 2/255": "undecided", "trapezoid 2/255": "holds"})]
    table = verdicts.verdict_table(cards)
    assert table["under other readings"].tolist() == [
        "-", "staircase 2/255: undecided; trapezoid 2/255: holds"]
    html = verdicts.styled(table).to_html()
    assert verdicts.VERDICT_COLOURS["holds"] in html and verdicts.VERDICT_COLOURS["undecided"] in html
    import pytest

    with pytest.raises(AssertionError):
        verdicts.Verdict("c", "p", "o", "partly", "r")  # the old fourth outcome is gone
    assert verdicts.majority(2, 1, 4) == "undecided"  # exactly half is not a majority
    assert verdicts.majority(3, 0, 4) == "holds" and verdicts.majority(0, 3, 5) == "does not hold"
    assert verdicts.combine(["holds", "undecided"]) == "undecided"


def test_differences_print_with_their_sign_and_no_negative_zero():
    from rtlib.report.study import signed

    assert [signed(0.0131), signed(-0.0131), signed(-0.0004), signed(0.2149, 2)] == \
        ["+0.013", "-0.013", "+0.000", "+0.21"]


def test_precision_summary_reads_the_runs():
    frame = make_frame(fall=0.3, best_near="bitfit", best_far="compacter", ood_noise=0.01)
    one = study.precision_summary(frame)
    assert "2,000 test images" in one and "standard error of 1.1 points" in one
    assert "One seed" in one
    falls = study.fall_table(frame)
    width = (falls.drop_high - falls.drop_low) / 2
    assert f"at most {100 * width.max():.1f})" in one
    three = pd.concat([frame.assign(seed=s, run_id=frame.run_id + f"-{s}", test_n=500)
                       for s in range(3)])
    text = study.precision_summary(three)
    assert "500 test images" in text and "standard error of 2.2 points" in text
    assert "3 seeds per task and strategy: the intervals resample seeds and test images" in text
    assert "One seed" not in text


def test_runs_of_different_configurations_are_not_pooled_as_seeds():
    import pytest

    from rtlib.config import ConfigError

    frame = make_frame(0.1, "bitfit", "compacter", 0.01).assign(hparams="{}")
    ranks = pd.concat([frame.assign(hparams=f'{{"rank": {r}}}', run_id=frame.run_id + str(r))
                       for r in (1, 4, 16)])
    with pytest.raises(ConfigError, match="hparams"):
        estimands.aupf(ranks)
    with pytest.raises(ConfigError, match="hparams"):
        estimands.falls(ranks)
    by_rank = estimands.aupf(ranks, by=("task", "strategy", "hparams"),
                             rs=estimands.Resampler(n_boot=20)).table
    assert len(by_rank) == 3 * len(STRATEGIES) * 3 and (by_rank.seeds == 1).all()


def test_an_interval_does_not_depend_on_what_was_asked_before():
    """Two chapters asking for the same AUPF get the same interval (draws are keyed by what
    they are for, not taken from one stream): the best strategy cannot differ between pages."""
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    first = estimands.aupf(frame, rs=estimands.Resampler(n_boot=100)).table
    rs = estimands.Resampler(n_boot=100)
    estimands.falls(frame, rs=rs)
    estimands.distance(frame, rs)
    again = estimands.aupf(frame, rs=rs).table
    pd.testing.assert_frame_equal(first, again)
    other_seed = estimands.aupf(frame, rs=estimands.Resampler(n_boot=100, seed=1)).table
    assert not other_seed["aupf_low"].equals(first["aupf_low"])


def test_a_verdict_depends_on_the_upstream_model_only_when_two_models_decide_apart():
    assert verdicts.depends(["holds", "does not hold"]) == "yes"
    assert verdicts.depends(["holds", "holds", "holds"]) == "no"
    assert verdicts.depends(["holds", "undecided"]) == "cannot tell"
    assert verdicts.depends(["undecided", "undecided"]) == "cannot tell"


def test_the_scorecard_per_upstream_model_judges_the_tasks_they_share():
    # the same numbers from two models, the second also on a task the first lacks
    a = make_frame(fall=0.3, best_near="bitfit", best_far="compacter", ood_noise=0.01)
    b = make_frame(fall=0.0, best_near="lora", best_far="full", ood_noise=0.01)
    runs = pd.concat([a[a.task != "mid"].assign(upstream="weak"), b.assign(upstream="robust")])
    table = verdicts.by_upstream(runs, estimands.Resampler(n_boot=200))
    assert list(table.columns) == ["weak", "robust", "depends on the upstream model"]
    assert table.attrs["tasks"] == ["near", "far"]  # mid is left out of both
    rise = table.loc[table.index.str.startswith("RQ1")].iloc[0]
    assert (rise.weak, rise.robust) == ("holds", "does not hold")
    assert rise["depends on the upstream model"] == "yes"
    near = table.loc[table.index.str.startswith("RQ2: on simple tasks")].iloc[0]
    assert (near.weak, near.robust, near["depends on the upstream model"]) == (
        "holds", "does not hold", "yes")
    # judged alone, the robust model's own scorecard on the shared tasks says the same
    alone = judged(b[b.task != "mid"])[1].set_index("claim")["verdict"]
    assert table["robust"].to_dict() == alone.to_dict()


def test_a_chapter_judges_its_own_claims_from_each_upstream_model():
    a = make_frame(fall=0.3, best_near="bitfit", best_far="compacter", ood_noise=0.01)
    b = make_frame(fall=0.0, best_near="lora", best_far="full", ood_noise=0.01)
    runs = pd.concat([a.assign(upstream="weak"), b.assign(upstream="robust")])
    rs = estimands.Resampler(n_boot=200)
    rq1 = verdicts.by_upstream(runs, rs, chapter="RQ1")
    assert list(rq1.index) == [c.claim for c in verdicts.CHAPTER_CLAIMS["RQ1"](a, rs)]
    whole = verdicts.by_upstream(runs, rs)
    assert rq1.loc[rq1.index[0], "weak"] == whole.loc[rq1.index[0], "weak"] == "holds"
    text = verdicts.found_by_upstream(runs, "RQ1", rs)
    assert "`weak` **holds**, `robust` **does not hold**" in text
    assert "depends on the upstream model: **yes**" in text
    assert "one upstream model only" in verdicts.found_by_upstream(a.assign(upstream="w"), "RQ1")
    with pytest.raises(ValueError, match="RQ1, RQ2, RQ3"):
        verdicts.by_upstream(runs, rs, chapter="RQ4")


def _control_frame(prefix, curve, train_acc, train_size, strategy="full"):
    rows = []
    for s in range(3):
        for row in _masked_run(f"{prefix}{s}", s, curve):
            rows.append({**row, "strategy": strategy, "train_acc": train_acc,
                         "train_size": train_size, "train_eval_size": 512})
    return pd.DataFrame(rows)


def test_the_memorization_control_reads_whether_a_fall_persists_with_more_images():
    falling = [(0, 0.1), (10, 0.5), (100, 0.45), (1000, 0.35)]
    rising = [(0, 0.1), (10, 0.3), (100, 0.4), (1000, 0.42)]
    rs = estimands.Resampler(n_boot=300)
    base = _control_frame("b", falling, train_acc=1.0, train_size=20_000)  # gap 1.0 - 0.9
    persists = estimands.memorization(
        base, _control_frame("c", falling, train_acc=0.9, train_size=80_000), rs=rs).iloc[0]
    assert persists.reading == estimands.PERSISTS and persists.gap_shrinks
    assert abs(persists.gap_change + 0.1) < 1e-9 and persists.gap_change_high < 0
    assert abs(persists.drop_change) < 1e-9 and persists.control_images == 80_000
    card = verdicts.memorization_claim(pd.DataFrame([persists]))
    assert card.verdict == verdicts.HOLDS and "1 of 1 strategies fall" in card.ours

    vanishes = estimands.memorization(
        base, _control_frame("c", rising, train_acc=0.9, train_size=80_000), rs=rs)
    assert vanishes.iloc[0].reading == estimands.VANISHES
    assert vanishes.iloc[0].drop_change_high < 0
    assert verdicts.memorization_claim(vanishes).verdict == verdicts.FAILS

    # a fall that persists while the gap does not shrink does not show the claim
    same_gap = estimands.memorization(
        base, _control_frame("c", falling, train_acc=1.0, train_size=80_000), rs=rs)
    assert not same_gap.iloc[0].gap_shrinks
    assert verdicts.memorization_claim(same_gap).verdict == verdicts.UNDECIDED

    nothing = estimands.memorization(
        _control_frame("b", rising, 1.0, 20_000),
        _control_frame("c", rising, 0.9, 80_000), rs=rs)
    assert nothing.iloc[0].reading == estimands.NO_FALL
    assert verdicts.memorization_claim(nothing).verdict == verdicts.UNTESTABLE


def test_the_memorization_findings_say_what_the_store_lacks(tmp_path):
    from rtlib import config, plan

    control = config.RunConfig(task="greek_dots", strategy="full", train_size=80_000)
    chapter = study.Chapter(pd.DataFrame(), pd.DataFrame(), "",
                            plan.Plan("ladder", [], [], {}, None, [], [control]))
    text, table = study.memorization_findings(chapter, tmp_path)
    assert "not all in the store yet (0 of 1)" in text and table.empty
    chapter.plan.control = []
    assert "no memorization control" in study.memorization_findings(chapter, tmp_path)[0]


def test_a_tasks_own_domain_is_not_judged_as_its_ood_domain():
    """A task rendered in a domain (digits_texture) has no OOD column for it: the column is
    empty for its runs and must not enter RQ3 as a domain with no values."""
    frame = make_frame(0.0, "bitfit", "compacter", ood_noise=0.01)
    frame.loc[frame.task == "far", "ood_acc@b"] = np.nan
    rs = estimands.Resampler(n_boot=100)
    tracking = estimands.ood_tracking(frame, rs)
    assert set(tracking[tracking.task == "far"].domain) == {"a"}
    assert tracking.r.notna().all()
    shares = estimands.ood_variance(frame, rs)
    assert shares[["by_domain", "by_strategy"]].notna().all().all()


def test_settings_beside_each_other_keep_each_verdict_and_fill_what_one_lacks():
    a = [verdicts.Verdict("RQ1: x", "", "", verdicts.HOLDS, ""),
         verdicts.Verdict("RQ2: y", "", "", verdicts.UNDECIDED, "")]
    b = [verdicts.Verdict("RQ1: x", "", "", verdicts.FAILS, "")]
    table = verdicts.beside({"ladder": a, "study": b})
    assert table.loc["RQ1: x"].tolist() == [verdicts.HOLDS, verdicts.FAILS]
    assert table.loc["RQ2: y"].tolist() == [verdicts.UNDECIDED, verdicts.UNTESTABLE]


def test_a_curve_is_recomputed_for_other_masks_under_the_same_run_id():
    """Curves are cached per resampler by the masks themselves, not by the run's name: two
    runs called alike (synthetic frames, a rerun) never share a curve."""
    rs = estimands.Resampler(n_boot=20)
    falling = pd.DataFrame(_masked_run("r", 0, [(0, 0.1), (10, 0.5), (100, 0.3)]))
    rising = pd.DataFrame(_masked_run("r", 0, [(0, 0.1), (10, 0.3), (100, 0.5)]))
    a = estimands.curve(falling, metrics.ROBUST, rs)
    b = estimands.curve(rising, metrics.ROBUST, rs)
    assert np.allclose(a[:, 0], [0.1, 0.5, 0.3]) and np.allclose(b[:, 0], [0.1, 0.3, 0.5])
    assert estimands.curve(falling, metrics.ROBUST, rs) is a  # asked again: not recomputed


def test_the_pooled_correlation_of_a_draw_is_that_of_the_picked_runs_concatenated():
    rng = np.random.default_rng(3)
    per_strategy = [[(rng.normal(size=k), rng.normal(size=k), rng.normal()) for k in (4, 6, 5)]
                    for _ in range(3)]
    r, gaps = estimands._pooled_correlations(per_strategy, np.random.default_rng(7), 30)
    draws = np.random.default_rng(7)
    for b in range(31):
        flat = [x for runs in per_strategy for x in
                (runs if b == 0 else [runs[i] for i in draws.integers(0, len(runs), len(runs))])]
        x, y = np.concatenate([f[0] for f in flat]), np.concatenate([f[1] for f in flat])
        assert abs(r[b] - np.corrcoef(x, y)[0, 1]) < 1e-12
        assert abs(gaps[b] - np.mean([f[2] for f in flat])) < 1e-12


def test_spearman_over_replicates_is_pandas_column_by_column():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(5, 200)).round(1)  # ties within columns
    values[:, 3] = 1.0  # constant: NaN
    values[2, 7] = np.nan  # a missing replicate: its complete pairs
    x = np.array([0, 1, 2, 3, 4])
    want = [pd.Series(x).corr(pd.Series(values[:, b]), method="spearman") for b in range(200)]
    np.testing.assert_allclose(estimands.spearman(x, values), want, atol=1e-12)
