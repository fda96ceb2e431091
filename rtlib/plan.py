"""Which runs a study is made of: the grid of a preset, with its learning rates chosen on the
validation split where the preset asks for it.

A preset with an ``lr_grid`` (the committed study) first runs a small sweep: every strategy at
every learning rate of its grid, on the ``selection`` tasks with one seed, each run evaluated on
clean accuracy only (at its first and last step). A strategy's learning rate is the one with the
highest final **validation** accuracy, averaged over those tasks (ties: the smaller rate). The
test set plays no part in the choice. The sweep's runs live in the same store as the study's,
so the choice is recomputed from stored numbers (nothing is trained twice) and a reader can
check it.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from . import metrics, store, sweep
from .config import (ConfigError, RunConfig, check_choice, check_list, preset_seeds,
                     preset_spec, preset_store, preset_tasks, shown_path, weights_identity)


def lr_grid(preset: str) -> dict[str, list[float]]:
    return {k: list(v) for k, v in preset_spec(preset).get("lr_grid", {}).items()}


def selection_configs(preset: str, strategies: Sequence[str],
                      grid: dict[str, list[float]] | None = None, **overrides: Any
                      ) -> list[RunConfig]:
    """The learning-rate sweep's runs for ``strategies`` (those with a grid; ``grid``: the
    preset's), with the study's ``overrides`` (so a study of 400 steps chooses among 400-step
    runs)."""
    grid = lr_grid(preset) if grid is None else grid
    spec = preset_spec(preset).get("selection")
    chosen = [s for s in strategies if s in grid]
    if not spec or not chosen:
        return []
    fields = {**overrides, **spec["run"]}
    return [c for s in chosen for lr in grid[s]
            for c in sweep.expand(spec["tasks"], [s], [spec["seed"]], preset=preset,
                                  **{**fields, "lr": lr})]


def choose_lr(frame: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and learning rate: final validation accuracy averaged over the tasks, and
    which rate is chosen (the highest; ties go to the smaller rate). ``at_top``: the chosen
    rate is the largest of its grid, so the best rate may lie beyond it (extend the grid)."""
    if metrics.VAL_ACC not in frame:
        raise ConfigError("val_fraction", 0, "a share > 0 (the learning rate is chosen on the "
                          "validation split)", "no validation split in the sweep's runs:")
    last = frame.sort_values(metrics.STEP).groupby("run_id").tail(1)
    table = (last.groupby(["strategy", "lr"])
             .agg(val_acc=(metrics.VAL_ACC, "mean"), tasks=("task", "nunique"))
             .reset_index().sort_values(["strategy", "lr"], ignore_index=True))
    table["chosen"] = False
    for _, g in table.groupby("strategy"):
        best = g.sort_values(["val_acc", "lr"], ascending=[False, True]).index[0]
        table.loc[best, "chosen"] = True
    table["at_top"] = table["chosen"] & (table["lr"] == table.groupby("strategy")["lr"]
                                         .transform("max"))
    return table


def next_rate(grid: Sequence[float]) -> float:
    """The rate one step above a grid's largest, at the grid's own step: a grid of half
    decades (1e-4, 3e-4, 1e-3) goes on with 3e-3, then 1e-2; another, by its last ratio."""
    below, top = sorted(grid)[-2:]
    return float(f"{10 * below if 10 * below > top else top * top / below:.2g}")


def sweep_state(preset: str, strategies: Sequence[str], results_dir: str | Path,
                **overrides: Any) -> tuple[list[RunConfig], pd.DataFrame | None, bool]:
    """The learning-rate sweep as far as the store decides it: the grid's runs and, where a
    strategy's largest rate wins, the runs of the rate above it (:func:`next_rate`; at most
    the preset's ``lr_extensions`` times; the best rate may lie beyond the grid). Returns (the
    sweep's runs, the choice on them or None, whether the store holds all of them): an
    extension is known only once the runs before it are stored."""
    limit = int(preset_spec(preset).get("lr_extensions", 0))
    grid = {s: sorted(v) for s, v in lr_grid(preset).items() if s in strategies}
    configs = selection_configs(preset, strategies, grid, **overrides)
    for extension in range(limit + 1):
        if any(store.complete_run(results_dir, c) is None for c in configs):
            return configs, None, False
        choice = choose_lr(store.load(results_dir, configs))
        top = [s for s in choice.loc[choice["at_top"], "strategy"] if len(grid[s]) > 1]
        if not top or extension == limit:
            return configs, choice, True
        above = {s: [next_rate(grid[s])] for s in top}
        for s, rate in above.items():
            grid[s] += rate
        configs += selection_configs(preset, top, above, **overrides)
    raise AssertionError("unreachable")


