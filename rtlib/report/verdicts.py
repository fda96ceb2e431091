"""The paper's claims judged from the store: each verdict is read from intervals
(:mod:`rtlib.report.estimands`), with three outcomes, and its rule stated beside it.

- **holds**: the intervals show what the claim says;
- **does not hold**: the intervals show the opposite (or rule the claimed effect out);
- **undecided**: the intervals allow both; more seeds or images could decide it;
- **not testable here**: the study has nothing to judge it on (say what is missing).

A claim over several units (task x strategy pairs, tasks, domains) holds when more than half
of them show it, does not hold when more than half show the opposite, and is undecided
otherwise: "exactly half" is not a majority either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .. import metrics, strategies
from . import estimands as E

HOLDS, FAILS, UNDECIDED, UNTESTABLE = "holds", "does not hold", "undecided", "not testable here"
OUTCOMES = (HOLDS, FAILS, UNDECIDED, UNTESTABLE)
#: The scorecard's colour per verdict.
VERDICT_COLOURS = {HOLDS: "#d4edda", FAILS: "#f8d7da", UNDECIDED: "#fff3cd",
                   UNTESTABLE: "#e2e3e5"}


@dataclass
class Verdict:
    claim: str
    paper: str
    ours: str
    verdict: str
    rule: str
    #: The same verdict under other readings (AUPF formula, attack budget): {reading: verdict}.
    sensitivity: dict = field(default_factory=dict)

    def __post_init__(self):
        assert self.verdict in OUTCOMES, self.verdict


def majority(shown: int, opposite: int, total: int) -> str:
    """Holds if more than half of ``total`` units show the claim, does not hold if more than
    half show the opposite, else undecided (not testable without units)."""
    if not total:
        return UNTESTABLE
    if 2 * shown > total:
        return HOLDS
    if 2 * opposite > total:
        return FAILS
    return UNDECIDED


def combine(outcomes: Sequence[str]) -> str:
    """One verdict for a claim judged on several tied units (e.g. the tasks tied for the
    nearest): holds if it holds on all, does not hold if on none, else undecided."""
    outcomes = [o for o in outcomes if o != UNTESTABLE]
    if not outcomes:
        return UNTESTABLE
    if all(o == HOLDS for o in outcomes):
        return HOLDS
    if all(o == FAILS for o in outcomes):
        return FAILS
    return UNDECIDED


def pm(low: float, high: float, digits: int = 3) -> str:
    """An interval as the book prints it: ``[0.012, 0.034]``."""
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _tasks(names: Sequence[str]) -> str:
    return names[0] + (f" (tied on validation with {', '.join(names[1:])})" if len(names) > 1
                       else "")


# -- RQ1 ---------------------------------------------------------------------------------------
def rise_then_fall(frame: pd.DataFrame, rs: E.Resampler) -> Verdict:
    budgets = E.budgets(frame)
    labels = list(budgets)
    adapting = strategies.adapting("intermediate", "excessive")
    counts = {}
    for label, col in budgets.items():
        f = E.falls(frame[frame["strategy"].isin(adapting)], col, rs=rs)
        counts[label] = f
    head = counts[labels[0]]
    n = len(head)
    falls_, flat = int((head.outcome == "falls").sum()), int((head.outcome == "does not fall")
                                                             .sum())
    per_task = "; ".join(f"{t}: {int((g.outcome == 'falls').sum())} of {len(g)}"
                         for t, g in head.groupby("task", sort=False))
    others = "".join(f"; at {b}: {int((counts[b].outcome == 'falls').sum())} of "
                     f"{len(counts[b])} fall" for b in labels[1:])
    return Verdict(
        "RQ1: robust accuracy first rises (inherited), peaks early, then falls as fine-tuning "
        "exploits non-robust features",
        "rise-then-fall in most settings",
        f"at {labels[0]}, {falls_} of {n} task x strategy pairs (full fine-tuning and the "
        f"intermediate strategies) fall, {flat} do not, {n - falls_ - flat} undecided "
        f"({per_task}){others}",
        majority(falls_, flat, n),
        f"a pair falls if the seed-mean drop from each run's robust peak (chosen on the "
        f"validation split) to its end is at least {100 * E.MIN_FALL:.0f} points with its 95% "
        f"interval "
        f"(seeds and test images resampled) above 0, does not fall if the interval lies below "
        f"{100 * E.MIN_FALL:.0f} points; the claim holds if more than half of the pairs fall",
        {label: majority(int((f.outcome == "falls").sum()),
                         int((f.outcome == "does not fall").sum()), len(f))
         for label, f in counts.items()})


def memorization_claim(table: pd.DataFrame) -> Verdict:
    """Our control of RQ1's fall (``table``: :func:`rtlib.report.estimands.memorization`):
    where the study's runs fall, does the fall persist with four times the training images?"""
    falling = table[table.reading != E.NO_FALL]
    shown = int(((falling.reading == E.PERSISTS) & falling.gap_shrinks).sum())
    vanish = int((falling.reading == E.VANISHES).sum())
    where = ", ".join(f"{r['strategy']} {r['reading']} (fall {100 * r['drop']:+.1f} -> "
                      f"{100 * r['control_drop']:+.1f} points, change "
                      f"[{100 * r['drop_change_low']:+.1f}, {100 * r['drop_change_high']:+.1f}])"
                      for _, r in falling.iterrows())
    shrinks = int(table.gap_shrinks.sum())
    task = table.task.iloc[0] if len(table) else "the farthest task"
    ours = (f"on {task}, {len(falling)} of {len(table)} strategies fall with "
            f"{int(table.images.iloc[0]):,} training images" if len(table) else
            "the control's runs are not in the store")
    if len(falling):
        ours += f"; with {int(table.control_images.iloc[0]):,}: {where}"
    if len(table):
        ours += (f"; the generalization gap (training minus test accuracy at the end) shrinks "
                 f"in {shrinks} of {len(table)}")
    return Verdict(
        "Ours (memorization control): the fall on the farthest task is not memorization of a "
        "small training set: it persists with four times the training images",
        "not tested (the paper fine-tunes on each dataset's whole training set)", ours,
        majority(shown, vanish, len(falling)),
        f"over the strategies whose runs fall (the RQ1 rule, at the first budget): one shows "
        f"the claim if the control's runs fall too while the interval of its generalization "
        f"gap minus the study's lies below 0, the opposite if the control's runs do not fall "
        f"(their fall's interval below {100 * E.MIN_FALL:.0f} points); the claim holds if more "
        f"than half show it")


