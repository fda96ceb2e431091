"""Adversarial attacks through torchattacks, on images in [0, 1].

Defaults are the study's: L-infinity PGD, eps 1/255, step 0.25/255 (eps / 4), 15 steps, random
start. Models come from :func:`rtlib.models.build` and normalize inside, so ``eps`` is a budget
in pixel space. Robust accuracy counts an image as robust when it is classified correctly *and*
stays correct under the attack; only clean-correct images are attacked (the others are
non-robust whatever the attack does), which changes no number and saves the work.

Precision: the perturbation is always fp32 (torchattacks works on the float images it is
given). A model set to bf16 (:meth:`rtlib.models.NormalizedModel.set_precision`) runs its
backbone under autocast but its first layer in fp32, and TF32 convolutions are off during an
attack; ``tests/test_fast_path.py`` checks that this agrees with a pure-fp32 attack.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torchattacks
from torch import nn

from .config import ATTACKS, ConfigError, check_choice, check_float, check_int  # noqa: F401
from .models import exact_convolutions, to_unit

DEFAULT_EPS = 1 / 255
DEFAULT_STEPS = 15


def _validate(eps: float, step_size: float | None, steps: int, attack: str) -> float:
    check_float("eps", eps, low=0, high=1)
    check_int("steps", steps, minimum=1)
    check_choice("attack", attack, ATTACKS)
    if step_size is None:
        return eps / 4
    return check_float("step_size", step_size, low=0, low_open=True, high=1)


class EarlyExitPGD:
    """torchattacks' L-infinity PGD with a random start, step for step (the same start drawn
    the same way, the same update and projection), except that an image is counted as broken
    at the first iterate that fools it and is no longer attacked: that iterate is returned for
    it (the convention AutoAttack's APGD uses). torchattacks has no early exit.

    An image that survives here followed the very trajectory it follows in torchattacks' PGD
    and survived every iterate of it, the last included: robust accuracy is never higher than
    the final-iterate attack's (up to the rounding of smaller batches), and it is lower only
    where PGD fooled an image and then lost it again. ``work`` counts the image-steps computed
    (forward and backward passes of one image), for the benchmarks."""

    def __init__(self, model: nn.Module, eps: float, alpha: float, steps: int):
        self.model, self.eps, self.alpha, self.steps = model, eps, alpha, steps
        self.work = 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach()
        adv = images + torch.empty_like(images).uniform_(-self.eps, self.eps)
        adv = torch.clamp(adv, min=0, max=1).detach()
        active = torch.arange(len(images), device=images.device)
        for _ in range(self.steps):
            if not len(active):
                break
            x = adv[active].clone().requires_grad_(True)
            logits = self.model(x)
            fooled = logits.argmax(1) != labels[active]
            cost = nn.functional.cross_entropy(logits, labels[active])
            grad, = torch.autograd.grad(cost, x)
            self.work += len(active)
            keep = ~fooled  # a fooled image keeps the iterate that fooled it
            step = x.detach() + self.alpha * grad.sign()
            delta = torch.clamp(step - images[active], min=-self.eps, max=self.eps)
            moved = torch.clamp(images[active] + delta, min=0, max=1)
            adv[active[keep]] = moved[keep]
            active = active[keep]
        return adv.detach()


def _make(model: nn.Module, attack: str, eps: float, step_size: float, steps: int,
          num_classes: int | None, seed: int):
    if attack == "pgd_early":
        return EarlyExitPGD(model, eps, step_size, steps)
    if attack == "pgd":
        return torchattacks.PGD(model, eps=eps, alpha=step_size, steps=steps, random_start=True)
    if attack == "apgd":
        return torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, loss="ce",
                                 n_restarts=1, seed=seed)
    if num_classes is None:
        raise ConfigError("num_classes", None, "the number of classes", "AutoAttack needs")
    return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                   n_classes=num_classes, seed=seed)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float = DEFAULT_EPS,
        step_size: float | None = None, steps: int = DEFAULT_STEPS, attack: str = "pgd",
        num_classes: int | None = None, seed: int = 0) -> torch.Tensor:
    """Adversarial versions of ``images`` (float, [0, 1]) within ``eps`` in L-infinity."""
    step_size = _validate(eps, step_size, steps, attack)
    if eps == 0:
        return images.clone()
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []), \
                exact_convolutions():
            torch.manual_seed(seed)  # the same random start at every evaluation point
            adv = _make(model, attack, eps, step_size, steps, num_classes, seed)(images, labels)
    finally:
        model.train(was_training)
    return adv.detach()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels, on ``images``' device; ``images`` may be uint8 [0, 255] or float [0, 1].

    uint8 images are moved to the model's device before they are converted (4x less traffic).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = to_unit(images[i:i + batch_size].to(device, non_blocking=True))
        out.append(model(x).argmax(1).to(images.device))
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=images.device)


def robust_mask(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                eps: float = DEFAULT_EPS, step_size: float | None = None,
                steps: int = DEFAULT_STEPS, attack: str = "pgd", batch_size: int = 256,
                candidates: torch.Tensor | None = None, num_classes: int | None = None,
                seed: int = 0) -> torch.Tensor:
    """Boolean mask of the images still classified correctly under the attack.

    Only ``candidates`` (default: the clean-correct images) are attacked.
    """
    _validate(eps, step_size, steps, attack)
    device = next(model.parameters()).device
    if candidates is None:
        candidates = predict(model, images) == labels
    robust = candidates.clone()
    index = candidates.nonzero().flatten()
    if eps == 0 or len(index) == 0:
        return robust
    for i in range(0, len(index), batch_size):
        idx = index[i:i + batch_size]
        x = to_unit(images[idx].to(device))
        y = labels[idx].to(device)
        adv = pgd(model, x, y, eps, step_size, steps, attack, num_classes, seed + i)
        robust[idx] = (predict(model, adv) == y).to(robust.device)
    return robust


def robust_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    eps: float = DEFAULT_EPS, step_size: float | None = None,
                    steps: int = DEFAULT_STEPS, attack: str = "pgd", batch_size: int = 256,
                    num_classes: int | None = None, seed: int = 0) -> float:
    """Share of ``images`` classified correctly under an L-infinity attack of budget ``eps``."""
    mask = robust_mask(model, images, labels, eps, step_size, steps, attack, batch_size,
                       num_classes=num_classes, seed=seed)
    return mask.float().mean().item()


def eps_masks(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              eps: Iterable[float], step_size_ratio: float = 0.25,
              steps: int = DEFAULT_STEPS, attack: str = "pgd", batch_size: int = 256,
              num_classes: int | None = None, seed: int = 0,
              clean_correct: torch.Tensor | None = None) -> dict[float, torch.Tensor]:
    """Per-image robustness at several budgets in one call (step size ``ratio * eps`` each):
    a boolean mask per budget, True where the image is still classified correctly.

    Budgets are attacked in increasing order, and each attacks only the images that survived
    the smaller one: an image fooled within a small ball is fooled within any larger ball.
    """
    budgets: Sequence[float] = sorted(set(float(e) for e in eps))
    check_float("step_size_ratio", step_size_ratio, low=0, low_open=True)
    survivors = clean_correct if clean_correct is not None else predict(model, images) == labels
    out = {}
    for e in budgets:
        survivors = robust_mask(model, images, labels, e, step_size_ratio * e if e else None,
                                steps, attack, batch_size, candidates=survivors,
                                num_classes=num_classes, seed=seed)
        out[e] = survivors
    return out


def eps_sweep(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              eps: Iterable[float], **kwargs) -> dict[float, float]:
    """Robust accuracy at several budgets (:func:`eps_masks`, averaged)."""
    return {e: m.float().mean().item()
            for e, m in eps_masks(model, images, labels, eps, **kwargs).items()}
