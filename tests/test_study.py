"""The scorecard's verdicts follow from the numbers: change the numbers, the verdict changes."""
import numpy as np
import pandas as pd

from rtlib import pareto
from rtlib.report import study

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


def verdicts(frame):
    table = pareto.aupf_table(frame, "robust_acc", n_boot=20)
    card = study.scorecard(frame, table)
    by_prefix = {}
    for claim, verdict in zip(card["claim"], card["verdict"]):
        by_prefix[claim[:24]] = verdict
    return by_prefix, card


def test_verdicts_follow_the_numbers():
    v, card = verdicts(make_frame(fall=0.3, best_near="bitfit", best_far="compacter",
                                  ood_noise=0.01))
    assert set(card.columns) == {"claim", "paper", "ours", "verdict", "rule"}
    assert v["RQ1: robust accuracy fir"] == "holds"
    assert v["RQ2: on simple tasks, pe"] == "holds"
    assert v["RQ2: on complex tasks, i"] == "holds"
    assert v["RQ3: OOD accuracy tracks"] == "holds"
    assert v["RQ3: OOD robustness depe"] == "holds"

    v, _ = verdicts(make_frame(fall=0.0, best_near="lora", best_far="full", ood_noise=0.4))
    assert v["RQ1: robust accuracy fir"] == "does not hold"
    assert v["RQ2: on simple tasks, pe"] == "does not hold"
    assert v["RQ2: on complex tasks, i"] == "does not hold"
    assert v["RQ3: OOD accuracy tracks"] != "holds"


def test_task_order_uses_the_linear_probe():
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    assert study.task_order(frame) == ["near", "mid", "far"]
    sim = study.similarity(frame)
    assert list(sim.index) == ["near", "mid", "far"]
    assert sim["linear_probe_accuracy"].is_monotonic_decreasing


def test_tables_read_in_the_charts_order():
    """Tasks nearest to farthest (not alphabetically: far < mid < near), strategies in the
    one order, then seeds; rows that tie keep their order."""
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    last = study.final_points(pd.concat([frame, frame.assign(seed=1, run_id=frame.run_id + "/1")]))
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


def test_budget_findings_compare_the_rankings_at_each_budget():
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    one = study.budget_findings(study.budget_ranking(frame), ["near", "far"])
    assert len(one) == 1 and "one budget" in one[0]
    # A second budget at which the near task's ranking is reversed
    rank = {s: i for i, s in enumerate(STRATEGIES)}
    two = frame.assign(**{"robust_acc@2/255": frame["robust_acc"],
                          "robust_acc@4/255": frame["robust_acc"] * np.where(
                              frame["task"] == "near", 0.1 + 0.1 * frame["strategy"].map(rank),
                              0.5)})
    ranking = study.budget_ranking(two)
    assert set(ranking["budget"]) == {"2/255", "4/255"}
    lines = study.budget_findings(ranking, ["near", "far"])
    assert "best bitfit at 2/255, compacter at 4/255 (**different**)" in lines[0]
    assert "(the same)" in lines[1] and lines[1].endswith("+1.00")
    # A budget at which two strategies tie for the best names both and compares no best
    top = two["strategy"].isin(["compacter", "bitfit"]) & (two["task"] == "far")
    tie = two.assign(**{"robust_acc@4/255": two["test_acc"] * np.where(top, 0.4, 0.3)})
    tied = study.budget_findings(study.budget_ranking(tie), ["near", "far"])[1]
    assert "bitfit and compacter at 4/255 (a tie)" in tied  # in the book's strategy order
    same = tie.assign(**{"robust_acc@2/255": tie["robust_acc@4/255"]})
    alike = same["strategy"].isin(["full", "lora", "ia3"])  # the same curves in make_frame
    flat = study.budget_findings(study.budget_ranking(same[alike]), ["near", "far"])[1]
    assert flat.endswith("one budget ranks no strategy above another")


