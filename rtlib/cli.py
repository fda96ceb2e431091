"""``python -m rtlib``: the command line. Every sub-command validates its options before any
compute and exits with status 2 and a message naming the bad option."""
from __future__ import annotations

import argparse
import json
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
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")
