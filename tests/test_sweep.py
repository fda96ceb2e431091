"""Grids of runs: expansion, skipping, failures, executors, and interruption at random moments."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from rtlib import cli, store, sweep, train
from rtlib.report import study
from rtlib.config import ConfigError

from .test_engine import TINY_MODEL

SMALL = dict(model="vit_glyph_p4_24", model_kwargs=TINY_MODEL, weights=None, train_size=64,
             test_size=32, train_eval_size=32, steps=8, batch_size=16, schedule="every:4",
             eps=(2 / 255,), attack_steps=2, lr=1e-3)


def test_expand_is_the_full_product_and_validates_first():
    configs = sweep.expand(["synthetic"], ["bitfit", "lora"], [0, 1], preset="smoke",
                           hparams={"lora": {"rank": [2, 4]}}, **SMALL)
    assert len(configs) == 2 * (1 + 2)
    assert {c.hparams.get("rank") for c in configs if c.strategy == "lora"} == {2, 4}
    assert len({c.run_id() for c in configs}) == len(configs)
    with pytest.raises(ConfigError, match="^strategy"):
        sweep.expand(["synthetic"], ["bitfit", "lorra"], preset="smoke", **SMALL)
    with pytest.raises(ConfigError, match="^tasks: not a list"):
        sweep.expand("synthetic", ["bitfit"], preset="smoke", **SMALL)
    # papermill's -p passes a list as text: named by its field, not read character by character
    with pytest.raises(ConfigError, match=r"^seeds: not a list: '\[0, 1\]'.*-y \"seeds: "):
        sweep.expand(["synthetic"], ["bitfit"], "[0, 1]", preset="smoke", **SMALL)


def test_sweep_skips_done_runs_and_records_failures(tmp_path, monkeypatch):
    bad_weights = tmp_path / "broken.safetensors"
    bad_weights.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConfigError, match="broken.safetensors"):  # answered at the door
        sweep.expand(["synthetic"], ["full"], preset="smoke",
                     **{**SMALL, "weights": str(bad_weights)})
    good = sweep.expand(["synthetic"], ["bitfit", "lora"], preset="smoke", **SMALL)
    bad = sweep.expand(["synthetic"], ["full"], preset="smoke", **SMALL)
    real_prepare = train.prepare

    def prepare(config):  # one run fails while it runs
        if config.strategy == "full":
            raise RuntimeError("out of memory, on purpose")
        return real_prepare(config)

    monkeypatch.setattr(train, "prepare", prepare)
    summary = sweep.run(good + bad, tmp_path / "r", progress=False)
    assert summary.set_index("strategy")["status"].to_dict() == {
        "bitfit": "done", "lora": "done", "full": "failed"}
    failure = json.loads((tmp_path / "r" / "failed" / f"{bad[0].run_id()}.json").read_text())
    assert "out of memory, on purpose" in failure["error"]
    text = sweep.summarize(summary)
    assert text.startswith("3 runs: 2 done, 0 skipped (already complete), 1 failed")
    again = sweep.run(good, tmp_path / "r", progress=False)
    assert (again["status"] == "skipped").all()
    nothing = sweep.run([], tmp_path / "r", progress=False)  # same columns, no rows
    assert list(nothing.columns) == list(summary.columns) and nothing.empty


def test_nan_loss_stops_the_run_with_a_clear_reason(tmp_path, monkeypatch):
    real_prepare = train.prepare

    def poisoned(config):
        task, model = real_prepare(config)
        with __import__("torch").no_grad():
            model.backbone.get_classifier().weight.fill_(float("nan"))
        return task, model

    monkeypatch.setattr(train, "prepare", poisoned)
    config = sweep.expand(["synthetic"], ["linear_probe"], preset="smoke", **SMALL)[0]
    with pytest.raises(train.TrainingDiverged, match="loss became nan at step 1"):
        train.run(config, tmp_path, progress=False)
    assert not store.run_files(tmp_path)


def test_unwritable_results_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results directory should be")
    config = sweep.expand(["synthetic"], ["bitfit"], preset="smoke", **SMALL)[0]
    with pytest.raises(store.StoreError, match="results directory .* is not writable"):
        train.run(config, blocker, progress=False)


def test_local_and_ray_executors_give_identical_results(tmp_path, capsys):
    pytest.importorskip("ray")
    configs = sweep.expand(["synthetic"], ["bitfit", "adapter"], [0, 1], preset="smoke",
                           **SMALL)
    local = sweep.run(configs, tmp_path / "local", progress=False)
    ray_ = sweep.run(configs, tmp_path / "ray", executor="ray", progress="lines")
    # Ray reports each run as it ends, as the local executor does.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("runs ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    named = sorted(line.split(": ")[0].split(" ", 2)[2] for line in lines)
    assert named == sorted(sweep.label(c) for c in configs)
    assert (local["status"] == "done").all() and (ray_["status"] == "done").all()
    cols = ["run_id", "step", "train_acc", "test_acc", "robust_acc", "ood_acc@shifted"]
    a = store.load(tmp_path / "local")[cols].reset_index(drop=True)
    b = store.load(tmp_path / "ray")[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def _sweep_cli(results):
    return [sys.executable, "-m", "rtlib", "sweep", "--quiet", "--preset", "smoke",
            "--tasks", "synthetic", "--strategies", "bitfit lora adapter", "--seeds", "0", "1",
            "--no-weights", "--train-size", "64", "--test-size", "32", "--train-eval-size",
            "32", "--steps", "8", "--batch-size", "16", "--schedule", "every:4",
            "--attack-steps", "2", "--results-dir", str(results)]


def test_killing_a_sweep_at_random_moments_loses_nothing(tmp_path):
    """20 trials: kill the sweep at a random moment, check the store, then resume it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = tmp_path / "r"
    rng = random.Random(0)
    expected = 6
    for trial in range(20):
        before = {p.name for p in store.run_files(results)}
        proc = subprocess.Popen(_sweep_cli(results), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 5.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        files = store.run_files(results)
        if results.is_dir():  # (a sweep killed before its first write leaves no folder)
            frame = store.load(results)  # loads: no half-written run
            assert set(frame.groupby("run_id").size()) <= {3}  # 3 points each, no duplicates
        assert len({p.name for p in files}) == len(files)
        assert before <= {p.name for p in files}  # nothing completed was lost
    finished = subprocess.run(_sweep_cli(results), env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    done = len(store.run_files(results))
    assert done == expected
    assert f"{expected - len(files)} done" in finished.stdout
    assert not list((results / "partial").glob("*.pt"))


BAD_INPUTS = [  # (argv, text the message must contain)
    (["run", "--task", "cifar11", "--strategy", "lora"], "task: unknown value 'cifar11'"),
    (["run", "--task", "digits", "--strategy", "lorra"], "strategy: unknown value 'lorra'"),
    (["run", "--task", "digits", "--strategy", "lora", "--domain", "sketch"],
     "domain: unknown value 'sketch'"),
    (["run", "--task", "digits", "--strategy", "lora", "--eps", "-1/255"],
     "--eps: expected a budget in [0, 1] like 1/255 or 0.0039, got '-1/255'"),
    (["run", "--task", "digits", "--strategy", "lora", "--eps", "2"], "--eps"),
    (["run", "--task", "digits", "--strategy", "lora", "--eps", "two"], "--eps"),
    (["run", "--task", "digits", "--strategy", "lora", "--steps", "0"], "steps: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--steps", "ten"], "--steps"),
    (["run", "--task", "digits", "--strategy", "lora", "--batch-size", "-4"],
     "batch_size: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--lr", "fast"], "--lr"),
    (["run", "--task", "digits", "--strategy", "lora", "--lr", "0"], "lr: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--schedule", "hourly"],
     "schedule: unknown schedule"),
    (["run", "--task", "digits", "--strategy", "lora", "--attack", "fgsm"],
     "attack: unknown value 'fgsm'"),
    (["run", "--task", "digits", "--strategy", "lora", "--weights", "/no/such.safetensors"],
     "weights: file not found"),
    (["run", "--task", "digits", "--strategy", "lora", "--hparam", "rank=0"],
     "lora.rank: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--hparam", "rnak=4"],
     "lora.rnak: unknown hyper-parameter"),
    (["run", "--task", "digits", "--strategy", "adapter", "--hparam", "reduction_factor=0"],
     "adapter.reduction_factor: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--hparam", "target_modules=[query]"],
     "lora.target_modules: unknown value 'query'"),
    (["run", "--task", "digits", "--strategy", "lora", "--model", "vit_nonsense"],
     "model: unknown timm model"),
    (["run", "--task", "digits", "--strategy", "lora", "--preset", "huge"], "--preset"),
    (["sweep", "--tasks", "digits cifar11"], "task: unknown value 'cifar11'"),
    (["sweep", "--tasks", "digits", "--executor", "slurm"], "--executor"),
    (["sweep", "--tasks", "digits", "--seeds", "x"], "--seeds"),
    (["strategies", "--num-classes", "0"], "--num-classes"),
    # issue 14: every option, and the smaller rough edges
    (["run", "--task", "digits", "--strategy", "lora", "--batch-size", "9999"],
     "batch_size: larger than the data"),
    (["run", "--task", "digits", "--strategy", "lora", "--train-size", "10"],
     "batch_size: larger than the data"),
    (["run", "--task", "digits", "--strategy", "lora", "--device", "gpu"],
     "device: unknown device 'gpu'"),
    (["run", "--task", "digits", "--strategy", "lora", "--device", "cuda:9"], "device:"),
    (["run", "--task", "digits", "--strategy", "lora", "--hparam", "alpha=1e30"],
     "lora.alpha: out of range"),
    (["run", "--task", "digits", "--strategy", "dora", "--hparam", "alpha=1e30"],
     "dora.alpha: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--val-fraction", "0.7"],
     "val_fraction: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--ood-train-domains", "some"],
     "ood_train_domains: unknown value 'some'"),
    (["run", "--task", "digits", "--strategy", "lora", "--lr-schedule", "wavy"],
     "lr_schedule: unknown value 'wavy'"),
    (["run", "--task", "digits", "--strategy", "lora", "--precision", "half"],
     "precision: unknown value 'half'"),
    (["run", "--task", "digits", "--strategy", "lora", "--step-size-ratio", "2"],
     "step_size_ratio: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--epochs", "-1"], "epochs: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--grad-clip", "-1"],
     "grad_clip: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--weight-decay", "-0.1"],
     "weight_decay: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--attack-steps", "0"],
     "attack_steps: out of range"),
    (["run", "--task", "digits", "--strategy", "lora", "--schedule", "log:1"],
     "schedule: too few points"),
    (["run", "--task", "cifar10", "--strategy", "lora", "--domain", "sketch"],
     "domain: unknown domain 'sketch'"),
    (["run", "--task", "digits", "--strategy", "lora", "--eps", "2/0"], "--eps"),
    (["run", "--task", "digits", "--strategy", "lora", "--weights", "notes.txt"],
     "weights: file not found"),
    (["sweep", "--tasks", "digits", "--strategies", "lora nope"], "strategy: unknown value 'nope'"),
    (["sweep", "--tasks", "digits", "--batch-size", "0"], "batch_size: out of range"),
    (["pretrain", "--steps", "0"], "steps: out of range"),
    (["pretrain", "--init", "/no/such.safetensors"], "init: file not found"),
    (["pretrain", "--label-smoothing", "1"], "label_smoothing: out of range"),
    (["pretrain", "--lr", "-1"], "lr: out of range"),
    (["book", "-p", "step", "5"], "-p step: no notebook declares this parameter"),
    (["book", "-p", "foo", "1"], "-p foo: no notebook declares this parameter"),
    (["book", "-p", "steps", "0"], "steps: out of range"),
    (["book", "-p", "tasks", "[cifar11]"], "task: unknown value 'cifar11'"),
    (["book", "-p", "executor", "slurm"], "executor: unknown value 'slurm'"),
    (["book", "-p", "eps", "[-1]"], "eps: out of range"),
    (["book", "-p", "preset", "huge"], "preset: unknown value 'huge'"),
    (["book", "-p", "domain", "sketch"], "domain: unknown value 'sketch'"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a[2:4] + a[-2:])
                                                          for a, _ in BAD_INPUTS])
