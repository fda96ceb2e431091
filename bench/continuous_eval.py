"""Benchmark: one continuous-evaluation run two ways, in one process.

(a) reference-style loop, as the official code does it: fp32, torchattacks PGD over the whole
    evaluation set in batches of 64 (misclassified images attacked too), clean accuracy over the
    whole training set at every evaluation point;
(b) rtlib's ``train.run``: attacks only clean-correct images, scores a fixed training subset.

Both train identically (same seed, batches and optimizer), so their robust accuracies must agree
within 1 percentage point at every point; the script checks it and prints a table of training
images/s, attack images/s, wall time and the speed-up.

    python bench/continuous_eval.py                 # CPU, embedded model, small
    python bench/continuous_eval.py --device cuda --model vit_base_patch16_224 --img-size 224
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
import torchattacks

from rtlib import store, train
from rtlib.config import RunConfig, eps_label, parse_schedule
from rtlib.optim import adamw, cosine_with_warmup


def reference_run(config: RunConfig, device: torch.device) -> tuple[list[dict], dict]:
    task, model = train.prepare(config)
    model.to(device)
    opt = adamw(model, config.lr, config.weight_decay)
    sched = cosine_with_warmup(opt, config.warmup_steps, config.steps)
    batches = train._Batches(len(task.train), config.batch_size, config.seed)
    points = parse_schedule(config.schedule, config.steps)
    rows, t_train, t_attack, attacked = [], 0.0, 0.0, 0

    def accuracy(images, labels):
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(images), 64):
                x = images[i:i + 64].to(device).float() / 255
                correct += (model(x).argmax(1).cpu() == labels[i:i + 64]).sum().item()
        return correct / len(images)

    for step in range(config.steps + 1):
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
                row[f"robust_acc@{eps_label(eps)}"] = robust / len(task.test)
            t_attack += time.perf_counter() - t0
            rows.append(row)
        if step == config.steps:
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
    return rows, {"train_s": t_train, "attack_s": t_attack, "attacked": attacked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="fonts")
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--model", default="vit_glyph_p4_24")
    parser.add_argument("--weights", default="embedded")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=512)
    parser.add_argument("--schedule", default="log:6")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    kwargs = {"img_size": args.img_size} if args.img_size else {}
    config = RunConfig(task=args.task, strategy=args.strategy, model=args.model,
                       weights=args.weights, model_kwargs=kwargs, train_size=args.train_size,
                       test_size=args.test_size, train_eval_size=512, steps=args.steps,
                       batch_size=64, lr=1e-3, schedule=args.schedule, eps=(2 / 255,),
                       attack_steps=15).validate()
    device = train.resolve_device(args.device)
    col = f"robust_acc@{eps_label(config.eps[0])}"
    n_points = len(parse_schedule(config.schedule, config.steps))

    t0 = time.perf_counter()
    ref_rows, ref = reference_run(config, device)
    ref_wall = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as results:
        t0 = time.perf_counter()
        train.run(config, results, device=str(device), progress=False)
        ours_wall = time.perf_counter() - t0
        ours = store.load(results)
    train_images = config.steps * config.batch_size
    ours_train_s = float(ours["train_seconds"].iloc[-1])
    ours_eval_s = float(ours["eval_seconds"].sum())
    attacked_ours = int(round((ours["test_acc"] * ours["test_n"]).sum()))
    diffs = [abs(a[col] - b) for a, b in zip(ref_rows, ours[col])]
    print(f"device {device}, model {config.model}, task {config.task}, strategy "
          f"{config.strategy}, {config.steps} steps, {n_points} evaluation points, "
          f"{config.test_size} test images, PGD-{config.attack_steps} at {config.eps[0] * 255:g}/255")
    print(f"{'':<22}{'reference':>12}{'rtlib':>12}{'rtlib faster by':>17}")
    table = [  # name, reference, rtlib, higher is better
        ("training img/s", train_images / ref["train_s"], train_images / ours_train_s, True),
        ("images attacked", ref["attacked"], attacked_ours, False),
        ("evaluation s", ref_wall - ref["train_s"], ours_eval_s, False),
        ("total wall s", ref_wall, ours_wall, False),
    ]
    for name, a, b, higher in table:
        print(f"{name:<22}{a:12.1f}{b:12.1f}{(b / a if higher else a / b):16.2f}x")
    print(f"reference attack throughput: {ref['attacked'] / ref['attack_s']:.1f} img/s (PGD)")
    print(f"speed-up of the whole run: {ref_wall / ours_wall:.2f}x; share of rtlib's wall time "
          f"spent evaluating: {ours_eval_s / ours_wall:.0%}")
    print(f"largest robust-accuracy difference over {len(diffs)} points: "
          f"{100 * max(diffs):.2f} percentage points "
          f"({'OK' if max(diffs) <= 0.01 else 'ABOVE the 1-point tolerance'})")


if __name__ == "__main__":
    main()
