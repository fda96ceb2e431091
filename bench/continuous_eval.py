"""Benchmark: one continuous-evaluation run two ways, in one process.

(a) reference-style loop, as the official code does it: fp32, torchattacks PGD over the whole
    evaluation set in batches of 64 (misclassified images attacked too), clean accuracy over the
    whole training set at every evaluation point;
(b) rtlib's ``train.run`` with its fast path: attacks only clean-correct images (each larger
    budget only the survivors), scores a fixed training subset, keeps the data as uint8 on the
    device, merges LoRA/IA3 for evaluation, bf16 autocast on a GPU (first layer and
    perturbation in fp32), optionally torch.compile.

Both use the same seed, batches and optimizer: in fp32 they train identically, so their robust
accuracies must agree within 1 percentage point at every point (in bf16 rtlib's training takes
its own rounding, and the run-against-run gap includes that). The script prints a table of
training images/s, attack images/s, wall time and the speed-up.

A third check attacks the reference's final model rtlib's way (its precision: bf16 on a GPU)
and the reference way: the same weights, so the gap is the attack's alone.

    python bench/continuous_eval.py                 # CPU, embedded model, small
    python bench/continuous_eval.py --device cuda --model vit_base_patch16_224 --weights none \
        --img-size 224 --batch-size 128 --task digits --compile
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
import torchattacks

from rtlib import metrics, preflight, store, train
from rtlib.config import RunConfig
from rtlib.evaluate import evaluate_point
from rtlib.optim import adamw, warmup_then


def reference_run(config: RunConfig, device: torch.device):
    """The official code's way; returns its rows, timings, final model and task."""
    task, model = train.prepare(config)
    model.to(device)
    opt = adamw(model, config.lr, config.weight_decay)
    total_steps = config.total_steps(len(task.train))
    sched = warmup_then(opt, config.lr_schedule, config.warmup_steps, total_steps)
    batches = train.EpochBatches(len(task.train), config.batch_size, config.seed)
    points = config.eval_steps(len(task.train))
    rows, t_train, t_attack, attacked = [], 0.0, 0.0, 0

    def accuracy(images, labels):
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(images), 64):
                x = images[i:i + 64].to(device).float() / 255
                correct += (model(x).argmax(1).cpu() == labels[i:i + 64]).sum().item()
        return correct / len(images)

    for step in range(total_steps + 1):
        if step in points:
            row = {"step": step, "train_acc": accuracy(task.train.images, task.train.labels),
                   "test_acc": accuracy(task.test.images, task.test.labels)}
            t0 = time.perf_counter()
            for eps in config.eps:
                model.eval()
                attack = torchattacks.PGD(model, eps=eps, alpha=eps * config.step_size_ratio,
                                          steps=config.attack_steps, random_start=True)
                robust = 0
                for i in range(0, len(task.test), 64):
                    x = task.test.images[i:i + 64].to(device).float() / 255
                    y = task.test.labels[i:i + 64].to(device)
                    adv = attack(x, y)
                    with torch.no_grad():
                        robust += (model(adv).argmax(1) == y).sum().item()
                    attacked += len(x)
                row[metrics.robust(eps)] = robust / len(task.test)
            t_attack += time.perf_counter() - t0
            rows.append(row)
        if step == total_steps:
            break
        t0 = time.perf_counter()
        model.train()
        idx = batches.next()
        x = task.train.images[idx].to(device).float() / 255
        loss = F.cross_entropy(model(x), task.train.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                       config.grad_clip)
        opt.step()
        sched.step()
        t_train += time.perf_counter() - t0
    return rows, {"train_s": t_train, "attack_s": t_attack, "attacked": attacked}, model, task


