"""Calibrate the embedded preset: full fine-tuning on every task with an eps sweep.

For each task, prints final clean accuracy and robust accuracy at each budget, and the ratio
robust / clean. A budget is informative for a task when that ratio lies between 0.1 and 0.9
and clean accuracy is below 1. The chosen budgets live in ``rtlib.config.PRESETS``.

    python bench/calibrate_embedded.py [--preset embedded|study] [--strategy full] [--steps N]

The rule looks only at where the final robust accuracy lies relative to clean accuracy, never at
the trajectory (whether robust accuracy rises and falls is the question, not the criterion).
"""
from __future__ import annotations

import argparse
import tempfile

from rtlib import config, metrics, store, sweep

BUDGETS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="embedded", help="embedded or study")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    results = args.results_dir or tempfile.mkdtemp()
    tasks = config.preset_tasks(args.preset)
    configs = sweep.expand(tasks, [args.strategy], preset=args.preset, eps=BUDGETS,
                           schedule="every:1000000", **({"steps": args.steps} if args.steps
                                                          else {}),
                           **({"lr": args.lr} if args.lr else {}))
    print(sweep.summarize(sweep.run(configs, results, workers=None)))
    last = store.load(results, configs).sort_values("step").groupby("task").tail(1)
    print(f"{'task':<10}{'clean':>7}" + "".join(f"{config.eps_label(e):>10}" for e in BUDGETS))
    for _, row in last.iterrows():
        cells = ""
        for e in BUDGETS:
            robust = row[metrics.robust(e)]
            cells += f"{robust:>5.2f} ({robust / row['test_acc']:.2f})"
        print(f"{row['task']:<10}{row['test_acc']:>7.3f}  {cells}")
    print("cells: robust accuracy (robust / clean)")


if __name__ == "__main__":
    main()
