"""The book's estimands, one home each, every one with its value *and* a 95% interval.

What a verdict reads (:mod:`rtlib.report.verdicts`) is computed here and nowhere else: a run's
last point, the fall of robust accuracy from its peak (and the clean accuracy gained meanwhile,
and their ratio, the frontier's steepness), AUPF and relative AUPF, the best strategy of a
task (ties included), the tasks' distance from upstream, and how OOD accuracy follows
in-domain accuracy.

**What an interval covers.** The runs of a task are scored on the same test images, and each
(task, strategy) has a few seeds (independent trainings). An interval resamples both at once
(a two-way bootstrap): each replicate draws the test images with replacement, *the same draw
for every run of the task* (so a difference between strategies or steps keeps its pairing),
and, for each strategy, its seeds with replacement. A run's accuracy at a point is recomputed
from the per-image masks the store keeps (:data:`rtlib.metrics.TEST_MASK`); where a column has
no mask (validation, OOD), it is redrawn from its binomial distribution. The interval is the
2.5 and 97.5% quantiles of the replicates (percentile bootstrap). With three seeds the seed
part is coarse: say so where a verdict hinges on it.

**Choices on validation.** A run's robust peak is chosen on the validation split (robust
accuracy there at the run's first budget; ties: the latest point) and measured on the test
images, so that the noise of the test curve cannot select its own maximum (that bias made a
flat curve "fall" up to 6.5% of the time). Runs without a validation curve choose on the test
curve, and the tables say so (``peak_on``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .. import metrics, strategies

CONFIDENCE = 0.95
N_BOOT = 1000
#: The smallest fall of robust accuracy (peak to end) that counts as one, however significant:
#: 2 points, the precision the study was sized for (the standard error of a run's fall at most
#: about 2 points at 768 images): a smaller fall is within what one evaluation can resolve, and
#: would not change what a practitioner does.
MIN_FALL = 0.02
#: OOD accuracy *tracks* in-domain accuracy when the correlation of their changes within runs
#: (after the start, :func:`ood_tracking`) is above this, with its whole interval.
TRACKING_R = 0.5


def interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of bootstrap ``replicates`` (NaNs ignored)."""
    alpha = (1 - confidence) / 2
    values = np.asarray(replicates, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def last_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation point of every run (the one home of "a run's end")."""
    return frame.sort_values(metrics.STEP).groupby("run_id").tail(1)


def budgets(frame: pd.DataFrame) -> dict[str, str]:
    """The robust accuracy column of each attack budget of ``frame`` by its label
    (``{"2/255": "robust_acc@2/255", ...}``), smallest first; a frame with the run's first
    budget only (``robust_acc``) has that one, labelled by its ``eps`` column."""
    columns = metrics.robust_columns(frame)
    if columns:
        return {metrics.qualifier(c): c for c in columns}
    label = str(frame["eps"].iloc[0]) if "eps" in frame and len(frame) else "the budget"
    return {label: metrics.ROBUST}


# -- resampling ------------------------------------------------------------------------------
@dataclass
class Resampler:
    """The bootstrap draws of one study: per task, one draw of its test images for every run;
    per (task, group), draws of its seeds. Column 0 of every replicate array is the estimate
    on the data as measured; columns 1.. are the replicates.

    Every draw comes from a generator of its own, keyed by what it is for (the task, the
    group), not from one stream: the intervals of a quantity are the same whichever chapter
    asks for them and whatever it asked for before."""

    n_boot: int = N_BOOT
    seed: int = 0
    _images: dict = field(default_factory=dict)
    #: Curves recomputed from masks, keyed by the masks themselves (a chapter asks for the
    #: same run's curve for every estimand: the fall, each AUPF reading, steepness).
    _curves: dict = field(default_factory=dict)

    def rng(self, *key) -> np.random.Generator:
        digest = hashlib.sha256(repr((self.seed, *map(str, key))).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def image_weights(self, task: str, n: int) -> np.ndarray:
        """(n, 1 + n_boot) weights of the task's ``n`` test images (each column sums to 1)."""
        key = (task, n)
        if key not in self._images:
            counts = self.rng("images", task, n).multinomial(n, np.full(n, 1 / n),
                                                              size=self.n_boot)
            self._images[key] = np.concatenate([np.ones((1, n)), counts], 0).T / n
        return self._images[key]

    def seed_mean(self, values: np.ndarray, *key) -> np.ndarray:
        """(seeds, 1 + n_boot) per-run values -> (1 + n_boot,): column 0 the mean over the
        seeds, the others over seeds drawn with replacement (the draws keyed by ``key``)."""
        s = values.shape[0]
        draws = self.rng("seeds", *key).integers(0, s, (self.n_boot, s))
        picked = values[:, 1:][draws.T, np.arange(self.n_boot)]
        return np.concatenate([[values[:, 0].mean()], picked.mean(0)])

    def binomial(self, p: np.ndarray, n: int, *key) -> np.ndarray:
        """(points,) accuracies on ``n`` images -> (points, 1 + n_boot) redrawn."""
        p = np.clip(np.asarray(p, dtype=float), 0, 1)
        draws = self.rng("binomial", *key).binomial(
            n, np.repeat(p[:, None], self.n_boot, 1)) / max(n, 1)
        return np.concatenate([p[:, None], draws], 1)


def curve(run: pd.DataFrame, col: str, rs: Resampler) -> np.ndarray:
    """(points, 1 + n_boot): ``col`` of one run (rows sorted by step) under the replicates:
    recomputed from its per-image masks under the task's image draw where it has them,
    else redrawn from the binomial."""
    n = int(run[metrics.TEST_N].iloc[0])
    try:
        mask_col = metrics.mask_of(col)
    except KeyError:
        mask_col = None
    masks = run[mask_col].tolist() if mask_col in run else []
    if masks and all(isinstance(m, str) for m in masks):
        task = str(run["task"].iloc[0])
        key = (task, n, tuple(masks))
        if key not in rs._curves:
            m = np.stack([metrics.unpack(x, n) for x in masks]).astype(np.float64)
            rs._curves[key] = m @ rs.image_weights(task, n)
            rs._curves[key].flags.writeable = False  # shared: a caller must not change it
        return rs._curves[key]
    run_id = run["run_id"].iloc[0] if "run_id" in run else run["seed"].iloc[0]
    return rs.binomial(run[col].to_numpy(), n, run["task"].iloc[0], run_id, col)


#: What makes two runs of one task and strategy different configurations (not seeds of one).
CONFIGURATION = ("hparams", "weights", "lr", "steps", "attack", "domain")


def _one_configuration(frame: pd.DataFrame, by: Sequence[str]) -> None:
    """Refuse to pool runs of different configurations as if they were seeds of one (e.g. three
    LoRA ranks would become one strategy "with 3 seeds"): name the column to group by."""
    from ..config import ConfigError

    keys = [k for k in by if k in frame]
    for col in CONFIGURATION:
        if col in frame and col not in by and keys:
            varies = frame.groupby(keys, dropna=False)[col].nunique(dropna=False)
            if (varies > 1).any():
                where = varies[varies > 1].index[0]
                raise ConfigError("by", list(by), f"keys that include {col!r}",
                                  f"runs of {where} differ in {col}, so grouping")


def _runs(group: pd.DataFrame) -> list[pd.DataFrame]:
    """The runs of a group, each sorted by step, in seed order."""
    key = "run_id" if "run_id" in group else "seed"
    return [g.sort_values(metrics.STEP) for _, g in
            group.sort_values(["seed", metrics.STEP]).groupby(key, sort=False)]


def spearman(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The Spearman correlation of ``x`` (items) with each column of ``values`` (items x
    replicates), as pandas computes it (ties ranked by their average; a column with NaNs on
    its complete pairs only; a constant one gives NaN), all complete columns at once."""
    ranks = pd.DataFrame(values).rank(axis=0).to_numpy()
    rx = pd.Series(x).rank().to_numpy()[:, None]
    dx, dv = rx - rx.mean(), ranks - ranks.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (dx * dv).sum(0) / np.sqrt((dx ** 2).sum() * (dv ** 2).sum(0))
    for b in np.flatnonzero(np.isnan(values).any(0)):
        rho[b] = pd.Series(x).corr(pd.Series(values[:, b]), method="spearman")
    return rho


def _summary(values: np.ndarray) -> dict[str, float]:
    lo, hi = interval(values[1:])
    return {"estimate": float(values[0]), "low": lo, "high": hi}


# -- the robust peak, the fall, the clean gain, steepness ------------------------------------
def peak_index(run: pd.DataFrame, col: str) -> tuple[int, str]:
    """Where a run's robust accuracy peaks, chosen on the validation split (its robust
    accuracy at the run's first budget; ties: the latest point) and ``"validation"``; without
    one, on ``col`` itself and ``"test"``."""
    for choice in metrics.val_robust_columns(run):
        values = run[choice].to_numpy(dtype=float)
        if not np.isnan(values).any():
            return int(len(values) - 1 - np.argmax(values[::-1])), "validation"
    values = run[col].to_numpy(dtype=float)
    return int(len(values) - 1 - np.argmax(values[::-1])), "test"


def falls(frame: pd.DataFrame, col: str = metrics.ROBUST,
          by: Sequence[str] = ("task", "strategy"), rs: Resampler | None = None
          ) -> pd.DataFrame:
    """Per group (``by``; a run with ``("task", "strategy", "seed")``): robust accuracy from
    each run's peak (:func:`peak_index`) to its end, pooled over the group's seeds.

    Columns: the keys, ``seeds``, ``peak_on``, ``peak_step`` (median over seeds), ``peak``
    and ``final`` (seed means of ``col``), ``drop`` with ``drop_low``/``drop_high``,
    ``clean_gain`` (clean accuracy at the end minus at the peak) with its interval,
    ``steepness`` (drop / clean gain, robust accuracy given up per point of clean accuracy
    gained) with its interval and ``steepness_testable`` (the clean gain's interval lies above
    0: otherwise the ratio divides by noise), and ``outcome`` (:func:`fall_outcome`)."""
    _one_configuration(frame, by)
    rs = rs or Resampler()
    rows = []
    for key, group in frame.groupby(list(by), sort=False):
        runs = _runs(group)
        drops, gains, peaks, finals, steps, chosen = [], [], [], [], [], set()
        for run in runs:
            k, on = peak_index(run, col)
            chosen.add(on)
            robust, clean = curve(run, col, rs), curve(run, metrics.TEST_ACC, rs)
            drops.append(robust[k] - robust[-1])
            gains.append(clean[-1] - clean[k])
            peaks.append(run[col].iloc[k])
            finals.append(run[col].iloc[-1])
            steps.append(int(run[metrics.STEP].iloc[k]))
        drop, gain = rs.seed_mean(np.stack(drops), key), rs.seed_mean(np.stack(gains), key)
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.where(gain > 0, drop / gain, np.nan)
        d, g, s = _summary(drop), _summary(gain), _summary(slope)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     "seeds": len(runs), "peak_on": "/".join(sorted(chosen)),
                     "peak_step": int(np.median(steps)), "peak": float(np.mean(peaks)),
                     "final": float(np.mean(finals)),
                     "drop": d["estimate"], "drop_low": d["low"], "drop_high": d["high"],
                     "clean_gain": g["estimate"], "clean_gain_low": g["low"],
                     "clean_gain_high": g["high"],
                     "steepness": s["estimate"] if g["low"] > 0 else float("nan"),
                     "steepness_low": s["low"] if g["low"] > 0 else float("nan"),
                     "steepness_high": s["high"] if g["low"] > 0 else float("nan"),
                     "steepness_testable": bool(g["low"] > 0),
                     "outcome": fall_outcome(d["estimate"], d["low"], d["high"]),
                     "_drop": drop, "_gain": gain})
    return pd.DataFrame(rows)


def fall_outcome(drop: float, low: float, high: float, minimum: float = MIN_FALL) -> str:
    """``"falls"``: the interval lies above 0 and the fall is at least ``minimum``; ``"does
    not fall"``: the interval rules out a fall of ``minimum``; else ``"undecided"``."""
    if low > 0 and drop >= minimum:
        return "falls"
    if high < minimum:
        return "does not fall"
    return "undecided"


# -- AUPF ------------------------------------------------------------------------------------
def staircase_area(clean: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """:func:`rtlib.pareto.aupf` over the last axis of arrays (..., points)."""
    order = np.argsort(clean, axis=-1, kind="stable")
    c = np.take_along_axis(clean, order, -1)
    r = np.take_along_axis(robust, order, -1)
    best = np.flip(np.maximum.accumulate(np.flip(r, -1), -1), -1)
    return (np.diff(c, axis=-1, prepend=0) * best).sum(-1)


def trapezoid_area(clean: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """:func:`rtlib.pareto.aupf_trapezoid` over the last axis of arrays (..., points)."""
    order = np.argsort(clean + robust * 1e-7, axis=-1, kind="stable")  # ties: robust ascending
    c = np.take_along_axis(clean, order, -1)
    r = np.take_along_axis(robust, order, -1)
    later = np.flip(np.maximum.accumulate(np.flip(r, -1), -1), -1)
    later = np.concatenate([later[..., 1:], np.full(r.shape[:-1] + (1,), -np.inf)], -1)
    keep = r > later  # on the frontier: better robust than every point of higher clean
    p = r.shape[-1]
    index = np.where(keep, np.arange(p), p)
    nxt = np.flip(np.minimum.accumulate(np.flip(index, -1), -1), -1)  # this or the next kept
    nxt = np.concatenate([nxt[..., 1:], np.full(r.shape[:-1] + (1,), p)], -1)
    has = keep & (nxt < p)
    j = np.minimum(nxt, p - 1)
    cj, rj = np.take_along_axis(c, j, -1), np.take_along_axis(r, j, -1)
    return np.where(has, (cj - c) * (rj + r) / 2, 0.0).sum(-1)


#: The readings of "area under the Pareto frontier" (:mod:`rtlib.pareto` defines both).
AREAS = {"staircase": staircase_area, "trapezoid": trapezoid_area}


@dataclass
class Aupf:
    """AUPF per (task, strategy) with intervals, and its replicates (for comparisons)."""

    table: pd.DataFrame
    replicates: dict  # {(task, strategy): (1 + n_boot,) array}
    reading: str

    def difference(self, task: str, a: str, b: str) -> dict[str, float]:
        """AUPF of ``a`` minus ``b`` on ``task``, with its interval."""
        return _summary(self.replicates[(task, a)] - self.replicates[(task, b)])

    def best(self, task: str) -> dict:
        """The task's best strategy, decided by intervals: ``best`` (the strategy whose AUPF
        beats every other's with the interval of the difference above 0, else None),
        ``candidates`` (the strategies no other beats that way: the ones tied for the best)
        and ``beaten_by`` ({strategy: the strategies that beat it})."""
        names = strategies.ordered(self.table.loc[self.table.task == task, "strategy"])
        beaten_by = {s: [o for o in names if o != s and self.difference(task, o, s)["low"] > 0]
                     for s in names}
        candidates = [s for s in names if not beaten_by[s]]
        beats_all = [s for s in names
                     if all(self.difference(task, s, o)["low"] > 0 for o in names if o != s)]
        return {"best": beats_all[0] if beats_all else None, "candidates": candidates,
                "beaten_by": beaten_by}


def aupf(frame: pd.DataFrame, robust_col: str = metrics.ROBUST, reading: str = "staircase",
         rs: Resampler | None = None, by: Sequence[str] = ("task", "strategy")) -> Aupf:
    """AUPF (``reading``: a key of :data:`AREAS`) of each group's runs, the mean over seeds,
    with its interval, and ``relative`` (AUPF / the task's mean over strategies - 1) with its
    interval. ``by`` may add keys (e.g. ``hparams``) that keep configurations apart."""
    from ..config import check_choice

    area = AREAS[check_choice("reading", reading, AREAS)]
    _one_configuration(frame, by)
    rs = rs or Resampler()
    reps, rows = {}, []
    for key, group in frame.groupby(list(by), sort=False):
        runs = _runs(group)
        values = np.stack([area(curve(r, metrics.TEST_ACC, rs).T, curve(r, robust_col, rs).T)
                           for r in runs])
        reps[key] = rs.seed_mean(values, key)
        rows.append({**dict(zip(by, key)), "seeds": len(runs), **_summary(reps[key])})
    table = pd.DataFrame(rows).rename(columns={"estimate": "aupf", "low": "aupf_low",
                                               "high": "aupf_high"})
    rel = []
    for key in table[list(by)].itertuples(index=False):
        task_keys = [k for k in reps if k[0] == key[0]]
        mean = np.mean([reps[k] for k in task_keys], 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel.append(_summary(reps[tuple(key)] / mean - 1))
    if len(table):
        table["relative"] = [r["estimate"] for r in rel]
        table["relative_low"] = [r["low"] for r in rel]
        table["relative_high"] = [r["high"] for r in rel]
    return Aupf(table, reps, reading)


def end_difference(a: pd.DataFrame, b: pd.DataFrame, col: str, rs: Resampler | None = None
                   ) -> pd.DataFrame:
    """Per (task, strategy) in both: the seed mean of ``col`` at the runs' end in ``a`` minus
    in ``b`` (e.g. runs from two upstream models), with its interval: both are scored on the
    task's test images, so one image draw serves both. Columns: task, strategy, estimate,
    low, high."""
    rs = rs or Resampler()
    rows = []
    for (task, strategy), ga in a.groupby(["task", "strategy"], sort=False):
        gb = b[(b.task == task) & (b.strategy == strategy)]
        if not len(gb):
            continue
        ends = [rs.seed_mean(np.stack([curve(r, col, rs)[-1] for r in _runs(g)]), task,
                             strategy, arm) for arm, g in enumerate((ga, gb))]
        rows.append({"task": task, "strategy": strategy, **_summary(ends[0] - ends[1])})
    return pd.DataFrame(rows, columns=["task", "strategy", "estimate", "low", "high"])


# -- the memorization control -----------------------------------------------------------------
#: What the control says of each strategy whose study runs fall (:func:`memorization`).
PERSISTS, VANISHES, NO_FALL = "persists", "vanishes", "no fall to explain"


def generalization_gap(frame: pd.DataFrame, rs: Resampler) -> dict[tuple, np.ndarray]:
    """Per (task, strategy): accuracy on the training images scored at each point (the first
    ``train_eval_size`` of the training set) minus on the test images, at the runs' end, seed
    mean, as (1 + n_boot,) replicates: the test side under the task's image draw, the training
    side redrawn from its binomial (no per-image mask is kept for it)."""
    gaps = {}
    for key, group in frame.groupby(["task", "strategy"], sort=False):
        per_run = []
        for run in _runs(group):
            n_train = int(min(run["train_eval_size"].iloc[0], run["train_size"].iloc[0]))
            train = rs.binomial(run[metrics.TRAIN_ACC].to_numpy()[-1:], n_train, *key,
                                run["run_id"].iloc[0], metrics.TRAIN_ACC)[0]
            per_run.append(train - curve(run, metrics.TEST_ACC, rs)[-1])
        gaps[key] = rs.seed_mean(np.stack(per_run), *key, "gap")
    return gaps


def memorization(study: pd.DataFrame, control: pd.DataFrame, col: str = metrics.ROBUST,
                 rs: Resampler | None = None) -> pd.DataFrame:
    """The memorization control read per (task, strategy) in both: the fall of robust accuracy
    (:func:`falls`) with the study's training set (``study``) and with the control's larger
    one (``control``: the same task, test images and recipe), and the generalization gap
    (:func:`generalization_gap`) of each, with the control-minus-study change of both and
    their intervals (one image draw serves both: the test images are the same).

    ``reading``: :data:`PERSISTS` where the study's runs fall and the control's fall too (with
    ``gap_shrinks``, the fall is then not the memorization of a small training set; without
    it the control did not test that), :data:`VANISHES` where the
    control's runs do not fall, ``"undecided"`` where the control's fall is undecided, and
    :data:`NO_FALL` where the study's runs do not fall. ``gap_shrinks``: the gap change's
    interval lies below 0 (the control did what it is for)."""
    rs = rs or Resampler()
    base, more = falls(study, col, rs=rs), falls(control, col, rs=rs)
    gaps, control_gaps = generalization_gap(study, rs), generalization_gap(control, rs)
    images = {name: f.groupby(["task", "strategy"])["train_size"].first()
              for name, f in (("study", study), ("control", control))}
    rows = []
    for _, b in base.iterrows():
        key = (b.task, b.strategy)
        m = more[(more.task == b.task) & (more.strategy == b.strategy)]
        if not len(m):
            continue
        m = m.iloc[0]
        change, gap, gap_c = _summary(m["_drop"] - b["_drop"]), _summary(gaps[key]), \
            _summary(control_gaps[key])
        gap_change = _summary(control_gaps[key] - gaps[key])
        reading = (NO_FALL if b.outcome != "falls" else PERSISTS if m.outcome == "falls" else
                   VANISHES if m.outcome == "does not fall" else "undecided")
        rows.append({"task": b.task, "strategy": b.strategy, "reading": reading,
                     "images": int(images["study"][key]),
                     "control_images": int(images["control"][key]), "drop": b["drop"],
                     "drop_low": b.drop_low, "drop_high": b.drop_high,
                     "outcome": b.outcome, "control_drop": m["drop"],
                     "control_drop_low": m.drop_low, "control_drop_high": m.drop_high,
                     "control_outcome": m.outcome, "drop_change": change["estimate"],
                     "drop_change_low": change["low"], "drop_change_high": change["high"],
                     "gap": gap["estimate"], "gap_low": gap["low"], "gap_high": gap["high"],
                     "control_gap": gap_c["estimate"], "control_gap_low": gap_c["low"],
                     "control_gap_high": gap_c["high"], "gap_change": gap_change["estimate"],
                     "gap_change_low": gap_change["low"],
                     "gap_change_high": gap_change["high"],
                     "gap_shrinks": bool(gap_change["high"] < 0)})
    return pd.DataFrame(rows)


# -- distance from upstream ------------------------------------------------------------------
def distance(frame: pd.DataFrame, rs: Resampler | None = None) -> pd.DataFrame:
    """The tasks from nearest to farthest from upstream, read on the validation split: the
    linear probe's final validation accuracy (a linear read-out of the pre-trained features),
    mean over seeds, with its interval; without linear-probe runs, every strategy's. Tasks
    whose intervals overlap are tied (``tied_with``): a claim about "the nearest" task is a
    claim about every task tied with it. Columns: task, ``probe_val_acc``, ``low``, ``high``,
    ``on`` (which runs), ``tied_with``."""
    rs = rs or Resampler()
    last = last_points(frame)
    probe = last[last["strategy"] == "linear_probe"]
    source, on = (probe, "linear probe") if len(probe) else (last, "all strategies")
    col = (metrics.VAL_ACC if metrics.VAL_ACC in source and source[metrics.VAL_ACC].notna().all()
           else metrics.TEST_ACC)
    rows = []
    for task, g in source.groupby("task", sort=False):
        n = _val_images(g) if col == metrics.VAL_ACC else int(g[metrics.TEST_N].iloc[0])
        values = np.stack([rs.binomial(np.array([v]), n, task, i)[0]
                           for i, v in enumerate(g[col])])
        rows.append({"task": task, **_summary(rs.seed_mean(values, "distance", task)), "on": on,
                     "split": "validation" if col == metrics.VAL_ACC else "test"})
    table = pd.DataFrame(rows).rename(columns={"estimate": "probe_val_acc"})
    table = table.sort_values("probe_val_acc", ascending=False, ignore_index=True)
    table["tied_with"] = [
        [o.task for o in table.itertuples() if o.task != r.task
         and o.low <= r.high and r.low <= o.high] for r in table.itertuples()]
    return table


def _val_images(runs: pd.DataFrame) -> int:
    """Validation images of the runs (a frame without their sizes: as many as test images)."""
    if "train_size" not in runs:
        return int(runs[metrics.TEST_N].iloc[0])
    fraction = runs["val_fraction"] if "val_fraction" in runs else pd.Series([0.1])
    return max(1, int(round(float(runs["train_size"].iloc[0]) * float(fraction.iloc[0]))))


def order(frame: pd.DataFrame) -> list[str]:
    """Task names nearest to farthest (:func:`distance`)."""
    return distance(frame, Resampler(n_boot=50))["task"].tolist() if len(frame) else []


def ends(frame: pd.DataFrame, which: str) -> list[str]:
    """The tasks that are the ``"nearest"`` or ``"farthest"`` by :func:`distance`: the first
    (last) task and every task tied with it."""
    table = distance(frame)
    row = table.iloc[0] if which == "nearest" else table.iloc[-1]
    return [row.task] + [t for t in table.task if t in row.tied_with]


# -- OOD ---------------------------------------------------------------------------------------
def above_chance(run: pd.DataFrame, classes: int | None) -> int:
    """The first point of a run whose clean test accuracy is clearly above chance (the 95%
    Wilson interval's lower end above 1 / classes); the run's length if none is. Without a
    number of classes (a task outside the registry), the first point after the start."""
    from ..pareto import wilson_interval

    if not classes:
        return min(1, len(run))
    low, _ = wilson_interval(run[metrics.TEST_ACC].to_numpy(), run[metrics.TEST_N].to_numpy())
    hits = np.flatnonzero(low > 1 / classes)
    return int(hits[0]) if len(hits) else len(run)


def ood_tracking(frame: pd.DataFrame, rs: Resampler | None = None,
                 against: str = metrics.TEST_ACC) -> pd.DataFrame:
    """Per task and OOD domain: does OOD accuracy follow in-domain accuracy *within* runs,
    once they are clearly above chance (:func:`above_chance`; step 0's random head cannot
    drive it)? ``r``: the correlation of the changes from point to point of the two
    accuracies, pooled over the runs, with its interval (runs resampled by seed within each
    strategy); ``gap``: OOD minus in-domain accuracy at the runs' end, with its interval;
    ``pairs``: changes counted. ``outcome``: ``tracks`` when r's interval lies above
    :data:`TRACKING_R`, ``does not track`` when below, else ``undecided``. ``against``: the
    accuracy OOD accuracy is compared with (e.g. a robust accuracy column: do the two kinds of
    robustness move together?)."""
    rs = rs or Resampler()
    rows = []
    for task, tg in frame.groupby("task", sort=False):
        classes = _classes(task)
        # each run from its first point clearly above chance, once for every domain
        starts = [[(run, run.iloc[above_chance(run, classes):]) for run in _runs(sg)]
                  for _, sg in tg.groupby("strategy", sort=False)]
        for col in metrics.ood_columns(tg):
            per_strategy = [[(np.diff(part[against].to_numpy()), np.diff(part[col].to_numpy()),
                              float(run[col].iloc[-1] - run[against].iloc[-1]))
                             for run, part in runs] for runs in starts]
            rng = rs.rng("ood", task, col) if against == metrics.TEST_ACC else rs.rng(
                "ood", task, col, against)
            r_reps, gap_reps = _pooled_correlations(per_strategy, rng, rs.n_boot)
            r, gap = _summary(r_reps), _summary(gap_reps)
            outcome = ("tracks" if r["low"] > TRACKING_R else
                       "does not track" if r["high"] < TRACKING_R else "undecided")
            rows.append({"task": task, "domain": metrics.qualifier(col), "r": r["estimate"],
                         "r_low": r["low"], "r_high": r["high"],
                         "pairs": int(sum(len(x[0]) for runs in per_strategy for x in runs)),
                         "gap": gap["estimate"], "gap_low": gap["low"],
                         "gap_high": gap["high"], "outcome": outcome})
    return pd.DataFrame(rows)


def _pooled_correlations(per_strategy: list[list[tuple]], rng: np.random.Generator,
                         n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ood_tracking`'s replicates: per draw (column 0 as measured, then runs resampled
    by seed within each strategy), the correlation of the pooled changes and the mean end gap.
    Each draw is a count per run, so the pooled correlation comes from per-run sums of the
    changes, their squares and products (the draws are those of concatenating the picked
    runs' changes, in the same order)."""
    runs = [x for group in per_strategy for x in group]
    counts = np.zeros((n_boot + 1, len(runs)))
    counts[0] = 1
    for b in range(1, n_boot + 1):
        offset = 0
        for group in per_strategy:
            k = len(group)
            counts[b, offset:offset + k] = np.bincount(rng.integers(0, k, k), minlength=k)
            offset += k
    moments = np.array([[len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum()]
                        for x, y, _ in runs]).reshape(len(runs), 6)
    n, sx, sy, sxx, syy, sxy = (counts @ moments).T
    with np.errstate(divide="ignore", invalid="ignore"):
        var_x, var_y = sxx - sx * sx / n, syy - sy * sy / n
        ok = (n > 2) & (var_x > 1e-12 * np.maximum(sxx, 1e-300)) & \
            (var_y > 1e-12 * np.maximum(syy, 1e-300))
        r = np.where(ok, (sxy - sx * sy / n) / np.sqrt(var_x * var_y), np.nan)
    gaps = counts @ np.array([g for _, _, g in runs]) / counts.sum(1)
    return r, gaps


def _classes(task: str) -> int | None:
    from ..config import ConfigError
    from ..data import info

    try:
        return info(task).classes
    except ConfigError:
        return None


def ood_variance(frame: pd.DataFrame, rs: Resampler | None = None) -> pd.DataFrame:
    """Per task: the shares of the variance of final OOD accuracy that the domain, the
    strategy and their interaction explain (``by_domain``, ``by_strategy``,
    ``by_interaction``: a two-way decomposition of the sums of squares; the rest is seeds),
    each with its interval (runs resampled by seed within each strategy), and
    ``method_minus_domain``: strategy plus interaction minus domain, with its interval."""
    rs = rs or Resampler()
    rows = []
    for task, tg in frame.groupby("task", sort=False):
        cols = metrics.ood_columns(tg)
        if not cols:
            continue
        last = last_points(tg)
        cells = {s: g[cols].to_numpy(dtype=float) for s, g in last.groupby("strategy")}
        rng = rs.rng("ood variance", task)
        picks = {s: [np.arange(len(v))] for s, v in cells.items()}  # replicate 0: as measured
        for _ in range(rs.n_boot):
            for s, v in cells.items():
                picks[s].append(rng.integers(0, len(v), len(v)))
        reps = _shares({s: v[np.stack(picks[s])] for s, v in cells.items()})
        reps = pd.DataFrame(reps).add_prefix("by_")
        reps["method_minus_domain"] = (reps["by_strategy"] + reps["by_interaction"]
                                       - reps["by_domain"])
        row = {"task": task}
        for name in reps.columns:
            s = _summary(reps[name].to_numpy())
            row.update({name: s["estimate"], f"{name}_low": s["low"], f"{name}_high": s["high"]})
        rows.append(row)
    return pd.DataFrame(rows)


def _shares(cells: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sums of squares of a (strategy x domain) layout with seeds as replicates, over the
    total, for each replicate at once (``cells``: per strategy, replicates x runs x domains):
    domain, strategy, interaction (cells of unequal seeds: weighted by their size)."""
    v = list(cells.values())
    runs = sum(c.shape[1] for c in v)
    size = runs * v[0].shape[2]
    grand = sum(c.sum((1, 2)) for c in v) / size  # per replicate
    g = grand[:, None, None]
    total = sum(((c - g) ** 2).sum((1, 2)) for c in v)
    domain_means = sum(c.sum(1) for c in v) / runs  # replicates x domains
    ss_domain = runs * ((domain_means - grand[:, None]) ** 2).sum(1)
    ss_strategy = sum(c[0].size * (c.mean((1, 2)) - grand) ** 2 for c in v)
    ss_cells = sum(c.shape[1] * ((c.mean(1) - grand[:, None]) ** 2).sum(1) for c in v)
    ss = {"domain": ss_domain, "strategy": ss_strategy,
          "interaction": np.maximum(ss_cells - ss_domain - ss_strategy, 0.0)}
    # a replicate without any variance has no shares to split: 0 each
    return {k: np.divide(x, total, out=np.zeros_like(total), where=total > 0)
            for k, x in ss.items()}
