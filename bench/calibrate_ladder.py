"""Calibration of the ladder of tasks (issue 33): each glyph task's linear-probe accuracy on its
validation split, with its 95% interval, from each upstream checkpoint given.

The read-out is fitted on the frozen features (rtlib.calibrate.probe_accuracy): a task's place
on the ladder is chosen from these validation numbers, never from the test set.

    python bench/calibrate_ladder.py                      # the committed checkpoints
    python bench/calibrate_ladder.py --weights rtlib/weights/vit_glyph_p4_24_converged.safetensors
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from rtlib import calibrate
from rtlib.config import EMBEDDED_WEIGHTS, ROBUST_WEIGHTS
from rtlib.data import glyphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", nargs="+", default=[str(EMBEDDED_WEIGHTS), str(ROBUST_WEIGHTS)],
                        help="upstream checkpoints to read the tasks with")
    parser.add_argument("--tasks", nargs="+", default=None, help="default: every downstream task")
    parser.add_argument("--train-size", type=int, default=4000,
                        help="training images (10%% of them held out as the validation split)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks = args.tasks or [t for t in glyphs.specs() if not t.startswith("upstream")]
    rows = []
    for weights in args.weights:
        for task in tasks:
            row = calibrate.probe_accuracy(task, weights, train_size=args.train_size)
            rows.append({"upstream": Path(weights).stem, **row})
            print(f"{Path(weights).stem:32s} {task:14s} {row['val_acc']:.3f} "
                  f"[{row['low']:.3f}, {row['high']:.3f}]", flush=True)
    table = pd.DataFrame(rows).pivot(index="task", columns="upstream", values="val_acc")
    print(table.round(3).sort_values(table.columns[0], ascending=False).to_string())


if __name__ == "__main__":
    main()