# -- RQ2 ---------------------------------------------------------------------------------------
def _best_is(aupf: E.Aupf, tasks: Sequence[str], strategy: str) -> tuple[str, str]:
    outcomes, words = [], []
    for task in tasks:
        best = aupf.best(task)
        beaten = best["beaten_by"].get(strategy, [])
        outcome = (HOLDS if best["best"] == strategy else FAILS if beaten else UNDECIDED)
        outcomes.append(outcome)
        rel = aupf.table.set_index(["task", "strategy"]).loc[(task, strategy)]
        words.append(f"on {task} {strategy} is {rel.relative:+.0%} vs the mean "
                     f"{pm(rel.relative_low, rel.relative_high, 2)}; "
                     + (f"best: {best['best']}" if best["best"] else
                        f"tied for the best: {', '.join(best['candidates'])}")
                     + (f"; beaten by {', '.join(beaten)}" if beaten else ""))
    return combine(outcomes), "; ".join(words)


def _readings(frame: pd.DataFrame, rs: E.Resampler) -> dict[str, E.Aupf]:
    """AUPF under every reading and budget: {"staircase 2/255": Aupf, ...}, the headline
    (staircase, smallest budget) first."""
    return {f"{reading} {label}": E.aupf(frame, col, reading, rs)
            for reading in E.AREAS for label, col in E.budgets(frame).items()}


def best_strategy_claims(frame: pd.DataFrame, readings: dict[str, E.Aupf]) -> list[Verdict]:
    cards = []
    headline = next(iter(readings))
    for which, strategy, claim, paper in (
            ("nearest", "bitfit", "RQ2: on simple tasks, peripheral updates (BitFit) balance "
             "best", "BitFit > 75% above the strategies' mean AUPF on CIFAR-10/100"),
            ("farthest", "compacter", "RQ2: on complex tasks, information-heavy intermediate "
             "updates (Compacter) balance best", "Compacter +57.5% (Caltech-256) and +34.6% "
             "(CUB-200) above the mean")):
        tasks = E.ends(frame, which)
        if strategy not in set(frame["strategy"]):
            cards.append(Verdict(claim, paper, f"{strategy} was not run", UNTESTABLE, ""))
            continue
        verdicts = {name: _best_is(a, tasks, strategy) for name, a in readings.items()}
        outcome, ours = verdicts[headline]
        cards.append(Verdict(
            claim, paper, f"{which} task {_tasks(tasks)} ({headline}): {ours}", outcome,
            f"holds if {strategy}'s AUPF beats every other strategy's with the 95% interval of "
            f"the difference above 0, does not hold if another strategy beats it that way, "
            f"undecided otherwise; the {which} task by the linear probe's validation accuracy "
            f"(tasks whose intervals overlap are judged together)",
            {name: v[0] for name, v in verdicts.items()}))
    return cards


