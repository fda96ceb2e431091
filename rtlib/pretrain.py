"""Our upstream recipe: pre-train the embedded ViT on the glyph world's upstream task.

``python -m rtlib pretrain`` trains :data:`rtlib.models.EMBEDDED_MODEL` from scratch and writes a
safetensors checkpoint whose metadata records the command, seed, steps, images seen, time and
upstream test accuracy. ``rtlib.models.build(..., weights=PATH)`` loads it through timm's
pretrained-weight path. Training state is checkpointed every ``checkpoint_every`` steps next to
the output, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from . import models, store
from .config import PretrainConfig
from .optim import adamw, cosine_with_warmup, seed_everything


def _shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``pixels`` (edge-replicated)."""
    if pixels == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (pixels,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, 3, h, w + 2 * pixels)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, 3, h, w)
    return out.gather(3, cols)


class RandomBatches:
    """Batch indices drawn with replacement from a private, checkpointable generator (the
    generator also draws the augmentation's shifts)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        return torch.randint(0, self.n, (self.batch_size,), generator=self.gen)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


def check_stop_at(config: PretrainConfig, stop_at: int | None) -> None:
    """``stop_at`` must be a checkpoint step before the end (where the state is saved)."""
    from .config import ConfigError

    if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int)
                                or not 0 < stop_at < config.steps
                                or stop_at % config.checkpoint_every):
        raise ConfigError("stop_at", stop_at, f"a multiple of checkpoint_every "
                          f"({config.checkpoint_every}) below steps ({config.steps})",
                          "not a checkpoint step:")


def check_init(config: PretrainConfig) -> None:
    """``--init`` must be a safetensors checkpoint of the embedded model with this task's head
    (a second stage continues the first), checked as ``run --weights`` is: one line naming the
    file, before anything is rendered."""
    if not config.init:
        return
    from .config import ConfigError
    from .data import glyphs
    from .preflight import check_weights_file

    if not config.init.endswith(".safetensors"):
        raise ConfigError("init", config.init, "a .safetensors checkpoint written by pretrain",
                          "unsupported file type:")
    classes = len(glyphs.specs()[config.task].classes)
    skeleton = models.skeleton(models.EMBEDDED_MODEL, classes).backbone
    check_weights_file(config.init, skeleton, field="init")
    head = models.checkpoint_shapes(config.init).get("head.weight")
    if head != (classes, skeleton.embed_dim):
        raise ConfigError("init", config.init, f"a checkpoint of the {config.task} task "
                          f"({classes} classes)", f"its head has shape {head}, not "
                          f"{(classes, skeleton.embed_dim)}:")


def pretrain(config: PretrainConfig, out: Path, progress: bool = True,
             stop_at: int | None = None) -> dict | None:
    """Train the embedded upstream model and write ``out`` (safetensors); returns its metadata.

    ``stop_at`` (a checkpoint step): train up to it, leave the resumable state and return
    None; the same call without it resumes and finishes with the same weights, bit for bit (a
    pre-training of hours can be spread over several sittings)."""
    check_stop_at(config, stop_at)
    from . import attacks
    from .data import glyphs
    from .data.split import Split
    from .evaluate import accuracy
    from .train import TrainState, loop

    config.check()
    out = Path(out)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    t0 = time.perf_counter()
    train = Split(*map(torch.from_numpy, glyphs.generate(config.task, "train", config.train_images,
                                                         seed=config.seed)))
    test = Split(*map(torch.from_numpy, glyphs.generate(config.task, "test", config.test_images,
                                                        seed=config.seed)))
    render_s = time.perf_counter() - t0

    spec = glyphs.specs()[config.task]
    model = models.build(models.EMBEDDED_MODEL, len(spec.classes))
    init_meta = {}
    if config.init:  # a second stage: continue from an earlier checkpoint (same task and head)
        from safetensors.torch import load_file

        model.backbone.load_state_dict(load_file(config.init))
        init_meta = checkpoint_metadata(Path(config.init))
        init_meta["sha256"] = hashlib.sha256(Path(config.init).read_bytes()).hexdigest()
    opt = adamw(model, config.lr, config.weight_decay)
    state = TrainState(model, opt, cosine_with_warmup(opt, config.warmup_steps, config.steps),
                       RandomBatches(len(train), config.batch_size, config.seed))
    state_path = out.with_name(out.name + ".state.pt")
    state.resume(state_path, asdict(config))  # weights_only: a planted file cannot run code

    def batch():
        idx = state.sampler.next()
        images = _shift(models.to_unit(train.images[idx]), config.shift, state.sampler.gen)
        labels = train.labels[idx]
        if config.adv_eps:  # adversarial training (Madry et al.): fit the PGD examples
            images = attacks.pgd(model, images, labels, config.adv_eps,
                                 2.5 * config.adv_eps / config.adv_steps, config.adv_steps,
                                 seed=config.seed * 1_000_003 + state.step)
        return images, labels

    def checkpoint(state: TrainState) -> str:
        acc, _ = accuracy(model, test.subset(2048))
        state.rows.append({"step": state.step, "mean_loss": state.mean_loss(),
                           "test_accuracy_2048": acc, "train_s": round(state.train_seconds, 1)})
        state.loss_sum, state.loss_count = 0.0, 0
        if progress:
            tqdm.write(json.dumps(state.rows[-1]))
        state.save(state_path, asdict(config))
        return f"test {acc:.3f}"

    points = set(range(config.checkpoint_every, config.steps, config.checkpoint_every))
    until = config.steps if stop_at is None else stop_at
    loop(state, until, batch, points | {config.steps}, checkpoint,
         loss_fn=lambda logits, y: F.cross_entropy(logits, y,
                                                   label_smoothing=config.label_smoothing),
         grad_clip=1.0, label="pretrain", progress=progress)
    if until < config.steps:
        return None

    test_acc, _ = accuracy(model, test)
    robust = {}
    if config.adv_eps:  # what the adversarial training bought, on 512 test images
        sample = test.subset(512)
        robust = {"upstream_robust_accuracy": attacks.robust_accuracy(
            model, sample.images, sample.labels, config.adv_eps,
            step_size=0.25 * config.adv_eps, steps=10),
            "robust_eval": "PGD-10, step 0.25 x budget, 512 test images"}
    meta = {
        "model": models.EMBEDDED_MODEL, "task": f"glyphs/{config.task}", "classes": len(spec.classes),
        "config": asdict(config), "upstream_test_accuracy": test_acc, **robust,
        "test_images": config.test_images,
        "images_seen": state.images_seen + init_meta.get("images_seen", 0),
        "train_seconds": round(state.train_seconds + init_meta.get("train_seconds", 0), 1),
        "render_seconds": round(render_s, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "command": config.command(),
        "history": state.rows,
        # The earlier stage this one continued from, with its own command and history.
        "init": init_meta or None,
    }
    weights = {k: v.contiguous() for k, v in model.backbone.state_dict().items()}
    store.atomic_write(out, lambda tmp: save_file(weights, tmp, metadata={"rtlib": json.dumps(meta)}))
    return meta


def checkpoint_metadata(path: Path) -> dict:
    """The metadata :func:`pretrain` stored in a checkpoint."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("rtlib", "{}"))