@dataclass
class Plan:
    """A study's runs: the learning-rate sweep's (``selection``), the study's own (``main``),
    the upstream arms' and the memorization control's, with the chosen rates (``lrs``: empty
    when the preset fixes them)."""

    preset: str
    selection: list[RunConfig]
    main: list[RunConfig]
    lrs: dict[str, float] = field(default_factory=dict)
    choice: pd.DataFrame | None = None
    #: The study's grid from the other upstream models (:func:`rtlib.config.preset_arms`) and
    #: the memorization control (:func:`rtlib.config.preset_control`), at the chosen rates.
    arms: list[RunConfig] = field(default_factory=list)
    control: list[RunConfig] = field(default_factory=list)

    def at_top(self) -> list[str]:
        """The strategies whose chosen rate is the largest of their grid."""
        if self.choice is None or "at_top" not in self.choice:
            return []
        return self.choice.loc[self.choice["at_top"], "strategy"].tolist()


def _grids(preset: str, tasks: Sequence[str] | None, strategies: Sequence[str] | None,
           seeds: Sequence[int] | None, **overrides: Any):
    """The study's tasks, strategies and seeds (``None``: the preset's, the paper's seven), its
    runs at the preset's rates and the learning-rate sweep's runs: every one checked before
    anything is computed."""
    from .strategies import PAPER_STRATEGIES

    tasks = list(tasks or preset_tasks(preset))
    strategies = list(strategies or PAPER_STRATEGIES)
    seeds = list(preset_seeds(preset) if seeds is None else seeds)
    main = sweep.expand(tasks, strategies, seeds, preset=preset, **overrides)
    selection = [] if "lr" in overrides else selection_configs(preset, strategies, **overrides)
    return tasks, strategies, seeds, main, selection


def plan(preset: str, tasks: Sequence[str] | None = None,
         strategies: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
         results_dir: str | Path | None = None, compute_selection: bool = True,
         executor: str = "local", workers: int | None = 1, progress: bool = False,
         device: str = "auto", **overrides: Any) -> Plan:
    """The runs of a study. With a learning-rate grid (and no ``lr`` override), the sweep's
    runs are computed first where the store lacks them (``compute_selection``; else a missing
    one is an error), and each strategy's main runs take its chosen rate."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    results_dir = Path(results_dir or preset_store(preset))
    tasks, strategies, seeds, main, selection = _grids(preset, tasks, strategies, seeds,
                                                       **overrides)
    lrs, choice = {}, None
    while selection:  # the grid, then each extension of it the store's choice calls for
        selection, choice, complete = sweep_state(preset, strategies, results_dir, **overrides)
        if complete:
            lrs = {r.strategy: float(r.lr) for r in choice[choice.chosen].itertuples()}
            break
        missing = [c for c in selection if store.complete_run(results_dir, c) is None]
        if not compute_selection:
            raise ConfigError("results_dir", str(results_dir), "a store holding the "
                              "learning-rate sweep", f"{len(missing)} of its runs are missing "
                              "from")
        summary = sweep.run(missing, results_dir, executor=executor, workers=workers,
                            progress=progress, device=device, desc="learning-rate sweep")
        failed = summary[summary.status == "failed"]
        if len(failed):
            raise RuntimeError("the learning-rate sweep failed:\n" + sweep.summarize(summary))
    if lrs:
        main = sweep.expand(tasks, strategies, seeds, preset=preset, strategy_overrides={
            s: {"lr": lr} for s, lr in lrs.items()}, **overrides)
    arms, control = _factors(preset, tasks, strategies, seeds, lrs, **overrides)
    return Plan(preset, selection, main, lrs, choice, arms, control)


def _factors(preset: str, tasks: Sequence[str], strategies: Sequence[str],
             seeds: Sequence[int], lrs: dict[str, float], **overrides: Any
             ) -> tuple[list[RunConfig], list[RunConfig]]:
    """The upstream arms' runs and the memorization control's, on the study's ``tasks`` only
    (a study narrowed to some tasks keeps the arms of those), at the rates ``lrs``."""
    from .config import preset_arms, preset_control

    rates = {s: {"lr": lr} for s, lr in lrs.items()}
    arms = [c for weights, arm_tasks in preset_arms(preset).items()
            if any(t in tasks for t in arm_tasks)
            for c in sweep.expand([t for t in arm_tasks if t in tasks], strategies, seeds,
                                  preset=preset, strategy_overrides=rates,
                                  **{**overrides, "weights": weights})]
    spec = preset_control(preset) or {}
    task = spec.pop("task", None)  # the rest are run fields (a larger train_size, ...)
    control = sweep.expand([task], strategies, seeds, preset=preset, strategy_overrides=rates,
                           **{**overrides, **spec}) if task in tasks else []
    return arms, control


#: The parts of a study's store, each a role a loader can ask for alone (:func:`load`).
ROLES = ("runs", "sweep", "robust", "arms", "control")


def load(preset: str = "study", role: str = "runs", results_dir: str | Path | None = None
         ) -> pd.DataFrame:
    """One role of a study's store (``store.load`` of the folder returns every run in it, the
    learning-rate sweep's and the robust upstream model's among the study's): ``"runs"``, the
    study's own runs; ``"sweep"``, the learning-rate sweep's; ``"robust"``, the runs from the
    robust upstream model; ``"arms"``, the study's grid from the other upstream models;
    ``"control"``, the memorization control's. Nothing is computed: a run the store lacks is
    absent."""
    check_choice("role", role, ROLES)
    results_dir = Path(results_dir or preset_store(preset))
    study_plan = plan(preset, results_dir=results_dir, compute_selection=False)
    configs = {"runs": lambda: study_plan.main, "sweep": lambda: study_plan.selection,
               "robust": lambda: remedies_plan(study_plan).robust,
               "arms": lambda: study_plan.arms, "control": lambda: study_plan.control}[role]()
    return store.load(results_dir, configs)


@dataclass
class RemediesPlan:
    """What the remedies chapter adds to a study (issue 17): an interpolation path from each
    fine-tuned run to its linear probe (``paths``, :class:`rtlib.interpolate.PathJob`), and
    the study's grid on ``robust_tasks`` fine-tuned from the robust upstream model at the
    study's learning rates (``robust``)."""

    paths: list
    robust: list[RunConfig]

    def work(self) -> list:
        """The paths and the robust runs, seed by seed (paths first within a seed): a study
        stopped part-way holds every remedy of its first seeds, so the chapter can read all
        three questions before the last seed is in."""
        def seed(job) -> int:
            return getattr(job, "config", job).seed

        return sorted(list(self.paths) + list(self.robust), key=seed)  # stable: paths first