def _worst(aupf: E.Aupf, tasks: Sequence[str]) -> tuple[str, int, int, int]:
    table = aupf.table.set_index(["task", "strategy"])
    below = above = 0
    for task in tasks:
        pair = [table.loc[(task, s)] for s in ("full", "linear_probe")]
        if all(r.relative_high < 0 for r in pair):
            below += 1
        elif any(r.relative_low > 0 for r in pair):
            above += 1
    return majority(below, above, len(tasks)), below, above, len(tasks)


def worst_claim(frame: pd.DataFrame, readings: dict[str, E.Aupf]) -> Verdict:
    claim = "RQ2: linear probing and full fine-tuning balance worst"
    if not {"full", "linear_probe"} <= set(frame["strategy"]):
        return Verdict(claim, "", "needs both strategies", UNTESTABLE, "")
    tasks = E.order(frame)
    results = {name: _worst(a, tasks) for name, a in readings.items()}
    headline = next(iter(readings))
    outcome, below, above, n = results[headline]
    return Verdict(
        claim, "both below the mean AUPF on most datasets",
        f"({headline}) both below the mean on {below} of {n} tasks; at least one of them "
        f"above it on {above}",
        outcome,
        "a task counts if the 95% intervals of both strategies' relative AUPF lie below 0, "
        "against if either lies above 0; holds if more than half of the tasks count",
        {name: r[0] for name, r in results.items()})


def steepness_claim(frame: pd.DataFrame, rs: E.Resampler) -> Verdict:
    claim = ("RQ2: the more complex the task (the less similar to upstream), the steeper the "
             "frontier")
    paper = "steeper frontiers on complex tasks"
    tasks = E.order(frame)
    f = E.falls(frame, metrics.ROBUST, rs=rs)
    per_task = {}
    for task in tasks:
        g = f[(f.task == task) & f.steepness_testable]
        if len(g):
            with np.errstate(divide="ignore", invalid="ignore"):
                per_task[task] = np.nanmean(np.stack([d / c for d, c in
                                                      zip(g["_drop"], g["_gain"])]), 0)
    untestable = [t for t in tasks if t not in per_task]
    note = (f"; not testable on {', '.join(untestable)} (no strategy gains clean accuracy "
            "beyond noise after its robust peak)" if untestable else "")
    rule = ("steepness: robust accuracy given up per point of clean accuracy gained from the "
            "robust peak (chosen on validation) to the end, mean over the strategies where "
            "the clean gain's interval lies above 0; holds if the 95% interval of the Spearman "
            "correlation between distance from upstream and steepness lies above 0, does not "
            "hold if below, undecided otherwise; needs 3 tasks")
    if len(per_task) < 3:
        return Verdict(claim, paper, f"steepness measurable on {len(per_task)} of "
                       f"{len(tasks)} tasks{note}", UNTESTABLE, rule)
    names = list(per_task)
    values = np.stack([per_task[t] for t in names])  # tasks x replicates
    distance = np.arange(len(names))
    rhos = E.spearman(distance, values)
    lo, hi = E.interval(rhos[1:])
    outcome = HOLDS if lo > 0 else FAILS if hi < 0 else UNDECIDED
    return Verdict(claim, paper,
                   f"Spearman correlation between distance and steepness {rhos[0]:+.2f} "
                   f"{pm(lo, hi, 2)} over {', '.join(names)}{note}", outcome, rule)


# -- RQ3 ---------------------------------------------------------------------------------------
def seen_upstream(frame: pd.DataFrame) -> set[str] | None:
    """The domains the runs' upstream model was pre-trained on (None if unknown)."""
    from ..pretrain import upstream_domains

    weights = frame["weights"].dropna().unique() if "weights" in frame else []
    seen = [upstream_domains(w) for w in weights]
    return None if not seen or any(s is None for s in seen) else set().union(*seen)


