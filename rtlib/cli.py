"""``python -m rtlib``: the command line. Every sub-command validates its options before any
compute and exits with status 2 and a message naming the bad option."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

from .config import ConfigError


def _bounded_int(minimum: int, maximum: int):
    """An argparse type: an integer in [minimum, maximum] (the bounds are in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"expected an integer in [{minimum:,}, {maximum:,}], got {text!r}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def _seed(text: str) -> int:
    from .config import MAX_SEED

    return _bounded_int(0, MAX_SEED)(text)


#: Notebooks or runs at once (``--jobs``, ``--workers``).
_processes = _bounded_int(1, 1024)


def cmd_strategies(args: argparse.Namespace) -> int:
    from . import models, strategies

    model = models.skeleton(args.model, args.num_classes, img_size=args.img_size)
    rows = strategies.summary(model)
    if args.json:
        keys = ("strategy", "trainable", "total", "percent", "information", "mechanism",
                "in_paper", "paper_percent")
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
        return 0
    header = f"{'strategy':<13}{'trainable':>12}{'total':>13}{'percent':>9}{'paper %':>9}  " \
             f"{'information':<13}{'mechanism':<15}"
    print(f"{args.model}, {args.num_classes} classes")
    print(header)
    print("-" * len(header))
    for r in rows:
        paper = "ext." if not r["in_paper"] else f"{r['paper_percent']:g}"
        print(f"{r['strategy']:<13}{r['trainable']:>12,}{r['total']:>13,}{r['percent']:>9.3f}"
              f"{paper:>9}  {r['information']:<13}{r['mechanism']:<15}")
    print("\npaper %: trainable share reported for ViT-B/16 with a 10-class head; "
          "ext.: an extension beyond the paper.")
    return 0


def book_parameters(args: argparse.Namespace) -> dict:
    """The notebook parameters of ``rtlib book``'s ``-p NAME VALUE`` (VALUE read as YAML)."""
    return {name: _yaml(value, f"-p {name}") for name, value in args.parameters or []}


def _yaml(text: str, field: str):
    """``text`` read as YAML; a syntax error is one line naming ``field``."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at character {mark.column + 1}" if mark is not None else ""
        raise ConfigError(field, text, "YAML, e.g. 4, 0.001, name or [0, 1, 2]",
                          f"cannot be read ({getattr(err, 'problem', None) or 'syntax'}"
                          f"{where}):") from None


def cmd_book(args: argparse.Namespace) -> int:
    from .report import book

    params = book_parameters(args)
    book.check_parameters(params)
    try:
        if args.execute_only:
            for path in book.execute(parameters=params, jobs=args.jobs):
                print(f"executed {path}")
        else:
            print(f"built {book.build(parameters=params, output=args.output, jobs=args.jobs)}")
    except book.NotebookFailed as err:
        print(f"python -m rtlib book: error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError:
        print("python -m rtlib book: error: jupyter-book build failed (its message is above)",
              file=sys.stderr)
        return 2
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import PretrainConfig

    config = PretrainConfig(**_given(args, PretrainConfig)).check()
    out = Path(args.out)
    _check_writable(out, "--out")
    from .config import check_memory

    check_memory("train_images", config.train_images, config.train_images + config.test_images,
                 3 * 24 ** 2)
    from .pretrain import check_init, check_stop_at, pretrain

    check_stop_at(config, args.stop_at)
    check_init(config)  # a readable checkpoint of the embedded model, or one line
    meta = pretrain(config, out, progress=not args.quiet, stop_at=args.stop_at)
    if meta is None:
        print(f"stopped at step {args.stop_at:,} of {config.steps:,}; the state is in "
              f"{out}.state.pt: rerun without --stop-at (or with a later one) to go on")
        return 0
    print(f"wrote {args.out}: upstream test accuracy {meta['upstream_test_accuracy']:.4f} "
          f"after {meta['images_seen']:,} images in {meta['train_seconds'] / 60:.1f} min")
    return 0


def _check_writable(path, field: str) -> None:
    """A file to write, checked before any compute: not a folder, in a folder that exists (or
    can be made) and that this process may write."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.is_dir() or not path.name:
        raise ConfigError(field, str(path), "a file path", "a folder, not a file:")
    folder = next((f for f in (path.parent, *path.parent.parents) if f.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(field, str(path), "a path in a folder you can write",
                          f"{folder} cannot be written:")


def _budget(text: str) -> float:
    """A budget in [0, 1] pixel units; "1/255" and "0.0039" both work."""
    from .config import parse_budget

    try:
        return parse_budget(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"expected a budget in [0, 1] like 1/255 or 0.0039, got {text!r}") from None


def _hparam(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        parsed = _yaml(value, name)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if isinstance(parsed, str):  # YAML 1.1 reads 1e-3 as a string; a reader means a number
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return name, parsed


def _given(args: argparse.Namespace, cls) -> dict:
    """The fields of dataclass ``cls`` given on the command line (absent options are not in
    ``args``: their default is argparse.SUPPRESS, so the preset's value stands)."""
    from dataclasses import fields

    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def run_overrides(args: argparse.Namespace) -> dict:
    """The RunConfig fields given on the command line (shared by ``run`` and ``sweep``)."""
    from .config import RunConfig

    given = _given(args, RunConfig)
    for structured in ("task", "strategy", "hparams"):  # set by their own options
        given.pop(structured, None)
    if "eps" in given:
        given["eps"] = tuple(given["eps"])
    if getattr(args, "no_weights", False):  # one or the other: the last would win silently
        if "weights" in given:
            raise ConfigError("--weights", given["weights"], "--weights or --no-weights, not "
                              "both", "given together with --no-weights:")
        given["weights"] = None
    return given


def run_config_from_args(args: argparse.Namespace):
    from .config import RunConfig, preset_defaults

    base = preset_defaults(args.preset, args.strategy)
    given = run_overrides(args)
    if getattr(args, "hparams", None):
        given["hparams"] = dict(args.hparams)
    return RunConfig(task=args.task, strategy=args.strategy, **{**base, **given})


DEVICE_SYNTAX = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check_device_syntax(device: str) -> None:
    """A device that cannot exist anywhere is answered before torch is imported (whether this
    machine has it is train.resolve_device's question)."""
    if not DEVICE_SYNTAX.match(device):
        raise ConfigError("device", device, ["auto", "cpu", "cuda", "cuda:N"], "unknown device")
    gpus = _visible_gpus()
    index = int(device.partition(":")[2] or 0)
    if device.startswith("cuda") and gpus is not None and index >= gpus:
        allowed = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(gpus)] if gpus
                                     else [])
        raise ConfigError("device", device, allowed, "not on this machine:")


def _visible_gpus() -> int | None:
    """NVIDIA GPUs this machine has, from the driver's files (no torch: 0.1 s instead of 9);
    None when that cannot be told without torch (then train.resolve_device answers)."""
    import os
    import shutil
    from pathlib import Path

    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return None  # a subset: torch's count is the one that holds
    driver = Path("/proc/driver/nvidia/gpus")
    if driver.is_dir():
        return len(list(driver.iterdir()))
    if sys.platform.startswith("linux") and shutil.which("nvidia-smi") is None:
        return 0
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from . import preflight

    config = run_config_from_args(args)
    _check_device_syntax(args.device)
    from .store import check_results_dir

    check_results_dir(args.results_dir, "--results-dir")
    # fields and names before torch is imported, then the rest
    preflight.check(config, available=not args.dry_run)
    from . import metrics, store, train

    if args.dry_run:
        from .plan import duration, estimate

        described = train.describe(config)
        seconds = estimate([config], args.results_dir)
        described["estimated_seconds"] = None if seconds is None else round(seconds)
        described["estimate"] = ("unknown: no stored run of this model to tell the pace"
                                 if seconds is None else f"about {duration(seconds)} of one CPU "
                                 "core, at the pace of the stored runs of this model")
        if args.json:
            print(json.dumps(described, indent=2))
        else:
            for key, value in described.items():
                print(f"{key:>18}: {value}")
        return 0
    device = train.resolve_device(args.device)
    warn_if_slow(config, device)
    outcome: dict = {}
    out = train.run(config, args.results_dir, device=str(device), progress=not args.quiet,
                    outcome=outcome)
    frame = store.load(args.results_dir, [config])
    last = frame.iloc[-1]
    robust = ", ".join(f"{metrics.qualifier(c)} {last[c]:.3f}"
                       for c in metrics.robust_columns(frame))
    print(f"{'wrote' if outcome.get('computed') else 'run is already complete:'} {out}: "
          f"{len(frame)} evaluation "
          f"points; at step {last[metrics.STEP]}: clean {last[metrics.TEST_ACC]:.3f}, "
          f"robust {robust}")
    return 0


def warn_if_slow(config, device) -> None:
    """A model of the paper's size on a CPU takes days: say so before it starts."""
    from .models import skeleton

    if device.type == "cpu":
        params = sum(p.numel() for p in skeleton(config.model, 2, **config.model_kwargs)
                     .parameters())
        if params > 20_000_000:
            print(f"warning: {config.model} ({params / 1e6:.0f}M parameters) on a CPU: a run "
                  "of this preset takes days here; use a GPU (--device cuda) or --preset "
                  "embedded", file=sys.stderr, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import preflight
    from .config import checkout_folder, demo_config
    from .report import demo

    _check_device_syntax(args.device)
    config = demo_config(args.task, args.strategy, args.preset, args.weights, steps=args.steps,
                         test_size=args.test_size, schedule=args.schedule)
    preflight.check(config)
    results_dir = args.results_dir or checkout_folder("results/demo")
    from .store import check_results_dir

    check_results_dir(results_dir, "--results-dir")
    png = args.png or str(Path(results_dir) / f"{config.task}-{config.strategy}.png")
    print(f"fine-tuning {config.task} with {config.strategy}: {args.steps} steps, evaluated at "
          f"{len(config.eval_steps())} points on {config.test_size} test images", flush=True)
    demo.live(config, results_dir, png, echo=lambda line: print(line, flush=True),
              device=args.device)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from . import metrics, store
    from .config import ConfigError, checkout_folder
    from .report import demo

    results_dir = args.results_dir or checkout_folder("study")
    paths = [p for p in store.run_files(results_dir) if p.stem.startswith(args.run)]
    if len(paths) != 1:
        raise ConfigError("run", args.run, "the id (or a prefix of one) of a run in "
                          f"{results_dir}", f"{len(paths)} runs match")
    run = store.load(results_dir).query("run_id == @paths[0].stem")
    col = metrics.robust(args.budget) if args.budget is not None else metrics.ROBUST
    if col not in run:
        raise ConfigError("budget", args.budget, [metrics.qualifier(c) for c in
                                                  metrics.robust_columns(run)], "not attacked:")
    for _, row in run.sort_values(metrics.STEP).iterrows():
        print(demo.point_line(row, col))
    print(demo.describe(run, col).replace("**", ""))
    if args.png:
        print(f"wrote {demo.draw(run, col, args.png)}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from .report.export import export_html

    print(f"wrote {export_html(args.notebook, args.out)}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from . import data

    rows = [{"name": t.name, "classes": t.classes, "domains": list(t.domains), "source": t.source,
             "image_size": t.image_size, "description": t.description}
            for t in data.registry().values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<14}{'classes':>8}  {'source':<9}{'px':>4}  domains / description")
    for r in rows:
        print(f"{r['name']:<14}{r['classes']:>8}  {r['source']:<9}{r['image_size']:>4}  "
              f"{', '.join(r['domains']) or '-'}")
        print(f"{'':<37}{r['description']}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rtlib")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _names(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


class _NamesAction(argparse.Action):
    """A list of names given as several words (``--tasks digits fonts``), as one quoted
    word (``--tasks 'digits fonts'``) or with commas; an empty list is refused by name."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = [n for v in values for n in _names(v)]
        if not names:
            raise argparse.ArgumentError(self, f"empty: give one or more names, e.g. "
                                               f"{option_string} digits fonts")
        setattr(namespace, self.dest, names)


def cmd_sweep(args: argparse.Namespace) -> int:
    _check_device_syntax(args.device)
    from . import sweep
    from .store import check_results_dir

    check_results_dir(args.results_dir, "--results-dir")

    configs = sweep.expand(args.tasks, args.strategies, args.seeds, preset=args.preset,
                           **run_overrides(args))  # every name before torch is imported
    from . import train

    device = train.resolve_device(args.device)
    summary = sweep.run(configs, args.results_dir, executor=args.executor, device=str(device),
                        progress=not args.quiet)
    print(sweep.summarize(summary))
    return 1 if (summary["status"] == "failed").any() else 0


def cmd_study(args: argparse.Namespace) -> int:
    _check_device_syntax(args.device)
    from . import plan

    results_dir = args.results_dir  # None: the preset's store (plan's default)
    if results_dir is not None:
        from .store import check_results_dir

        check_results_dir(results_dir, "--results-dir")
    overrides = {k: v for k, v in (("steps", args.steps), ("eps", args.eps)) if v is not None}
    if args.dry_run:  # what would run, computing nothing
        lines = plan.progress_report(args.preset, args.tasks, args.strategies, args.seeds,
                                     results_dir, path_form=args.path_form, **overrides)
        print(json.dumps({"summary": lines[0], "parts": lines[1:]}, indent=2) if args.json
              else "\n".join(lines))
        return 0
    from . import train

    device = str(train.resolve_device(args.device))
    command = "python -m rtlib " + " ".join(sys.argv[1:])
    study_plan, summary, manifest = plan.compute(
        args.preset, args.tasks, args.strategies, args.seeds, results_dir, device=device,
        workers=args.workers, progress=not args.quiet, command=command.strip(),
        remedies=not args.no_remedies, path_form=args.path_form, **overrides)
    from . import sweep

    print(sweep.summarize(summary))
    if study_plan.lrs:
        print("learning rates chosen on the validation split: " + ", ".join(
            f"{s} {lr:g}" for s, lr in study_plan.lrs.items()))
    print(f"manifest: {manifest}")
    return 1 if (summary["status"] == "failed").any() else 0


def _option_type(annotation: str):
    """An argparse type for a dataclass field's annotation (a string: annotations are lazy)."""
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    if "None" in annotation:  # "none" means None (random weights, no domain)
        return lambda text: None if text.lower() in ("none", "null") else text
    return str


def add_field_options(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                      show_default: bool = False) -> None:
    """One option per field of dataclass ``cls``, with the field's own help. Absent options
    stay out of the namespace (argparse.SUPPRESS), so a preset's value stands."""
    from dataclasses import MISSING, fields

    for f in fields(cls):
        if f.name in skip or f.type in ("dict",):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        from .config import field_bounds

        help_text = f.metadata.get("help", "")
        if field_bounds(f):
            help_text += f"; {field_bounds(f)}"
        if show_default and f.default is not MISSING:
            help_text += " (default: %(default)s)"
        if f.type == "bool":
            aliases = [f"--{a}" for a in f.metadata.get("aliases", ())]
            p.add_argument(flag, *aliases, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=help_text)
        elif f.name == "eps":
            p.add_argument(flag, type=_budget, nargs="+", default=argparse.SUPPRESS,
                           help=help_text)
        elif f.metadata.get("budget"):
            p.add_argument(flag, type=_budget, default=(
                f.default if show_default else argparse.SUPPRESS), help=help_text,
                metavar="BUDGET")
        else:
            p.add_argument(flag, type=_option_type(f.type), default=(
                f.default if show_default else argparse.SUPPRESS), help=help_text,
                metavar=f.name.upper())


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options that set RunConfig fields and where runs go (``run`` and ``sweep``)."""
    from .config import RunConfig, checkout_folder

    # argparse reads "-1/255" as an unknown option; let it reach _budget, which names the problem.
    if hasattr(p, "_negative_number_matcher"):
        p._negative_number_matcher = re.compile(r"^-\d*\.?\d+(/\d*\.?\d+)?$")
    add_field_options(p, RunConfig, skip=("task", "strategy"))
    p.add_argument("--no-weights", action="store_true", default=argparse.SUPPRESS,
                   help="random initialization (as --weights none; not with --weights)")
    p.add_argument("--results-dir", default=checkout_folder("results"),
                   help="results store (default: results/ of the checkout you are in, wherever "
                        "in it; outside a checkout, of the working directory)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rtlib",
        description="Fine-tune vision transformers with seven strategies and measure the "
                    "robustness-accuracy trade-off (Li et al., ICCV 2025).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo", help="the trade-off live: one far-task run drawn as it trains (a class demo)",
        description="Fine-tune one run and print each evaluation point as it is measured "
                    "(clean and robust accuracy as bars), then where robust accuracy peaked "
                    "(chosen on the validation split), where it ended and the fall between them "
                    "with its 95% interval, and draw the run as a PNG. A run the store holds "
                    "already is shown at once.")
    from .config import DEMO, DEMO_PRESET, PRESETS, preset_defaults

    p.add_argument("--task", default=DEMO["task"], help="task (default: %(default)s)")
    p.add_argument("--strategy", default=DEMO["strategy"], help="strategy (default: %(default)s)")
    from .config import MAX_IMAGES, MAX_STEPS

    p.add_argument("--steps", type=_bounded_int(1, MAX_STEPS), default=DEMO["steps"],
                   help=f"fine-tuning steps in [1, {MAX_STEPS:,}] (default: %(default)s)")
    p.add_argument("--test-size", type=_bounded_int(1, MAX_IMAGES), default=DEMO["test_size"],
                   help=f"test images at each point, in [1, {MAX_IMAGES:,}] "
                        "(default: %(default)s)")
    p.add_argument("--schedule", default=DEMO["schedule"],
                   help="evaluation points (default: %(default)s)")
    demo_run = preset_defaults(DEMO_PRESET, DEMO["strategy"])
    p.add_argument("--weights", default=None,
                   help=f"the upstream model (default: {demo_run['weights']}; e.g. "
                        "converged_robust, to see what a robust start changes)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help=f"sizes and sources of the rest (default: {DEMO_PRESET}, the quick "
                        f"class setting: " + ", ".join(
                            f"{k} {demo_run[k]}" for k in ("train_size", "val_fraction", "lr",
                                                           "lr_schedule", "attack"))
                        + ", at 2/255)")
    p.add_argument("--results-dir", default=None,
                   help="where the run is kept (default: results/demo of the checkout)")
    p.add_argument("--png", default=None, help="the drawing (default: beside the run)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "show", help="draw a stored run: its points, peak, end and fall, to the terminal and a PNG",
        description="Print a stored run's evaluation points as bars, where robust accuracy "
                    "peaked (chosen on the validation split where the run has it) and ended, "
                    "and the fall with its 95% interval; with --png, draw it.")
    p.add_argument("run", help="the run's id, or a prefix of it (python -m rtlib show 3fa2)")
    p.add_argument("--results-dir", default=None,
                   help="the store (default: the committed study, study/)")
    p.add_argument("--budget", type=_budget, default=None,
                   help="the attack budget to show, e.g. 4/255 (default: the run's first)")
    p.add_argument("--png", default=None, help="write the drawing here")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "view", help="an executed notebook (a chapter rerun with papermill) as one offline HTML "
                     "page",
        description="Write an executed notebook as one self-contained HTML page: its Markdown, "
                    "its outputs (tables, charts, images) and the Vega bundle the book serves, "
                    "inlined, so it opens in a browser without a network or a Jupyter server.")
    p.add_argument("notebook", help="the executed .ipynb (e.g. results/rq2.ipynb)")
    p.add_argument("--out", default=None, help="the page (default: the notebook's name, .html)")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser(
        "strategies", help="table of the fine-tuning strategies and their trainable share",
        description="Build a model (random weights, no download), prepare it with every "
                    "registered strategy, and print trainable parameters, total parameters, the "
                    "trainable percent, and each strategy's place in the paper's decomposition "
                    "(information adapted: peripheral / intermediate / excessive; mechanism: "
                    "select / reparameterize / rescale / add).")
    p.add_argument("--model", default="vit_base_patch16_224",
                   help="timm model name (default: %(default)s, the paper's ViT-B/16)")
    from .config import MAX_CLASSES, MAX_IMG_SIZE

    p.add_argument("--num-classes", type=_bounded_int(1, MAX_CLASSES), default=10,
                   help=f"size of the new classification head, in [1, {MAX_CLASSES:,}] "
                        "(default: %(default)s)")
    p.add_argument("--img-size", type=_bounded_int(1, MAX_IMG_SIZE), default=None,
                   help=f"input resolution in [1, {MAX_IMG_SIZE:,}], if not the model's "
                        "default")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of objects with keys strategy, trainable, total, "
                        "percent, information, mechanism (plus in_paper, paper_percent)")
    p.set_defaults(func=cmd_strategies)

    p = sub.add_parser(
        "tasks", help="list the tasks: embedded (offline) and hub (the paper's datasets)",
        description="List every task with its number of classes, its domains (for OOD), its "
                    "source (embedded: rendered offline; hub: the paper's datasets, from the "
                    "Hugging Face hub or a local copy) and its image size.")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of objects with keys name, classes, domains, source, "
                        "image_size (plus description)")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser(
        "book", help="execute the notebooks with papermill and build the book",
        description="Execute every notebook of notebooks/ with papermill (executed copies go to "
                    "book/executed/), then build the HTML book with Jupyter Book 1, warnings as "
                    "errors. Parameters given with -p reach every notebook that declares them. "
                    "What the chapters need and the store lacks (runs, interpolation paths) is "
                    "computed first, every core busy, and the chapters then only read it.")
    p.add_argument("-p", "--parameter", nargs=2, action="append", dest="parameters",
                   metavar=("NAME", "VALUE"),
                   help="a notebook parameter; VALUE is read as YAML (0.0078 is a number, "
                        "[a, b] a list). Repeat for several.")
    p.add_argument("--output", default=None,
                   help="folder to build in (default: the repository; the book is "
                        "OUTPUT/_build/html/index.html)")
    p.add_argument("--execute-only", action="store_true",
                   help="execute the notebooks but do not build the HTML")
    p.add_argument("--jobs", type=_processes, default=None,
                   help="notebooks executed at once (default: one per CPU core, once the "
                        "store holds every run the chapters read; given, the chapters compute "
                        "what they lack themselves)")
    p.set_defaults(func=cmd_book)

    from .config import PRESETS

    p = sub.add_parser(
        "run", help="fine-tune one model and evaluate it continuously",
        description="Fine-tune one model with one strategy on one task, evaluating clean, robust "
                    "(PGD) and OOD accuracy at every point of the schedule, and store the rows "
                    "in RESULTS_DIR/runs/<run id>.parquet. A complete run is not redone; an "
                    "interrupted one resumes from its last evaluation point. Options not given "
                    "take the preset's value.")
    p.add_argument("--task", required=True, help="task name (python -m rtlib tasks)")
    from .strategies import BUILTIN

    p.add_argument("--strategy", required=True,
                   help=f"{', '.join(BUILTIN)} (python -m rtlib strategies)")
    p.add_argument("--preset", default="embedded", choices=sorted(PRESETS),
                   help="sizes and sources to start from (default: %(default)s)")
    _add_run_options(p)
    p.add_argument("--hparam", type=_hparam, action="append", metavar="NAME=VALUE", dest="hparams",
                   help="strategy hyper-parameter, e.g. rank=4 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the fully resolved run (learning rate, schedule, evaluation "
                        "steps, trainable parameters, run id) and run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print it as JSON")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "sweep", help="run a grid of tasks x strategies x seeds",
        description="Expand tasks x strategies x seeds into runs (the preset's values, then the "
                    "options given), validate them all, and run those not yet complete, "
                    "in-process or on Ray. A failing run is recorded under "
                    "RESULTS_DIR/failed/ and the sweep goes on; a summary ends it (exit status 1 "
                    "if any run failed).")
    p.add_argument("--tasks", nargs="+", action=_NamesAction, required=True,
                   help="task names, e.g. --tasks digits fonts")
    from .strategies import PAPER_STRATEGIES

    p.add_argument("--strategies", nargs="+", action=_NamesAction,
                   default=list(PAPER_STRATEGIES), help="strategy names (default: the paper's "
                                                        "seven)")
    p.add_argument("--seeds", type=_seed, nargs="+", default=[0], help="seeds (default: 0)")
    p.add_argument("--preset", default="embedded", choices=sorted(PRESETS),
                   help="sizes and sources to start from (default: %(default)s)")
    from .config import EXECUTORS

    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local: one run after another in this process; ray: one Ray task per "
                        "run (RAY_ADDRESS selects a cluster)")
    _add_run_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "study", help="compute a whole study (the committed one by default), resumable",
        description="Compute the runs of a preset's study that its store lacks: first the "
                    "learning-rate sweep (each strategy at each rate of its grid, chosen on the "
                    "validation split), then every task x strategy x seed at the chosen rates, "
                    "then the remedies chapter's work, seed by seed (an interpolation path from each "
                    "fine-tuned run to its linear probe; the runs from the robust upstream "
                    "model on the preset's robust tasks). "
                    "Shows a bar per run and the study's elapsed and remaining time; an "
                    "interrupted study resumes where it stopped (rerun the same command). "
                    "Writes RESULTS_DIR/manifest.json: the command, code version, package "
                    "versions, machine and time of every run. `make study` runs the default.")
    p.add_argument("--preset", default="study", choices=sorted(PRESETS),
                   help="the study to compute (default: %(default)s, the committed one)")
    p.add_argument("--tasks", nargs="+", action=_NamesAction, default=None,
                   help="task names (default: the preset's)")
    p.add_argument("--strategies", nargs="+", action=_NamesAction, default=None,
                   help="strategy names (default: the paper's seven)")
    p.add_argument("--seeds", type=_seed, nargs="+", default=None,
                   help="seeds (default: the preset's)")
    from .config import MAX_STEPS

    p.add_argument("--steps", type=_bounded_int(1, MAX_STEPS), default=None,
                   help=f"fine-tuning steps in [1, {MAX_STEPS:,}] (default: the preset's)")
    p.add_argument("--eps", type=_budget, nargs="+", default=None,
                   help="attack budgets, e.g. 2/255 4/255 (default: the preset's)")
    p.add_argument("--results-dir", default=None,
                   help="the study's store (default: the preset's; the study's is study/)")
    p.add_argument("--workers", type=_processes, default=None,
                   help="runs in parallel on the CPU, each with cores / workers threads "
                        "(default: one per core; on a GPU use 1)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--dry-run", action="store_true",
                   help="count the runs and how many are complete, and project the time "
                        "left at the pace of the complete ones; compute nothing")
    from .config import PATH_FORMS

    p.add_argument("--path-form", default=None, choices=PATH_FORMS,
                   help="how the interpolation paths scale the learned update: update "
                        "(linearly, for every strategy) or parameters (the trainable "
                        "parameters' straight line, as the first study's paths were first made); "
                        "default: the preset's")
    p.add_argument("--json", action="store_true",
                   help="with --dry-run: print the report as JSON (summary, parts)")
    p.add_argument("--no-remedies", action="store_true",
                   help="stop after the study's runs (no interpolation paths, no runs from the "
                        "robust upstream model)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_study)

    from .config import EMBEDDED_WEIGHTS, MAX_STEPS, PretrainConfig

    p = sub.add_parser(
        "pretrain", help="pre-train the embedded upstream ViT on the glyph world",
        description="Train the embedded ViT (vit_glyph_p4_24) from scratch (or from --init) on "
                    "the glyph world's upstream task and write a safetensors checkpoint that "
                    "rtlib.models.build(..., weights=OUT) loads like timm pretrained weights. "
                    "Resumes from OUT.state.pt when interrupted.")
    add_field_options(p, PretrainConfig, show_default=True)
    p.add_argument("--out", default=str(EMBEDDED_WEIGHTS),
                   help="checkpoint to write (default: the committed embedded checkpoint)")
    p.add_argument("--stop-at", type=_bounded_int(1, MAX_STEPS), default=None, metavar="STEP",
                   help="train up to this checkpoint step (a multiple of --checkpoint-every) "
                        "and stop, leaving the resumable state: a long pre-training in "
                        "several sittings (the result is bit-identical)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .store import StoreError

    def fail(message: str, status: int = 2) -> int:
        parser.exit(status, f"{parser.prog} {args.command}: error: {message}\n")

    try:
        return args.func(args)
    except (ConfigError, StoreError) as err:
        return fail(str(err))
    except KeyboardInterrupt:
        return fail("interrupted; rerun the same command to resume from the last evaluation "
                    "point (complete runs are kept)", 130)
    except Exception as err:  # the engine's own errors, by name, without importing it early
        if type(err).__name__ in ("TrainingDiverged", "CorruptImage", "NotebookFailed"):
            return fail(str(err))
        raise
