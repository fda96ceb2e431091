"""Grids of runs: expand (tasks x strategies x seeds x hyper-parameters) into run configs and
execute them in-process (``executor="local"``) or as Ray tasks (``executor="ray"``).

Completed runs are skipped (the store knows them by their config hash). A run that fails is
recorded with its error under ``results_dir/failed/<run id>.json`` and the sweep goes on; the
summary at the end says what was done, skipped and failed, and why.
"""
from __future__ import annotations

import itertools
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from . import preflight, store
from .config import (EXECUTORS, ConfigError, RunConfig, check_choice, check_int, check_list,
                     preset_defaults)


def expand(tasks: Sequence[str], strategies: Sequence[str], seeds: Iterable[int] = (0,),
           preset: str = "embedded", hparams: Mapping[str, Mapping[str, Sequence[Any]]] | None
           = None, strategy_overrides: Mapping[str, Mapping[str, Any]] | None = None,
           **overrides: Any) -> list[RunConfig]:
    """Run configs for every (task, strategy, seed, hyper-parameter combination).

    ``hparams``: per strategy, lists of values to grid over, e.g. ``{"lora": {"rank": [4, 8]}}``.
    ``overrides`` replace the preset's values (its per-strategy values included) for every run;
    ``strategy_overrides`` (per strategy, e.g. its chosen learning rate) replace both.
    Every config passes :func:`rtlib.preflight.check` before anything runs.
    """
    tasks, strategies, seeds = (check_list(name, value) for name, value in
                                (("tasks", tasks), ("strategies", strategies), ("seeds", seeds)))
    configs = []
    for task, strategy, seed in itertools.product(tasks, strategies, seeds):
        grid = (hparams or {}).get(strategy, {})
        names = sorted(grid)
        for values in itertools.product(*(grid[n] for n in names)):
            fields = {**preset_defaults(preset, strategy), **overrides,
                      **(strategy_overrides or {}).get(strategy, {}), "seed": seed}
            configs.append(RunConfig(task=task, strategy=strategy,
                                     hparams=dict(zip(names, values)), **fields))
    return preflight.check_all(configs)


@dataclass
class Outcome:
    run_id: str
    task: str
    strategy: str
    seed: int
    status: str  # "done", "skipped" or "failed"
    seconds: float
    error: str = ""
    label: str = ""  # what progress lines name it (:func:`label`)


def complete(job: RunConfig | Any, results_dir: str | Path) -> bool:
    """Whether the store holds ``job``: a run (:func:`rtlib.store.complete_run`), or another
    unit of work that answers for itself (e.g. :class:`rtlib.interpolate.PathJob`)."""
    if isinstance(job, RunConfig):
        return store.complete_run(results_dir, job) is not None
    return job.complete(results_dir)


def run_one(config: RunConfig | Any, results_dir: str | Path, device: str | None = "auto",
            progress: bool = False) -> Outcome:
    """Run one config (waiting for another process that computes it), or execute another
    unit of work, turning an exception into a recorded failure."""
    from . import train

    t0 = time.perf_counter()
    key = dict(run_id=config.run_id(), task=config.task, strategy=config.strategy,
               seed=config.seed, label=label(config))
    try:
        if isinstance(config, RunConfig):
            train.run(config, results_dir, device=device, progress=progress)
        else:
            config.execute(results_dir, device=device, progress=progress)
    except Exception as err:  # noqa: BLE001 - one failing run must not take the others down
        message = f"{type(err).__name__}: {err}"
        store.record_failure(results_dir, config, message, traceback.format_exc())
        return Outcome(**key, status="failed", seconds=time.perf_counter() - t0, error=message)
    store.clear_failure(results_dir, config)
    return Outcome(**key, status="done", seconds=time.perf_counter() - t0)


def _exit_with(parent: int, poll_seconds: float = 1.0) -> None:
    """A pool worker's initializer: end this worker when the process that started it is gone
    (killed, or a notebook's kernel shut down), instead of training its run to the end for
    nobody. Ending mid-run is what a kill does: the run resumes from its last evaluation
    point."""
    import os
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_one_in_worker(config: RunConfig, results_dir: str, device: str | None,
                       threads: int) -> Outcome:
    import torch

    torch.set_num_threads(threads)
    return run_one(config, results_dir, device=device, progress=False)