def ood_claims(frame: pd.DataFrame, rs: E.Resampler) -> list[Verdict]:
    claim = "RQ3: OOD accuracy tracks in-domain accuracy (no trade-off)"
    track = E.ood_tracking(frame, rs)
    if not len(track):
        return [Verdict(claim, "", "no OOD domains", UNTESTABLE, "")]
    seen = seen_upstream(frame)
    unseen = track[~track.domain.isin(seen)] if seen is not None else track
    judged = unseen if len(unseen) else track
    cards = [Verdict(
        claim, "OOD accuracy rises with in-domain accuracy during fine-tuning",
        "; ".join(f"{r.task}/{r.domain}{' (seen upstream)' if seen and r.domain in seen else ''}"
                  f": r {r.r:.2f} {pm(r.r_low, r.r_high, 2)}, end gap {r.gap:+.2f}"
                  for r in track.itertuples()),
        majority(int((judged.outcome == "tracks").sum()),
                 int((judged.outcome == "does not track").sum()), len(judged)),
        f"r: correlation of the point-to-point changes of OOD and in-domain accuracy within "
        f"runs, from each run's first point clearly above chance (step 0's random head cannot "
        f"drive it); a domain tracks if r's 95% interval lies above {E.TRACKING_R}, does not "
        f"if below; judged on the domains the upstream model never saw"
        + (f" ({', '.join(sorted(set(unseen.domain)))})" if seen is not None and len(unseen)
           else "") + "; holds if more than half track")]
    shares = E.ood_variance(frame, rs)
    if len(shares):
        lows, highs = shares["method_minus_domain_low"], shares["method_minus_domain_high"]
        cards.append(Verdict(
            "RQ3: OOD robustness depends on the domain shift more than on the method",
            "domain and extent of adaptation matter more than the strategy",
            "; ".join(f"{r.task}: domain {r.by_domain:.0%}, strategy {r.by_strategy:.0%}, "
                      f"strategy x domain {r.by_interaction:.0%} of the variance of final OOD "
                      f"accuracy"
                      for r in shares.itertuples()),
            majority(int((highs < 0).sum()), int((lows > 0).sum()), len(shares)),
            "per task, holds if the share the domain explains exceeds the strategy's and the "
            "strategy x domain interaction's together, with the 95% interval of the difference "
            "(runs resampled) excluding 0; over tasks by majority"))
    return cards


# -- the scorecard -----------------------------------------------------------------------------
def rq2(frame: pd.DataFrame, rs: E.Resampler | None = None) -> list[Verdict]:
    """RQ2's claims, each also judged under the other AUPF reading and every budget."""
    rs = rs or E.Resampler()
    readings = _readings(frame, rs)
    return [*best_strategy_claims(frame, readings), worst_claim(frame, readings),
            steepness_claim(frame, rs)]


def scorecard(frame: pd.DataFrame, ood_frame: pd.DataFrame | None = None,
              rs: E.Resampler | None = None) -> list[Verdict]:
    """The paper's claims, our measurement with its intervals, and the verdict by the stated
    rule. ``ood_frame``: the runs with OOD domains (default: ``frame``)."""
    rs = rs or E.Resampler()
    return [rise_then_fall(frame, rs), *rq2(frame, rs),
            *ood_claims(ood_frame if ood_frame is not None else frame, rs)]


def sensitivity_table(cards: Sequence[Verdict]) -> pd.DataFrame:
    """The verdict of each claim that has readings (rows) under each reading (columns: AUPF
    formula and budget), the headline first."""
    rows = {c.claim.split(": ", 1)[-1]: c.sensitivity for c in cards if c.sensitivity}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("claim")


def verdict_table(cards: Sequence[Verdict]) -> pd.DataFrame:
    """Verdicts as the book's table: claim, verdict, ours, paper, rule, and the verdict under
    the other readings where a claim has them."""
    rows = []
    for c in cards:
        rows.append({"claim": c.claim, "verdict": c.verdict, "ours": c.ours, "paper": c.paper,
                     "under other readings": "; ".join(f"{k}: {v}" for k, v in
                                                       c.sensitivity.items()) or "-",
                     "rule": c.rule})
    return pd.DataFrame(rows)


def styled(card: pd.DataFrame, columns: Sequence[str] = ("verdict",)):
    """A verdict table as the book shows it: no index, each verdict (in ``columns``) on its
    colour."""
    return card.style.hide(axis="index").map(
        lambda v: f"background-color: {VERDICT_COLOURS[v]}; color: #222"
        if v in VERDICT_COLOURS else "", subset=list(columns))


