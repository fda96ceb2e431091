"""Calibrating the ladder (issue 33): probes on the validation split, fine-tuning checks on the
calibration data, never on the images a study reads its verdicts from."""
from rtlib import calibrate, store, train


def test_the_probe_reads_the_validation_split_with_its_interval():
    row = calibrate.probe_accuracy("digits", "embedded", train_size=200)
    assert row["val_images"] == 20 and row["task"] == "digits"
    assert 0 <= row["low"] <= row["val_acc"] <= row["high"] <= 1
    assert row["val_acc"] > 0.3  # ten digits seen upstream: far above chance (0.1)


def test_finetuning_checks_run_on_other_data_than_the_study_and_summarize_the_peaks(tmp_path):
    configs = calibrate.finetune_configs(["digits"], "embedded", train_size=128, steps=6,
                                         eps=(1 / 255, 4 / 255), test_size=24,
                                         schedule="log:3", preset="smoke")
    [config] = configs
    assert config.data_seed == calibrate.CALIBRATION_DATA_SEED != 0
    assert config.attack == "pgd_early" and config.strategy == "full"
    train.run(config, tmp_path, device="cpu", progress=False)
    frame = store.load(tmp_path, configs)
    [row] = calibrate.finetune_summary(frame).to_dict("records")
    assert row["steps"] == 6 and row["clean_end"] == frame[frame.step == 6].test_acc.item()
    for label in ("1/255", "4/255"):
        assert row[f"robust_peak@{label}"] >= row[f"robust_end@{label}"]
        assert row[f"peak_step@{label}"] in set(frame.step)


def test_the_ladder_table_orders_near_to_far_and_the_bars_fail_where_they_should():
    import pandas as pd
    import pytest

    probe = pd.DataFrame({"upstream": "converged", "task": list("abcdef"),
                          "val_acc": [0.98, 0.90, 0.40, 0.62, 0.81, 0.50],
                          "low": 0.0, "high": 1.0, "val_images": 400})
    finetune = pd.DataFrame({"task": list("abcdef"), "clean_end": [1, 1, .85, .9, .9, .79],
                             "robust_peak@1/255": [.95, .9, .5, .7, .8, .6],
                             "robust_peak@2/255": [.9, .7, .2, .4, .5, .3],
                             "robust_peak@4/255": [.6, .4, .1, .2, .3, .1]})
    table = calibrate.ladder_table(probe, list("abcde"), finetune=finetune)
    assert list(table.index) == list("abedc")  # near to far
    assert table.gap.round(2).tolist()[1:] == [0.08, 0.09, 0.19, 0.22]
    # the strongest budget that leaves at least 0.15: 4/255 where it does, else 2/255
    assert table["headline budget"].tolist() == ["4/255", "4/255", "4/255", "4/255", "2/255"]
    assert table["robust peak"].tolist() == [.6, .4, .3, .2, .2]
    bars = calibrate.ladder_bars(table).met
    assert bars.all() and len(bars) == 6
    # f sits 0.12 and 0.10 from its neighbours, but its fine-tuned clean accuracy is 0.79
    bars = calibrate.ladder_bars(calibrate.ladder_table(probe, list("abdecf"),
                                                        finetune=finetune)).met
    assert not bars["lowest fine-tuned clean accuracy"] and bars.drop(
        "lowest fine-tuned clean accuracy").all()
    # a task the attack barely touches at any budget measured fails the robust bar
    finetune.loc[finetune.task == "a", ["robust_peak@2/255", "robust_peak@4/255"]] = .95, .9
    assert not calibrate.ladder_bars(calibrate.ladder_table(probe, list("abcde"),
                                                            finetune=finetune)).met[
        "robust peak at each headline budget"]
    probe.loc[probe.task == "d", "val_acc"] = 0.75  # 0.06 from e: too close to tell apart
    assert not calibrate.ladder_bars(calibrate.ladder_table(probe, list("abcde"))).met[
        "smallest gap between neighbours"]
    assert not calibrate.ladder_bars(calibrate.ladder_table(probe, list("abc"))).met["tasks"]
    # a task not fine-tuned yet leaves the fine-tuning bars unmet, and says so
    partial = calibrate.ladder_bars(calibrate.ladder_table(probe, list("abcde"),
                                                           finetune=finetune[finetune.task != "b"]))
    assert not partial.met["lowest fine-tuned clean accuracy"]
    assert partial.measured["lowest fine-tuned clean accuracy"].endswith(
        "(1 of 5 tasks not measured yet)")
    # the ladder reads the checks of its own recipe: another recipe's row is left out
    other = pd.concat([finetune.assign(train_size=20000, steps=2000),
                       finetune.assign(train_size=40000, steps=2000, clean_end=0.1)])
    assert calibrate.ladder_table(probe, list("abcde"), finetune=other, recipe=dict(
        train_size=20000, steps=2000)).clean.min() >= 0.85
    with pytest.raises(ValueError, match="no probe of z"):
        calibrate.ladder_table(probe, ["a", "z"])


