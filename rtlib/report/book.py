"""Execute the book's notebooks with papermill, then compile them with Jupyter Book 1.

Notebook templates live in ``notebooks/`` without outputs; executed copies are written to
``book/executed/`` (a build product). A notebook that fails stops the build with its name and
the failing cell, and its executed copy is kept for inspection. The book is built from a source
checkout (``_toc.yml``, ``notebooks/``, ``book/``): :func:`root` finds it from the working
directory or from this package, and says so when there is none.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

VEGA_BUNDLE = "vega-offline.js"


class NotebookFailed(RuntimeError):
    pass


def root() -> Path:
    """The source checkout the book is built from: the first folder holding ``_toc.yml`` and
    ``notebooks/``, from the working directory up, then from this package up."""
    from ..config import ConfigError, checkout_root

    found = checkout_root() or checkout_root(Path(__file__))
    if found:
        return found
    raise ConfigError("book", str(Path.cwd()), "a source checkout of the project (with "
                      "_toc.yml and notebooks/)", "the book is built from a checkout; none at")


def notebooks() -> list[Path]:
    return sorted((root() / "notebooks").glob("*.ipynb"))


def declared_parameters() -> dict[str, set[str]]:
    """Each notebook's declared parameters (its ``parameters`` cell), by notebook name."""
    import papermill as pm

    return {p.stem: set(pm.inspect_notebook(str(p))) for p in notebooks()}


def declared_default(name: str) -> Any:
    """The default the chapters declare for parameter ``name`` (their parameters cells are the
    one place it is written), read from the first notebook that declares it."""
    import ast

    import papermill as pm

    for path in notebooks():
        declared = pm.inspect_notebook(str(path))
        if name in declared:
            return ast.literal_eval(declared[name]["default"])
    raise KeyError(name)


def check_parameters(parameters: Mapping[str, Any] | None) -> None:
    """Every parameter must be declared by at least one notebook: checked before any runs."""
    from ..config import ConfigError

    known = set().union(*declared_parameters().values())
    for name in parameters or {}:
        if name not in known:
            raise ConfigError(f"-p {name}", (parameters or {})[name], sorted(known),
                              "no notebook declares this parameter; value")
    check_values(parameters or {})


#: The chapters' parameters that choose runs (the rest say where and how runs are done).
RUN_PARAMETERS = ("preset", "tasks", "strategies", "seeds", "eps", "steps", "domain",
                  "alphas", "robust_tasks", "executor", "workers")


@dataclass(frozen=True)
class ChapterRuns:
    """The runs the chapters read, resolved once from the book's parameters: the study
    chapters' ``tasks`` and the OOD chapter's (``ood_tasks``, fine-tuned on ``domain``), each
    for every strategy and seed; the remedies chapter's interpolation coefficients
    (``alphas``) and the tasks it fine-tunes from the robust upstream model
    (``robust_tasks``), the preset's where not given."""

    preset: str
    tasks: list[str]
    ood_tasks: list[str]
    domain: str | None
    strategies: list[str]
    seeds: list[int]
    overrides: dict[str, Any]
    alphas: list[float]
    robust_tasks: list[str]


def chapter_runs(parameters: Mapping[str, Any]) -> ChapterRuns:
    """Resolve the chapters' run parameters as their first cells would (``None``: the
    preset's)."""
    from ..config import (LIST_EXAMPLES, book_preset, check_list, preset_ood_task,
                          preset_remedies, preset_seeds, preset_tasks)
    from ..strategies import PAPER_STRATEGIES

    p = dict(parameters)
    for name in LIST_EXAMPLES:  # before list() reads a text one character at a time
        if p.get(name) is not None:
            check_list(name, p[name])
    preset = book_preset(p.get("preset", declared_default("preset")))
    remedies = preset_remedies(preset)
    return ChapterRuns(
        preset=preset, tasks=list(p.get("tasks") or preset_tasks(preset)),
        ood_tasks=list(p.get("tasks") or [preset_ood_task(preset)]), domain=p.get("domain"),
        strategies=list(p.get("strategies") or PAPER_STRATEGIES),
        seeds=list(p.get("seeds") or preset_seeds(preset)),
        overrides={k: p[k] for k in ("eps", "steps") if p.get(k) is not None},
        alphas=list(remedies["alphas"] if p.get("alphas") is None else p["alphas"]),
        robust_tasks=list(remedies["robust_tasks"] if p.get("robust_tasks") is None
                          else p["robust_tasks"]))