def beside(cards: dict[str, Sequence[Verdict]]) -> pd.DataFrame:
    """Verdicts of several settings side by side (``cards``: setting -> its scorecard): one
    row per claim, one column per setting; a claim a setting does not judge is not testable
    there."""
    table = pd.DataFrame({name: {c.claim: c.verdict for c in cs} for name, cs in cards.items()})
    return table.rename_axis("claim").fillna(UNTESTABLE)


def what_we_found(cards: Sequence[Verdict], prefix: str) -> str:
    """A chapter's opening: its claims (those whose name starts with ``prefix``, e.g.
    ``"RQ2"``) as Markdown bullets, verdict first."""
    return "\n".join(f"- **{c.verdict}**: {c.claim.split(': ', 1)[-1]}. *Ours:* {c.ours}."
                     for c in cards if c.claim.startswith(prefix))


# -- the upstream model as a factor -------------------------------------------------------------
def depends(verdicts: Sequence[str]) -> str:
    """Whether a claim's verdict depends on the upstream model: ``yes`` when it holds from one
    model and does not hold from another, ``no`` when every model gives the same decided
    verdict, ``cannot tell`` otherwise (an undecided verdict could go either way)."""
    decided = {v for v in verdicts if v in (HOLDS, FAILS)}
    if decided == {HOLDS, FAILS}:
        return "yes"
    if len(set(verdicts)) == 1 and decided:
        return "no"
    return "cannot tell"


#: Each chapter's claims (by the prefix their names start with) and the rule that judges them.
CHAPTER_CLAIMS: dict[str, Callable[[pd.DataFrame, E.Resampler], list[Verdict]]] = {
    "RQ1": lambda frame, rs: [rise_then_fall(frame, rs)],
    "RQ2": lambda frame, rs: rq2(frame, rs),
    "RQ3": lambda frame, rs: ood_claims(frame, rs),
}


def by_upstream(runs: pd.DataFrame, rs: E.Resampler | None = None,
                chapter: str | None = None) -> pd.DataFrame:
    """The scorecard per upstream model (``runs``: with an ``upstream`` column, e.g.
    :func:`rtlib.report.study.upstream_runs`), each judged on the tasks *every* model was
    fine-tuned on (so that the models answer the same question), one column per model, and
    whether the verdict depends on the model (:func:`depends`). ``chapter`` (a key of
    :data:`CHAPTER_CLAIMS`): that chapter's claims only; None: the whole scorecard."""
    rs = rs or E.Resampler()
    if chapter is not None and chapter not in CHAPTER_CLAIMS:
        raise ValueError(f"chapter must be one of {', '.join(CHAPTER_CLAIMS)}; got {chapter!r}")
    judge = CHAPTER_CLAIMS[chapter] if chapter else (lambda frame, r: scorecard(frame, rs=r))
    common = set.intersection(*(set(g.task) for _, g in runs.groupby("upstream")))
    columns = {}
    for upstream, g in runs[runs.task.isin(common)].groupby("upstream", sort=False):
        g = g.drop(columns="upstream")
        columns[upstream] = {c.claim: c.verdict for c in judge(g, rs)}
    table = pd.DataFrame(columns).rename_axis("claim")
    table["depends on the upstream model"] = [depends(list(row)) for row in
                                              table.fillna(UNTESTABLE).itertuples(index=False)]
    table.attrs["tasks"] = [t for t in E.order(runs) if t in common]
    return table.fillna(UNTESTABLE)


def found_by_upstream(runs: pd.DataFrame, chapter: str, rs: E.Resampler | None = None) -> str:
    """A chapter's claims judged from each upstream model (:func:`by_upstream`) as Markdown
    bullets, and whether each verdict depends on the model; one sentence when the setting
    fine-tuned from one model only."""
    from ..config import UPSTREAM_CHECKPOINTS

    if runs["upstream"].nunique() < 2:
        return "This setting fine-tunes from one upstream model only."
    table = by_upstream(runs, rs, chapter)
    models = list(table.columns[:-1])
    lines = [f"From each upstream model ("
             + "; ".join(f"`{m}`: {UPSTREAM_CHECKPOINTS.get(m, m)}" for m in models)
             + f"), judged on the tasks all of them were fine-tuned on "
             f"({', '.join(table.attrs['tasks'])}):", ""]
    for claim, row in table.iterrows():
        said = ", ".join(f"`{m}` **{row[m]}**" for m in models)
        lines.append(f"- {claim.split(': ', 1)[-1]}: {said}; depends on the upstream model: "
                     f"**{row.iloc[-1]}**.")
    return "\n".join(lines)