def test_ood_variance_names_the_task_where_there_are_several():
    frame = make_frame(0.1, "bitfit", "compacter", 0.01)
    assert set(study.ood_variance_shares(frame)) == {"domain", "strategy", "task"}
    assert set(study.ood_variance_shares(frame[frame.task == "near"])) == {"domain", "strategy"}


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
    frame = make_frame(fall=0.3, best_near="bitfit", best_far="compacter", ood_noise=0.01)
    table = pareto.aupf_table(frame, "robust_acc", n_boot=20)
    bits = study.takeaways(frame, table)
    assert "Best AUPF on near (nearest): bitfit; on far (farthest): compacter" in bits[0]
    other = make_frame(fall=0.3, best_near="lora", best_far="adapter", ood_noise=0.01)
    assert "near (nearest): lora; on far (farthest): adapter" in study.takeaways(
        other, pareto.aupf_table(other, "robust_acc", n_boot=20))[0]
    last = study.final_points(frame)
    gap = (last.test_acc - last.robust_acc)[last.task == "far"].mean()
    assert f"far {gap:.2f}" in bits[-1]


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


def test_rise_and_fall_and_pooled_fall_follow_the_masks():
    falling = [(0, 0.1), (10, 0.5), (100, 0.45), (1000, 0.35)]
    rising = [(0, 0.1), (10, 0.3), (100, 0.4), (1000, 0.42)]
    frame = pd.DataFrame(sum((_masked_run(f"f{s}", s, falling) for s in range(3)), []))
    rf = study.rise_and_fall(frame)
    assert rf["paired"].all() and rf["significant_fall"].all()
    assert (rf["peak_step"] == 10).all() and np.allclose(rf["drop"], 0.15)
    pooled = study.pooled_fall(frame).iloc[0]
    assert pooled["seeds"] == 3 and pooled["significant"] and abs(pooled["drop"] - 0.15) < 1e-9
    assert pooled["drop_se"] < rf["fall_se"].max()  # three seeds know more than one

    frame = pd.DataFrame(sum((_masked_run(f"r{s}", s, rising) for s in range(3)), []))
    assert not study.rise_and_fall(frame)["significant_fall"].any()
    assert not study.pooled_fall(frame).iloc[0]["significant"]
    # One seed of three that does not fall makes the pooled fall not significant.
    mixed = pd.DataFrame(sum((_masked_run(f"f{s}", s, falling) for s in range(2)), [])
                         + _masked_run("r", 2, [(0, 0.1), (10, 0.5), (100, 0.5), (1000, 0.5)]))
    assert not study.pooled_fall(mixed).iloc[0]["significant"]


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
    cards = [study.Verdict("a claim", "paper", "ours", "holds", "rule"),
             study.Verdict("another", "paper", "ours", "does not hold", "rule")]
    table = study.verdict_table(cards)
    assert list(table.columns) == ["claim", "paper", "ours", "verdict", "rule"]
    assert study.verdict_table([]).columns.tolist() == list(table.columns)
    html = study.styled(table).to_html()
    assert study.VERDICT_COLOURS["holds"] in html and study.VERDICT_COLOURS["does not hold"] in html
    assert study.VERDICT_COLOURS["partly"] not in html


def test_differences_print_with_their_sign_and_no_negative_zero():
    from rtlib.report.study import signed

    assert [signed(0.0131), signed(-0.0131), signed(-0.0004), signed(0.2149, 2)] == \
        ["+0.013", "-0.013", "+0.000", "+0.21"]


def test_precision_summary_reads_the_runs():
    frame = make_frame(fall=0.3, best_near="bitfit", best_far="compacter", ood_noise=0.01)
    one = study.precision_summary(frame)
    assert "2,000 test images" in one and "standard error of 1.1 points" in one
    assert "One seed" in one
    # the fall's error: binomial from the two points here (no masks), largest where p is near 0.5
    falls = study.rise_and_fall(frame)
    assert f"at most {100 * falls[falls.early_peak].fall_se.max():.1f} points" in one
    three = pd.concat([frame.assign(seed=s, run_id=frame.run_id + f"-{s}", test_n=500)
                       for s in range(3)])
    text = study.precision_summary(three)
    assert "500 test images" in text and "standard error of 2.2 points" in text
    assert "3 seeds per task and strategy: the verdicts pool them" in text
    assert "One seed" not in text
