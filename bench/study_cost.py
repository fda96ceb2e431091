"""What one run of a study costs, and what the whole study will cost at that pace.

Runs one configuration of the preset's study (``--task``, ``--strategy``; the preset's values
otherwise) into a temporary store and prints its training and attack throughput, where the
time went, and the projection for the whole study: its runs at this run's time, and the
learning-rate sweep's runs (clean evaluation only) at this run's training time.

    python bench/study_cost.py                      # full fine-tuning on fonts, 2 threads
    python bench/study_cost.py --strategy lora --task digits --threads 1
"""
from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="study", help="the study (default: %(default)s)")
    parser.add_argument("--task", default="fonts", help="task (default: %(default)s)")
    parser.add_argument("--strategy", default="full", help="strategy (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args()

    import torch

    from rtlib import interpolate, metrics, plan, store, sweep, train
    from rtlib.config import preset_remedies, preset_seeds, preset_spec, preset_tasks
    from rtlib.strategies import PAPER_STRATEGIES

    torch.set_num_threads(args.threads)
    config = sweep.expand([args.task], [args.strategy], [0], preset=args.preset)[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train.run(config, tmp, device=args.device, progress=True)
        wall = time.perf_counter() - t0
        rows = store.load(tmp)
    train_s = rows[metrics.TRAIN_SECONDS].iloc[-1]
    eval_s, attack_s = rows[metrics.EVAL_SECONDS].sum(), rows[metrics.ATTACK_SECONDS].sum()
    runs = len(preset_tasks(args.preset)) * len(PAPER_STRATEGIES) * len(preset_seeds(
        args.preset))
    sweep_runs = len(plan.selection_configs(args.preset, list(PAPER_STRATEGIES)))
    print(f"\n{args.task}/{args.strategy}, {config.total_steps()} steps, {len(rows)} points, "
          f"{config.test_size} test images, budgets {', '.join(map(str, rows.eps.unique()))}, "
          f"{args.threads} threads on {args.device}")
    print(f"training: {rows[metrics.IMAGES_SEEN].iloc[-1] / train_s:,.0f} img/s, {train_s:.0f} s")
    print(f"attack:   {rows[metrics.ATTACKED].sum() / attack_s:,.1f} attacked img/s, "
          f"{attack_s:.0f} s ({rows[metrics.ATTACKED].sum():,} images attacked)")
    print(f"evaluation (clean, robust, OOD): {eval_s:.0f} s; whole run {wall:.0f} s")
    total = runs * wall + sweep_runs * (train_s + (eval_s - attack_s) / len(rows) * 2)
    print(f"projection for preset {args.preset!r}: {runs} runs x {wall:.0f} s + {sweep_runs} "
          f"sweep runs x ~{train_s:.0f} s = {total / 3600:.1f} h on one process "
          f"(strategies differ: this is one of them; {preset_spec(args.preset).get('store')})")
    # The remedies (python -m rtlib study computes them after the study's runs): the runs from
    # the robust upstream model at this run's time, and each path's evaluated points at this
    # run's time per evaluation point.
    remedies = preset_remedies(args.preset)
    seeds, tasks = len(preset_seeds(args.preset)), len(preset_tasks(args.preset))
    robust_runs = len(remedies["robust_tasks"]) * len(PAPER_STRATEGIES) * seeds
    points = tasks * seeds * sum(len([a for a in remedies["alphas"]
                                      if a not in interpolate.run_ends(s, remedies["path_form"])])
                                 for s in PAPER_STRATEGIES if s != "linear_probe")
    per_point = eval_s / len(rows)
    extra = robust_runs * wall + points * per_point
    print(f"remedies: {robust_runs} robust upstream runs x {wall:.0f} s + {points} path points "
          f"x ~{per_point:.0f} s = {extra / 3600:.1f} h more on one process")


if __name__ == "__main__":
    main()
