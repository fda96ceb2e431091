"""The training loop (one, for pre-training and fine-tuning) and fine-tuning runs.

:func:`loop` is the loop: batches, loss, clipping, the optimizer and schedule steps, a progress
bar, and a call at every evaluation point; its resumable state is a :class:`TrainState`.
``run(config, results_dir)`` fine-tunes one model with it and evaluates at every step of the
config's schedule; the rows go to the results store in one atomic write when the run ends.
After each evaluation point the training state is checkpointed (atomically) under
``results_dir/partial``, so a run that is killed resumes from its last point and finishes with
the same numbers as an uninterrupted one. Running a config that is complete is a no-op.
:mod:`rtlib.pretrain` runs the same loop on the upstream task.

The fast path (on by default where it is safe): bf16 autocast on a GPU, with the input, its
normalization, the first layer and the attack's perturbation in fp32 (:mod:`rtlib.models`);
only clean-correct images attacked (:mod:`rtlib.attacks`); the data kept as uint8 on the device
and converted there; LoRA/IA3/DoRA merged for evaluation; ``compile=True`` adds torch.compile.
"""
from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data, metrics, models, preflight, store, strategies
from .config import ConfigError, RunConfig, resolve_weights
from .data.split import Split, TaskData
from .evaluate import evaluate_point
from .optim import adamw, seed_everything, warmup_then


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or a
    GPU this machine does not have, is a :class:`ConfigError` naming the field."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    allowed = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(gpus)] if gpus else [])
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, allowed, "unknown device") from None
    if parsed.type not in ("cpu", "cuda") or (parsed.type == "cuda" and (
            not gpus or (parsed.index or 0) >= gpus)):
        raise ConfigError("device", device, allowed, "not on this machine:")
    return parsed


def resolve_precision(precision: str, device: torch.device, model=None) -> str:
    """``"auto"``: bf16 on a GPU that supports it (and a model whose first layer can stay in
    fp32), fp32 elsewhere (a CPU without bf16 units gains nothing from it)."""
    if precision != "auto":
        return precision
    usable = model is None or model.fp32_first_layer is not None
    # Emulated bf16 (GPUs before Ampere) is slower than fp32: native support only.
    native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16" if usable and native else "fp32"


def on_device(task: TaskData, device: torch.device) -> TaskData:
    """The task's splits on ``device``, still uint8 (4x less memory than float)."""
    if device.type == "cpu":
        return task

    def move(split: Split) -> Split:
        return Split(split.images.to(device), split.labels.to(device))

    return dataclasses.replace(task, train=move(task.train), test=move(task.test),
                               ood={k: move(v) for k, v in task.ood.items()})


def model_input_size(config: RunConfig) -> int:
    size = config.model_kwargs.get("img_size")
    if size is None:
        import timm

        size = timm.models.get_pretrained_cfg_value(config.model, "input_size")[-1]
    return int(size)


def prepare(config: RunConfig):
    """The task's data and the model prepared with the config's strategy (a config that
    passed :func:`rtlib.preflight.check`)."""
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
    preflight.check(config, available=False)  # a plan: needs neither data nor weights
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


class EpochBatches:
    """Epoch-wise shuffled mini-batch indices drawn with a private, checkpointable generator.

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

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        order, pos = state["order"], state["pos"]
        if len(order) != self.n or not isinstance(pos, int) or not 0 <= pos <= self.n:
            raise ValueError(f"a sampler of {len(order)} images at {pos}, not of {self.n}")
        self.gen.set_state(state["gen"])
        self.order, self.pos = order, pos


@dataclass
class TrainState:
    """What a training loop needs to resume exactly: the model, optimizer, schedule and batch
    sampler, the counters, and what was recorded at the evaluation points (``rows``)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    sampler: Any  # has state_dict() / load_state_dict()
    step: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0
    rows: list = field(default_factory=list)
    loss_sum: float = 0.0  # since the last evaluation point
    loss_count: int = 0

    def mean_loss(self) -> float:
        return self.loss_sum / self.loss_count if self.loss_count else float("nan")

    def save(self, path: Path, identity: Any) -> None:
        """Checkpoint atomically; ``identity`` (a run id or config) guards against resuming
        another run's state."""
        store.save_state(path, {
            "identity": identity, "model": self.model.state_dict(),
            "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "sampler": self.sampler.state_dict(), "torch_rng": torch.get_rng_state(),
            "step": self.step, "images_seen": self.images_seen,
            "train_seconds": self.train_seconds, "rows": self.rows})

    def resume(self, path: Path, identity: Any, map_location=None) -> bool:
        """Load the checkpoint at ``path`` if it is this run's; ``True`` when resumed. A state
        that cannot be read, or is another run's, is ignored (training starts fresh)."""
        state = store.load_state(path, map_location=map_location)
        if state is None or state.get("identity") != identity:
            return False
        fresh = self._snapshot()
        try:
            self._apply(state)
        except Exception as err:  # noqa: BLE001 - it loads but does not fit: start fresh
            self._apply(fresh)
            store.set_aside(path, f"it does not apply to this run ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:160] if str(err) else ''})")
            return False
        return True

    def _snapshot(self) -> dict:
        """The state as it is (a fresh run's), to fall back on when a saved one fails."""
        import copy

        return copy.deepcopy({
            "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(), "step": self.step,
            "images_seen": self.images_seen, "train_seconds": self.train_seconds,
            "rows": self.rows})

    def _apply(self, state: dict) -> None:
        counters = {k: state[k] for k in ("step", "images_seen", "train_seconds", "rows")}
        if not (isinstance(counters["step"], int) and isinstance(counters["rows"], list)):
            raise TypeError("step or rows of the wrong type")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.images_seen = counters["step"], counters["images_seen"]
        self.train_seconds, self.rows = counters["train_seconds"], counters["rows"]


