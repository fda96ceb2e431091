"""Calibration of the ladder of tasks (issue 33), on data no study reads its verdicts from.

Two measurements, each written into the committed calibration store (``calibration/``), which
the methods chapter reads:

- ``probe``: each task's linear-probe accuracy on its validation split, with its 95% interval,
  from each upstream checkpoint given (rtlib.calibrate.probe_accuracy): the task's distance from
  upstream, its place on the ladder. Appends to ``calibration/probe.csv``.
- ``finetune``: one fine-tuning run per task (full fine-tuning by default: 2,000 steps of 32
  at 1e-3 on 20,000 images, 400 of them the validation split, so that the farthest task is
  learned rather than memorized; bench/README.md says how this was found) on the
  calibration data (data_seed 1: other training, validation and evaluation images than the
  study's), attacked at several budgets: is the task learnable (clean accuracy at the
  end), and where its robust accuracy peaks at each budget (which budgets are informative).
  Runs are stored like any run (resumable); the summary is printed.

    python bench/calibrate_ladder.py probe --weights converged
    python bench/calibrate_ladder.py finetune --weights converged --tasks greek fonts
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from rtlib import calibrate, store, train
from rtlib.config import LADDER_RUN, UPSTREAM_CHECKPOINTS, parse_budget
from rtlib.data import glyphs


def probe(args) -> None:
    out = Path(args.store) / calibrate.PROBE_TABLE
    old = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    rows = []
    for weights in args.weights:
        for task in args.tasks:
            row = calibrate.probe_accuracy(task, weights, train_size=args.train_size)
            rows.append({"upstream": weights, "train_size": args.train_size, **row})
            print(f"{weights:18s} {task:20s} {row['val_acc']:.3f} "
                  f"[{row['low']:.3f}, {row['high']:.3f}]", flush=True)
    new = pd.DataFrame(rows)
    keys = ["upstream", "task", "train_size"]
    if len(old):  # a task measured again replaces its old row
        old = old[~old.set_index(keys).index.isin(new.set_index(keys).index)]
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([old, new]).to_csv(out, index=False, float_format="%.4f")
    table = pd.concat([old, new]).pivot_table(index="task", columns="upstream", values="val_acc")
    print(table.round(3).sort_values(table.columns[0], ascending=False).to_string())


def finetune(args) -> None:
    configs = []
    for weights in args.weights:
        configs += calibrate.finetune_configs(
            args.tasks, weights, strategy=args.strategy, lr=args.lr, train_size=args.train_size,
            steps=args.steps, eps=tuple(args.eps), test_size=args.test_size,
            val_fraction=args.val_fraction)
    for config in configs:
        train.run(config, args.store, device="cpu", progress=args.progress)
        print(calibrate.finetune_summary(store.load(args.store, [config])).round(3)
              .to_string(index=False, header=False), flush=True)
    summary = calibrate.finetune_summary(store.load(args.store, configs))
    print(summary.round(3).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("probe", "finetune"))
    parser.add_argument("--weights", nargs="+", default=["converged"],
                        help=f"upstream checkpoints: {', '.join(UPSTREAM_CHECKPOINTS)} or files")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: every downstream task")
    parser.add_argument("--train-size", type=int, default=None,
                        help="training images (default: 4,000 for probes, 10%% of them the "
                             "validation split; 20,000 for fine-tuning)")
    parser.add_argument("--strategy", default="full", help="finetune: the strategy")
    parser.add_argument("--lr", type=float, default=1e-3, help="finetune: the learning rate")
    parser.add_argument("--steps", type=int, default=LADDER_RUN["steps"],
                        help="finetune: optimizer steps")
    parser.add_argument("--eps", nargs="+", type=parse_budget,
                        default=[1 / 255, 2 / 255, 4 / 255], help="finetune: budgets, e.g. 2/255")
    parser.add_argument("--test-size", type=int, default=512,
                        help="finetune: calibration images attacked at each point")
    parser.add_argument("--val-fraction", type=float, default=LADDER_RUN["val_fraction"],
                        help="finetune: the share of training images held out for validation")
    parser.add_argument("--store", default=calibrate.CALIBRATION_STORE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true", help="finetune: a bar per run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.tasks = args.tasks or [t for t in glyphs.specs() if not t.startswith("upstream")]
    args.train_size = args.train_size or (4000 if args.mode == "probe"
                                          else LADDER_RUN["train_size"])
    (probe if args.mode == "probe" else finetune)(args)


if __name__ == "__main__":
    main()