def learning_curve(meta: dict):
    """Upstream test accuracy (on 2,048 test images) and training loss over the pre-training
    steps of every stage, in order: a stage that continued from an earlier checkpoint
    (``--init``) starts where that one ended. Returns a DataFrame (stage, step, accuracy, loss)."""
    import pandas as pd

    stages, m = [], meta
    while m:
        stages.append(m)
        m = m.get("init")
    rows, offset = [], 0
    for k, stage in enumerate(reversed(stages), 1):
        for h in stage.get("history", []):
            rows.append({"stage": k, "step": offset + h["step"],
                         "accuracy": h["test_accuracy_2048"],
                         "loss": h.get("mean_loss", h.get("loss"))})
        offset += stage["config"]["steps"]
    return pd.DataFrame(rows, columns=["stage", "step", "accuracy", "loss"])


def last_fifth_gain(meta: dict) -> float | None:
    """What the last fifth of pre-training added to upstream test accuracy (2,048 images): the
    accuracy at the end less the accuracy at 80% of all the steps (interpolated between the
    recorded checkpoints). Issue 33 calls a model converged when this is under half a point;
    None without a curve."""
    import numpy as np

    curve = learning_curve(meta)
    if len(curve) < 2:
        return None
    start = 0.8 * curve.step.max()
    return float(curve.accuracy.iloc[-1] - np.interp(start, curve.step, curve.accuracy))


def _upstream_model(weights: str | Path):
    """The embedded model with the upstream task's head, loaded from checkpoint ``weights``."""
    from safetensors.torch import load_file

    from .data import glyphs

    model = models.build(models.EMBEDDED_MODEL, len(glyphs.specs()["upstream"].classes))
    model.backbone.load_state_dict(load_file(str(weights)))
    return model.eval()


