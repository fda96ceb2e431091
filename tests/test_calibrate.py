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