def check_values(parameters: Mapping[str, Any]) -> None:
    """Check the values a chapter would run with, as its first cell would, before any notebook
    runs: every run config passes :func:`rtlib.preflight.check` (nothing is computed)."""
    if parameters.get("results_dir") is not None:
        from ..store import check_results_dir

        check_results_dir(parameters["results_dir"])
    if not set(parameters) & set(RUN_PARAMETERS):
        return
    from ..config import (EXECUTORS, MAX_SEED, MAX_STEPS, check_choice, check_int, check_list,
                          preset_remedies)

    # The bounds first: answered before torch is imported and the notebooks are read.
    if parameters.get("steps") is not None:
        check_int("steps", parameters["steps"], 1, MAX_STEPS)
    for seed in check_list("seeds", parameters["seeds"]) if parameters.get("seeds") else ():
        check_int("seed", seed, 0, MAX_SEED)
    from .. import interpolate, sweep

    check_choice("executor", parameters.get("executor", "local"), EXECUTORS)
    if parameters.get("workers") is not None:
        check_int("workers", parameters["workers"], minimum=1, maximum=1024)
    runs = chapter_runs(parameters)
    sweep.expand(runs.tasks, runs.strategies, runs.seeds, preset=runs.preset, **runs.overrides)
    if runs.domain is not None:  # the OOD chapter trains on this domain of its task
        sweep.expand(runs.ood_tasks, runs.strategies[:1], runs.seeds[:1], preset=runs.preset,
                     domain=runs.domain, **runs.overrides)
    interpolate.check_alphas(runs.alphas)
    if runs.robust_tasks:  # the remedies chapter's runs from the robust upstream model
        sweep.expand(runs.robust_tasks, runs.strategies, runs.seeds, preset=runs.preset,
                     weights=preset_remedies(runs.preset)["robust_weights"], **runs.overrides)


def missing_runs(parameters: Mapping[str, Any] | None = None, remedies: bool = True
                 ) -> int | None:
    """How many of the chapters' runs and paths the store lacks (:func:`missing_work`)."""
    work = missing_work(parameters, remedies)
    return None if work is None else len(work)


def missing_work(parameters: Mapping[str, Any] | None = None, remedies: bool = True
                 ) -> list | None:
    """The chapters' runs the store lacks (their study's, the OOD chapter's on its ``domain``
    and, with ``remedies``, the remedies chapter's paths and robust upstream runs), computing
    nothing; a learning-rate sweep the store lacks comes first, its study's runs then counted
    at the preset's rates (the rates it will choose are not known yet). None when the work is
    not done here (another executor)."""
    parts = _missing(parameters, remedies)
    return None if parts is None else parts[0] + parts[1]


def _missing(parameters: Mapping[str, Any] | None, remedies: bool
             ) -> tuple[list, list] | None:
    """:func:`missing_work` in two parts: the learning-rate sweep's runs the store lacks, and
    the rest."""
    from .. import plan, store, sweep
    from ..config import ConfigError

    p = dict(parameters or {})
    if p.get("executor", "local") != "local":
        return None
    runs = chapter_runs(p)
    results_dir = store_dir(p, runs)
    tasks = list(dict.fromkeys(runs.tasks + runs.ood_tasks))  # the OOD task is often a study task
    try:
        study_plan = plan.plan(runs.preset, tasks, runs.strategies, runs.seeds, results_dir,
                               compute_selection=False, **runs.overrides)
        sweep_todo = []
    except ConfigError:  # the sweep's runs are missing: the sweep first, then the study's
        study_plan = plan.unchosen(runs.preset, tasks, runs.strategies, runs.seeds,
                                   results_dir, **runs.overrides)  # at the preset's rates
        sweep_todo = [c for c in study_plan.selection
                      if store.complete_run(results_dir, c) is None]
    configs = [c for c in study_plan.main if c.task in runs.tasks or runs.domain is None]
    if runs.domain is not None:  # the OOD chapter fine-tunes its task on this domain
        configs += [c.replace(domain=runs.domain) for c in study_plan.main
                    if c.task in runs.ood_tasks]
    unique = list({c.run_id(): c for c in configs}.values())
    todo = [c for c in unique if store.complete_run(results_dir, c) is None]
    if remedies:  # paths from the study chapters' runs (the OOD-only task has none)
        chapters_plan = dataclasses.replace(
            study_plan, main=[c for c in study_plan.main if c.task in runs.tasks])
        work = plan.remedies_plan(chapters_plan, runs.alphas, runs.robust_tasks,
                                  **runs.overrides).work()
        todo += [job for job in work if not sweep.complete(job, results_dir)]
    return sweep_todo, todo


