"""``python -m rtlib``: the command line. Every sub-command validates its options before any
compute and exits with status 2 and a message naming the bad option."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

from .errors import ConfigError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def cmd_strategies(args: argparse.Namespace) -> int:
    from . import models, strategies

    model = models.build(args.model, args.num_classes, img_size=args.img_size)
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


def cmd_book(args: argparse.Namespace) -> int:
    import yaml

    from . import book

    params = {name: yaml.safe_load(value) for name, value in args.parameters or []}
    try:
        if args.execute_only:
            for path in book.execute(parameters=params):
                print(f"executed {path}")
        else:
            print(f"built {book.build(parameters=params, output=args.output)}")
    except book.NotebookFailed as err:
        print(f"python -m rtlib book: error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError:
        print("python -m rtlib book: error: jupyter-book build failed (its message is above)",
              file=sys.stderr)
        return 1
    return 0


PRETRAIN_HELP = {
    "steps": "optimizer steps",
    "batch_size": "images per step",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay on weight matrices",
    "warmup_steps": "linear warm-up steps before the cosine decay",
    "label_smoothing": "label smoothing of the cross-entropy",
    "train_images": "rendered upstream training images (sampled with replacement)",
    "test_images": "rendered upstream test images for the final accuracy",
    "shift": "random translation augmentation, in pixels",
    "seed": "seed of the renderer, the initialization and the sampling",
    "checkpoint_every": "steps between resumable training-state checkpoints",
    "threads": "torch CPU threads (0: torch's default)",
    "init": "warm start from this pretrain checkpoint (a second stage; '': from scratch)",
}


def cmd_pretrain(args: argparse.Namespace) -> int:
    from dataclasses import fields
    from pathlib import Path

    from .pretrain import PretrainConfig, pretrain

    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
    config.validate()
    meta = pretrain(config, Path(args.out), progress=not args.quiet)
    print(f"wrote {args.out}: upstream test accuracy {meta['upstream_test_accuracy']:.4f} "
          f"after {meta['images_seen']:,} images in {meta['train_seconds'] / 60:.1f} min")
    return 0


def _eps(text: str) -> float:
    """A budget in [0, 1] pixel units; "1/255" and "0.0039" both work."""
    try:
        if "/" in text:
            num, den = text.split("/")
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number like 1/255 or 0.0039, got {text!r}") \
            from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a budget in [0, 1], got {text!r}")
    return value


def _hparam(text: str) -> tuple[str, object]:
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, yaml.safe_load(value)


def run_overrides(args: argparse.Namespace) -> dict:
    """The RunConfig fields given on the command line (shared by ``run`` and ``sweep``)."""
    given = {k: getattr(args, k) for k in RUN_OPTIONS if getattr(args, k, None) is not None}
    if args.eps:
        given["eps"] = tuple(args.eps)
    if args.no_weights:
        given["weights"] = None
    for flag in ("compile", "merge_for_eval"):
        if getattr(args, flag, None) is not None:
            given[flag] = getattr(args, flag)
    return given


def run_config_from_args(args: argparse.Namespace):
    from .config import RunConfig, preset_defaults

    base = preset_defaults(args.preset, args.task, args.strategy)
    given = run_overrides(args)
    if args.hparam:
        given["hparams"] = dict(args.hparam)
    return RunConfig(task=args.task, strategy=args.strategy, **{**base, **given})


def cmd_run(args: argparse.Namespace) -> int:
    from . import store, train

    config = run_config_from_args(args).validate()
    if args.dry_run:
        described = train.describe(config)
        if args.json:
            print(json.dumps(described, indent=2))
        else:
            for key, value in described.items():
                print(f"{key:>18}: {value}")
        return 0
    path = store.complete_run(args.results_dir, config)
    if path is not None:
        print(f"run {config.run_id()} is already complete: {path} (nothing to do)")
        return 0
    out = train.run(config, args.results_dir, device=args.device, progress=not args.quiet)
    frame = store.load(args.results_dir, [config])
    last = frame.iloc[-1]
    robust = ", ".join(f"{c.split('@')[1]} {last[c]:.3f}" for c in store.robust_columns(frame))
    print(f"wrote {out}: {len(frame)} evaluation points; at step {last['step']}: clean "
          f"{last['test_acc']:.3f}, robust {robust}")
    return 0


RUN_OPTIONS = {
    "model": (str, "timm model name"),
    "weights": (str, "pretrained weights: 'hub' (download), or a .safetensors/.pth file"),
    "domain": (str, "domain to fine-tune on; the task's other domains are tested as OOD"),
    "data_dir": (str, "hub tasks: a local folder (parquet files or image folders), or 'hub' to "
                      "download the official dataset once"),
    "train_size": (_positive_int, "training images"),
    "test_size": (_positive_int, "evaluation images (test set and each OOD domain)"),
    "train_eval_size": (_positive_int, "training images scored at each evaluation point"),
    "data_seed": (int, "seed of the data (rendering, subsets)"),
    "steps": (_positive_int, "optimizer steps (when --epochs is 0)"),
    "epochs": (int, "passes over the training split; > 0 replaces --steps (the official "
                    "setting counts in epochs)"),
    "val_fraction": (float, "share of the training images held out as a validation split, "
                            "scored at every point (the official code holds out 0.1)"),
    "lr_schedule": (str, "after the warm-up: cosine, linear (decay to 0) or constant"),
    "ood_train_domains": (str, "tasks with domains: 'source' trains on --domain only; 'all' "
                               "trains on every domain, as the official code does for DomainNet "
                               "by default (the OOD domains then leak into training)"),
    "batch_size": (_positive_int, "images per step"),
    "lr": (float, "peak learning rate (AdamW)"),
    "weight_decay": (float, "AdamW weight decay"),
    "warmup_steps": (int, "linear warm-up steps before the --lr-schedule"),
    "grad_clip": (float, "gradient-norm clipping (0: off)"),
    "seed": (int, "seed of initialization, batch order and attack starts"),
    "schedule": (str, "evaluation points: 'official', 'log:N' or 'every:K'"),
    "attack_steps": (_positive_int, "PGD iterations"),
    "step_size_ratio": (float, "PGD step size as a fraction of eps (0.25: 0.25/255 at 1/255)"),
    "attack": (str, "pgd, apgd or autoattack"),
    "precision": (str, "auto (default: bf16 autocast on a GPU with the first layer and the "
                       "perturbation in fp32, fp32 on the CPU), fp32 or bf16"),
}


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


def _names(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import sweep

    configs = sweep.expand(args.tasks, args.strategies, args.seeds, preset=args.preset,
                           **run_overrides(args))
    summary = sweep.run(configs, args.results_dir, executor=args.executor, device=args.device,
                        progress=not args.quiet)
    print(sweep.summarize(summary))
    return 1 if (summary["status"] == "failed").any() else 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options that set RunConfig fields and where runs go (``run`` and ``sweep``)."""
    # argparse reads "-1/255" as an unknown option; let it reach _eps, which names the problem.
    if hasattr(p, "_negative_number_matcher"):
        p._negative_number_matcher = re.compile(r"^-\d*\.?\d+(/\d*\.?\d+)?$")
    p.add_argument("--eps", type=_eps, nargs="+",
                   help="attack budgets in [0, 1] pixel units, e.g. 1/255 2/255")
    for name, (kind, text) in RUN_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=text)
    p.add_argument("--no-weights", action="store_true", help="random initialization")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (pays off on a GPU for long runs; compiling "
                        "takes about a minute; numbers agree up to rounding)")
    p.add_argument("--no-merge-eval", dest="merge_for_eval", action="store_false", default=None,
                   help="evaluate LoRA/IA3/DoRA unmerged (default: merged, which is faster)")
    p.add_argument("--results-dir", default="results", help="results store (default: results)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rtlib",
        description="Fine-tune vision transformers with seven strategies and measure the "
                    "robustness-accuracy trade-off (Li et al., ICCV 2025).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "strategies", help="table of the fine-tuning strategies and their trainable share",
        description="Build a model (random weights, no download), prepare it with every "
                    "registered strategy, and print trainable parameters, total parameters, the "
                    "trainable percent, and each strategy's place in the paper's decomposition "
                    "(information adapted: peripheral / intermediate / excessive; mechanism: "
                    "select / reparameterize / rescale / add).")
    p.add_argument("--model", default="vit_base_patch16_224",
                   help="timm model name (default: %(default)s, the paper's ViT-B/16)")
    p.add_argument("--num-classes", type=_positive_int, default=10,
                   help="size of the new classification head (default: %(default)s)")
    p.add_argument("--img-size", type=_positive_int, default=None,
                   help="input resolution, if not the model's default")
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
                    "errors. Parameters given with -p reach every notebook that declares them.")
    p.add_argument("-p", "--parameter", nargs=2, action="append", dest="parameters",
                   metavar=("NAME", "VALUE"),
                   help="a notebook parameter; VALUE is read as YAML (0.0078 is a number, "
                        "[a, b] a list). Repeat for several.")
    p.add_argument("--output", default=None,
                   help="folder to build in (default: the repository; the book is "
                        "OUTPUT/_build/html/index.html)")
    p.add_argument("--execute-only", action="store_true",
                   help="execute the notebooks but do not build the HTML")
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
    p.add_argument("--strategy", required=True,
                   help="full, linear_probe, bitfit, lora, ia3, adapter, compacter or dora")
    p.add_argument("--preset", default="embedded", choices=sorted(PRESETS),
                   help="sizes and sources to start from (default: %(default)s)")
    _add_run_options(p)
    p.add_argument("--hparam", type=_hparam, action="append", metavar="NAME=VALUE",
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
    p.add_argument("--tasks", type=_names, required=True, help="task names, e.g. 'digits fonts'")
    p.add_argument("--strategies", type=_names,
                   default=["full", "linear_probe", "bitfit", "lora", "ia3", "adapter",
                            "compacter"], help="strategy names (default: the paper's seven)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    p.add_argument("--preset", default="embedded", choices=sorted(PRESETS),
                   help="sizes and sources to start from (default: %(default)s)")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: one run after another in this process; ray: one Ray task per "
                        "run (RAY_ADDRESS selects a cluster)")
    _add_run_options(p)
    p.set_defaults(func=cmd_sweep)

    from dataclasses import fields

    from .models import EMBEDDED_WEIGHTS
    from .pretrain import PretrainConfig

    p = sub.add_parser(
        "pretrain", help="pre-train the embedded upstream ViT on the glyph world",
        description="Train the embedded ViT (vit_glyph_p4_24) from scratch on the glyph world's "
                    "upstream task and write a safetensors checkpoint that "
                    "rtlib.models.build(..., weights=OUT) loads like timm pretrained weights. "
                    "Resumes from OUT.state.pt when interrupted.")
    for f in fields(PretrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"{PRETRAIN_HELP[f.name]} (default: %(default)s)")
    p.add_argument("--out", default=str(EMBEDDED_WEIGHTS),
                   help="checkpoint to write (default: the committed embedded checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .store import StoreError

    try:
        return args.func(args)
    except (ConfigError, StoreError) as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")
