"""The fine-tuning loop, the evaluation schedule and the results store, end to end."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rtlib import metrics, preflight, store, train
from rtlib.config import ConfigError
from rtlib.config import ConfigError, RunConfig, parse_schedule

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = {"img_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2}


def tiny_config(**changes) -> RunConfig:
    base = dict(task="synthetic", strategy="lora", model="vit_glyph_p4_24",
                model_kwargs=TINY_MODEL, train_size=128, test_size=64, train_eval_size=64,
                steps=24, batch_size=16, lr=3e-3, schedule="every:8", eps=(1 / 255, 4 / 255),
                attack_steps=3)
    return RunConfig(**{**base, **changes})


def test_schedules():
    assert parse_schedule("every:8", 24) == [0, 8, 16, 24]
    assert parse_schedule("every:10", 25) == [0, 10, 20, 25]
    log = parse_schedule("log:12", 300)
    assert len(log) == 12 and log[0] == 0 and log[-1] == 300 and log == sorted(set(log))
    official = parse_schedule("official", 20_000)
    assert official[:4] == [0, 50, 100, 120] and 8000 in official and official[-1] == 20_000
    assert parse_schedule("official", 120) == [0, 50, 100, 120]
    # a union: log-spaced early, even late (the ladder study's)
    assert parse_schedule("log:6+every:500", 2000) == [0, 40, 106, 283, 500, 752, 1000, 1500,
                                                        2000]
    for bad in ("log:1", "every:0", "cosine", "log:x", "official:3", "log:6+", "log:6+every:0"):
        with pytest.raises(ConfigError, match="^schedule"):
            parse_schedule(bad, 100)


def test_run_id_is_stable_and_sensitive():
    a, b = tiny_config(), tiny_config()
    assert a.run_id() == b.run_id()
    assert a.run_id() != tiny_config(seed=1).run_id()
    assert a.run_id() != tiny_config(hparams={"rank": 4}).run_id()
    assert RunConfig.from_dict(a.to_dict()).run_id() == a.run_id()


@pytest.mark.parametrize("changes,field", [
    ({"task": "cifar11"}, "task"), ({"strategy": "lorra"}, "strategy"),
    ({"domain": "sketch"}, "domain"), ({"eps": (-1 / 255,)}, "eps"), ({"eps": ()}, "eps"),
    ({"steps": 0}, "steps"), ({"lr": 0}, "lr"), ({"batch_size": "64"}, "batch_size"),
    ({"schedule": "hourly"}, "schedule"), ({"attack": "fgsm"}, "attack"),
    ({"weights": "/nonexistent.safetensors"}, "weights"), ({"model": "vit_nonsense"}, "model"),
])
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ConfigError) as err:
        preflight.check(tiny_config(**changes))
    assert err.value.field == field


def test_end_to_end_run_writes_a_loadable_store(tmp_path):
    config = tiny_config()
    path = train.run(config, tmp_path, progress=False)
    assert path == store.run_path(tmp_path, config) and path.is_file()
    frame = store.load(tmp_path)
    assert list(frame["step"]) == [0, 8, 16, 24]
    for col in ("run_id", "task", "strategy", "seed", "hparams", "trainable", "total", "epoch",
                "images_seen", "train_loss", "train_acc", "test_acc", "robust_acc@1/255",
                "robust_acc@4/255", "ood_acc@shifted", "train_seconds", "eval_seconds"):
        assert col in frame.columns, col
    assert frame["images_seen"].tolist() == [0, 128, 256, 384]
    assert frame["epoch"].iloc[-1] == pytest.approx(3.0)
    assert frame["train_loss"].isna().tolist() == [True, False, False, False]
    assert (frame["robust_acc@1/255"] <= frame["test_acc"]).all()
    assert (frame["robust_acc@4/255"] <= frame["robust_acc@1/255"]).all()
    assert frame["test_acc"].iloc[-1] > frame["test_acc"].iloc[0]  # it learned something
    meta = store.read_meta(path)
    assert meta["config"] == config.to_dict() and meta["seed"] == 0
    assert {"torch", "timm", "peft", "torchattacks"} <= set(meta["versions"])
    assert 0 < meta["trainable"] < meta["total"]
    assert not (tmp_path / "partial" / f"{config.run_id()}.pt").exists()
    kept = store.read_weights(tmp_path, config)  # the final trainable parameters, head included
    model = train.prepare(config)[1]
    assert set(kept) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert sum(t.numel() for t in kept.values()) == meta["trainable"]


def test_val_robust_attacks_the_validation_split_at_the_first_budget(tmp_path):
    config = tiny_config(steps=8, schedule="every:4", val_fraction=0.25, val_robust=True)
    frame = store.load(train.run(config, tmp_path, progress=False).parent.parent)
    column = metrics.val_robust(1 / 255)
    assert metrics.val_robust_columns(frame) == [column]  # the first budget only
    assert (frame[column] <= frame[metrics.VAL_ACC]).all() and frame[column].notna().all()
    assert set(metrics.long(frame)["metric"]) >= {"val", "val_robust"}
    # a budget of 0 attacks nothing: validation robust accuracy is validation accuracy
    zero = store.load(train.run(tiny_config(steps=4, schedule="every:4", val_fraction=0.25,
                                            val_robust=True, eps=(0.0,)), tmp_path / "z",
                                progress=False).parent.parent)
    assert zero[metrics.val_robust(0.0)].tolist() == zero[metrics.VAL_ACC].tolist()
    assert tiny_config().run_id() == tiny_config(val_robust=False).run_id()
    assert config.run_id() != tiny_config(steps=8, schedule="every:4",
                                          val_fraction=0.25).run_id()
    with pytest.raises(ConfigError, match="^val_robust"):
        preflight.check(tiny_config(val_robust=True))  # no validation split


def test_complete_run_is_a_no_op(tmp_path, monkeypatch):
    config = tiny_config(steps=8)
    path = train.run(config, tmp_path, progress=False)
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a complete run must not be prepared again")

    monkeypatch.setattr(train, "prepare", no_training)
    assert train.run(config, tmp_path, progress=False) == path
    assert path.stat().st_mtime_ns == mtime


def test_same_config_gives_the_same_numbers(tmp_path):
    config = tiny_config(steps=8)
    a = store.load(train.run(config, tmp_path / "a", progress=False).parent.parent)
    b = store.load(train.run(config, tmp_path / "b", progress=False).parent.parent)
    cols = ["step", "train_loss", "train_acc", "test_acc", "robust_acc@1/255",
            "robust_acc@4/255", "ood_acc@shifted"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def _cli(config: RunConfig, results: Path) -> list[str]:
    args = [sys.executable, "-m", "rtlib", "run", "--preset", "smoke", "--quiet",
            "--task", config.task, "--strategy", config.strategy, "--results-dir", str(results),
            "--model", config.model, "--train-size", str(config.train_size),
            "--test-size", str(config.test_size), "--train-eval-size",
            str(config.train_eval_size), "--steps", str(config.steps), "--batch-size",
            str(config.batch_size), "--lr", str(config.lr), "--schedule", config.schedule,
            "--attack-steps", str(config.attack_steps), "--warmup-steps", "0", "--no-weights",
            "--val-fraction", str(config.val_fraction),
            "--eps", *[str(e) for e in config.eps]]
    return args


def test_sigkill_at_a_random_moment_loses_nothing_and_resume_matches(tmp_path):
    # Through the CLI, so the config carries the smoke preset's model (no model_kwargs there).
    config = RunConfig(task="synthetic", strategy="adapter", model="vit_glyph_p4_24",
                       train_size=128, test_size=64, train_eval_size=64, steps=48,
                       batch_size=16, lr=1e-3, schedule="every:8", eps=(2 / 255,),
                       attack_steps=5, warmup_steps=0)
    # A completed run in the same store, which the kill must not touch (small: it only has to
    # exist).
    done = RunConfig(**{**config.to_dict(), "strategy": "bitfit", "steps": 16,
                        "eps": (2 / 255,)})
    results = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(done, results), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_cli(config, results), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    partial = results / "partial" / f"{config.run_id()}.pt"
    deadline = time.time() + 120
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0, 0.5))  # a random moment after the first evaluation point
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    frame = store.load(results)  # every completed run is loadable
    assert set(frame["strategy"]) <= {"bitfit", "adapter"} and "bitfit" in set(frame["strategy"])
    for p in store.run_files(results):
        store.read_meta(p)  # complete, readable files only
    finished = subprocess.run(_cli(config, results), env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    again = subprocess.run(_cli(config, results), env=env, capture_output=True, text=True)
    assert "already complete" in again.stdout
    resumed = store.load(results, [config])
    # The same run, never interrupted, in another store:
    clean = tmp_path / "clean"
    subprocess.run(_cli(config, clean), check=True, env=env, capture_output=True)
    reference = store.load(clean)
    cols = ["step", "train_acc", "test_acc", "robust_acc@2/255", "ood_acc@shifted"]
    assert len(resumed) == 7  # steps 0, 8, ..., 48
    pd.testing.assert_frame_equal(resumed[cols].reset_index(drop=True),
                                  reference[cols].reset_index(drop=True))
    assert not list((results / "partial").glob("*.pt"))


def test_cli_options_reach_the_run_config():
    from rtlib import cli

    args = cli.build_parser().parse_args(
        ["run", "--task", "fonts", "--strategy", "lora", "--preset", "smoke", "--eps", "1/255",
         "4/255", "--steps", "7", "--hparam", "rank=4", "--no-weights"])
    config = cli.run_config_from_args(args)
    assert config.eps == (1 / 255, 4 / 255)
    assert (config.steps, config.hparams, config.weights) == (7, {"rank": 4}, None)
    assert (config.precision, config.compile, config.merge_for_eval) == ("auto", False, True)
    # --no-weights beside --weights: an error naming both, not the last one silently winning
    # (a run from random weights that was meant to start from an upstream model)
    for order in (["--weights", "converged", "--no-weights"],
                  ["--no-weights", "--weights", "converged"]):
        args = cli.build_parser().parse_args(
            ["run", "--task", "fonts", "--strategy", "full", "--preset", "smoke", *order])
        with pytest.raises(ConfigError, match="--weights.*--no-weights"):
            cli.run_config_from_args(args)
    args = cli.build_parser().parse_args(
        ["sweep", "--tasks", "fonts", "--preset", "smoke", "--precision", "bf16", "--compile",
         "--no-merge-eval"])
    fields = cli.run_overrides(args)
    assert (fields["precision"], fields["compile"], fields["merge_for_eval"]) == \
        ("bf16", True, False)