def loop(state: TrainState, total_steps: int, batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
         points: set[int], on_point: Callable[[TrainState], str | None],
         loss_fn: Callable = F.cross_entropy, grad_clip: float = 1.0, label: str = "train",
         progress: bool = True, point_cost: float = 0.0) -> TrainState:
    """Train ``state.model`` up to ``total_steps``, calling ``on_point(state)`` at each step of
    ``points`` (before the step is taken; once per step, also after a resume); what it returns
    is shown on the progress bar.

    ``batch()`` returns the next (images, labels), images uint8 or in [0, 1] (the model
    converts). Raises :class:`TrainingDiverged` on a loss that is not finite.
    """
    model, params = state.model, [p for p in state.model.parameters() if p.requires_grad]
    last_point = state.rows[-1].get("step") if state.rows else None
    # The bar counts steps and, with ``point_cost`` (an evaluation point's time in steps), the
    # evaluations too: its remaining time then includes them (they are most of a run's time).
    done = state.step + point_cost * sum(p < state.step or p == last_point for p in points)
    bar = tqdm(total=total_steps + point_cost * len([p for p in points if p <= total_steps]),
               initial=done, desc=label, disable=not progress, leave=False,
               bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]" if point_cost
               else None)
    note = ""
    while True:
        if state.step in points and state.step != last_point:
            note = on_point(state) or note
            last_point = state.step
            bar.update(point_cost)
        if state.step >= total_steps:
            break
        t0 = time.perf_counter()
        model.train()
        x, y = batch()
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"{label}: loss became {loss.item()} at step {state.step + 1}"
                                   f" (lr {state.opt.param_groups[0]['lr']:.3g}); lower the "
                                   "learning rate")
        state.opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        state.opt.step()
        state.sched.step()
        state.step += 1
        state.images_seen += len(y)
        state.loss_sum, state.loss_count = state.loss_sum + loss.item(), state.loss_count + 1
        state.train_seconds += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix_str(f"step {state.step}/{total_steps} {note} loss {loss.item():.3f}"
                            .replace("  ", " "), refresh=False)
    bar.close()
    return state


def run(config: RunConfig, results_dir: str | Path, device: str | None = "auto",
        progress: bool = True, on_point: Callable[[dict], None] | None = None,
        outcome: dict | None = None) -> Path:
    """Fine-tune and continuously evaluate one config; returns the run's Parquet file.
    ``outcome["computed"]`` (when a dict is given) says whether this call computed it.

    Another process computing the same run is waited for (the store's lock), and a complete
    run is returned as it is. ``on_point(row)`` is called with each evaluation point's row as
    it is measured (e.g. to draw the run live)."""
    preflight.check(config)
    with store.claim(results_dir, config) as done:
        if outcome is not None:
            outcome["computed"] = done is None
        if done is not None:
            return done
        device = resolve_device(device)
        try:
            with models.exact_convolutions():  # fp32 first layer means fp32, not TF32
                return _run(config, results_dir, device, progress, on_point)
        except (TrainingDiverged, ConfigError):
            # The run itself cannot succeed: its state would only fail again. (An interruption
            # or a full disk keeps it, so that the rerun resumes.)
            store.partial_path(results_dir, config).unlink(missing_ok=True)
            raise


