"""The fine-tuning loop with continuous evaluation.

``run(config, results_dir)`` fine-tunes one model and evaluates it at every step of the
config's schedule; the rows go to the results store in one atomic write when the run ends.
After each evaluation point the training state is checkpointed (atomically) under
``results_dir/partial``, so a run that is killed resumes from its last point and finishes with
the same numbers as an uninterrupted one. Running a config that is complete is a no-op.

The fast path (on by default where it is safe): bf16 autocast on a GPU, with the input, its
normalization, the first layer and the attack's perturbation in fp32 (:mod:`rtlib.models`);
only clean-correct images attacked (:mod:`rtlib.attacks`); the data kept as uint8 on the device
and converted there; LoRA/IA3/DoRA merged for evaluation; ``compile=True`` adds torch.compile.
"""
from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data, models, store, strategies
from .config import RunConfig, eps_label, resolve_weights
from .evaluate import evaluate_point
from .optim import adamw, seed_everything, warmup_then


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def resolve_device(device: str | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device, model=None) -> str:
    """``"auto"``: bf16 on a GPU that supports it (and a model whose first layer can stay in
    fp32), fp32 elsewhere (a CPU without bf16 units gains nothing from it)."""
    if precision != "auto":
        return precision
    usable = model is None or model.fp32_first_layer is not None
    # Emulated bf16 (GPUs before Ampere) is slower than fp32: native support only.
    native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16" if usable and native else "fp32"


def on_device(task: data.TaskData, device: torch.device) -> data.TaskData:
    """The task's splits on ``device``, still uint8 (4x less memory than float)."""
    if device.type == "cpu":
        return task

    def move(split: data.Split) -> data.Split:
        return data.Split(split.images.to(device), split.labels.to(device))

    return dataclasses.replace(task, train=move(task.train), test=move(task.test),
                               ood={k: move(v) for k, v in task.ood.items()})


def model_input_size(config: RunConfig) -> int:
    size = config.model_kwargs.get("img_size")
    if size is None:
        import timm

        size = timm.models.get_pretrained_cfg_value(config.model, "input_size")[-1]
    return int(size)


def prepare(config: RunConfig):
    """The task's data and the model prepared with the config's strategy."""
    task = data.load_task(config.task, config.train_size, config.test_size, config.data_seed,
                          config.domain, image_size=model_input_size(config),
                          data_dir=config.data_dir, train_domains=config.ood_train_domains)
    # A hub task may have fewer images than train_size: hold out the same share of what it has.
    task = data.hold_out(task, int(round(len(task.train) * config.val_fraction)))
    seed_everything(config.seed)
    model = models.build(config.model, task.num_classes, weights=resolve_weights(config.weights),
                         **config.model_kwargs)
    strategies.apply(model, config.strategy, **config.hparams)
    return task, model


def describe(config: RunConfig) -> dict[str, Any]:
    """The fully resolved run, computed without data, weights or training (``--dry-run``):
    every field, the run id, steps, evaluation steps, and the strategy's resolved
    hyper-parameters and trainable count (on randomly initialized weights: same count)."""
    config.validate()
    task = data.info(config.task)
    model = models.build(config.model, task.classes, **config.model_kwargs)
    strategies.apply(model, config.strategy, **config.hparams)
    trainable, total = models.count_parameters(model)
    train_images = config.planned_train_images()
    return {**config.to_dict(), "run_id": config.run_id(),
            "hparams": {k: list(v) if isinstance(v, tuple) else v
                        for k, v in model.strategy_hparams.items()},
            "train_images": train_images, "val_images": config.val_count(),
            "total_steps": config.total_steps(train_images),
            "eval_steps": config.eval_steps(train_images),
            "trainable": trainable, "total": total}


def _versions() -> dict[str, str]:
    import peft
    import timm
    import torchattacks

    import rtlib

    return {"torch": torch.__version__, "timm": timm.__version__, "peft": peft.__version__,
            "torchattacks": torchattacks.__version__, "rtlib": rtlib.__version__,
            "python": platform.python_version()}


class _Batches:
    """Epoch-wise shuffled mini-batches drawn with a private, checkpointable generator.

    Each epoch ends with a short batch when the batch size does not divide the split, as in
    Hugging Face's Trainer, so ``epochs`` means the same number of steps in both."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(n, generator=self.gen), 0

    def next(self) -> torch.Tensor:
        if self.pos >= self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += len(idx)
        return idx

    def state(self) -> dict:
        return {"gen": self.gen.get_state(), "order": self.order, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.order, self.pos = state["order"], state["pos"]


def run(config: RunConfig, results_dir: str | Path, device: str | None = "auto",
        progress: bool = True) -> Path:
    """Fine-tune and continuously evaluate one config; returns the run's Parquet file."""
    config.validate()
    store.check_writable(results_dir)
    done = store.complete_run(results_dir, config)
    if done is not None:
        return done
    path = store.run_path(results_dir, config)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a write that was killed
        stale.unlink(missing_ok=True)
    device = resolve_device(device)
    with models.exact_convolutions():  # fp32 first layer means fp32, not TF32 (DESIGN 5)
        return _run(config, results_dir, device, path, progress)