def beyond_arms(remedies: RemediesPlan, study_plan: Plan) -> list:
    """The remedies' work (:meth:`RemediesPlan.work`) that is not one of the study's upstream
    arm runs: the robust upstream remedy's runs may be an arm's (the same configs, so the same
    runs), computed and counted once, as the arm's."""
    arm_ids = {c.run_id() for c in study_plan.arms}
    return [job for job in remedies.work() if job.run_id() not in arm_ids]


def remedies_plan(study_plan: Plan, alphas: Sequence[float] | None = None,
                  robust_tasks: Sequence[str] | None = None, path_form: str | None = None,
                  **overrides: Any) -> RemediesPlan:
    """The remedies of ``study_plan`` (``None``: the preset's coefficients, robust tasks and
    path form, :func:`rtlib.config.preset_remedies`). Every config is checked (the robust upstream model
    must exist when a task asks for it); nothing is computed."""
    from . import interpolate
    from .config import preset_remedies

    spec = preset_remedies(study_plan.preset)
    alphas = interpolate.check_alphas(spec["alphas"] if alphas is None else alphas)
    robust_tasks = check_list("robust_tasks", spec["robust_tasks"] if robust_tasks is None
                              else robust_tasks)
    strategies = list(dict.fromkeys(c.strategy for c in study_plan.main))
    seeds = sorted({c.seed for c in study_plan.main})
    overrides = {k: v for k, v in overrides.items() if v is not None}
    robust = sweep.expand(robust_tasks, strategies, seeds, preset=study_plan.preset,
                          strategy_overrides={s: {"lr": lr} for s, lr in study_plan.lrs.items()},
                          weights=spec["robust_weights"], **overrides)
    form = check_choice("path_form", path_form or spec["path_form"], interpolate.FORMS)
    return RemediesPlan(interpolate.jobs(study_plan.main, alphas, form), robust)