def _peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="GPU (the issue's setting): --device cuda --model vit_base_patch16_224 "
               "--weights none --img-size 224 --batch-size 128 --task digits --compile")
    parser.add_argument("--task", default="fonts", help="task to fine-tune on (default fonts)")
    parser.add_argument("--strategy", default="full", help="fine-tuning strategy (default full)")
    parser.add_argument("--model", default="vit_glyph_p4_24", help="timm model name")
    parser.add_argument("--weights", default="embedded",
                        help="'embedded' (our checkpoint), 'none' (random) or a local file")
    parser.add_argument("--img-size", type=int, default=None, help="input size (model default)")
    parser.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (default 64)")
    parser.add_argument("--train-size", type=int, default=2000, help="training images")
    parser.add_argument("--test-size", type=int, default=512, help="evaluation images")
    parser.add_argument("--schedule", default="log:6", help="evaluation schedule (default log:6)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (1e-3)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="rtlib's precision (auto: bf16 on a GPU, fp32 on the CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile rtlib's model")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    args = parser.parse_args()
    kwargs = {"img_size": args.img_size} if args.img_size else {}
    config = preflight.check(RunConfig(task=args.task, strategy=args.strategy, model=args.model,
                       weights=None if args.weights == "none" else args.weights,
                       model_kwargs=kwargs, train_size=args.train_size,
                       test_size=args.test_size, train_eval_size=512, steps=args.steps,
                       batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                       eps=(2 / 255,), attack_steps=15, precision=args.precision,
                       compile=args.compile))
    device = train.resolve_device(args.device)
    col = metrics.robust(config.eps[0])
    n_points = len(config.eval_steps())

    t0 = time.perf_counter()
    ref_rows, ref, ref_model, task = reference_run(config, device)
    ref_wall = time.perf_counter() - t0
    ref_mem = _peak_memory_gib(device)

    with tempfile.TemporaryDirectory() as results:
        t0 = time.perf_counter()
        path = train.run(config, results, device=str(device), progress=False)
        ours_wall = time.perf_counter() - t0
        ours = store.load(results)
        precision = store.read_meta(path)["precision"]
    ours_mem = _peak_memory_gib(device)

    # The attack alone: the reference's final model, attacked rtlib's way (its precision) and
    # the reference way. Same weights, so any gap is the attack's, not training's.
    ref_model.set_precision(precision)
    fast = evaluate_point(ref_model, train.on_device(task, device), config,
                          task.train.subset(config.train_eval_size))

    train_images = config.total_steps() * config.batch_size
    ours_train_s = float(ours["train_seconds"].iloc[-1])
    ours_eval_s = float(ours["eval_seconds"].sum())
    attacked_ours = int(ours["attacked"].sum())
    attack_s_ours = float(ours["attack_seconds"].sum())
    diffs = [abs(a[col] - b) for a, b in zip(ref_rows, ours[col])]
    worst = max(diffs)
    attack_gap = abs(fast[col] - ref_rows[-1][col])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}, {torch.get_num_threads()} threads), model {config.model}, "
          f"task {config.task}, strategy {config.strategy}, {config.total_steps()} steps of "
          f"{config.batch_size}, {n_points} evaluation points, {config.test_size} test images, "
          f"PGD-{config.attack_steps} at {config.eps[0] * 255:g}/255; rtlib precision "
          f"{precision}, compile {config.compile}")
    print(f"final clean accuracy: reference {ref_rows[-1]['test_acc']:.3f}, "
          f"rtlib {ours['test_acc'].iloc[-1]:.3f}")
    print(f"{'':<26}{'reference':>12}{'rtlib':>12}{'rtlib faster by':>17}")
    table = [  # name, reference, rtlib, higher is better
        ("training img/s", train_images / ref["train_s"], train_images / ours_train_s, True),
        ("attack img/s (PGD)", ref["attacked"] / ref["attack_s"], attacked_ours / attack_s_ours,
         True),
        ("images attacked", ref["attacked"], attacked_ours, False),
        ("evaluation s", ref_wall - ref["train_s"], ours_eval_s, False),
        ("total wall s", ref_wall, ours_wall, False),
    ]
    for label, a, b, higher in table:
        print(f"{label:<26}{a:12.1f}{b:12.1f}{(b / a if higher else a / b):16.2f}x")
    if ref_mem is not None:
        print(f"{'peak GPU memory GiB':<26}{ref_mem:12.2f}{ours_mem:12.2f}")
    print(f"speed-up of the whole run: {ref_wall / ours_wall:.2f}x; share of rtlib's wall time "
          f"spent evaluating: {ours_eval_s / ours_wall:.0%}")
    print(f"robust accuracy, run against run, largest difference over {len(diffs)} points: "
          f"{100 * worst:.2f} points ({'OK' if worst <= 0.01 else 'ABOVE the 1-point tolerance'}"
          f"{'; bf16 training follows its own trajectory' if precision != 'fp32' else ''})")
    print(f"robust accuracy, same final model, rtlib's attack vs the reference's: "
          f"{fast[col]:.4f} vs {ref_rows[-1][col]:.4f}, {100 * attack_gap:.2f} points "
          f"({'OK' if attack_gap <= 0.01 else 'ABOVE the 1-point tolerance'})")


if __name__ == "__main__":
    main()
