"""Calibrating the benchmark's ladder of tasks on the validation split (issue 33).

How far a task is from an upstream model is read as the accuracy of a linear read-out of that
model's frozen features, on the task's *validation* split: the same split a study's runs hold
out (the last ``val_fraction`` of the training images), never the test set. Here the read-out
is fitted on cached features (full batch, a few seconds per task), so that every candidate
task can be placed on the ladder before any study run is computed; the study's own
linear-probe runs measure the same thing by fine-tuning, and the book reads theirs.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import data, models
from .config import LADDER_RUN, parse_budget, resolve_weights
from .pareto import wilson_interval


@torch.no_grad()
def features(model: models.NormalizedModel, images: torch.Tensor, batch_size: int = 512
             ) -> torch.Tensor:
    """The backbone's pre-logit features of ``images`` (uint8 or [0, 1])."""
    model.eval()
    backbone = model.timm_model
    out = []
    for i in range(0, len(images), batch_size):
        x = (models.to_unit(images[i:i + batch_size]).float() - model.mean) / model.std
        out.append(backbone.forward_head(backbone.forward_features(x), pre_logits=True))
    return torch.cat(out)


def fit_linear(train_x: torch.Tensor, train_y: torch.Tensor, classes: int, epochs: int = 300,
               lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> torch.nn.Linear:
    """A linear classifier on fixed features (standardized), full batch, AdamW."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    head = torch.nn.Linear(train_x.shape[1], classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    x = (train_x - mean) / std
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(head(x), train_y).backward()
        opt.step()
    with torch.no_grad():  # fold the standardization into the layer
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head


def probe_accuracy(task: str, weights: str | Path | None, train_size: int = 2000,
                   val_fraction: float = 0.1, data_seed: int = 0, seed: int = 0) -> dict:
    """The linear read-out's accuracy on the task's validation split, with its 95% Wilson
    interval: ``{"task", "val_acc", "low", "high", "val_images"}``."""
    info = data.info(task)
    loaded = data.load_task(task, train_size, 1, data_seed, image_size=info.image_size)
    loaded = data.hold_out(loaded, int(round(len(loaded.train) * val_fraction)))
    model = models.build(models.EMBEDDED_MODEL, info.classes,
                         weights=resolve_weights(str(weights)) if weights else None)
    head = fit_linear(features(model, loaded.train.images), loaded.train.labels, info.classes,
                      seed=seed)
    val = loaded.val
    with torch.no_grad():
        acc = (head(features(model, val.images)).argmax(1) == val.labels).float().mean().item()
    low, high = wilson_interval(acc, len(val))
    return {"task": task, "val_acc": acc, "low": float(low), "high": float(high),
            "val_images": len(val)}


#: Calibration runs draw their data from this seed: other training, validation and evaluation
#: images than a study's (data_seed 0), so that no choice of task, budget or length looks at
#: the images a study's verdicts are read from.
CALIBRATION_DATA_SEED = 1
#: Where the committed calibration lives (a store of runs, and the probes' table).
CALIBRATION_STORE = "calibration"
PROBE_TABLE = "probe.csv"


def finetune_configs(tasks: list[str], weights: str, strategy: str = "full", lr: float = 1e-3,
                     train_size: int = LADDER_RUN["train_size"],
                     steps: int = LADDER_RUN["steps"],
                     eps: tuple = (1 / 255, 2 / 255, 4 / 255), test_size: int = 512,
                     schedule: str = "log:6", val_fraction: float = LADDER_RUN["val_fraction"],
                     preset: str = "study") -> list:
    """The fine-tuning runs that check a task is learnable and where its robust accuracy lies:
    the preset's recipe at ``weights``, on the calibration data (:data:`CALIBRATION_DATA_SEED`),
    attacked at every budget of ``eps`` (early-exit PGD)."""
    from . import sweep

    return sweep.expand(tasks, [strategy], [0], preset=preset, weights=weights, lr=lr,
                        train_size=train_size, steps=steps, eps=tuple(eps), test_size=test_size,
                        schedule=schedule, val_fraction=val_fraction, attack="pgd_early",
                        data_seed=CALIBRATION_DATA_SEED)


def finetune_summary(frame) -> "pd.DataFrame":
    """Per calibration run (rows of ``store.load``): clean accuracy at the end, and per budget
    the robust accuracy at its peak (with the step) and at the end, all on the calibration
    images."""
    import pandas as pd

    from . import metrics

    rows = []
    for run_id, run in frame.groupby("run_id", sort=False):
        run = run.sort_values("step")
        last = run.iloc[-1]
        row = {"upstream": last.weights, "task": last.task, "strategy": last.strategy,
               "lr": last.lr,
               "train_size": last.train_size, "steps": int(last.step),
               "clean_end": last[metrics.TEST_ACC], "train_end": last[metrics.TRAIN_ACC]}
        for column in metrics.robust_columns(run):
            label = metrics.qualifier(column)
            peak = run[column].idxmax()
            row[f"robust_peak@{label}"] = run.loc[peak, column]
            row[f"peak_step@{label}"] = int(run.loc[peak, "step"])
            row[f"robust_end@{label}"] = last[column]
        rows.append(row)
    return pd.DataFrame(rows)


#: The ladder's bars (issue 33), each checked on the calibration page.
LADDER_BARS = dict(min_tasks=5, nearest_at_least=0.90, farthest_at_most=0.45, min_gap=0.08,
                   learnable=0.80, robust_low=0.15, robust_high=0.85)


def peak_budgets(summary) -> list[str]:
    """The budgets of a :func:`finetune_summary` by label ("2/255"), smallest first."""
    from .metrics import qualifier

    return sorted((qualifier(c) for c in summary.columns if c.startswith("robust_peak@")),
                  key=parse_budget)


def headline_budgets(finetune) -> "pd.Series":
    """Each task's headline budget, chosen on the calibration runs (:func:`finetune_summary`
    rows): the largest budget measured at which the robust peak is still at least
    ``LADDER_BARS["robust_low"]``, the strongest attack that leaves something to measure (the
    smallest budget when none does). A Series of budget labels ("2/255") by task."""
    import pandas as pd

    labels = peak_budgets(finetune)
    chosen = {}
    for row in finetune.drop_duplicates("task", keep="last").to_dict("records"):
        informative = [label for label in labels
                       if row[f"robust_peak@{label}"] >= LADDER_BARS["robust_low"]]
        chosen[row["task"]] = informative[-1] if informative else labels[0]
    return pd.Series(chosen, name="headline budget", dtype=object)


def ladder_table(probe, tasks: list[str], upstream: str = "converged", finetune=None,
                 recipe: dict | None = None):
    """The ladder as the calibration measured it, near to far: each task's linear-probe
    validation accuracy with its interval and its gap to the nearer neighbour; with
    ``finetune`` (:func:`finetune_summary` rows at ``upstream``), the fine-tuned clean accuracy
    at the end, the task's :func:`headline_budgets` and its robust peak there, read from the
    checks made with the ladder's ``recipe`` (default :data:`rtlib.config.LADDER_RUN`'s
    training images and steps; checks of other recipes are left out)."""
    rows = probe[(probe.upstream == upstream) & probe.task.isin(tasks)]
    missing = sorted(set(tasks) - set(rows.task))
    if missing:
        raise ValueError(f"no probe of {', '.join(missing)} from {upstream}")
    table = (rows.drop_duplicates("task", keep="last").set_index("task")
             .loc[:, ["val_acc", "low", "high", "val_images"]]
             .sort_values("val_acc", ascending=False))
    table["gap"] = -table.val_acc.diff()
    if finetune is not None:
        tuned = finetune[finetune.upstream == upstream] if "upstream" in finetune else finetune
        for key, value in (recipe or {k: LADDER_RUN[k] for k in ("train_size", "steps")}).items():
            if key in tuned:
                tuned = tuned[tuned[key] == value]
        tuned = tuned.drop_duplicates("task", keep="last").set_index("task")
        table["clean"] = tuned.clean_end.reindex(table.index)
        budgets = headline_budgets(tuned.reset_index()).reindex(table.index)
        table["headline budget"] = budgets
        table["robust peak"] = [tuned.loc[t, f"robust_peak@{b}"] if isinstance(b, str) else None
                                for t, b in budgets.items()]
    return table


def ladder_bars(table) -> "pd.DataFrame":
    """Each bar of :data:`LADDER_BARS`: what it asks, what the table measures, met or not."""
    import pandas as pd

    b = LADDER_BARS
    gaps = table.gap.dropna()
    rows = [("tasks", f">= {b['min_tasks']}", len(table), len(table) >= b["min_tasks"]),
            ("nearest probe", f">= {b['nearest_at_least']}", table.val_acc.max(),
             table.val_acc.max() >= b["nearest_at_least"]),
            ("farthest probe", f"<= {b['farthest_at_most']}", table.val_acc.min(),
             table.val_acc.min() <= b["farthest_at_most"]),
            ("smallest gap between neighbours", f">= {b['min_gap']}", gaps.min(),
             bool((gaps.round(6) >= b["min_gap"]).all()))]

    def unmeasured(values) -> str:  # a task not checked yet leaves its bar unmet
        missing = int(values.isna().sum())
        return f" ({missing} of {len(values)} tasks not measured yet)" if missing else ""

    if "clean" in table:
        clean = table.clean.astype(float)
        rows.append(("lowest fine-tuned clean accuracy", f">= {b['learnable']}",
                     f"{clean.min():.3f}{unmeasured(clean)}",
                     bool((clean >= b["learnable"]).all())))
    if "robust peak" in table:
        robust = table["robust peak"].astype(float)
        rows.append(("robust peak at each headline budget",
                     f"in [{b['robust_low']}, {b['robust_high']}]",
                     f"{robust.min():.3f} to {robust.max():.3f}{unmeasured(robust)}",
                     bool(robust.between(b["robust_low"], b["robust_high"]).all())))
    rows = [(bar, asks, measured if isinstance(measured, str) else f"{measured:.3g}", met)
            for bar, asks, measured, met in rows]
    return pd.DataFrame(rows, columns=["bar", "asks", "measured", "met"]).set_index("bar")
