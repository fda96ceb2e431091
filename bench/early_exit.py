"""Benchmark: a whole study-like run attacked two ways, in one process.

The same fine-tuning run (same seed, data, schedule and budgets) with ``attack=pgd``
(torchattacks' PGD: every clean-correct image attacked for every step) and with
``attack=pgd_early`` (the same PGD, an image counted as broken at the first iterate that fools
it and no longer attacked: rtlib.attacks.EarlyExitPGD). Training is identical, so the runs
differ in their evaluation only: the script prints, per budget, the largest gap of robust
accuracy over the run's points (early exit must never be higher, and stay within the
tolerance the tests state), and the time spent attacking and in all, with the speed-up.

    python bench/early_exit.py                                  # fonts, full, 1,000 steps
    python bench/early_exit.py --task digits --strategy lora --steps 400 --threads 2
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from rtlib import metrics, store, train
from rtlib.config import RunConfig, preset_defaults


def one_run(config: RunConfig) -> tuple[object, float]:
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        train.run(config, folder, progress=False)
        wall = time.perf_counter() - t0
        return store.load(folder, [config]).sort_values(metrics.STEP), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="study", help="the preset whose run is measured")
    parser.add_argument("--task", default="fonts")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = preset_defaults(args.preset, args.strategy)
    if args.steps:
        base["steps"] = args.steps
    base["val_robust"] = False  # the test set's attack is what is compared
    runs = {}
    for attack in ("pgd", "pgd_early"):
        config = RunConfig(task=args.task, strategy=args.strategy, **{**base, "attack": attack})
        runs[attack] = one_run(config)
    (full, full_wall), (early, early_wall) = runs["pgd"], runs["pgd_early"]
    print(f"{args.task}/{args.strategy}, {int(full[metrics.STEP].max())} steps, "
          f"{len(full)} points, {int(full[metrics.TEST_N].iloc[0])} test images, "
          f"{args.threads} thread(s)")
    for col in metrics.robust_columns(full):
        gap = (full[col].to_numpy() - early[col].to_numpy())
        print(f"  {metrics.qualifier(col)}: robust accuracy pgd - pgd_early: max {gap.max():+.4f}, "
              f"min {gap.min():+.4f} (early exit never higher: {bool((gap >= -1e-9).all())})")
    attack = {k: float(v[0][metrics.ATTACK_SECONDS].sum()) for k, v in runs.items()}
    print(f"  attack seconds: pgd {attack['pgd']:.0f}, pgd_early {attack['pgd_early']:.0f} "
          f"(x{attack['pgd'] / attack['pgd_early']:.2f})")
    print(f"  whole run: pgd {full_wall:.0f} s, pgd_early {early_wall:.0f} s "
          f"(x{full_wall / early_wall:.2f})")


if __name__ == "__main__":
    main()