def _run(config: RunConfig, results_dir, device: torch.device, path: Path,
         progress: bool) -> Path:
    task, model = prepare(config)
    trainable, total = models.count_parameters(model)
    model.to(device)
    precision = resolve_precision(config.precision, device, model)
    model.set_precision(precision)
    if config.compile:
        from torch import _dynamo as dynamo  # (not "import torch._dynamo": that makes torch local)

        # One process may run several strategies, each a few graphs (training, evaluation,
        # attack): the default cap of 8 would silently send later runs back to eager mode.
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
        model.compile()  # in place: parameter names and checkpoints are unchanged
    task = on_device(task, device)
    train_eval = task.train.subset(config.train_eval_size)
    total_steps = config.total_steps(len(task.train))
    opt = adamw(model, config.lr, config.weight_decay)
    sched = warmup_then(opt, config.lr_schedule, config.warmup_steps, total_steps)
    batches = _Batches(len(task.train), config.batch_size, config.seed)
    points = config.eval_steps(len(task.train))

    rows: list[dict[str, Any]] = []
    step, images_seen, loss_sum, loss_count, train_seconds = 0, 0, 0.0, 0, 0.0
    partial = store.partial_path(results_dir, config)
    state = store.load_state(partial, map_location=device)
    if state is not None:
        if state.get("run_id") == config.run_id():
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            batches.load(state["batches"])
            torch.set_rng_state(state["torch_rng"])
            rows, step, images_seen = state["rows"], state["step"], state["images_seen"]
            train_seconds = state["train_seconds"]

    label = f"{config.task}/{config.strategy}"
    bar = tqdm(total=total_steps, initial=step, desc=label, disable=not progress, leave=False)
    x_all, y_all = task.train.images, task.train.labels
    while True:
        if step in points and (not rows or rows[-1]["step"] != step):
            row = {"step": step, "epoch": images_seen / len(task.train),
                   "images_seen": images_seen,
                   "train_loss": loss_sum / loss_count if loss_count else float("nan")}
            row.update(evaluate_point(model, task, config, train_eval))
            row["train_seconds"] = train_seconds
            rows.append(row)
            loss_sum, loss_count = 0.0, 0
            bar.set_postfix(clean=f"{row['test_acc']:.3f}",
                            robust=f"{row[f'robust_acc@{eps_label(config.eps[0])}']:.3f}")
            _checkpoint(partial, config, model, opt, sched, batches, rows, step, images_seen,
                        train_seconds)
        if step >= total_steps:
            break
        t0 = time.perf_counter()
        model.train()
        idx = batches.next()
        idx = idx.to(x_all.device)
        x = x_all[idx].to(device, non_blocking=True).float() / 255
        loss = F.cross_entropy(model(x), y_all[idx].to(device))
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{label}: loss became {loss.item()} at step {step + 1} "
                                   f"(lr {config.lr}); lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], config.grad_clip)
        opt.step()
        sched.step()
        step += 1
        images_seen += len(idx)
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1  # .item() synchronizes
        train_seconds += time.perf_counter() - t0
        bar.update(1)
    bar.close()

    meta = {"versions": _versions(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "seed": config.seed, "trainable": trainable, "total": total,
            "precision": precision, "compiled": bool(config.compile),
            "classes": list(task.classes), "domain": task.domain,
            "ood_domains": list(task.ood), "points": points, "total_steps": total_steps,
            "train_images": len(task.train),
            "val_images": 0 if task.val is None else len(task.val)}
    out = store.write_run(results_dir, config, rows, meta)
    partial.unlink(missing_ok=True)
    return out


def _checkpoint(path: Path, config, model, opt, sched, batches, rows, step, images_seen,
                train_seconds) -> None:
    state = {"run_id": config.run_id(), "model": model.state_dict(), "opt": opt.state_dict(),
             "sched": sched.state_dict(), "batches": batches.state(),
             "torch_rng": torch.get_rng_state(), "rows": rows, "step": step,
             "images_seen": images_seen, "train_seconds": train_seconds}
    store.save_state(path, state)
