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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from . import models
from .errors import ConfigError, check_float, check_int
from .optim import adamw, cosine_with_warmup, seed_everything


@dataclass
class PretrainConfig:
    steps: int = 10_000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 500
    label_smoothing: float = 0.1
    train_images: int = 200_000
    test_images: int = 7_400
    shift: int = 2  # random translation in pixels (augmentation on top of the renderer's)
    seed: int = 0
    checkpoint_every: int = 500
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    init: str = ""  # warm start: a checkpoint written by pretrain (backbone and head)

    def validate(self) -> "PretrainConfig":
        for name in ("steps", "batch_size", "train_images", "test_images", "checkpoint_every"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "shift", "seed", "threads"):
            check_int(name, getattr(self, name), minimum=0)
        check_float("lr", self.lr, low=0, low_open=True)
        check_float("weight_decay", self.weight_decay, low=0)
        check_float("label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)
        if self.init and not Path(self.init).is_file():
            raise ConfigError("init", self.init, "an existing checkpoint written by pretrain",
                              "file not found:")
        return self


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


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 1024) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float() / 255
        correct += (model(x).argmax(1) == labels[i:i + batch_size]).sum().item()
    return correct / len(images)


def pretrain(config: PretrainConfig, out: Path, progress: bool = True) -> dict:
    """Train the embedded upstream model and write ``out`` (safetensors); returns its metadata."""
    from .data import glyphs

    config.validate()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    t0 = time.perf_counter()
    x_train, y_train = glyphs.generate("upstream", "train", config.train_images, seed=config.seed)
    x_test, y_test = glyphs.generate("upstream", "test", config.test_images, seed=config.seed)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    x_test, y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)
    render_s = time.perf_counter() - t0

    spec = glyphs.specs()["upstream"]
    model = models.build(models.EMBEDDED_MODEL, len(spec.classes))
    init_meta = {}
    if config.init:  # a second stage: continue from an earlier checkpoint (same task and head)
        from safetensors.torch import load_file

        model.backbone.load_state_dict(load_file(config.init))
        init_meta = checkpoint_metadata(Path(config.init))
        init_meta["sha256"] = hashlib.sha256(Path(config.init).read_bytes()).hexdigest()
    opt = adamw(model, config.lr, config.weight_decay)
    sched = cosine_with_warmup(opt, config.warmup_steps, config.steps)
    gen = torch.Generator().manual_seed(config.seed)
    state_path = out.with_name(out.name + ".state.pt")
    step, train_s, history = 0, 0.0, []
    from .store import load_state, save_state

    state = load_state(state_path)  # weights_only: a planted file cannot run code
    if state is not None:  # resume
        if state.get("config") == asdict(config):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            step, train_s, history = state["step"], state["train_s"], state["history"]

    bar = tqdm(total=config.steps, initial=step, desc="pretrain", disable=not progress)
    while step < config.steps:
        model.train()
        t = time.perf_counter()
        idx = torch.randint(0, len(x_train), (config.batch_size,), generator=gen)
        x = _shift(x_train[idx].float() / 255, config.shift, gen)
        loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=config.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        train_s += time.perf_counter() - t
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            acc = accuracy(model, x_test[:2048], y_test[:2048])
            history.append({"step": step, "loss": loss.item(), "test_accuracy_2048": acc,
                            "train_s": round(train_s, 1)})
            bar.write(json.dumps(history[-1]))
            save_state(state_path, {"config": asdict(config), "model": model.state_dict(),
                                    "opt": opt.state_dict(), "sched": sched.state_dict(),
                                    "gen": gen.get_state(), "step": step, "train_s": train_s,
                                    "history": history})
    bar.close()

    test_acc = accuracy(model, x_test, y_test)
    meta = {
        "model": models.EMBEDDED_MODEL, "task": "glyphs/upstream", "classes": len(spec.classes),
        "config": asdict(config), "upstream_test_accuracy": test_acc,
        "test_images": config.test_images,
        "images_seen": config.steps * config.batch_size + init_meta.get("images_seen", 0),
        "train_seconds": round(train_s + init_meta.get("train_seconds", 0), 1), "render_seconds": round(render_s, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "command": "python -m rtlib pretrain " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in asdict(config).items()),
        "history": history,
        # The earlier stage this one continued from, with its own command and history.
        "init": init_meta or None,
    }
    state = {k: v.contiguous() for k, v in model.backbone.state_dict().items()}
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata={"rtlib": json.dumps(meta)})
    tmp.replace(out)
    return meta


def checkpoint_metadata(path: Path) -> dict:
    """The metadata :func:`pretrain` stored in a checkpoint."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("rtlib", "{}"))