def unchosen(preset: str, tasks: Sequence[str] | None, strategies: Sequence[str] | None,
             seeds: Sequence[int] | None, results_dir: str | Path, **overrides: Any) -> Plan:
    """A study's plan before its sweep has chosen the rates: the sweep's runs as far as the
    store calls for them (the grid and the extensions so far, :func:`sweep_state`), the
    study's, the arms' and the control's runs at the preset's rates. Computes nothing."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    tasks, strategies, seeds, main, selection = _grids(preset, tasks, strategies, seeds,
                                                       **overrides)
    if selection:
        selection = sweep_state(preset, strategies, results_dir, **overrides)[0]
    return Plan(preset, selection, main, {}, None,
                *_factors(preset, tasks, strategies, seeds, {}, **overrides))


def progress_report(preset: str, tasks: Sequence[str] | None = None,
                    strategies: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                    results_dir: str | Path | None = None, path_form: str | None = None,
                    **overrides: Any) -> list[str]:
    """How much of a study its store holds, without computing anything (``--dry-run``): the
    sweep, the study's runs (at the chosen rates once the sweep is complete) and its
    remedies."""
    results_dir = Path(results_dir or preset_store(preset))
    study_plan = unchosen(preset, tasks, strategies, seeds, results_dir, **overrides)
    selection, chosen = study_plan.selection, False
    if selection:
        try:
            study_plan = plan(preset, tasks, strategies, seeds, results_dir,
                              compute_selection=False, **overrides)
            chosen = True
        except ConfigError:  # the sweep is incomplete: the preset's rates stand in
            pass
    from . import interpolate

    lines, left, study_pace, todo_all = [], 0.0, None, []
    for (name, role), configs in ((("learning-rate sweep", "lr selection"), selection),
                                  (("study", "study"), study_plan.main),
                                  (("upstream arms", "upstream arm"), study_plan.arms),
                                  (("memorization control", "control"), study_plan.control)):
        if not configs and role in ("upstream arm", "control"):
            continue
        records = run_records(results_dir, configs, role)
        done = {r["run_id"] for r in records}
        todo = [c for c in configs if c.run_id() not in done]
        todo_all += todo
        line = (f"{name}: {len(records)} of {len(configs)} runs complete in "
                f"{shown_path(results_dir)}")
        guess = estimate(todo, results_dir) if todo and not records else None
        if guess:  # none of this part's runs yet: the stored runs' pace of the same model
            left += guess
            line += f"; about {duration(guess)} of one core at the stored runs' pace"
        if records:
            pace = sum(r["seconds"] for r in records) / len(records)
            if role == "study":  # the remedies' pace: a run's, an evaluation point's, and a
                # run's training alone (a path whose run's weights are not kept retrains it)
                study_pace = pace, (sum(r["eval_seconds"] for r in records)
                                    / sum(r["points"] for r in records)), \
                    sum(r["seconds"] - r["eval_seconds"] for r in records) / len(records)
            if len(records) < len(configs):
                left += pace * (len(configs) - len(records))
                line += (f"; at the pace of those ({pace:.0f} s of compute per run), about "
                         f"{duration(pace * (len(configs) - len(records)))} of one core left")
        lines.append(line)
    if selection and not chosen:
        lines.append("(the study's runs take the learning rates the sweep chooses; until it is "
                     "complete they are counted at the preset's rate)")
    try:
        work = beyond_arms(remedies_plan(study_plan, path_form=path_form, **overrides),
                           study_plan)
        todo = [job for job in work if not sweep.complete(job, results_dir)]
        todo_all += todo
        line = (f"remedies (interpolation paths, robust upstream runs): {len(work) - len(todo)} "
                f"of {len(work)} complete")
        if todo and study_pace is not None:
            # A robust upstream run costs a study run; a path, its evaluated points (its ends
            # are runs' own points, interpolate.run_ends).
            per_run, per_point, training = study_pace
            extra = sum(per_point * len([a for a in job.alphas if a not in
                                         interpolate.run_ends(job.strategy, job.form)])
                        + (training if retrains(job, results_dir) else 0.0)
                        if isinstance(job, interpolate.PathJob) else per_run for job in todo)
            left += extra
            line += f"; at the study's pace, about {duration(extra)} of one core left"
        lines.append(line)
    except ConfigError as err:
        lines.append(f"remedies: {err}")
    if left:
        lines.append(f"in all: about {duration(left)} of one core left ({duration(left / 2)} "
                     "with two workers)")
    # At this study's own pace where it has one, as the lines below: one figure in a report.
    return [cost_line(todo_all, results_dir, left or None), *lines]


# -- what work costs --------------------------------------------------------------------------
def work(config: RunConfig) -> tuple[float, float]:
    """A run's work in image passes (a forward pass of one image is 1, a training step's
    forward and backward 3): its training, and its evaluation at every point (clean accuracy
    on the test set, each OOD domain, the scored training images and the validation split; the
    attack, each of its iterations a forward and a backward, at every budget, and on the
    validation split with ``val_robust``). Proportional to time for one model on one machine."""
    from . import data

    attack = 3 * config.attack_steps + 1
    ood = max(0, len(data.info(config.task).domains) - 1)
    per_point = (config.test_size * (1 + ood) + config.train_eval_size + config.val_count()
                 + len(config.eps) * config.test_size * attack
                 + (config.val_count() * attack if config.val_robust else 0))
    return 3.0 * config.total_steps() * config.batch_size, per_point * len(config.eval_steps())


def _model_key(config: RunConfig) -> str:
    return json.dumps([config.model, config.model_kwargs], sort_keys=True)


def pace(results_dir: str | Path, run_ids: Sequence[str] | None = None
         ) -> dict[str, tuple[float, float]]:
    """See :func:`_pace` (read once per version of the store: a page asks several times)."""
    files = store.run_files(results_dir)
    version = (len(files), max((f.stat().st_mtime_ns for f in files), default=0))
    return _pace(str(Path(results_dir).resolve()), version,
                 None if run_ids is None else tuple(sorted(run_ids)))


@functools.lru_cache(maxsize=8)
def _pace(results_dir: str, version: tuple[int, int], run_ids: tuple[str, ...] | None
          ) -> dict[str, tuple[float, float]]:
    """Seconds per image pass of training and of evaluation, per model, measured on the
    complete runs of a store (``run_ids``: those only): each run's recorded seconds over its
    :func:`work`, the median over runs (a run computed beside other work took up to 4 times
    as long as the same run alone: the median is the typical run, not the slowest)."""
    import statistics

    rates: dict[str, tuple[list[float], list[float]]] = {}
    for path in store.run_files(results_dir):
        if run_ids is not None and path.stem not in run_ids:
            continue
        try:
            meta, table = store.read_run(path)
            config = RunConfig.from_dict(meta["config"])
            columns = table.select([metrics.TRAIN_SECONDS, metrics.EVAL_SECONDS]).to_pandas()
        except Exception:  # noqa: BLE001 - a run that cannot tell its cost is left out
            continue
        train_work, eval_work = work(config)
        train, evaluation = rates.setdefault(_model_key(config), ([], []))
        train.append(float(columns[metrics.TRAIN_SECONDS].iloc[-1]) / train_work)
        evaluation.append(float(columns[metrics.EVAL_SECONDS].sum()) / eval_work)
    return {key: (statistics.median(t), statistics.median(e)) for key, (t, e) in rates.items()}


def retrains(path_job: Any, results_dir: str | Path) -> bool:
    """Whether an interpolation path must train its run again: the run is stored but its final
    weights are not (they are kept locally, not committed). A run still to come is computed
    right before its path (:func:`with_paths`), its weights at hand."""
    config = path_job.config
    return (store.complete_run(results_dir, config) is not None
            and not store.weights_path(results_dir, config).is_file())


def estimate(jobs: Sequence[Any], results_dir: str | Path, paces: dict | None = None
             ) -> float | None:
    """Seconds of one core the ``jobs`` (runs, interpolation paths) will take, at the pace the
    store's complete runs of the same model measured (:func:`pace`; the committed study's
    where the store has none); None when no run of that model tells."""
    from . import interpolate

    if paces is None:
        paces = {**pace(preset_store("study")), **pace(results_dir)}
    seconds = 0.0
    for job in jobs:
        config = job.config if isinstance(job, interpolate.PathJob) else job
        rates = paces.get(_model_key(config))
        if rates is None:
            return None
        train_work, eval_work = work(config)
        if isinstance(job, interpolate.PathJob):  # its points; its run again if not kept
            points = len([a for a in job.alphas
                          if a not in interpolate.run_ends(job.strategy, job.form)])
            seconds += (train_work * rates[0] if retrains(job, results_dir) else 0.0) + \
                points * rates[1] * eval_work / len(config.eval_steps())
        else:
            seconds += train_work * rates[0] + eval_work * rates[1]
    return seconds


def cost_line(jobs: Sequence[Any], results_dir: str | Path, seconds: float | None = None
              ) -> str:
    """"N new runs (and P paths), about T of one core", at the pace of the stored runs of
    the same model (:func:`estimate`; ``seconds``: a figure the caller already has), or
    "nothing new to compute"."""
    from . import interpolate

    if not jobs:
        return "nothing new to compute: every run is in the store"
    paths = sum(isinstance(j, interpolate.PathJob) for j in jobs)
    runs = len(jobs) - paths
    what = " and ".join(part for part in (f"{runs} new runs" if runs else "",
                                          f"{paths} new interpolation paths" if paths else "")
                        if part)
    if seconds is None:
        seconds = estimate(jobs, results_dir)
    if seconds is None:
        return f"{what} (no run of this model is stored yet to tell how long they take)"
    return f"{what}, about {duration(seconds)} of one core ({duration(seconds / 2)} on two)"


def duration(seconds: float) -> str:
    """``seconds`` as a reader reads a remaining time: hours, minutes or seconds."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


