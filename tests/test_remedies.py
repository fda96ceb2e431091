"""Remedies judged from the store: the checkpoint chosen on the validation split."""
import pandas as pd
import pytest

from rtlib import metrics
from rtlib.report import remedies

VAL_ROBUST = metrics.val_robust(2 / 255)


def _run(run_id, seed, val_robust, robust, clean, strategy="full"):
    return pd.DataFrame({
        "run_id": run_id, "task": "fonts", "strategy": strategy, "seed": seed,
        metrics.STEP: [0, 10, 20, 30], VAL_ROBUST: val_robust, metrics.ROBUST: robust,
        metrics.TEST_ACC: clean, metrics.VAL_ACC: [0.1, 0.5, 0.6, 0.7]})


def test_the_checkpoint_is_chosen_on_validation_and_judged_on_test():
    frame = pd.concat([
        # validation peaks at step 10 (test robust peaks at 20: the choice never sees it)
        _run("a", 0, [0.1, 0.4, 0.3, 0.2], [0.1, 0.30, 0.35, 0.20], [0.2, 0.6, 0.7, 0.8]),
        # a tie on validation: the later point is taken
        _run("b", 1, [0.1, 0.4, 0.4, 0.2], [0.1, 0.30, 0.32, 0.25], [0.2, 0.6, 0.7, 0.8]),
    ]).sample(frac=1, random_state=0)  # row order must not matter
    sel = remedies.checkpoint_selection(frame).set_index("run_id")
    assert sel.loc["a", "picked_step"] == 10 and sel.loc["b", "picked_step"] == 20
    assert sel.loc["a", "gain"] == pytest.approx(0.10)
    assert sel.loc["a", "cost"] == pytest.approx(0.20)
    assert sel.loc["a", "oracle_gain"] == pytest.approx(0.15)
    assert sel.loc["b", "gain"] == pytest.approx(0.07)
    # choosing by clean validation accuracy keeps the last point here
    by_clean = remedies.checkpoint_selection(frame, by=metrics.VAL_ACC)
    assert (by_clean["picked_step"] == 30).all() and (by_clean["gain"] == 0).all()
    summary = remedies.selection_summary(sel.reset_index()).iloc[0]
    assert summary["seeds"] == 2 and summary["gain"] == pytest.approx(0.085)
    assert summary["gain_min"] == pytest.approx(0.07) and summary["kept_last"] == 0


def test_runs_without_validation_robust_accuracy_are_named():
    frame = _run("a", 0, [0.1] * 4, [0.1] * 4, [0.2] * 4).drop(columns=VAL_ROBUST)
    with pytest.raises(KeyError, match="val_robust"):
        remedies.checkpoint_selection(frame)


def _path(task, strategy, seed, robust, clean, alphas=(0.0, 0.5, 1.0)):
    return pd.DataFrame({"task": task, "strategy": strategy, "seed": seed, "alpha": alphas,
                         metrics.ROBUST: robust, metrics.TEST_ACC: clean})


def test_interpolation_summary_finds_an_interior_coefficient_and_a_wider_frontier():
    from rtlib import pareto

    # The run's checkpoints: robust peaks at 0.40 (clean 0.6) and ends at 0.30 (clean 0.9).
    run = _run("r", 0, [0.0] * 4, [0.1, 0.40, 0.35, 0.30], [0.2, 0.6, 0.8, 0.9])
    # The path: probe end 0.20 / 0.5, alpha 0.5 reaches 0.45 robust at 0.88 clean.
    path = _path("fonts", "full", 0, [0.20, 0.45, 0.30], [0.5, 0.88, 0.9])
    row = remedies.interpolation_summary(path, run).iloc[0]
    assert row["best_alpha"] == 0.5 and row["beats_both"]
    assert row["gain"] == pytest.approx(0.15) and row["clean_cost"] == pytest.approx(0.02)
    assert row["aupf_run"] == pytest.approx(pareto.aupf(run[metrics.TEST_ACC],
                                                        run[metrics.ROBUST]))
    assert row["aupf_gain"] > 0  # (0.88, 0.45) dominates every checkpoint but the last
    # A path below its ends: no interior winner, and nothing added to the frontier.
    flat = _path("fonts", "full", 0, [0.20, 0.10, 0.30], [0.5, 0.7, 0.9])
    row = remedies.interpolation_summary(flat, run).iloc[0]
    assert not row["beats_both"] and row["gain"] == pytest.approx(-0.20)
    assert row["aupf_gain"] == 0  # exactly: what_helps counts the paths with a gain > 0
    assert row["by"] == metrics.ROBUST  # no validation column: the optimistic reading, named


