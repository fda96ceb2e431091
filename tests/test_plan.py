"""A study's plan: the learning rate chosen on the validation split from stored runs, the study's
runs at the chosen rates, resumable computation and its manifest (on a toy study of real runs)."""
import json

import pandas as pd
import pytest

from rtlib import cli, config, plan, store
from rtlib.config import ConfigError

TOY = {
    "description": "a toy study for the tests",
    "run": {**config.preset_defaults("smoke"), "train_size": 96, "test_size": 32,
            "train_eval_size": 32, "steps": 6, "batch_size": 16, "val_fraction": 0.25,
            "schedule": "log:3"},
    "tasks": ["digits"], "ood_task": "digits", "seeds": [0, 1], "store": "toy-study",
    "strategy_overrides": {},
    "lr_grid": {"bitfit": [1e-4, 3e-2], "linear_probe": [1e-4, 3e-2]},
    "selection": {"tasks": ["digits"], "seed": 0, "run": {"schedule": "log:2", "eps": (0.0,)}},
    "sources": {},
}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(config.PRESETS, "toy", TOY)
    return "toy"


def test_choose_lr_takes_the_best_validation_accuracy_and_the_smaller_rate_on_ties():
    rows = [("a", 1e-3, 0.5), ("a", 1e-2, 0.7), ("b", 1e-3, 0.6), ("b", 1e-2, 0.6)]
    frame = pd.DataFrame([{"run_id": f"{s}{lr}", "task": "t", "strategy": s, "lr": lr,
                           "step": 10, "val_acc": v, "test_acc": 1 - v} for s, lr, v in rows])
    table = plan.choose_lr(frame)
    chosen = table[table.chosen].set_index("strategy")["lr"].to_dict()
    assert chosen == {"a": 1e-2, "b": 1e-3}  # the test accuracy plays no part
    with pytest.raises(ConfigError, match="val_fraction"):
        plan.choose_lr(frame.drop(columns="val_acc"))


def test_the_books_work_is_computed_before_its_chapters_sweep_first(toy, tmp_path):
    """make book computes what its chapters lack before they run (book.compute_missing): the
    sweep the store lacks, then the study's runs at the rates it chose (not the preset's),
    then the paths; nothing is left for a chapter to compute."""
    from rtlib.report import book

    params = {"preset": toy, "strategies": ["bitfit", "linear_probe"], "seeds": [0],
              "workers": 1, "results_dir": str(tmp_path)}
    sweep_todo, _ = book._missing(params, remedies=True)
    assert len(sweep_todo) == 4  # 2 strategies x 2 rates
    book.compute_missing(params, progress=False)
    assert book.missing_work(params) == []
    study_plan = plan.plan(toy, strategies=["bitfit", "linear_probe"], seeds=[0],
                           results_dir=tmp_path, compute_selection=False)
    stored = {f.stem for f in store.run_files(tmp_path)}
    assert stored == {c.run_id() for c in [*study_plan.selection, *study_plan.main]}
    assert len(list((tmp_path / "interpolation").glob("*.parquet"))) == 1  # BitFit's path


def test_the_books_work_stops_after_a_sweep_that_did_not_complete(toy, tmp_path, monkeypatch):
    """A sweep run that fails leaves no rates chosen: compute_missing must not go on to the
    study's runs at the preset's rates (the chapters retry the sweep and say what failed)."""
    from rtlib import sweep
    from rtlib.report import book

    calls = []
    monkeypatch.setattr(sweep, "run", lambda jobs, *a, desc="", **k: calls.append(desc))
    book.compute_missing({"preset": toy, "strategies": ["bitfit", "linear_probe"],
                          "seeds": [0], "results_dir": str(tmp_path)}, progress=False)
    assert calls == ["learning-rate sweep"]


