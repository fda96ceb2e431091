"""The class demo and the look at a stored run: whole processes, as a teacher runs them."""
import subprocess
import sys

from rtlib import metrics, store


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rtlib", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_the_demo_draws_a_run_as_it_trains_and_show_draws_it_again(tmp_path):
    png = tmp_path / "demo.png"
    out = _cli("demo", "--preset", "smoke", "--task", "digits", "--steps", "8",
               "--test-size", "32", "--schedule", "every:4", "--results-dir", str(tmp_path),
               "--png", str(png), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    points = [line for line in lines if line.startswith("step ")]
    assert [int(line.split()[1]) for line in points] == [0, 4, 8]  # each point as measured
    assert "█" in points[-1] or "·" in points[-1]
    assert any("95% interval" in line and ("falls" in line or "does not fall" in line
                                           or "undecided" in line) for line in lines)
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    (run_file,) = store.run_files(tmp_path)
    again = _cli("show", run_file.stem[:8], "--results-dir", str(tmp_path),
                 "--png", str(tmp_path / "again.png"))
    assert again.returncode == 0, again.stderr
    assert [line for line in again.stdout.splitlines() if line.startswith("step ")] == points
    assert (tmp_path / "again.png").is_file()
    missing = _cli("show", "zzzz", "--results-dir", str(tmp_path))
    assert missing.returncode == 2 and "0 runs match" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_the_picture_is_the_farthest_tasks_full_fine_tuning(tmp_path):
    import numpy as np
    import pandas as pd

    from rtlib.report import demo

    rows = []
    for task, top in (("near", 0.9), ("far", 0.5)):
        for strategy in ("full", "linear_probe"):
            for seed in (1, 0):
                for step, frac in ((0, 0.2), (10, 0.6), (100, 1.0)):
                    rows.append({"run_id": f"{task}{strategy}{seed}", "task": task,
                                 "strategy": strategy, "seed": seed, "step": step,
                                 "test_acc": top * frac, "robust_acc": top * frac / 2,
                                 "val_acc": top if strategy == "linear_probe" else np.nan,
                                 "test_n": 200, "eps": "2/255"})
    png, story = demo.picture(pd.DataFrame(rows), tmp_path)
    assert png == tmp_path / "tradeoff.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert story.startswith("Clean accuracy rose from 0.100 to 0.500")  # far, full, seed 0


def test_the_book_shows_the_committed_demo_run_and_computes_nothing(tmp_path):
    """RQ1's demo cell reads the run kept in demo/: it must be the demo's configuration of
    today (else the book would train for a minute and a half), and read back without training,
    saying so."""
    from rtlib.config import DEMO, DEMO_PRESET, DEMO_STORE, checkout_folder, demo_config
    from rtlib.config import preset_defaults, preset_tasks
    from rtlib.report import demo

    config = demo_config()  # the quick setting's far-task full fine-tuning, densely evaluated
    assert (config.task, config.weights, config.lr, config.val_robust) == (
        DEMO["task"], "converged", preset_defaults(DEMO_PRESET, "full")["lr"], True)
    assert config.task in preset_tasks(DEMO_PRESET)
    folder = checkout_folder(DEMO_STORE)
    assert store.complete_run(folder, config) is not None, "recompute: python -m rtlib demo " \
        f"--results-dir {DEMO_STORE}"
    lines = []
    run = demo.live(config, folder, png=tmp_path / "d.png", echo=lines.append)
    assert lines[0].startswith("(read from") and len(run) == len(config.eval_steps())
    assert sum(line.startswith("step ") for line in lines) == len(run)
    assert all(len(line) <= 75 for line in lines if line.startswith("step "))  # a page's column
    assert not lines[-1].endswith(" s")  # no time: nothing was trained
    assert lines[0] == f"(read from {DEMO_STORE}: computed earlier; delete the run to compute " \
        "it again)"  # the checkout's folder, not this machine's path
    # the book's cell: the story to its own channel (Markdown, kept whole), the points to echo
    told, points = [], []
    demo.live(config, folder, png=tmp_path / "d.png", echo=points.append, story=told.append)
    assert told == [demo.describe(run, metrics.robust(config.eps[0]))]
    assert "**falls**" in told[0] and not any("wrote" in p for p in points)


def test_a_named_preset_stands_as_it_is_and_weights_change_the_start():
    from rtlib.config import DEMO, demo_config, preset_defaults

    smoke = demo_config("digits", "lora", preset="smoke", steps=8)
    assert (smoke.model, smoke.steps) == (preset_defaults("smoke", "lora")["model"], 8)
    assert demo_config(weights="converged_robust").weights == "converged_robust"
    assert demo_config(steps=None).steps == DEMO["steps"]