# -- computing a study, with its provenance ---------------------------------------------------
MANIFEST = "manifest.json"


def _code_version(results_dir: Path) -> dict[str, Any]:
    """The checkout's commit, and whether files other than the store differ from it."""
    import subprocess

    try:
        here = Path(__file__).resolve().parent
        base = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here,
                                   capture_output=True, text=True, check=True).stdout.strip())
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=base, capture_output=True,
                                text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=base, capture_output=True, text=True,
                                 check=True).stdout.splitlines()
    except Exception:  # noqa: BLE001 - not a git checkout: say so in the manifest
        return {"commit": None, "modified": None}
    store_dir = str(Path(results_dir).resolve())
    modified = [line[3:] for line in changed
                if not str((base / line[3:]).resolve()).startswith(store_dir)]
    return {"commit": commit, "modified": modified}


def _machine(device: str) -> dict[str, Any]:
    import os
    import platform

    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": device, "device_name": torch.cuda.get_device_name(device)
            if device.startswith("cuda") else "cpu"}


def run_records(results_dir: str | Path, configs: Sequence[RunConfig], role: str
                ) -> list[dict[str, Any]]:
    """One record per complete run: what it is, where and how long it computed (its own
    training and evaluation seconds, summed over sessions if it was resumed; and the
    evaluation's alone)."""
    records = []
    for config in configs:
        path = store.complete_run(results_dir, config)
        if path is None:
            continue
        meta, table = store.read_run(path)
        rows = table.to_pandas()
        records.append({
            "run_id": config.run_id(), "role": role, "task": config.task,
            "strategy": config.strategy, "seed": config.seed, "lr": config.lr,
            "points": len(rows), "device": meta.get("device"),
            "device_name": meta.get("device_name"), "precision": meta.get("precision"),
            "versions": meta.get("versions"),
            "seconds": round(float(rows[metrics.TRAIN_SECONDS].iloc[-1]
                                   + rows[metrics.EVAL_SECONDS].sum()), 1),
            "eval_seconds": round(float(rows[metrics.EVAL_SECONDS].sum()), 1)})
    return records