def compute_missing(parameters: Mapping[str, Any] | None = None, progress: bool = True
                    ) -> None:
    """Compute the whole book's work (:func:`missing_work`) before its chapters run, instead
    of chapter by chapter: every run in one pool, so the cores stay busy until the last one
    (a chapter that needs two runs of unequal length leaves a core idle), then the paths,
    which need their runs' weights; the chapters then only read, several at once. A
    learning-rate sweep the store lacks comes first, and the rest is looked up again at the
    rates it chose; if a sweep run fails, nothing else is computed here (the rest would be at
    rates nobody chose). A run that fails is recorded and left to its chapter, which tries it
    again and says so."""
    from .. import sweep
    from ..config import RunConfig

    p = dict(parameters or {})
    parts = _missing(p, remedies=True)
    if parts is None:  # another executor computes
        return
    where, workers = store_dir(p, chapter_runs(p)), p.get("workers")
    lines = "lines" if progress else False
    if parts[0]:
        sweep.run(parts[0], where, progress=lines, workers=workers, desc="learning-rate sweep")
        parts = _missing(p, remedies=True)
        if parts[0]:  # a sweep run failed: no rates are chosen, so no run is known yet
            return
    todo = parts[1]
    runs = [job for job in todo if isinstance(job, RunConfig)]
    paths = [job for job in todo if not isinstance(job, RunConfig)]
    for jobs, desc in ((runs, "runs"), (paths, "interpolation paths")):
        if jobs:
            sweep.run(jobs, where, progress=lines, workers=workers, desc=desc)


def glue_costs(exercises: Mapping[str, Mapping[str, Any]], remedies: bool = False) -> None:
    """Glue each exercise's cost (:func:`rerun_cost` of its parameters) as ``cost_<name>``,
    for the chapter's prose to cite with ``{glue:text}`cost_<name>```: computed at every
    build from the plan and the stored runs' pace, never typed."""
    from myst_nb import glue

    for name, parameters in exercises.items():
        glue(f"cost_{name}", rerun_cost(parameters, remedies), display=False)


def rerun_cost(parameters: Mapping[str, Any], remedies: bool = False) -> str:
    """What rerunning the chapters with ``parameters`` computes, in words: "N new runs, about
    T of one core" (the exercises' costs, computed, never typed)."""
    from .. import plan

    todo = missing_work(parameters, remedies)
    if todo is None:
        return "not known here: the runs are computed by another executor"
    return plan.cost_line(todo, store_dir(parameters, chapter_runs(parameters)))


def store_dir(parameters: Mapping[str, Any], runs: ChapterRuns) -> str:
    """The store the chapters read: ``results_dir`` when given, else their preset's."""
    from ..config import preset_store

    return parameters.get("results_dir") or preset_store(runs.preset)


def setup_notebook() -> None:
    """Display settings shared by the book's notebooks: Altair as HTML (drawn by the Vega
    bundle the book serves itself, so no CDN is needed) and readable pandas tables."""
    import altair as alt
    import pandas as pd

    # SVG rather than canvas: the marks are in the page, for readers' tools and our tests.
    alt.renderers.enable("html", embed_options={"renderer": "svg"})
    html = alt.renderers.get()
    alt.renderers.register("rtlib", lambda spec, **meta: with_data_link(html(spec, **meta), spec))
    alt.renderers.enable("rtlib")
    alt.data_transformers.disable_max_rows()
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.precision", 3)
    from IPython import get_ipython

    from . import tables

    shell = get_ipython()
    if shell is not None:  # every table as a reader reads it (tables.readable), in full
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, tables.html)


#: Where the data behind each chart goes (copied into the built book with _static/), and the
#: way from a chapter's page (book/executed/<chapter>.html) to it.
FIGURE_DATA, FIGURE_DATA_URL = Path("_static") / "data", "../../_static/data"