def test_a_study_chooses_its_rates_on_validation_then_runs_at_them(toy, tmp_path):
    study_plan, summary, manifest = plan.compute(
        toy, strategies=["bitfit", "linear_probe"], results_dir=tmp_path, device="cpu",
        progress=False, command="test")
    assert len(study_plan.selection) == 4 and len(study_plan.main) == 4  # 2 x 2 rates; 2 x 2 seeds
    sel = store.load(tmp_path, study_plan.selection)
    for strategy, lr in study_plan.lrs.items():
        last = sel[sel.strategy == strategy].sort_values("step").groupby("run_id").tail(1)
        assert lr == last.sort_values(["val_acc", "lr"], ascending=[False, True]).lr.iloc[0]
    assert {c.lr for c in study_plan.main if c.strategy == "bitfit"} == {study_plan.lrs["bitfit"]}
    assert (summary.status == "done").all() and len(summary) == 4 + 2  # runs, then 2 paths
    record = json.loads(manifest.read_text())
    assert record["runs_complete"] == 10 and record["learning_rates"] == study_plan.lrs
    assert {r["role"] for r in record["runs"]} == {"lr selection", "study", "interpolation"}
    assert all(r["seconds"] > 0 for r in record["runs"])
    # a path evaluates its interior point only (its ends are the runs' last points)
    assert {r["points"] for r in record["runs"] if r["role"] == "interpolation"} == {1}
    # the dry run counts the study's runs at the chosen rates, and its remedies
    report = "\n".join(plan.progress_report(toy, strategies=["bitfit", "linear_probe"],
                                             results_dir=tmp_path))
    assert "study: 4 of 4 runs complete" in report and ": 2 of 2 complete" in report
    assert record["invocations"][0]["completed"] and record["invocations"][0]["versions"]["torch"]
    # every run records its own versions; the top counts the runs under each set (one here)
    versions = [r["versions"] for r in record["runs"] if r["role"] != "interpolation"]
    assert all(v["peft"] for v in versions) and record["run_versions"] == [
        {**versions[0], "runs": 8}]

    # Again: nothing is computed, the choice is read back, the manifest records both calls.
    again, summary, manifest = plan.compute(toy, strategies=["bitfit", "linear_probe"],
                                            results_dir=tmp_path, device="cpu", progress=False)
    assert (summary.status == "skipped").all() and again.lrs == study_plan.lrs
    assert len(summary) == 6 and len(json.loads(manifest.read_text())["invocations"]) == 2
    # From the command line, without the remedies: the study's 4 runs only
    assert cli.main(["study", "--preset", "toy", "--strategies", "bitfit,linear_probe",
                     "--results-dir", str(tmp_path), "--no-remedies", "--quiet"]) == 0
    record = json.loads(manifest.read_text())
    assert record["invocations"][-1]["summary"] == {"skipped": 4}
    # An invocation of a part (no remedies; one strategy) keeps the records of the rest: the
    # manifest describes the store's whole study, not the last command's part of it.
    assert record["runs_complete"] == 10 and len(record["lr_choice"]) == 4
    plan.compute(toy, strategies=["linear_probe"], results_dir=tmp_path, device="cpu",
                 progress=False, remedies=False)
    record = json.loads(manifest.read_text())
    assert record["runs_complete"] == 10 and record["learning_rates"] == study_plan.lrs
    whole = plan.plan(toy, results_dir=tmp_path, compute_selection=False)
    assert record["runs_planned"] == len(plan._job_ids(whole, plan.remedies_plan(whole))) > 10
    assert {r["role"] for r in record["runs"]} == {"lr selection", "study", "interpolation"}

    # What is left, projected at the study's pace: with one run and one path gone, the run at
    # the mean time of the others, the path at their evaluation time per point (it evaluates
    # one point), and the whole.
    jobs = plan.remedies_plan(again).work()
    store.complete_run(tmp_path, again.main[0]).unlink()
    store.interpolation_path(tmp_path, jobs[0].run_id()).unlink()
    records = plan.run_records(tmp_path, again.main, "study")
    pace = sum(r["seconds"] for r in records) / len(records)
    per_point = sum(r["eval_seconds"] for r in records) / sum(r["points"] for r in records)
    report = plan.progress_report(toy, strategies=["bitfit", "linear_probe"],
                                  results_dir=tmp_path)
    assert report[0].startswith("1 new runs and 1 new interpolation paths, about ")
    assert report[2].endswith(f"about {plan.duration(pace)} of one core left")
    assert report[3].endswith(f"about {plan.duration(per_point)} of one core left")
    assert report[4] == (f"in all: about {plan.duration(pace + per_point)} of one core left "
                         f"({plan.duration((pace + per_point) / 2)} with two workers)")
    assert plan.duration(5400) == "1.5 h" and plan.duration(150) == "2 min"
    # Without a complete study run there is no pace to project the remedies at (the sweep's
    # runs evaluate clean accuracy only): they are counted, not projected; the study's runs
    # are projected at the stored runs' pace of the same model, and "in all" counts them.
    for config in again.main:
        if store.complete_run(tmp_path, config) is not None:
            store.complete_run(tmp_path, config).unlink()
    report = plan.progress_report(toy, strategies=["bitfit", "linear_probe"],
                                  results_dir=tmp_path)
    guess = plan.estimate(again.main, tmp_path)
    assert report[2].endswith(f"about {plan.duration(guess)} of one core at the stored runs' "
                              "pace")
    assert report[3].endswith("complete")
    assert report[4].startswith(f"in all: about {plan.duration(guess)} of one core left")