def test_interpolation_paths_pool_over_seeds_per_task_and_strategy():
    run = pd.concat([_run("r0", 0, [0.0] * 4, [0.1, 0.40, 0.35, 0.30], [0.2, 0.6, 0.8, 0.9]),
                     _run("r1", 1, [0.0] * 4, [0.1, 0.40, 0.35, 0.30], [0.2, 0.6, 0.8, 0.9])])
    paths = pd.concat([_path("fonts", "full", 0, [0.20, 0.45, 0.30], [0.5, 0.88, 0.9]),
                       _path("fonts", "full", 1, [0.20, 0.10, 0.30], [0.5, 0.7, 0.9]),
                       _path("fonts", "linear_probe", 0, [0.20, 0.20, 0.20], [0.5, 0.5, 0.5])])
    summary = remedies.interpolation_summary(paths, run)
    pooled = remedies.interpolation_pooled(summary)
    assert pooled["strategy"].tolist() == ["full", "linear_probe"]  # the book's order
    full = pooled.iloc[0]
    assert full["seeds"] == 2 and full["beats_both"] == 1  # seed 0 beats both ends, seed 1 not
    assert full["gain"] == pytest.approx((0.15 - 0.20) / 2)
    assert full["gain_min"] == pytest.approx(-0.20)
    assert full["clean_cost"] == pytest.approx((0.02 + 0.2) / 2)


def test_findings_read_each_task_from_its_strategies_seed_means():
    selection = pd.DataFrame({"task": ["fonts"] * 4 + ["digits"] * 2,
                              "strategy": ["full", "full", "lora", "lora", "full", "full"],
                              "seed": [0, 1, 0, 1, 0, 1],
                              "gain": [0.05, 0.03, 0.01, 0.01, 0.0, 0.0],
                              "cost": [0.10, 0.12, 0.02, 0.04, 0.0, 0.0],
                              "oracle_gain": 0.0, "picked_step": 1, "final_step": 2})
    interpolation = pd.DataFrame({"task": "fonts", "strategy": ["full", "full", "lora", "lora"],
                                  "seed": [0, 1, 0, 1], "by": VAL_ROBUST,
                                  "best_alpha": 0.5, "gain": [0.02, 0.01, -0.03, 0.01],
                                  "beats_both": [True, True, False, True],
                                  "clean_cost": 0.0, "aupf_gain": 0.0})
    bits = remedies.findings(selection, interpolation, ["digits", "fonts"])
    assert bits[1].startswith("- **digits**: choosing the checkpoint gains +0.0 points")
    fonts = bits[2]  # full: gain 0.04, cost 0.11; lora: 0.01, 0.03 (seed means)
    assert "gains +1.0 to +4.0 points of robust accuracy and gives up +3.0 to +11.0 points" in fonts
    assert "robust accuracy is -1.0 to +1.5 points above the better end's" in fonts
    assert "beating both in every seed for full." in fonts  # lora fails seed 0
    assert remedies.findings(None, None, ["fonts"]) == []
    # a difference that rounds to zero prints without a minus sign
    assert remedies.findings(selection.assign(cost=-0.0004), None, ["digits"])[1].count(
        "gives up +0.0 points") == 1


def test_the_interpolation_coefficient_is_chosen_on_validation_when_the_paths_have_it():
    run = _run("r", 0, [0.0] * 4, [0.1, 0.40, 0.35, 0.30], [0.2, 0.6, 0.8, 0.9])
    path = _path("fonts", "full", 0, [0.20, 0.45, 0.25, 0.30], [0.5, 0.8, 0.88, 0.9],
                 alphas=(0.0, 0.25, 0.75, 1.0))
    path[VAL_ROBUST] = [0.2, 0.30, 0.40, 0.3]  # validation prefers 0.75; test would take 0.25
    row = remedies.interpolation_summary(path, run).iloc[0]
    assert row["by"] == VAL_ROBUST and row["best_alpha"] == 0.75
    assert row["robust_best"] == 0.25 and not row["beats_both"]
    assert row["gain"] == pytest.approx(-0.05)