def with_data_link(bundle: dict, spec: dict) -> dict:
    """A chart's HTML followed by a link to each table it draws, as CSV (written under
    :data:`FIGURE_DATA`, named by content): the numbers behind a figure, for a reader's own
    analysis."""
    import hashlib

    import pandas as pd

    links = []
    for name, rows in (spec.get("datasets") or {}).items():
        frame = pd.DataFrame(rows)
        text = frame.to_csv(index=False)
        path = root() / FIGURE_DATA / f"{hashlib.sha256(text.encode()).hexdigest()[:12]}.csv"
        if not path.exists():
            from ..store import write_text

            write_text(path, text)
        links.append(f"<a href='{FIGURE_DATA_URL}/{path.name}' download>{len(frame):,} rows"
                     "</a>")
    if links:
        bundle = dict(bundle)
        bundle["text/html"] += ("<p class='figure-data'>The data behind this chart (CSV): "
                                + ", ".join(links) + ".</p>")
    return bundle


def write_static_assets(folder: Path | None = None) -> Path:
    """Write Vega, Vega-Lite and Vega-Embed (from vl-convert, offline) as one script.

    The bundle is wrapped in a function so its top-level names stay private; it sets
    ``window.vega``/``vegaLite``/``vegaEmbed`` and declares their versions in ``VEGA_DEBUG``,
    which is how Altair's HTML output knows not to fetch them from a CDN.
    """
    from ..store import write_text

    folder = Path(folder or root() / "_static")
    folder.mkdir(parents=True, exist_ok=True)
    return write_text(folder / VEGA_BUNDLE, vega_bundle())


@functools.cache
def vega_bundle() -> str:
    """The script of :func:`write_static_assets` (also inlined by :mod:`.export`)."""
    import altair as alt
    import vl_convert as vlc

    vl = ".".join(alt.VEGALITE_VERSION.split(".")[:2])
    bundle = vlc.javascript_bundle(vl_version=vl)
    versions = {"vega_version": alt.VEGA_VERSION, "vegalite_version": alt.VEGALITE_VERSION,
                "vegaembed_version": alt.VEGAEMBED_VERSION}
    return ("(function () {\n" + bundle + "\n})();\n"
            f"window.VEGA_DEBUG = Object.assign(window.VEGA_DEBUG || {{}}, {json.dumps(versions)});\n")


def execute(names: list[str] | None = None, parameters: Mapping[str, Any] | None = None,
            output_dir: Path | None = None, progress: bool = True,
            jobs: int | None = None) -> list[Path]:
    """Run each notebook of ``notebooks/`` (or the ``names`` given) with ``parameters``.

    Every parameter is checked against the notebooks' declared ones first; a notebook gets the
    parameters it declares. Progress: which notebook, k of n, its time and the elapsed total.
    ``jobs``: notebooks executed at once. ``None``: one per CPU core when the store already
    holds every run the chapters read (each chapter is then kernel start-up, reading and
    charts), else one at a time (the chapters that compute share the cores and their runs);
    for the whole book (no ``names``), its missing work is computed first
    (:func:`compute_missing`), and the chapters then run at once.
    """
    import os
    import time
    from concurrent.futures import ThreadPoolExecutor

    check_parameters(parameters)
    base = root()
    output_dir = Path(output_dir or base / "book" / "executed")
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = notebooks() if not names else [base / "notebooks" / f"{n}.ipynb" for n in names]
    # What the store lacks: said before the first chapter, and it sets how many run at once.
    todo = missing_work(parameters, remedies=any(p.stem == "remedies" for p in paths)) \
        if progress or jobs is None else None
    if progress and todo is not None:
        from .. import plan

        where = store_dir(dict(parameters or {}), chapter_runs(dict(parameters or {})))
        print(("to compute: " if todo else "") + plan.cost_line(todo, where), flush=True)
    if todo and not names and jobs is None:  # the whole book: its work first, in one pool
        compute_missing(parameters, progress)
        todo = missing_work(parameters)
    if jobs is None:
        jobs = (os.cpu_count() or 1) if todo == [] else 1
    t0 = time.perf_counter()

    def one(k: int, path: Path) -> Path:
        t = time.perf_counter()
        if progress:
            print(f"[{k}/{len(paths)}] {path.stem} ...", flush=True)
        out = _execute_one(path, output_dir, parameters, base, progress)
        if progress:
            print(f"[{k}/{len(paths)}] {path.stem}: {time.perf_counter() - t:.0f} s "
                  f"(elapsed {(time.perf_counter() - t0) / 60:.1f} min)", flush=True)
        return out

    if jobs <= 1:
        return [one(k, path) for k, path in enumerate(paths, 1)]
    if progress:
        print(f"every run is in the store: {min(jobs, len(paths))} notebooks at a time",
              flush=True)
    order = sorted(range(len(paths)), key=lambda i: _start_rank(paths[i].stem))
    with ThreadPoolExecutor(jobs) as pool:  # each notebook runs in its own kernel process
        done = dict(zip(order, pool.map(lambda i: one(i + 1, paths[i]), order)))
    return [done[i] for i in range(len(paths))]


