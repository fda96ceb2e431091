"""Weight interpolation: its ends are the two runs it joins, and its rows are stored."""
import pandas as pd
import pytest

from rtlib import interpolate, metrics, store, train
from rtlib.config import ConfigError
from tests.test_engine import tiny_config

COLUMNS = [metrics.TEST_ACC, metrics.robust(1 / 255), metrics.robust(4 / 255),
           metrics.TEST_MASK, metrics.robust_mask(1 / 255)]


def _final(results_dir, config) -> pd.Series:
    return store.load(results_dir, [config]).sort_values(metrics.STEP).iloc[-1]


def test_the_path_joins_the_linear_probe_to_the_fine_tuned_model(tmp_path, monkeypatch):
    probe, full, lora = (tiny_config(strategy=s, steps=8, schedule="every:8")
                         for s in ("linear_probe", "full", "lora"))
    for config in (probe, full, lora):
        train.run(config, tmp_path, progress=False)
    frame = interpolate.path(full, probe, (0, 0.5, 1), tmp_path, device="cpu")
    assert frame[interpolate.ALPHA].tolist() == [0.0, 0.5, 1.0]
    ends = frame.set_index(interpolate.ALPHA)
    for col in COLUMNS:  # bit-exact on the same machine
        assert ends.loc[1.0, col] == _final(tmp_path, full)[col], col
        assert ends.loc[0.0, col] == _final(tmp_path, probe)[col], col
    # LoRA starts as the identity: its path also starts at the probe
    lora_path = interpolate.path(lora, probe, (0, 1), tmp_path, device="cpu")
    for col in COLUMNS:
        assert lora_path.iloc[0][col] == _final(tmp_path, probe)[col], col
        assert lora_path.iloc[1][col] == _final(tmp_path, lora)[col], col

    # stored: asking again computes nothing
    def no_compute(*args, **kwargs):
        raise AssertionError("a stored path must be read, not computed")

    monkeypatch.setattr(train, "prepare", no_compute)
    again = interpolate.path(full, probe, (0, 0.5, 1), tmp_path, device="cpu")
    pd.testing.assert_frame_equal(again, frame)


def test_weights_that_were_not_kept_are_retrained_to_the_same_values(tmp_path):
    config = tiny_config(strategy="lora", steps=8, schedule="every:4")
    train.run(config, tmp_path, progress=False)
    kept = store.read_weights(tmp_path, config)
    store.weights_path(tmp_path, config).unlink()
    again = interpolate.final_weights(config, tmp_path, train.resolve_device("cpu"))
    assert kept.keys() == again.keys()
    assert all((kept[k] == again[k]).all() for k in kept)


@pytest.mark.parametrize("alphas,message", [((0.5,), "too few"), ((0, 1.5), "alphas")])
def test_bad_coefficients_and_probes_are_named(tmp_path, alphas, message):
    probe, full = tiny_config(strategy="linear_probe"), tiny_config(strategy="full")
    with pytest.raises(ConfigError, match=message):
        interpolate.path(full, probe, alphas, tmp_path)
    with pytest.raises(ConfigError, match="^probe"):
        interpolate.path(full, tiny_config(strategy="bitfit"), (0, 1), tmp_path)
    with pytest.raises(ConfigError, match="^probe"):
        interpolate.path(full, tiny_config(strategy="linear_probe", seed=1), (0, 1), tmp_path)
    assert not any(tmp_path.iterdir())
