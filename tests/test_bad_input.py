"""Bad input at the edges (issue 32): whole processes, the way a user meets them.

Every case exits with status 2 and one error line naming the field, prints no traceback, writes
nothing, and answers within seconds; every numeric option of every command is fuzzed over
{0, -1, huge, 2^63, nan, inf, 1e309}: it is either accepted (a dry run, or the compute reached
and stopped by the test) or refused with the field named, never a traceback or a hang.
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rtlib import cli, store, train
from rtlib.config import EMBEDDED_WEIGHTS, MAX_SEED, ConfigError, RunConfig, checkout_root

ROOT = checkout_root(Path(__file__).parent)
RUN = ["run", "--preset", "smoke", "--task", "digits", "--strategy", "lora", "--quiet"]
HUGE = "99999999999999999999999"


def _files(tmp: Path) -> dict[str, Path]:
    """Planted inputs: weights that are not the model's, damaged checkpoints, a file where a
    folder belongs."""
    files = {"foo": tmp / "foo.safetensors", "lora": tmp / "lora.safetensors",
             "empty": tmp / "empty.safetensors", "header": tmp / "header.safetensors",
             "pickle": tmp / "payload.pth", "file": tmp / "a-file"}
    if not files["foo"].exists():
        save_file({"foo": torch.zeros(3)}, files["foo"])
        save_file({"backbone.base_model.model.blocks.0.attn.qkv.lora_A.weight":
                   torch.zeros(4, 128)}, files["lora"])
        files["empty"].write_bytes(b"")
        files["header"].write_bytes(struct.pack("<Q", 2**62) + b"{}")
        files["pickle"].write_bytes(pickle.dumps({"x": 1}))
        files["file"].write_text("not a folder")
    return files


# (argv with {name} placeholders for the planted files, text the error line must contain)
CASES = [
    (RUN + ["--weights", "{foo}"], "weights: does not fit the model"),
    (RUN + ["--weights", "{lora}"], "weights: does not fit the model"),
    (RUN + ["--steps", HUGE], "steps: out of range"),
    (RUN + ["--schedule", "log:100000000000"], "schedule:"),
    (RUN + ["--schedule", "every:1", "--steps", "5000000"], "schedule:"),
    (RUN + ["--seed", "99999999999999999999"], "seed: out of range"),
    (RUN + ["--data-seed", str(2**63)], "data_seed: out of range"),
    (RUN + ["--test-size", "9999999"], "test_size:"),
    (RUN + ["--epochs", "99999999"], "epochs: out of range"),
    (RUN + ["--steps", "1e29", "--dry-run"], "--steps"),
    (RUN + ["--grad-clip", "inf"], "grad_clip: out of range"),
    (RUN + ["--hparam", "target_modules=[q, k"], "target_modules: cannot be read"),
    (RUN + ["--results-dir", ""], "--results-dir: empty"),
    (RUN + ["--results-dir", "{file}"], "--results-dir:"),
    (["sweep", "--preset", "smoke", "--tasks", "digits", "--results-dir", "{file}"],
     "--results-dir:"),
    (["sweep", "--preset", "smoke", "--tasks", "", "--results-dir", "results"], "--tasks: empty"),
    (["study", "--preset", "smoke", "--results-dir", "{file}"], "--results-dir:"),
    (["pretrain", "--batch-size", HUGE, "--out", "w.safetensors"], "batch_size: out of range"),
    (["pretrain", "--seed", str(2**63), "--out", "w.safetensors"], "seed: out of range"),
    (["pretrain", "--init", "{empty}", "--out", "w.safetensors"], "init: unreadable"),
    (["pretrain", "--init", "{header}", "--out", "w.safetensors"], "init: unreadable"),
    (["pretrain", "--init", "{pickle}", "--out", "w.safetensors"], "init: unsupported file type"),
    (["pretrain", "--init", "{foo}", "--out", "w.safetensors"], "init: does not fit the model"),
    (["pretrain", "--out", "."], "--out: a folder"),
    (["pretrain", "--out", "{file}/w.safetensors"], "--out:"),
    (["strategies", "--num-classes", HUGE], "--num-classes"),
    (["strategies", "--img-size", "99999999"], "--img-size"),
    (["book", "-p", "seeds", "[0, 1"], "-p seeds: cannot be read"),
    (["book", "-p", "steps", HUGE], "steps: out of range"),
    (["book", "-p", "seeds", f"[{HUGE}]"], "seed: out of range"),
    (["book", "-p", "results_dir", "{file}"], "results_dir:"),
    # the paper's path offline: the dataset, then (with a local folder) the hub's weights
    (["run", "--preset", "paper", "--task", "cifar10", "--strategy", "lora"],
     "data_dir: the dataset uoft-cs/cifar10 is not downloaded and the hub cannot be reached"),
    (["run", "--preset", "paper", "--task", "cifar10", "--strategy", "lora", "--data-dir", "."],
     "weights: vit_base_patch16_224.orig_in21k's weights"),
]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
            "RTLIB_DATA": str(tmp / "data"), "PYTHONPATH": str(ROOT)}


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    files = _files(tmp_path)
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    committed = _snapshot(ROOT / "study")
    cwd = ROOT if argv[0] == "book" else work
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rtlib", *argv], cwd=cwd, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert not any(work.iterdir()), list(work.rglob("*"))  # nothing written
    assert _snapshot(ROOT / "study") == committed  # nothing started in the committed study
    assert seconds < 60  # refused at the door, not after a computation


FUZZ = ["0", "-1", HUGE, str(2**63), "nan", "inf", "1e309"]


def _numeric_options(parser_name: str) -> list[str]:
    """Every option of a sub-command whose values are numbers (from its own parser)."""
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[parser_name]
    return sorted(opt for a in sub._actions for opt in a.option_strings[:1]
                  if a.type is not None and a.type not in (str,) and a.nargs != 0
                  and getattr(a.type, "__name__", "") in ("int", "float", "integer", "_budget",
                                                          "_seed", "parse"))


COMMANDS = {  # each command's fixed arguments: a dry run where it has one
    "run": RUN[1:] + ["--dry-run"],
    "demo": ["--preset", "smoke", "--task", "digits", "--strategy", "lora"],
    "pretrain": ["--out", "{tmp}/w.safetensors", "--quiet"],
    "strategies": ["--model", "vit_glyph_p4_24"],
    "sweep": ["--preset", "smoke", "--tasks", "digits", "--strategies", "lora"],
    "study": ["--preset", "smoke", "--dry-run", "--no-remedies"],
}


def test_every_numeric_option_of_every_command_is_fuzzed():
    options = {name: _numeric_options(name) for name in COMMANDS}
    assert {"--steps", "--seed", "--data-seed", "--test-size", "--lr", "--eps"} <= \
        set(options["run"])
    assert {"--steps", "--batch-size", "--seed", "--adv-eps", "--threads"} <= \
        set(options["pretrain"])
    assert {"--num-classes", "--img-size"} <= set(options["strategies"])
    assert {"--seeds", "--steps", "--workers"} <= set(options["study"])


class _Reached(Exception):
    """The input passed every check and reached the compute."""


@pytest.mark.parametrize("command", list(COMMANDS))
def test_numeric_fuzz_is_accepted_or_refused_by_name(command, tmp_path, monkeypatch, capsys):
    import rtlib.pretrain
    from rtlib import sweep
    from rtlib.report import demo

    def reached(*args, **kwargs):
        raise _Reached

    for target, name in ((rtlib.pretrain, "pretrain"), (train, "run"), (sweep, "run"),
                         (demo, "live"), (store, "load")):
        monkeypatch.setattr(target, name, reached)
    monkeypatch.chdir(tmp_path)
    fixed = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command]]
    extra = ["--results-dir", str(tmp_path / "r")] if command in ("run", "sweep", "demo") \
        else []
    outcomes = {}
    for option in _numeric_options(command):
        for value in FUZZ:
            argv = [command, *fixed, *extra, option, value]
            try:
                status = cli.main(argv)
            except SystemExit as exit_:
                status = exit_.code
            except _Reached:
                status = "reached"
            err = capsys.readouterr().err
            if status == 2:  # refused: the line names the option or its field
                field = option.lstrip("-").replace("-", "_")
                assert field in err or option in err, (argv, err)
            else:
                assert status in (0, "reached"), (argv, status, err)
            outcomes[option, value] = status
    refused = [k for k, v in outcomes.items() if v == 2]
    assert refused  # the fuzz reaches the checks
    for option in _numeric_options(command):  # nan, inf and 1e309 are never a valid value
        assert all(outcomes[option, v] == 2 for v in ("nan", "inf", "1e309")), option


# -- stores heal -------------------------------------------------------------------------------
def _tiny(**changes) -> RunConfig:
    from .test_engine import tiny_config

    return tiny_config(**changes)


def _aside(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".corrupt-")]


@pytest.mark.parametrize("damage", ["no sampler", "wrong types", "another model", "bit flip"])
def test_a_partial_state_that_does_not_apply_is_set_aside_and_the_run_starts_fresh(
        tmp_path, damage):
    config = _tiny(steps=8, schedule="every:4")
    reference = train.run(config, tmp_path / "ref", progress=False)
    partial = store.partial_path(tmp_path, config)
    state = {"identity": config.run_id(), "model": {}, "opt": {}, "sched": {},
             "sampler": {}, "torch_rng": torch.get_rng_state(), "step": 4, "images_seen": 64,
             "train_seconds": 1.0, "rows": []}
    if damage == "no sampler":
        del state["sampler"]
    elif damage == "wrong types":
        state["step"], state["rows"] = "four", "rows"
    elif damage == "another model":
        state["model"] = {"foo": torch.zeros(3)}
    store.save_state(partial, state)
    if damage == "bit flip":  # a real state, one bit flipped on disk
        data = bytearray(partial.read_bytes())
        data[len(data) // 2] ^= 0x10
        partial.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=partial.name):
        out = train.run(config, tmp_path, progress=False)
    assert len(_aside(partial)) == 1 and not partial.exists()
    ours, theirs = store.load(tmp_path), store.load(tmp_path / "ref")
    assert ours["test_acc"].tolist() == theirs["test_acc"].tolist()  # fresh: same numbers
    assert out.is_file() and reference.is_file()


def test_a_folder_where_the_store_keeps_a_file_is_refused_before_compute(tmp_path, monkeypatch):
    config = _tiny()
    monkeypatch.setattr(train, "_run", lambda *a, **k: pytest.fail("compute started"))
    for path in (store.partial_path(tmp_path, config), store.run_path(tmp_path, config)):
        path.mkdir(parents=True)
        with pytest.raises(store.StoreError, match="is a folder where the store keeps a file"):
            train.run(config, tmp_path, progress=False)
        path.rmdir()
    (tmp_path / "weights").rmdir() if (tmp_path / "weights").exists() else None
    (tmp_path / "weights").write_text("")
    with pytest.raises(store.StoreError, match="is a file where the store keeps a folder"):
        train.run(config, tmp_path, progress=False)


def test_temporaries_of_every_writer_are_cleaned_under_the_lock(tmp_path):
    config = _tiny(steps=8, schedule="every:8")
    leftovers = [p.with_name(f".{p.name}.abc123.tmp") for p in (
        store.run_path(tmp_path, config), store.partial_path(tmp_path, config),
        store.weights_path(tmp_path, config))]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 1000)
    train.run(config, tmp_path, progress=False)
    assert not any(p.exists() for p in leftovers)


def test_a_full_disk_says_so(tmp_path, monkeypatch):
    def torch_like_failure(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(store, "_disk_full", lambda folder, margin=0: True)
    with pytest.raises(store.StoreError, match="No space left on device"):
        store.atomic_write(tmp_path / "state.pt", torch_like_failure)
    assert list(tmp_path.iterdir()) == []


def test_a_lock_waiter_says_it_waits_and_then_what_it_read(tmp_path, capsys):
    import threading

    config = _tiny()
    inside, release = threading.Event(), threading.Event()

    def first():
        with store.claim(tmp_path, config):
            inside.set()
            release.wait(10)
            store.write_run(tmp_path, config, [{"step": 0, "test_acc": 0.5}], {})

    holder = threading.Thread(target=first)
    holder.start()
    inside.wait(10)
    threading.Timer(0.5, release.set).start()
    with store.claim(tmp_path, config) as done:
        assert done == store.run_path(tmp_path, config)
    holder.join()
    err = capsys.readouterr().err
    assert "being computed by another process; waiting" in err
    assert "read the other process's result" in err


def test_data_dir_is_part_of_a_hub_runs_identity(tmp_path):
    one, two, copy = tmp_path / "one", tmp_path / "two", tmp_path / "copy"
    for folder, size in ((one, 10), (two, 11), (copy, 10)):
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "part.parquet").write_bytes(b"x" * size)
    base = dict(task="cifar10", strategy="lora")
    ids = {f: RunConfig(**base, data_dir=str(f)).run_id() for f in (one, two, copy)}
    assert ids[one] != ids[two] and ids[one] == ids[copy]
    assert RunConfig(**base).run_id() != ids[one]


def test_a_parquet_file_linked_from_outside_the_data_folder_is_refused(tmp_path):
    from rtlib.data import hub

    outside = tmp_path / "elsewhere.parquet"
    outside.write_bytes(b"PAR1")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.parquet").symlink_to(outside)
    with pytest.raises(hub.CorruptImage, match="not a regular file inside"):
        hub._split_files(folder, "train")


def test_weights_that_fit_pass_and_a_seed_fits_the_generators():
    from rtlib import models, preflight

    backbone = models.skeleton("vit_glyph_p4_24", 10).backbone
    preflight.check_weights_file(str(EMBEDDED_WEIGHTS), backbone)  # no error
    config = RunConfig(task="digits", strategy="full", seed=MAX_SEED, data_seed=MAX_SEED)
    config.check()
    torch.Generator().manual_seed(config.seed)  # the largest seed works where it is consumed
    import numpy as np

    np.random.RandomState(config.data_seed)
    with pytest.raises(ConfigError, match="seed: out of range"):
        RunConfig(task="digits", strategy="full", seed=MAX_SEED + 1).check()


def test_list_options_take_several_words_alike():
    args = cli.build_parser().parse_args(["sweep", "--tasks", "digits", "fonts", "--seeds",
                                          "0", "1", "--strategies", "lora,full"])
    assert (args.tasks, args.seeds, args.strategies) == (["digits", "fonts"], [0, 1],
                                                         ["lora", "full"])
    assert json.dumps(args.tasks)