def test_a_missing_sweep_is_an_error_where_nothing_may_be_computed(toy, tmp_path):
    with pytest.raises(ConfigError, match="learning-rate sweep"):
        plan.plan(toy, strategies=["bitfit"], results_dir=tmp_path, compute_selection=False)


def test_bad_study_options_are_answered_before_any_run(toy, tmp_path, capsys):
    for argv, field in ((["--tasks", "cifar11"], "task"), (["--strategies", "lorra"], "strategy"),
                        (["--preset", "huge"], "preset"), (["--device", "gpu"], "device")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["study", "--preset", "toy", "--results-dir", str(tmp_path), *argv])
        assert exit_.value.code == 2
        assert field in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_dry_run_counts_without_computing(toy, tmp_path, capsys):
    assert cli.main(["study", "--preset", "toy", "--strategies", "bitfit", "--results-dir",
                     str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "learning-rate sweep: 0 of 2 runs complete" in out and "study: 0 of 2" in out
    assert not (tmp_path / "runs").exists()


def test_a_study_interrupted_in_its_sweep_still_records_the_invocation(toy, tmp_path,
                                                                       monkeypatch):
    from rtlib import sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        plan.compute(toy, strategies=["bitfit"], results_dir=tmp_path, device="cpu",
                     progress=False, command="python -m rtlib study --preset toy")
    manifest = json.loads((tmp_path / plan.MANIFEST).read_text())
    assert manifest["runs_complete"] == 0 and manifest["runs_planned"] == 2 + 2
    assert manifest["invocations"][-1]["completed"] is False
    assert manifest["invocations"][-1]["command"] == "python -m rtlib study --preset toy"


def test_a_rate_chosen_at_the_top_of_its_grid_is_flagged():
    rows = [("a", 1e-3, 0.5), ("a", 1e-2, 0.6), ("b", 1e-3, 0.7), ("b", 1e-2, 0.6)]
    frame = pd.DataFrame([{"run_id": f"{s}{lr}", "task": "t", "strategy": s, "lr": lr,
                           "step": 10, "val_acc": v} for s, lr, v in rows])
    choice = plan.choose_lr(frame)
    assert choice.loc[choice.chosen, "lr"].tolist() == [1e-2, 1e-3]
    assert plan.Plan("toy", [], [], {}, choice).at_top() == ["a"]


def test_remedies_come_seed_by_seed_paths_first():
    """A remedies computation stopped part-way holds every remedy of its first seeds (each of
    the chapter's three questions readable), not all paths and no robust run."""
    from rtlib import interpolate, sweep

    main = sweep.expand(["digits"], ["bitfit", "linear_probe"], [0, 1, 2], preset="smoke")
    robust = sweep.expand(["digits"], ["bitfit", "linear_probe"], [0, 1, 2], preset="smoke")
    work = plan.RemediesPlan(interpolate.jobs(main), robust).work()
    kinds = [(getattr(j, "config", j).seed, "path" if hasattr(j, "probe") else "run")
             for j in work]
    assert kinds == [(s, k) for s in (0, 1, 2) for k in ("path", "run", "run")]



def test_work_grows_with_what_a_run_does():
    base = config.RunConfig(task="digits", strategy="lora", **config.preset_defaults("smoke"))
    train, evaluation = plan.work(base)
    assert plan.work(base.replace(steps=base.steps * 2))[0] == 2 * train  # steps x batch
    more_budgets = plan.work(base.replace(eps=(2 / 255, 4 / 255)))
    points = len(base.eval_steps())
    attack = base.test_size * (3 * base.attack_steps + 1)  # each iteration forward + backward
    assert more_budgets == (train, evaluation + attack * points)  # one more attack per point


def test_a_dry_run_opens_with_the_new_runs_and_their_time(toy, tmp_path, capsys):
    import re

    assert plan.cost_line([], tmp_path).startswith("nothing new to compute")
    assert cli.main(["study", "--preset", "toy", "--strategies", "bitfit", "--results-dir",
                     str(tmp_path), "--dry-run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    # the sweep's 2 runs and the study's 2 at least, priced at the committed study's pace
    found = re.match(r"^(\d+) new runs.*, about [\d.]+ (s|min|h) of one core", first)
    assert found and int(found.group(1)) >= 4, first


def test_upstream_arms_and_the_control_run_at_the_chosen_rates_once_each(toy, tmp_path,
                                                                          monkeypatch):
    """The ladder study's shape: the grid from another upstream model (which is also the
    robust upstream remedy's: the same runs, computed and recorded once) and the memorization
    control, each at the rates the sweep chose, each a role of its own."""
    monkeypatch.setitem(config.PRESETS, "toy", {
        **TOY, "arms": {"embedded_robust": ["digits", "fonts"]},
        "control": {"task": "digits", "train_size": 192},
        "remedies": {"alphas": [0.0, 0.5, 1.0], "robust_weights": "embedded_robust",
                     "robust_tasks": ["digits"]}})
    two = ["bitfit", "linear_probe"]
    study_plan, summary, manifest = plan.compute(toy, strategies=two, results_dir=tmp_path,
                                                 device="cpu", progress=False, command="test")
    lrs = study_plan.lrs
    # the arms keep the study's tasks only (fonts is not one here)
    assert [(c.weights, c.task, c.strategy, c.seed, c.lr) for c in study_plan.arms] == [
        ("embedded_robust", "digits", s, seed, lrs[s]) for s in two for seed in (0, 1)]
    assert {(c.train_size, c.weights, c.lr) for c in study_plan.control} == {
        (192, "embedded", lrs[s]) for s in two}
    robust = plan.remedies_plan(study_plan).robust
    assert {c.run_id() for c in robust} == {c.run_id() for c in study_plan.arms}
    record = json.loads(manifest.read_text())
    ids = [r["run_id"] for r in record["runs"]]
    assert len(ids) == len(set(ids)) == record["runs_complete"] == 18
    # planned: the toy preset's whole study (all seven strategies), of which two were asked for
    whole = plan.plan(toy, results_dir=tmp_path, compute_selection=False)
    assert record["runs_planned"] == len(plan._job_ids(whole, plan.remedies_plan(whole))) > 18
    roles = [r["role"] for r in record["runs"]]
    assert roles == (["lr selection"] * 4 + ["study"] * 4 + ["upstream arm"] * 4
                     + ["control"] * 4 + ["interpolation"] * 2)
    for role, configs in (("arms", study_plan.arms), ("control", study_plan.control),
                          ("runs", study_plan.main)):
        assert set(plan.load(toy, role, tmp_path).run_id) == {c.run_id() for c in configs}
    report = "\n".join(plan.progress_report(toy, strategies=two, results_dir=tmp_path))
    assert "upstream arms: 4 of 4 runs complete" in report
    assert "memorization control: 4 of 4 runs complete" in report
    assert "remedies (interpolation paths, robust upstream runs): 2 of 2 complete" in report
    # A path retrains its run only where the run is stored without its weights.
    job = plan.remedies_plan(study_plan).paths[0]
    assert not plan.retrains(job, tmp_path)
    store.weights_path(tmp_path, job.config).unlink()
    assert plan.retrains(job, tmp_path)
    # Read beside another setting, nothing computed: the other five strategies are missing.
    from rtlib.report import estimands, study, verdicts
    shown = study.stored(toy, tmp_path)
    assert shown.frame.run_id.nunique() == 4 and "4 of 14 runs" in shown.status
    assert "10 are not in it" in shown.status
    # The memorization control read against the study's runs of its task, on real runs.
    chapter = study.Chapter(plan.load(toy, "runs", tmp_path), pd.DataFrame(), "", study_plan)
    text, table = study.memorization_findings(chapter, tmp_path,
                                              estimands.Resampler(n_boot=50))
    assert sorted(table.strategy) == sorted(two) and (table.images == 96).all()
    assert (table.control_images == 192).all() and text.startswith("- **")
    assert set(table.reading) <= {estimands.PERSISTS, estimands.VANISHES, estimands.NO_FALL,
                                  verdicts.UNDECIDED}
    store.complete_run(tmp_path, job.config).unlink()  # a run still to come: its path follows it
    assert not plan.retrains(job, tmp_path)


def test_each_run_is_followed_by_its_path_and_each_probe_leads_its_seed(toy):
    """In one process a path is computed right after its run, while the run's and the probe's
    weights (kept locally, not committed) are at hand: nothing is trained twice."""
    from rtlib import interpolate, sweep

    runs = sweep.expand(["digits", "fonts"], ["bitfit", "linear_probe", "lora"], [1, 0],
                        preset=toy)
    paths = interpolate.jobs(runs)
    order = plan.with_paths(runs, paths)
    assert len(order) == len(runs) + len(paths) == 12 + 8
    names = [("path " if isinstance(j, interpolate.PathJob) else "") + f"{j.task}/{j.strategy}"
             f"/{j.seed}" for j in order]
    assert names[:2] == ["digits/linear_probe/0", "fonts/linear_probe/0"]
    assert names[2:4] == ["digits/bitfit/0", "path digits/bitfit/0"]
    assert [n.rsplit("/", 1)[1] for n in names] == ["0"] * 10 + ["1"] * 10  # seed by seed
    for k, job in enumerate(order):
        if isinstance(job, interpolate.PathJob):
            before = {j.run_id() for j in order[:k]}
            assert job.config.run_id() in before and job.probe.run_id() in before


def test_a_grid_whose_largest_rate_wins_is_extended_before_the_study_runs(toy, tmp_path,
                                                                          monkeypatch):
    assert plan.next_rate([1e-4, 3e-4, 1e-3]) == 3e-3
    assert plan.next_rate([3e-4, 1e-3, 3e-3]) == 1e-2
    assert plan.next_rate([1e-3, 1e-2]) == 0.1
    # A grid of a tiny rate and a workable one, so that the larger wins on six steps
    monkeypatch.setitem(config.PRESETS, "toy", {**TOY, "lr_grid": {"bitfit": [3e-3, 3e-2]},
                                                "lr_extensions": 1})
    study_plan = plan.plan(toy, strategies=["bitfit"], results_dir=tmp_path, device="cpu")
    rates = sorted({c.lr for c in study_plan.selection})
    assert rates == [3e-3, 3e-2, 0.3]  # one extension, swept, then no more (the limit)
    first = plan.choose_lr(store.load(tmp_path, study_plan.selection[:1 + 1]))
    assert first.set_index("lr").loc[3e-2, "at_top"]  # why it was extended
    assert store.load(tmp_path, study_plan.selection)["lr"].nunique() == 3
    assert study_plan.lrs["bitfit"] == study_plan.choice.query("chosen").lr.iloc[0]
    assert {c.lr for c in study_plan.main} == {study_plan.lrs["bitfit"]}
    # read back without computing: the same plan; the state says the sweep is complete
    again = plan.plan(toy, strategies=["bitfit"], results_dir=tmp_path, compute_selection=False)
    assert again.lrs == study_plan.lrs and len(again.selection) == 3
    assert plan.sweep_state(toy, ["bitfit"], tmp_path)[2]
    # without the extension's run, the store cannot decide: an error where nothing may compute
    store.complete_run(tmp_path, study_plan.selection[-1]).unlink()
    configs, choice, complete = plan.sweep_state(toy, ["bitfit"], tmp_path)
    assert (len(configs), choice, complete) == (3, None, False)
    with pytest.raises(ConfigError, match="1 of its runs are missing"):
        plan.plan(toy, strategies=["bitfit"], results_dir=tmp_path, compute_selection=False)