def test_bad_cli_input_is_answered_before_any_compute(argv, message, capsys, monkeypatch,
                                                      tmp_path):
    import rtlib.pretrain
    from rtlib.report import book

    def no_compute(*args, **kwargs):
        raise AssertionError("bad input reached the compute")

    monkeypatch.setattr(train, "prepare", no_compute)
    monkeypatch.setattr(rtlib.pretrain, "pretrain", no_compute)
    monkeypatch.setattr(book, "execute", no_compute)
    store_dir = tmp_path / "results"
    store_dir.mkdir()
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + (["--results-dir", str(store_dir)] if argv[0] in ("run", "sweep")
                         else ["--out", str(tmp_path / "w.safetensors")]
                         if argv[0] == "pretrain" else []))
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.rglob("*")) == [store_dir]  # nothing written anywhere


def test_bad_weights_files_are_named_and_never_run(tmp_path, capsys, monkeypatch):
    import pickle

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "PAYLOAD-RAN"),)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(256))
    planted = tmp_path / "planted.pth"
    planted.write_bytes(pickle.dumps({"head.weight": Payload()}))
    text = tmp_path / "notes.txt"
    text.write_text("weights")
    monkeypatch.setattr(train, "prepare", lambda *a, **k: pytest.fail("compute started"))
    store_dir = tmp_path / "results"
    for path, message in ((garbage, "unreadable"), (planted, "unreadable"),
                          (text, "unsupported file type")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["run", "--task", "digits", "--strategy", "lora", "--preset", "smoke",
                      "--weights", str(path), "--results-dir", str(store_dir)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"weights: {message}" in err and str(path) in err
    assert not (tmp_path / "PAYLOAD-RAN").exists() and not store_dir.exists()


@pytest.mark.parametrize("params,field", [
    ({"tasks": ["cifar11"]}, "task"), ({"strategies": ["lorra"]}, "strategy"),
    ({"eps": [-0.1]}, "eps"), ({"steps": 0}, "steps"), ({"steps": "ten"}, "steps"),
    ({"preset": "huge"}, "preset"), ({"seeds": ["a"]}, "seed"),
    ({"domain": "sketch"}, "domain"), ({"executor": "slurm"}, "executor"),
])
def test_bad_notebook_parameters_name_the_field(params, field, monkeypatch, tmp_path):
    monkeypatch.setattr(train, "prepare", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("bad input reached the training loop")))
    args = {"tasks": ["digits"], "strategies": ["lora"], "results_dir": tmp_path, **params}
    with pytest.raises(ConfigError) as err:
        study.runs(progress=False, **{"seeds": [0], **args})
    assert err.value.field == field


def test_parallel_local_workers_match_one_process(tmp_path):
    configs = sweep.expand(["synthetic"], ["bitfit", "lora"], preset="smoke", **SMALL)
    one = sweep.run(configs, tmp_path / "one", progress=False, workers=1)
    two = sweep.run(configs, tmp_path / "two", progress=False, workers=2)
    assert (one["status"] == "done").all() and (two["status"] == "done").all()
    assert list(two["run_id"]) == [c.run_id() for c in configs]
    cols = ["run_id", "step", "test_acc", "robust_acc"]
    a, b = store.load(tmp_path / "one")[cols], store.load(tmp_path / "two")[cols]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True),
                                  atol=1e-6)


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first, then the
    parent's pid), or None for a process that is gone."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc: no extra package)."""
    return {int(p) for p in os.listdir("/proc")
            if p.isdigit() and (fields := _stat(int(p))) and int(fields[1]) == pid}


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_pool_workers_end_with_the_process_that_started_them(tmp_path):
    """A notebook kernel shut down, or a sweep killed, must not leave its workers training
    their runs to the end for nobody."""
    code = (f"from rtlib import sweep\n"
            f"configs = sweep.expand(['synthetic'], ['bitfit', 'lora'], preset='smoke', "
            f"**{dict(SMALL, steps=100_000, schedule='every:50000')!r})\n"
            f"sweep.run(configs, {str(tmp_path)!r}, progress=False, workers=2)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ,
                                                                "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline and len(workers) < 2:  # the two workers (and a tracker)
        workers = {p for p in _children(proc.pid) if _is_pool_worker(p)}
        time.sleep(0.5)
    assert len(workers) == 2 and proc.poll() is None
    time.sleep(3)  # in the middle of their runs
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _running(workers):
        time.sleep(0.5)
    alive = _running(workers)
    for p in alive:  # (leave nothing behind if the check fails)
        os.kill(p, signal.SIGKILL)
    assert not alive, "workers outlived the process that started them"


def _is_pool_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:  # (gone meanwhile, e.g. a short-lived helper)
        return False


def _running(pids: set[int]) -> list[int]:
    """Those of ``pids`` still running (not exited; an exited one may linger as a zombie
    until its new parent reaps it)."""
    return [p for p in pids if (fields := _stat(p)) and fields[0] not in ("Z", "X")]