def path_records(results_dir: str | Path, jobs: Sequence[Any]) -> list[dict[str, Any]]:
    """One record per stored interpolation path: what it joins, its coefficients and the
    seconds of the points it evaluated (its ends are the runs' own points)."""
    records = []
    for job in jobs:
        rows = store.read_table(store.interpolation_path(results_dir, job.run_id()))
        if rows is None:
            continue
        computed = rows[rows["computed"]] if "computed" in rows else rows
        records.append({
            "run_id": job.run_id(), "role": "interpolation", "task": job.task,
            "strategy": job.strategy, "seed": job.seed, "of_run": job.config.run_id(),
            "probe": job.probe.run_id(), "alphas": list(job.alphas),
            "points": int(len(computed)),
            "seconds": round(float(computed[metrics.EVAL_SECONDS].sum()), 1)})
    return records


def write_manifest(results_dir: str | Path, study_plan: Plan, invocation: dict[str, Any],
                   remedies: RemediesPlan | None = None) -> Path:
    """``results_dir/manifest.json``: the study's command, code version, upstream checkpoint,
    chosen learning rates, every run with its time and package versions, and every invocation
    that computed part of it with its own versions (a study may be computed over several
    sessions, on machines whose installs differ: ``run_versions`` counts the runs under each
    set of versions, so a change of a library between sessions is visible at the top)."""
    from .config import resolve_weights
    from .train import _versions

    results_dir = Path(results_dir)
    path = results_dir / MANIFEST
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    sample = (study_plan.main or study_plan.selection)[0]
    weights = resolve_weights(sample.weights)
    upstream = None
    if weights and str(weights).endswith(".safetensors"):
        from .pretrain import checkpoint_metadata

        meta = checkpoint_metadata(Path(weights))
        upstream = {"file": Path(weights).name, "identity": weights_identity(sample.weights),
                    "upstream_test_accuracy": meta.get("upstream_test_accuracy"),
                    "command": meta.get("command")}
    runs = (run_records(results_dir, study_plan.selection, "lr selection")
            + run_records(results_dir, study_plan.main, "study")
            + run_records(results_dir, study_plan.arms, "upstream arm")
            + run_records(results_dir, study_plan.control, "control"))
    if remedies is not None:
        runs += (run_records(results_dir, remedies.robust, "robust upstream")
                 + path_records(results_dir, remedies.paths))
    seen: set[str] = set()  # a run once, in its first role (the robust upstream remedy's
    runs = [r for r in runs if not (r["run_id"] in seen or seen.add(r["run_id"]))]  # may be an arm's
    planned = _job_ids(study_plan, remedies)
    # An invocation restricted to part of the study (--strategies ...) must not drop the
    # records of the rest: an earlier record outside this plan stays while its file does.
    kept = [r for r in earlier.get("runs", [])
            if r["run_id"] not in planned and _still_stored(results_dir, r)]
    runs += kept
    choice = ([] if study_plan.choice is None else
              json.loads(study_plan.choice.to_json(orient="records")))
    chosen = {row["strategy"] for row in choice}
    manifest = {
        "preset": study_plan.preset,
        "command": invocation["command"],
        "code": invocation["code"],
        "run_versions": _version_sets(runs),
        "upstream": upstream,
        "learning_rates": {**earlier.get("learning_rates", {}), **study_plan.lrs},
        "lr_choice": choice + [row for row in earlier.get("lr_choice", [])
                               if row.get("strategy") not in chosen],
        "runs_planned": len(planned) + len(kept),
        "runs_complete": len(runs),
        "compute_seconds": round(sum(r["seconds"] for r in runs), 1),
        "runs": runs,
        "invocations": [*earlier.get("invocations", []), {"versions": _versions(), **invocation}],
    }
    return store.write_text(path, json.dumps(manifest, indent=1, default=str) + "\n")