def test_what_helps_states_its_verdicts_by_their_rules():
    frame = pd.concat([
        # full: validation peaks at step 10, test robust falls 0.4 -> 0.3 after it, clean flat
        _run("f0", 0, [0.1, 0.5, 0.4, 0.3], [0.1, 0.4, 0.35, 0.3], [0.2, 0.9, 0.9, 0.9]),
        _run("f1", 1, [0.1, 0.5, 0.4, 0.3], [0.1, 0.4, 0.35, 0.3], [0.2, 0.9, 0.9, 0.9]),
        # lora: validation peaks at the end: the choice is the last point, nothing gained
        _run("l0", 0, [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.3], [0.2, 0.6, 0.8, 0.9], "lora"),
        _run("l1", 1, [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.3], [0.2, 0.6, 0.8, 0.9], "lora"),
    ]).assign(**{metrics.TEST_N: 4000})
    interpolation = pd.DataFrame({"task": "fonts", "strategy": ["full", "full", "lora", "lora"],
                                  "seed": [0, 1, 0, 1], "beats_both": [True, False, True, True],
                                  "clean_cost": [0.01, 0.01, 0.05, 0.03],
                                  "aupf_gain": [0.01, 0.0, 0.02, 0.0], "by": VAL_ROBUST})
    chosen, mixed = remedies.what_helps(frame, interpolation)
    # full is helped (+0.1 at no clean cost), lora cannot be: one of two is no majority
    assert chosen.verdict == "undecided" and chosen.ours.startswith("on 1 of 2")
    assert "on 1 it cannot" in chosen.ours
    assert ("over all 2, robust accuracy changes by +0.050 and clean accuracy by +0.000"
            in chosen.ours)
    # full beats both ends in one seed of two, lora in both but at too high a clean cost
    assert mixed.verdict == "undecided" and "in every seed on 0 of 2" in mixed.ours
    assert "on 2 of 2" in mixed.ours  # both widen the frontier
    assert "by validation robust accuracy at 2/255" in mixed.rule
    assert mixed.sensitivity == {}  # one form of paths: no other reading
    # The same paths in another form that beats both ends in no seed: its verdict beside
    first = interpolation.assign(beats_both=False)
    _, both = remedies.what_helps(frame, interpolation, other_forms={"parameters": first})
    assert both.sensitivity == {"paths scaling the update": "undecided",
                                "paths on the parameters' straight line": "does not hold"}
    assert (both.verdict, both.ours) == (mixed.verdict, mixed.ours)
    assert remedies.what_helps(None, None) == []
    flat = pd.concat([frame[frame.strategy == "lora"],
                      frame[frame.strategy == "lora"].assign(strategy="bitfit")])
    assert remedies.what_helps(flat, None)[0].verdict == "does not hold"


def test_the_robust_upstream_is_compared_run_for_run():
    standard = pd.concat([
        _run("s0", 0, [0.1, 0.4, 0.35, 0.3], [0.1, 0.40, 0.35, 0.30], [0.2, 0.6, 0.8, 0.9]),
        _run("s1", 0, [0.0] * 4, [0.1, 0.30, 0.30, 0.30], [0.2, 0.6, 0.8, 0.9], "lora")])
    robust = pd.concat([
        _run("r0", 0, [0.0] * 4, [0.2, 0.50, 0.50, 0.45], [0.2, 0.6, 0.8, 0.89]),
        _run("r1", 0, [0.0] * 4, [0.2, 0.30, 0.30, 0.20], [0.2, 0.6, 0.8, 0.8], "lora")])
    other_task = _run("x", 0, [0.0] * 4, [0.1] * 4, [0.2] * 4).assign(task="digits")
    runs = remedies.by_upstream(pd.concat([standard, other_task]), robust).assign(
        **{metrics.TEST_N: 20000})  # binomial intervals (no masks in these runs), narrow
    assert set(runs.loc[runs.upstream == "standard", "task"]) == {"fonts"}
    table = remedies.upstream_comparison(runs).set_index(["upstream", "strategy"])
    assert table.loc[("robust", "full"), "first"] == pytest.approx(0.50)
    assert table.loc[("robust", "full"), "final"] == pytest.approx(0.45)
    assert table.loc[("standard", "full"), "drop"] == pytest.approx(0.10)  # peak on validation
    assert table.loc[("robust", "full"), "drop"] == 0  # validation flat: its last point
    assert table.loc[("standard", "full"), "outcome"] == "falls"
    (card,) = remedies.what_helps(None, None, runs)
    # full: +0.15 robust at 0.01 clean; lora: -0.10 robust (and 0.10 clean): 1 of 2 counts,
    # 1 of 2 against: exactly half is no majority either way
    assert card.verdict == "undecided" and card.ours.startswith("1 of 2")
    assert "1 do not" in card.ours
    # the means are over every pair, counted or not, and say which way clean accuracy moves
    assert "over all 2, robust accuracy changes by +0.025 and clean accuracy by -0.055" in card.ours


