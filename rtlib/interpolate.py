"""Weight interpolation (as in WiSE-FT): models on the straight line from the linear-probe
solution to a fine-tuned model, each scored like an evaluation point of a run.

At mixing coefficient ``alpha`` the network computes the pre-trained backbone plus ``alpha``
times the *learned update*, scaled linearly for every strategy (the strategy's ``path_form``):

- ``"weights"`` (full fine-tuning, BitFit, LoRA, DoRA, (IA)^3): the update merged into the
  backbone's own weights, ``W0 + alpha * (W1 - W0)``. For full fine-tuning and BitFit that is
  the parameters' straight line; for LoRA the merged update ``alpha * B1 A1`` (scaling both
  LoRA factors instead would make it quadratic in alpha); for (IA)^3 the scales ``1 + alpha *
  (l - 1)``.
- ``"branch"`` (Adapter, Compacter): the trained modules, their residual branch's output
  times ``alpha`` (``h + alpha * f(h)``).

The classification head moves from the linear probe's head to the fine-tuned one, ``(1 -
alpha) * probe + alpha * final``. So ``alpha = 1`` is the fine-tuned model and ``alpha = 0``
the linear probe, for every strategy.

That is the ``"update"`` form of a path (:data:`FORMS`). The ``"parameters"`` form is the
straight line in the strategy's trainable parameters, ``init + alpha * (final - init)``: the
same for full fine-tuning, BitFit and (IA)^3, but not linear in the update for LoRA (``alpha
B1 (A0 + alpha (A1 - A0))``, quadratic), DoRA, Adapter and Compacter (whose alpha 0 keeps
their own random start). It is kept, by name, for the first study's paths first computed with it
(issue 30: committed beside their update-form recomputation, for comparison).

A path's rows go to the store (``interpolation/``), keyed by the two runs, the coefficients and
(for strategies whose update is not linear in their parameters) the form: computed once, read
by the book. Its ends are the runs' own last evaluation points where the store holds them (the
same model, so the same numbers, already paid for; the ``computed`` column says which points
were evaluated for the path). The runs' final weights are read from the store (``weights/``),
or re-trained when they were not kept (same numbers on the same machine: evaluation does not
touch the training's random state).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from . import metrics, models, preflight, store, strategies, train
from .config import PATH_FORMS, ConfigError, RunConfig, check_choice, check_float, check_list
from .evaluate import evaluate_point
from .strategies.adapter import Bottleneck

#: Mixing coefficients of a path by default (0: the linear probe, 1: the fine-tuned model).
ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
ALPHA = "alpha"
#: How a path scales the learned update: ``"update"`` (linearly, every strategy: the default)
#: or ``"parameters"`` (the trainable parameters' straight line; see the module's doc).
FORMS = PATH_FORMS


def check_alphas(alphas: Sequence[float]) -> tuple[float, ...]:
    alphas = check_list("alphas", alphas)
    for a in alphas:
        check_float("alphas", a, low=0, high=1)
    alphas = tuple(sorted({float(a) for a in alphas}))
    if len(alphas) < 2:
        raise ConfigError("alphas", list(alphas), "two or more coefficients in [0, 1]",
                          "too few:")
    return alphas


def path_key(config: RunConfig, probe: RunConfig, alphas: Sequence[float],
             form: str = "update") -> str:
    """The identity of a path: both runs, the coefficients and, where the ``"update"`` form
    differs from the parameters' straight line (a strategy whose update is not linear in its
    parameters), how it scales the update; the ``"parameters"`` form keeps the keys its paths
    had before the forms were told apart."""
    check_choice("form", form, FORMS)
    parts = [config.run_id(), probe.run_id(), list(alphas)]
    strategy = strategies.get(config.strategy)
    if form == "update" and not strategy.update_is_linear:
        parts.append(strategy.path_form)
    text = json.dumps(parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def final_weights(config: RunConfig, results_dir: str | Path | None,
                  device: torch.device, progress: bool = False) -> dict[str, torch.Tensor]:
    """The run's trainable parameters at its end: kept in the store, or re-trained (and then
    kept, so that the linear probe every path of a task and seed starts from trains once)."""
    kept = store.read_weights(results_dir, config) if results_dir is not None else None
    if kept is not None:
        return kept
    model = train.retrain(config, device, progress)
    weights = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    if results_dir is not None:
        store.write_weights(results_dir, config, weights)
    return weights


def along(model: torch.nn.Module, init: dict[str, torch.Tensor],
          final: dict[str, torch.Tensor], probe_head: dict[str, torch.Tensor], form: str
          ) -> Callable[[float], torch.nn.Module]:
    """``at(alpha)``: the path's model at ``alpha`` (see the module's doc for ``form``), from
    ``model`` prepared with its strategy, its trainable parameters at the start (``init``)
    and the end (``final``), and the linear probe's head (``probe_head``, keyed ``head.weight``
    and ``head.bias``). ``at`` reuses one model: evaluate it before the next call."""
    params = dict(model.named_parameters())
    heads = set(models.classifier_names(model))

    if form == "parameters":
        def straight(alpha: float) -> torch.nn.Module:
            with torch.no_grad():
                for name, start in init.items():
                    end = final[name].to(start.device, start.dtype)
                    value = ((1 - alpha) * probe_head[_short(name)].to(start.device, start.dtype)
                             + alpha * end) if name in heads else start + alpha * (end - start)
                    params[name].copy_(value)
            return model
        return straight

    def load(state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    if form == "branch":
        load(final)
        branches = [m for m in model.modules() if isinstance(m, Bottleneck)]

        def at(alpha: float) -> torch.nn.Module:
            load({n: (1 - alpha) * probe_head[_short(n)].to(final[n].device) + alpha * final[n]
                  for n in heads})
            for m in branches:
                m.scale = float(alpha)
            return model
        return at

    load(init)
    start = strategies.merged_copy(model)
    load(final)
    target = strategies.merged_copy(model)
    w0 = {n: p.detach().clone() for n, p in start.named_parameters()}
    w1 = {n: p.detach().clone() for n, p in target.named_parameters()}
    target_heads = set(models.classifier_names(target))
    target_params = dict(target.named_parameters())

    def at(alpha: float) -> torch.nn.Module:
        with torch.no_grad():
            for name, p in target_params.items():
                if name in target_heads:
                    value = ((1 - alpha) * probe_head[_short(name)].to(p.device, p.dtype)
                             + alpha * w1[name])
                else:
                    value = w0[name] + alpha * (w1[name] - w0[name])
                p.copy_(value)
        return target
    return at


def _short(name: str) -> str:
    """``backbone.base_model.model.head.weight`` -> ``head.weight`` (peft renames the head)."""
    return ".".join(name.rsplit(".", 2)[-2:])


def _last_point(config: RunConfig, results_dir: str | Path | None) -> dict | None:
    """The run's last evaluation point as stored (its step and what was measured), or None
    when the store does not hold the run."""
    found = store.complete_run(results_dir, config) if results_dir is not None else None
    if found is None:
        return None
    _, table = store.read_run(found)
    last = table.to_pandas().sort_values(metrics.STEP).iloc[-1]
    return {metrics.STEP: int(last[metrics.STEP]),
            **{k: v for k, v in last.items() if k not in metrics.TRAINING_COLUMNS}}


def _evaluate(config: RunConfig, probe: RunConfig, alphas: Sequence[float],
              results_dir: str | Path | None, device: str | None, progress: bool,
              form: str = "update") -> dict[float, dict]:
    """Evaluate the path's points at ``alphas`` (the runs' final weights from the store, or
    re-trained)."""
    device = train.resolve_device(device)
    points = {}
    with models.exact_convolutions():
        task, model = train.prepare(config)
        init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        final = final_weights(config, results_dir, device, progress)
        probe_head = {_short(n): t for n, t in final_weights(probe, results_dir,
                                                              device).items()}
        precision = train.resolve_precision(config.precision, device, model)
        at = along(model.to(device), init, final, probe_head,
                   strategies.get(config.strategy).path_form if form == "update" else form)
        task = train.on_device(task, device)
        train_eval = task.train.subset(config.train_eval_size)
        for alpha in alphas:
            point = at(alpha).to(device).set_precision(precision)
            points[alpha] = {metrics.STEP: config.total_steps(len(task.train)),
                             **evaluate_point(point, task, config, train_eval)}
    return points


def run_ends(strategy: str, form: str = "update") -> tuple[float, ...]:
    """The coefficients whose points are runs' own last points, not evaluated for a path:
    1 (the fine-tuned model) and 0 (the linear probe: the update form removes the whole update
    there; the parameters' form only for a strategy that starts as the identity)."""
    identity = form == "update" or strategies.get(strategy).starts_as_identity
    return (0.0, 1.0) if identity else (1.0,)


def path(config: RunConfig, probe: RunConfig, alphas: Sequence[float] = ALPHAS,
         results_dir: str | Path | None = None, device: str | None = "auto",
         progress: bool = False, form: str = "update") -> pd.DataFrame:
    """The rows of the path from ``probe`` (a linear-probe run of the same task, data and seed)
    to ``config``'s fine-tuned model at each coefficient, in ``form`` (:data:`FORMS`); read
    from ``results_dir`` when it holds them, else computed (and stored there)."""
    alphas = check_alphas(alphas)
    preflight.check(config)
    preflight.check(probe)
    if probe.strategy != "linear_probe":
        raise ConfigError("probe", probe.strategy, ["linear_probe"], "not a linear probe:")
    if (probe.task, probe.seed, probe.data_seed) != (config.task, config.seed, config.data_seed):
        raise ConfigError("probe", probe.run_id(), "a linear probe of the same task, seed and "
                          "data", "another run:")
    key = path_key(config, probe, alphas, form)
    if results_dir is not None:
        done = store.read_table(store.interpolation_path(results_dir, key))
        if done is not None:
            return done
    ends = {1.0: config, 0.0: probe}  # the runs the store may hold, read only when asked for
    known = {a: _last_point(ends[a], results_dir) for a in alphas
             if a in run_ends(config.strategy, form)}
    points = {a: point for a, point in known.items() if point is not None}
    missing = [a for a in alphas if a not in points]
    if missing:
        points.update(_evaluate(config, probe, missing, results_dir, device, progress, form))
    # every row is at the fine-tuned run's last step (the probe's end included)
    step = (known.get(1.0) or points[missing[0]])[metrics.STEP]
    rows = [{ALPHA: alpha, "run_id": config.run_id(), "probe_run_id": probe.run_id(),
             "task": config.task, "strategy": config.strategy, "seed": config.seed,
             **points[alpha], metrics.STEP: step, "computed": alpha in missing}
            for alpha in alphas]
    frame = pd.DataFrame(rows)
    if results_dir is not None:
        store.write_table(store.interpolation_path(results_dir, key), frame)
    return frame


@dataclass(frozen=True)
class PathJob:
    """One path as a unit of work for :func:`rtlib.sweep.run` (beside the runs): it names
    itself like a run (task, strategy, seed, an id), knows whether the store holds it, and
    computes it."""

    config: RunConfig
    probe: RunConfig
    alphas: tuple[float, ...] = ALPHAS
    form: str = "update"

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def strategy(self) -> str:
        return self.config.strategy

    @property
    def seed(self) -> int:
        return self.config.seed

    def run_id(self) -> str:
        return path_key(self.config, self.probe, check_alphas(self.alphas), self.form)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.config.to_dict(), "probe": self.probe.to_dict(),
                "alphas": list(self.alphas), "form": self.form}

    def complete(self, results_dir: str | Path) -> bool:
        return store.read_table(store.interpolation_path(results_dir, self.run_id())) \
            is not None

    def execute(self, results_dir: str | Path, device: str | None = "auto",
                progress: bool = False) -> pd.DataFrame:
        return path(self.config, self.probe, self.alphas, results_dir, device, progress,
                    self.form)


def jobs(configs: Sequence[RunConfig], alphas: Sequence[float] = ALPHAS,
         form: str = "update") -> list[PathJob]:
    """A path (in ``form``) for every fine-tuned run of ``configs`` to the linear probe of its
    task, seed and data among ``configs`` (runs without one get none)."""
    alphas = check_alphas(alphas)
    probes = {(c.task, c.seed, c.data_seed): c for c in configs
              if c.strategy == "linear_probe"}
    return [PathJob(c, probes[(c.task, c.seed, c.data_seed)], alphas, form) for c in configs
            if c.strategy != "linear_probe" and (c.task, c.seed, c.data_seed) in probes]


def load(results_dir: str | Path, path_jobs: Sequence[PathJob]) -> pd.DataFrame:
    """The stored rows of ``path_jobs`` (the ones not computed yet are absent), with the runs'
    first budget under one name (:func:`rtlib.store.with_first_budget`) and ``eps``."""
    from .config import eps_label

    frames = []
    for job in path_jobs:
        frame = store.read_table(store.interpolation_path(results_dir, job.run_id()))
        if frame is not None:
            frame["eps"] = eps_label(job.config.eps[0])
            frames.append(store.with_first_budget(frame, job.config.eps[0]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