def _version_sets(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each distinct set of package versions among the runs, with how many runs it computed
    (most first); paths, and records of earlier manifests that predate per-run versions, have
    none and are not counted."""
    from collections import Counter

    counts = Counter(json.dumps(r["versions"], sort_keys=True) for r in runs if r.get("versions"))
    return [{**json.loads(key), "runs": n} for key, n in counts.most_common()]


def _whole_study(part: Plan, extra: RemediesPlan | None, results_dir: Path, device: str,
                 path_form: str | None, **overrides: Any
                 ) -> tuple[Plan, RemediesPlan | None]:
    """The preset's whole study in ``results_dir`` (its tasks, strategies and seeds, and its
    remedies), for the manifest of an invocation that computed a part of it (``--strategies``,
    ``--no-remedies``, ...); the part itself when the store's
    sweep cannot yet choose every strategy's rate, or when the part reaches beyond it (a task
    the preset does not name)."""
    try:
        whole = plan(part.preset, results_dir=results_dir, compute_selection=False,
                     device=device, **overrides)
        whole_extra = remedies_plan(whole, path_form=path_form, **overrides)
    except ConfigError:
        return part, extra
    if _job_ids(part, extra) <= _job_ids(whole, whole_extra):
        return whole, whole_extra
    return part, extra


def _job_ids(study_plan: Plan, remedies: RemediesPlan | None) -> set[str]:
    """The ids of every run and path a study plans."""
    return {job.run_id() for job in [
        *study_plan.selection, *study_plan.main, *study_plan.arms, *study_plan.control,
        *(remedies.work() if remedies is not None else [])]}


def _still_stored(results_dir: Path, record: dict[str, Any]) -> bool:
    """Whether a manifest record's run (or interpolation path) is still in the store."""
    if record.get("role") == "interpolation":
        return store.interpolation_path(results_dir, record["run_id"]).is_file()
    return store.run_path(results_dir, record["run_id"]).is_file()


