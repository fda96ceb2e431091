"""The calibration page (issue 33): the upstream models, each candidate task's distance from
them, the ladder chosen from those distances with its bars, and the fine-tuning checks, all read
from the committed calibration store (``calibration/``, written by bench/calibrate_ladder.py).

Every number here is measured on data no study reads a verdict from: the probes on validation
splits, the fine-tuning checks on the calibration data (rtlib.calibrate.CALIBRATION_DATA_SEED).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import calibrate, pretrain, store
from ..config import UPSTREAM_CHECKPOINTS, checkout_folder, checkpoint_file, eps_label

#: How the upstream models are attacked on this page: the runs' attack, on images of the
#: converged model's pre-training task (print and clutter, which every model saw).
UPSTREAM_ATTACK = dict(images=512, eps=2 / 255, steps=10, task="upstream2")


def store_dir(results_dir: str | Path | None = None) -> Path:
    """The calibration store: ``results_dir``, or the checkout's ``calibration/``."""
    return Path(results_dir or checkout_folder(calibrate.CALIBRATION_STORE))


def probes(results_dir: str | Path | None = None) -> pd.DataFrame | None:
    """Every probe measured (bench/calibrate_ladder.py probe), or None before any."""
    path = store_dir(results_dir) / calibrate.PROBE_TABLE
    return pd.read_csv(path) if path.is_file() else None


def probe_matrix(probe: pd.DataFrame, order_by: str = "converged") -> pd.DataFrame:
    """Linear-probe validation accuracy, a row per task and a column per upstream model, as
    "acc [low, high]", near to far by ``order_by``'s accuracy."""
    probe = probe.drop_duplicates(["upstream", "task"], keep="last")
    text = probe.assign(shown=[f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in
                               zip(probe.val_acc, probe.low, probe.high)])
    table = text.pivot(index="task", columns="upstream", values="shown")
    value = probe.pivot(index="task", columns="upstream", values="val_acc")
    key = order_by if order_by in value else value.columns[0]
    table = table.loc[value[key].sort_values(ascending=False).index]
    table.columns.name = "linear-probe validation accuracy from"
    return table


def finetune(results_dir: str | Path | None = None) -> pd.DataFrame | None:
    """The fine-tuning checks (:func:`rtlib.calibrate.finetune_summary`), or None before any."""
    folder = store_dir(results_dir)
    if not store.runs_dir(folder).is_dir():
        return None
    return calibrate.finetune_summary(store.load(folder))


def _made() -> dict[str, tuple[Path, dict]]:
    """The committed upstream checkpoints that exist, by name: their file and metadata."""
    return {name: (path, pretrain.checkpoint_metadata(path)) for name in UPSTREAM_CHECKPOINTS
            if (path := checkpoint_file(name)).is_file()}


def upstream_models(results_dir: str | Path | None = None) -> pd.DataFrame:
    """Each committed upstream checkpoint: what it was pre-trained on and for how long, its
    upstream test accuracy as recorded, and its clean and robust accuracy under
    :data:`UPSTREAM_ATTACK` (kept in the calibration store, so a book build computes nothing
    once it is committed). Checkpoints not made yet are left out."""
    rows = []
    for name, (path, meta) in _made().items():
        curve = pretrain.learning_curve(meta)
        scores = pretrain.upstream_robustness(path, store_dir(results_dir), **UPSTREAM_ATTACK)
        rows.append({"upstream model": name,
                     "pre-trained on": meta.get("task", "").split("/", 1)[-1],
                     "steps": int(curve.step.max()) if len(curve) else None,
                     "recorded accuracy": meta.get("upstream_test_accuracy"),
                     "last fifth adds": pretrain.last_fifth_gain(meta),
                     "clean": scores["clean"], "robust": scores["robust"]})
    table = pd.DataFrame(rows).set_index("upstream model")
    a = UPSTREAM_ATTACK
    table.attrs["attack"] = (f"PGD-{a['steps']} at {eps_label(a['eps'])} on {a['images']:,} "
                             f"{a['task']} test images")
    return table


def curves() -> pd.DataFrame:
    """The learning curves of every committed checkpoint, one frame (``model`` column)."""
    return pd.concat([pretrain.learning_curve(meta).assign(model=name)
                      for name, (_, meta) in _made().items()], ignore_index=True)


def ood_domains(tasks: list[str], upstream: str = "converged") -> pd.DataFrame:
    """Per task: the domain it trains on, the domains its OOD accuracy is measured on, and
    which of those the upstream model never saw in pre-training (from its metadata)."""
    from ..data import glyphs

    seen = set(pretrain.upstream_domains(upstream) or ())
    rows = []
    for task in tasks:
        own = glyphs.specs()[task].domains[0]
        ood = [d for d in glyphs.DOMAINS if d != own]
        rows.append({"task": task, "trains on": own, "OOD domains": ", ".join(ood),
                     "unseen upstream": ", ".join(d for d in ood if d not in seen)})
    return pd.DataFrame(rows).set_index("task")


def finetune_view(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The fine-tuning checks as a reader takes them in: a row per check, keyed by the task and
    by whatever else varies between checks (upstream model, strategy, rate, training images,
    steps), clean and training accuracy at the end, and per budget the robust peak with its step
    and the value at the end; with what the checks share, said once."""
    recipe = {"strategy": "{}", "lr": "lr {:g}", "train_size": "{:,} images",
              "steps": "{:,} steps"}
    varying = [c for c in ("upstream", *recipe) if summary[c].nunique() > 1]
    said = ", ".join(fmt.format(summary[c].iloc[0]) for c, fmt in recipe.items()
                     if c not in varying).replace("full, lr", "full at lr")
    keys = [c for c in varying if c == "upstream"] + ["task"] + [c for c in varying
                                                                 if c != "upstream"]
    view = summary.set_index(keys)[["clean_end", "train_end"]].rename(
        columns={"clean_end": "clean", "train_end": "training"})
    readable = {"train_size": "training images", "lr": "learning rate"}
    view.index.names = [readable.get(n, n) for n in view.index.names]
    for label in calibrate.peak_budgets(summary):
        view[f"robust {label}: peak (step) → end"] = [
            f"{p:.3f} ({s:,}) → {e:.3f}" for p, s, e in
            zip(summary[f"robust_peak@{label}"], summary[f"peak_step@{label}"],
                summary[f"robust_end@{label}"])]
    return view.sort_index(level="task", sort_remaining=False).round(3), said