def test_the_chapter_computes_paths_and_robust_upstream_runs_once(tmp_path, monkeypatch):
    """At the smoke scale on one task: the study's runs (the probe added), a path from the
    probe to the fine-tuned run, and the same grid fine-tuned from the robust upstream model
    (here a perturbed copy of the embedded checkpoint: another file, so other runs); a second
    call computes nothing."""
    import torch
    from safetensors.torch import load_file, save_file

    from rtlib import config, interpolate

    weights = load_file(str(config.EMBEDDED_WEIGHTS))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01 * torch.randn_like(weights[name])
    robust_file = tmp_path / "robust.safetensors"
    save_file(weights, str(robust_file))
    monkeypatch.setattr(config, "ROBUST_WEIGHTS", robust_file)

    kwargs = dict(preset="smoke", tasks=["digits"], strategies=["full"], seeds=[0],
                  robust_tasks=["digits"], results_dir=tmp_path / "store", workers=1,
                  progress=False, steps=8)
    out = remedies.compute(**kwargs)
    assert set(out.chapter.frame["strategy"]) == {"full", "linear_probe"}
    assert out.paths[interpolate.ALPHA].tolist() == [0.0, 0.5, 1.0]
    # the smoke runs have no validation robust accuracy: the optimistic reading, named
    assert len(out.interpolation) == 1 and out.interpolation["by"].iloc[0] == metrics.ROBUST
    assert out.selection["by"].iloc[0] == metrics.VAL_ACC
    assert set(out.selection["strategy"]) == {"full", "linear_probe"}
    assert set(out.robust["strategy"]) == {"full", "linear_probe"}
    assert not set(out.robust["run_id"]) & set(out.chapter.frame["run_id"])
    assert "2 trained now" in out.status  # the two robust upstream runs
    comparison = out.upstream()
    assert set(comparison["upstream"]) == {"standard", "robust"} and len(comparison) == 4
    assert [v.claim.split()[0] for v in out.verdicts()] == ["Choosing", "Interpolating", "A"]
    assert out.other_forms == {}  # full fine-tuning's two forms are one path
    again = remedies.compute(**kwargs)
    assert "0 computed now" in again.status and "0 trained now." in again.status
    pd.testing.assert_frame_equal(again.paths, out.paths)
    # The takeaways page has the study's runs already: they serve, not read again.
    monkeypatch.setattr(remedies, "chapter", lambda *a, **k: pytest.fail("runs read again"))
    reused = remedies.compute(**kwargs, base=out.chapter)
    assert reused.chapter is out.chapter and reused.verdicts() == out.verdicts()
    pd.testing.assert_frame_equal(reused.paths, out.paths)


def test_a_robust_upstream_model_not_made_yet_is_named_before_anything_runs(tmp_path,
                                                                            monkeypatch):
    from rtlib import config, preflight, sweep
    from rtlib.config import ConfigError

    # The same configs checked first while the model exists (as another test in this process
    # may have): the check must not be remembered past the file.
    preflight.check_all(sweep.expand(["digits"], ["full", "linear_probe"], [0], preset="smoke",
                                     weights="embedded_robust"))
    monkeypatch.setattr(config, "ROBUST_WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="^weights: not made yet: .embedded_robust"):
        remedies.compute(preset="smoke", tasks=["digits"], strategies=["full"],
                         robust_tasks=["digits"], results_dir=tmp_path / "store")
    assert not (tmp_path / "store").exists()