def with_paths(runs: Sequence[RunConfig], paths: Sequence[Any]) -> list:
    """``runs`` seed by seed, each task's linear probe first, each run followed by its
    interpolation paths (``paths``: :class:`rtlib.interpolate.PathJob`; a path needs its run's
    and its probe's final weights, which a study keeps locally only), then any path whose run
    is not among ``runs``."""
    by_run: dict[str, list] = {}
    for job in paths:
        by_run.setdefault(job.config.run_id(), []).append(job)
    out = []
    for config in sorted(runs, key=lambda c: (c.seed, c.strategy != "linear_probe")):
        out += [config, *by_run.pop(config.run_id(), [])]
    return out + [job for jobs in by_run.values() for job in jobs]


def compute(preset: str = "study", tasks: Sequence[str] | None = None,
            strategies: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            results_dir: str | Path | None = None, device: str = "auto",
            workers: int | None = 1, progress: bool = True, command: str = "",
            remedies: bool = True, path_form: str | None = None, **overrides: Any
            ) -> tuple[Plan, pd.DataFrame, Path]:
    """Compute a study (what the store lacks: the learning-rate sweep, then the study's runs,
    the upstream arms' and the memorization control's, then, with ``remedies``, the remedies
    chapter's paths and robust upstream runs,
    :func:`remedies_plan`) and write its manifest; returns (plan, summary of the study's runs
    and remedies, manifest path). Resumable: an interrupted study resumes from its complete
    runs and each run from its last evaluation point."""
    import datetime
    import time

    results_dir = Path(results_dir or preset_store(preset))
    results_dir.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    invocation = {"command": command, "started": started.isoformat(timespec="seconds"),
                  "code": _code_version(results_dir), "machine": _machine(device)}
    study_plan = summary = extra = None
    try:
        study_plan = plan(preset, tasks, strategies, seeds, results_dir, device=device,
                          workers=workers, progress=progress, **overrides)
        extra = (remedies_plan(study_plan, path_form=path_form, **overrides) if remedies
                 else None)  # checked first
        if study_plan.at_top() and progress:
            print(f"note: the sweep chose the largest rate of the grid for "
                  f"{', '.join(study_plan.at_top())}: the best rate may lie beyond it (extend "
                  f"the preset's lr_grid, or raise its lr_extensions, and rerun)", flush=True)
        # Seed by seed: a study stopped part-way holds whole seeds (a one-seed study first).
        # In one process, each run's interpolation path comes right after it, while the
        # run's weights (kept locally, not committed) are still there to interpolate.
        paths = extra.paths if extra is not None and workers == 1 else []
        summary = sweep.run(with_paths(study_plan.main, paths), results_dir, device=device,
                            progress=progress, workers=workers,
                            desc="study runs" + (" and their paths" if paths else ""))
        for runs, desc in ((study_plan.arms, "upstream arms"),
                           (study_plan.control, "memorization control")):
            if runs:  # seed by seed too
                summary = pd.concat([summary, sweep.run(
                    sorted(runs, key=lambda c: c.seed), results_dir, device=device,
                    progress=progress, workers=workers, desc=desc)], ignore_index=True)
        computed = {job.run_id() for job in paths}
        rest = [job for job in (beyond_arms(extra, study_plan) if extra is not None else [])
                if job.run_id() not in computed]
        if rest:
            summary = pd.concat([summary, sweep.run(
                rest, results_dir, device=device, progress=progress, workers=workers,
                desc="remedies (paths, robust upstream runs)")], ignore_index=True)
        if extra is not None:  # the methods chapter's scores of the two upstream models
            from .pretrain import upstream_table

            if progress:
                print("scoring the upstream models for the methods chapter", flush=True)
            table = upstream_table(preset, results_dir)
            if progress:
                print(f"{table.attrs['attack']}:\n{table.round(3).to_string()}", flush=True)
    finally:  # an interrupted study still records what it completed
        invocation["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        invocation["wall_seconds"] = round(time.perf_counter() - t0, 1)
        invocation["completed"] = summary is not None
        if summary is not None:
            invocation["summary"] = summary["status"].value_counts().to_dict()
        if study_plan is None:  # interrupted in the sweep: record its runs (no rates yet)
            try:
                sweep_so_far = unchosen(preset, tasks, strategies, seeds, results_dir,
                                        **overrides)
                study_plan = Plan(preset, sweep_so_far.selection, sweep_so_far.main)
            except ConfigError:  # bad options: nothing ran, nothing to record
                pass
        recorded = (study_plan, extra)
        if study_plan is not None and (tasks or strategies or seeds or not remedies):
            recorded = _whole_study(study_plan, extra, results_dir, device, path_form,
                                    **overrides)
        manifest = (write_manifest(results_dir, recorded[0], invocation, recorded[1])
                    if study_plan else None)
    return study_plan, summary, manifest