def test_the_calibration_page_reads_probes_checks_and_scores_each_upstream_model_once(
        tmp_path, monkeypatch):
    import pandas as pd

    from rtlib import config
    from rtlib.report import calibration

    assert calibration.probes(tmp_path) is None and calibration.finetune(tmp_path) is None
    pd.DataFrame({"upstream": ["converged", "converged", "embedded", "embedded"],
                  "task": ["a", "b", "a", "b"], "val_acc": [0.5, 0.9, 0.6, 0.7],
                  "low": 0.4, "high": 1.0, "val_images": 400, "train_size": 4000}
                 ).to_csv(tmp_path / calibrate.PROBE_TABLE, index=False)
    matrix = calibration.probe_matrix(calibration.probes(tmp_path))
    assert list(matrix.index) == ["b", "a"] and matrix.loc["a", "embedded"].startswith("0.600 [")
    assert list(calibration.probe_matrix(calibration.probes(tmp_path), "embedded").index) == [
        "b", "a"]  # 0.7 > 0.6 there too
    monkeypatch.setattr(calibration, "UPSTREAM_ATTACK", dict(images=6, eps=2 / 255, steps=1,
                                                             task="upstream2"))
    table = calibration.upstream_models(tmp_path)
    made = [n for n in config.UPSTREAM_CHECKPOINTS if config.checkpoint_file(n).is_file()]
    assert list(table.index) == made and table.clean.between(0, 1).all()
    assert (table.robust <= table.clean).all()
    assert "6 upstream2 test images" in table.attrs["attack"]
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "upstream").iterdir()}
    assert len(kept) == len(made)
    monkeypatch.setattr("rtlib.pretrain._upstream_model", None)  # a second scoring would fail
    assert calibration.upstream_models(tmp_path).equals(table)  # read back
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "upstream").iterdir()} == kept


def test_ood_domains_name_those_the_upstream_model_never_saw():
    from rtlib.report import calibration

    table = calibration.ood_domains(["greek", "letters_texture"], "embedded")
    # the weak model pre-trained on print, texture and clutter
    assert table.loc["greek", "unseen upstream"] == "outline, dots"
    assert table.loc["letters_texture", "trains on"] == "texture"
    assert "texture" not in table.loc["letters_texture", "OOD domains"]


def test_the_fine_tuning_view_says_the_recipe_once_and_each_peak_with_its_step():
    import pandas as pd

    from rtlib.report import calibration

    summary = pd.DataFrame({"upstream": "converged", "task": ["a", "b"], "strategy": "full",
                            "lr": 1e-3, "train_size": 20000, "steps": 2000,
                            "clean_end": [0.9, 0.8], "train_end": [1.0, 0.9],
                            "robust_peak@2/255": [0.5, 0.3], "peak_step@2/255": [752, 2000],
                            "robust_end@2/255": [0.4, 0.3]})
    view, recipe = calibration.finetune_view(summary)
    assert recipe == "full at lr 0.001, 20,000 images, 2,000 steps"
    assert view.loc["a", "robust 2/255: peak (step) → end"] == "0.500 (752) → 0.400"
    assert list(view.columns[:2]) == ["clean", "training"]
    # two recipes of one task: a row each, keyed by what differs; the rest said once
    twice = pd.concat([summary, summary.iloc[[1]].assign(train_size=40000, clean_end=0.81)])
    view, recipe = calibration.finetune_view(twice)
    assert recipe == "full at lr 0.001, 2,000 steps"
    assert view.index.names == ["task", "training images"]
    assert view.loc[("b", 40000), "clean"] == 0.81 and view.loc[("b", 20000), "clean"] == 0.8