@dataclass
class _Session:
    """A run ready to train: its data, model, training state, evaluation points, batches and
    the evaluation that appends a row to ``state.rows``."""

    config: RunConfig
    task: TaskData
    model: nn.Module
    state: TrainState
    points: list[int]
    precision: str
    trainable: int
    total: int

    @classmethod
    def start(cls, config: RunConfig, device: torch.device) -> "_Session":
        task, model = prepare(config)
        trainable, total = models.count_parameters(model)
        model.to(device)
        precision = resolve_precision(config.precision, device, model)
        model.set_precision(precision)
        if config.compile:
            from torch import _dynamo as dynamo  # ("import torch._dynamo" makes torch local)

            # One process may run several strategies, each a few graphs (training, evaluation,
            # attack): the default cap of 8 would silently send later runs back to eager mode.
            dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
            model.compile()  # in place: parameter names and checkpoints are unchanged
        task = on_device(task, device)
        total_steps = config.total_steps(len(task.train))
        opt = adamw(model, config.lr, config.weight_decay)
        state = TrainState(model, opt, warmup_then(opt, config.lr_schedule, config.warmup_steps,
                                                   total_steps),
                           EpochBatches(len(task.train), config.batch_size, config.seed))
        return cls(config, task, model, state, config.eval_steps(len(task.train)), precision,
                   trainable, total)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def batch(self):
        idx = self.state.sampler.next().to(self.task.train.images.device)
        return (self.task.train.images[idx].to(self.device, non_blocking=True),
                self.task.train.labels[idx].to(self.device))

    def evaluate(self, state: TrainState) -> str:
        """Score the model now (one row) and reset the loss average."""
        row = {metrics.STEP: state.step, metrics.EPOCH: state.images_seen / len(self.task.train),
               metrics.IMAGES_SEEN: state.images_seen, metrics.TRAIN_LOSS: state.mean_loss()}
        train_eval = self.task.train.subset(self.config.train_eval_size)
        row.update(evaluate_point(self.model, self.task, self.config, train_eval))
        row[metrics.TRAIN_SECONDS] = state.train_seconds
        state.rows.append(row)
        state.loss_sum, state.loss_count = 0.0, 0
        return (f"clean {row[metrics.TEST_ACC]:.3f} robust "
                f"{row[metrics.robust(self.config.eps[0])]:.3f}")

    def train(self, until: int, on_point: Callable[[TrainState], str | None],
              progress: bool) -> None:
        from .plan import work

        train_work, eval_work = work(self.config)
        # An evaluation pass costs about 0.57 of a training pass here (the committed study's
        # median paces, rtlib.plan.pace: 0.0023 s against 0.0040 s per image pass).
        point_cost = 0.57 * eval_work / len(self.points) / (train_work / max(1, until))
        loop(self.state, until, self.batch, set(self.points), on_point,
             grad_clip=self.config.grad_clip,
             label=f"{self.config.task}/{self.config.strategy}", progress=progress,
             point_cost=point_cost)


def replay(config: RunConfig, points: int = 2, device: str | None = "cpu",
           test_images: int | None = None) -> list[dict]:
    """The rows of a run's first ``points`` evaluation points, computed afresh (nothing is
    read from or written to a store): what a committed run's first rows should be.

    ``test_images``: score only the first that many test images (and as many of each OOD
    domain), a cheaper check. Training does not depend on the test set, and each test image's
    result depends only on that image (an image's rendering on its index, an attack batch's
    random start on a seed and its position: a prefix of the run's batches draws a prefix of
    their noise), so the rows' masks are then prefixes of the run's."""
    if test_images is not None and test_images < config.test_size:
        config = dataclasses.replace(config, test_size=test_images)
    preflight.check(config)
    device = resolve_device(device)
    with models.exact_convolutions():
        session = _Session.start(config, device)
        session.train(session.points[:points][-1], session.evaluate, progress=False)
    return session.state.rows


def retrain(config: RunConfig, device: str | torch.device | None = "cpu",
            progress: bool = False) -> nn.Module:
    """The run's model at its end, trained afresh without evaluating (evaluation does not touch
    the training's random state, so on the same machine these are the run's own weights)."""
    preflight.check(config)
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    with models.exact_convolutions():
        session = _Session.start(config, device)
        session.train(config.total_steps(len(session.task.train)), lambda state: None,
                      progress)
    return session.model


def _run(config: RunConfig, results_dir, device: torch.device, progress: bool,
         on_point: Callable[[dict], None] | None = None) -> Path:
    session = _Session.start(config, device)
    state = session.state
    partial = store.partial_path(results_dir, config)
    state.resume(partial, config.run_id(), map_location=device)

    def evaluate(state: TrainState) -> str:
        note = session.evaluate(state)
        state.save(partial, config.run_id())
        if on_point is not None:
            on_point(state.rows[-1])
        return note

    session.train(config.total_steps(len(session.task.train)), evaluate, progress)
    task = session.task
    meta = {"versions": _versions(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "seed": config.seed, "trainable": session.trainable, "total": session.total,
            "precision": session.precision, "compiled": bool(config.compile),
            "classes": list(task.classes), "domain": task.domain,
            "ood_domains": list(task.ood), "points": session.points,
            "total_steps": config.total_steps(len(task.train)),
            "train_images": len(task.train),
            "val_images": 0 if task.val is None else len(task.val)}
    store.write_weights(results_dir, config, {
        name: p for name, p in session.model.named_parameters() if p.requires_grad})
    out = store.write_run(results_dir, config, state.rows, meta)
    partial.unlink(missing_ok=True)
    return out