def upstream_robustness(weights: str | Path, results_dir: str | Path | None = None,
                        images: int = 512, eps: float = 2 / 255, steps: int = 10,
                        seed: int = 7, task: str = "upstream") -> dict[str, float]:
    """A checkpoint's upstream ``clean`` and ``robust`` accuracy on ``images`` upstream test
    images of ``task`` (rendered with ``seed``; the same images for every checkpoint; the print
    and clutter of ``upstream2`` were seen by every model), under PGD-``steps`` at ``eps`` (step
    0.25 x eps, as the runs attack). With ``results_dir`` it is kept there (``upstream/``, keyed
    by the checkpoint's bytes and these settings) and read back, so a book build that finds it
    computes nothing."""
    from . import attacks
    from .data import glyphs
    from .data.split import Split
    from .evaluate import accuracy

    weights = Path(weights)
    settings = {"checkpoint": hashlib.sha256(weights.read_bytes()).hexdigest(), "images": images,
                "eps": eps, "steps": steps, "seed": seed}
    if task != "upstream":  # (the key of a score on the first upstream task is as it was)
        settings["task"] = task
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = store.upstream_path(results_dir, key) if results_dir is not None else None
    kept = store.read_table(path) if path is not None else None
    if kept is not None:
        return {k: float(kept[k].iloc[0]) for k in ("clean", "robust")}
    model = _upstream_model(weights)
    test = Split(*map(torch.from_numpy, glyphs.generate(task, "test", images, seed=seed)))
    out = {"clean": accuracy(model, test)[0],
           "robust": attacks.robust_accuracy(model, test.images, test.labels, eps,
                                             step_size=0.25 * eps, steps=steps, seed=seed)}
    if path is not None:
        import pandas as pd

        store.write_table(path, pd.DataFrame([{**settings, "file": weights.name, **out}]))
    return out


def upstream_table(preset: str, results_dir: str | Path | None = None):
    """The preset's upstream models (``standard``, and ``robust``: the remedies' robust upstream
    model) scored by :func:`upstream_robustness` the way the preset's runs are attacked (its
    number of test images, first budget and attack steps), kept in its store. A DataFrame
    (``clean``, ``robust``) indexed by upstream model, without the checkpoints that are not
    files (hub weights, a robust model not made yet); ``attrs["attack"]`` says how it attacked."""
    import pandas as pd

    from .config import (RunConfig, eps_label, preset_defaults, preset_remedies, preset_store,
                         preset_tasks, resolve_weights)

    run = preset_defaults(preset)
    attack = RunConfig(task=preset_tasks(preset)[0], strategy="full", **run)
    results_dir = results_dir or preset_store(preset)
    scores = {}
    for name, weights in (("standard", run.get("weights")),
                          ("robust", preset_remedies(preset)["robust_weights"])):
        path = resolve_weights(weights)
        if path and Path(path).is_file():
            scores[name] = upstream_robustness(path, results_dir, images=attack.test_size,
                                               eps=attack.eps[0], steps=attack.attack_steps)
    table = pd.DataFrame.from_dict(scores, orient="index", columns=["clean", "robust"]
                                   ).rename_axis("upstream model")
    table.attrs["attack"] = (f"PGD-{attack.attack_steps} at {eps_label(attack.eps[0])} on "
                             f"{attack.test_size:,} upstream test images")
    return table


def accuracy_by_domain(weights: str | Path, images: int = 1024, seed: int = 0) -> dict[str, float]:
    """Upstream test accuracy of a checkpoint in each upstream domain (``images`` rendered test
    images each): the mix the upstream accuracy averages over is not equally hard."""
    from .data import glyphs
    from .data.split import Split
    from .evaluate import accuracy

    model = _upstream_model(weights)
    out = {}
    for domain in dict.fromkeys(glyphs.specs()["upstream"].domains):
        split = Split(*map(torch.from_numpy, glyphs.generate("upstream", "test", images,
                                                             seed=seed, domain=domain)))
        out[domain], _ = accuracy(model, split)
    return out


def upstream_domains(weights: str | Path | None) -> tuple[str, ...] | None:
    """The glyph domains the upstream checkpoint ``weights`` (a path, or a name such as
    ``"embedded"``) was pre-trained on, from its metadata; None when unknown (no checkpoint,
    hub weights, a task outside the glyph world)."""
    from .config import resolve_weights
    from .data import glyphs

    path = resolve_weights(str(weights)) if weights is not None else None
    if not path or not Path(path).is_file():
        return None
    task = checkpoint_metadata(Path(path)).get("task", "").split("/", 1)[-1]
    spec = glyphs.specs().get(task)
    return tuple(dict.fromkeys(spec.domains)) if spec is not None else None