def run(configs: Sequence[RunConfig | Any], results_dir: str | Path, executor: str = "local",
        device: str | None = "auto", progress: bool = True, workers: int | None = 1,
        desc: str = "runs") -> pd.DataFrame:
    """Execute every config not yet complete; returns one summary row per config. A config
    may also be another unit of work with the same face (:func:`complete`, :func:`run_one`),
    such as an interpolation path.

    ``progress``: ``True`` draws bars (one per run, and the sweep's with its remaining time);
    ``"lines"`` prints one line per finished run with the elapsed and remaining time (what a
    notebook run by papermill can pass on to the console); ``False`` is silent.
    ``workers`` (local executor on the CPU): runs in parallel processes, each with
    ``cpu_count // workers`` torch threads; ``None`` picks one worker per CPU core. Small
    models use two single-threaded processes better than one process with two threads.
    """
    import os

    check_choice("executor", executor, EXECUTORS)
    # Complete runs are skipped without writing anything: a complete store may be read-only.
    done = {i for i, c in enumerate(configs) if complete(c, results_dir)}
    todo = [c for i, c in enumerate(configs) if i not in done]
    cpus = os.cpu_count() or 1
    workers = min(cpus, max(1, len(todo))) if workers is None else check_int(
        "workers", workers, minimum=1)
    if not todo:
        computed = []
    elif executor == "ray":
        computed = _run_ray(todo, results_dir, progress, desc)
    elif workers == 1 or len(todo) <= 1:
        from tqdm.auto import tqdm

        computed, t0 = [], time.perf_counter()
        bar = tqdm(todo, desc=desc, unit="run", disable=progress is not True)
        for k, config in enumerate(bar, 1):
            bar.set_postfix_str(label(config))
            computed.append(run_one(config, results_dir, device=device,
                                    progress=progress is True))
            if progress == "lines":
                print(progress_line(desc, k, len(todo), computed[-1], t0), flush=True)
    else:
        computed = _run_pool(todo, results_dir, device, workers, max(1, cpus // workers),
                             progress, desc)
    outcomes, computed = [], iter(computed)
    for i, c in enumerate(configs):
        outcomes.append(Outcome(run_id=c.run_id(), task=c.task, strategy=c.strategy,
                                seed=c.seed, status="skipped", seconds=0.0)
                        if i in done else next(computed))
    return pd.DataFrame([o.__dict__ for o in outcomes], columns=[f.name for f in fields(Outcome)])


def _run_pool(configs, results_dir, device, workers, threads, progress, desc="runs"
              ) -> list[Outcome]:
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    results_dir = str(Path(results_dir).resolve())
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_exit_with, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_run_one_in_worker, c, results_dir, device, threads): i
                   for i, c in enumerate(configs)}

        def finished():
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result()
                except BrokenProcessPool as err:
                    raise RuntimeError(
                        "the sweep's worker processes stopped before they could run: a script "
                        "that calls sweep.run with several workers must guard its top level "
                        "with `if __name__ == \"__main__\":` (each worker is a new Python that "
                        "imports the script), or pass workers=1") from err

        return _collect(finished(), configs, progress, desc)


def _collect(finished, configs, progress, desc) -> list[Outcome]:
    """Outcomes in the configs' order from ``(index, outcome)`` pairs in the order the runs
    end; a bar or a line per finished run as ``progress`` asks (see :func:`run`)."""
    from tqdm.auto import tqdm

    outcomes: dict[int, Outcome] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(configs), desc=desc, unit="run", disable=progress is not True)
    for k, (i, outcome) in enumerate(finished, 1):
        outcomes[i] = outcome
        bar.set_postfix_str(f"{outcome.label} {outcome.status}")
        bar.update()
        if progress == "lines":
            print(progress_line(desc, k, len(configs), outcome, t0), flush=True)
    bar.close()
    return [outcomes[i] for i in range(len(configs))]


def label(config: RunConfig | Any) -> str:
    """``digits/lora rank=4/seed 0``: what a progress bar names (hyper-parameters beyond the
    strategy's defaults included, so the runs of a grid over them are told apart)."""
    hparams = "".join(f" {k}={v}" for k, v in sorted(getattr(config, "hparams", {}).items()))
    return f"{config.task}/{config.strategy}{hparams}/seed {config.seed}"


def progress_line(desc: str, k: int, n: int, outcome: Outcome, start: float) -> str:
    """``runs 3/28 digits/lora/seed 0: done in 41 s; elapsed 2.1 min, about 17 min left``."""
    elapsed = time.perf_counter() - start
    left = elapsed / k * (n - k)
    return (f"{desc} {k}/{n} {outcome.label}: "
            f"{outcome.status} in {outcome.seconds:.0f} s; elapsed {elapsed / 60:.1f} min"
            + (f", about {left / 60:.0f} min left" if k < n else ""))


def _run_ray(configs: Sequence[RunConfig], results_dir: str | Path, progress=True,
             desc: str = "runs") -> list[Outcome]:
    """One Ray task per run (a GPU each where the cluster has GPUs). ``RAY_ADDRESS`` or a
    ``ray://`` address selects a cluster; without one a local Ray instance starts. Each run
    is reported as it ends, like the local executor's."""
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    remote = ray.remote(num_gpus=gpus, max_retries=0)(run_one)
    results_dir = str(Path(results_dir).resolve())
    pending = {remote.remote(c, results_dir, "auto", False): i for i, c in enumerate(configs)}

    def finished():
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ref), ray.get(ref)

    return _collect(finished(), configs, progress, desc)


def summarize(summary: pd.DataFrame) -> str:
    """A short text report: counts, and each failure with its reason."""
    counts = summary["status"].value_counts() if len(summary) else pd.Series(dtype=int)
    lines = [f"{len(summary)} runs: {counts.get('done', 0)} done, "
             f"{counts.get('skipped', 0)} skipped (already complete), "
             f"{counts.get('failed', 0)} failed"]
    for row in summary[summary["status"] == "failed"].itertuples() if len(summary) else []:
        lines.append(f"  failed {row.task}/{row.strategy}/seed {row.seed} ({row.run_id}): "
                     f"{row.error}")
    return "\n".join(lines)