#: The chapters that take longest on a complete store, slowest first (measured on a store of
#: the ladder study's size beside other work, 2026-12-07: takeaways 42 s, methods 38, RQ3 37,
#: RQ1 31, remedies 30, RQ2 30; calibration and differences 12 each). Executed at once, they
#: start first, so that the last chapter to start is a short one: 7 s less of the build.
SLOWEST_FIRST = ("takeaways", "methods", "rq3_ood_robustness", "rq1_robustness_during_finetuning",
                 "remedies", "rq2_strategies_and_complexity")


def _start_rank(name: str) -> int:
    return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)


def _execute_one(path: Path, output_dir: Path, parameters: Mapping[str, Any] | None,
                 base: Path, progress: bool) -> Path:
    import papermill as pm

    declared = pm.inspect_notebook(str(path))
    params = {k: v for k, v in (parameters or {}).items() if k in declared}
    out = output_dir / path.name
    try:
        # The kernel's own prints (a chapter's "runs k/n ..., about m min left") reach this
        # console; its warnings stay in the executed notebook.
        pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(base),
                            kernel_name="python3", progress_bar=False, log_output=progress,
                            stdout_file=sys.stdout if progress else None,
                            kernel_manager_class=_local_kernel_manager())
    except pm.PapermillExecutionError as err:
        raise NotebookFailed(f"notebook {path.name} failed in cell {err.exec_count}: "
                             f"{err.ename}: {err.evalue}\nexecuted copy kept at {out}") from err
    return out


@functools.cache  # one class for every notebook
def _local_kernel_manager() -> type:
    """A kernel manager for the chapters: its kernels run in this interpreter (the environment
    that has rtlib), whatever kernel named "python3" Jupyter's search path finds first (a
    reader's own, in ~/.local/share/jupyter, comes before the environment's); and they talk
    over local (IPC) sockets: a chapter's kernel then opens no TCP port, and ipykernel has no
    reason to print its warning about unencrypted TCP for every notebook (what a reader of
    ``make book`` saw instead of progress)."""
    import os
    import uuid

    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import KernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import CaselessStrEnum, default

    class LocalKernelManager(KernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @property
        def kernel_spec(self) -> KernelSpec:
            if self._kernel_spec is None:
                self._kernel_spec = KernelSpec(
                    argv=[sys.executable, "-m", "ipykernel_launcher", "-f",
                          "{connection_file}"],
                    display_name="Python 3 (rtlib)", language="python")
            return self._kernel_spec

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts a kernel before shutting it down; a chapter's kernel
            # is done by then, and the interrupt only makes ipykernel print "KeyboardInterrupt
            # caught in kernel" among the build's progress lines.
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

        @default("ip")
        def _ip_default(self) -> str:
            # jupyter_client's default is "kernel-ipc" in the working directory, which two
            # chapters executed at once would share: each kernel gets sockets of its own.
            os.makedirs(jupyter_runtime_dir(), exist_ok=True)
            return os.path.join(jupyter_runtime_dir(), f"rtlib-{uuid.uuid4().hex[:12]}-ipc")

    return LocalKernelManager


def build(parameters: Mapping[str, Any] | None = None, output: Path | None = None,
          jobs: int | None = None) -> Path:
    """Execute every notebook (``jobs``: see :func:`execute`) and build the HTML book into
    ``output/_build/html``.

    Returns the path of the book's index page."""
    execute(parameters=parameters, jobs=jobs)
    write_static_assets()
    base = root()
    output = Path(output or base)  # Jupyter Book writes OUTPUT/_build/html
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(base),
           "--path-output", str(output), "--warningiserror", "--nitpick", "--quiet"]
    subprocess.run(cmd, check=True)
    return output / "_build" / "html" / "index.html"
