"""A class demo and a look at any stored run: the trade-off of one run, in the terminal and as a
PNG (``python -m rtlib demo``, ``python -m rtlib show``).

``demo`` fine-tunes one far-task run and prints each evaluation point as it is measured (clean
and robust accuracy as bars), then draws the run: clean accuracy above, robust accuracy below,
their 95% intervals shaded, the robust peak (chosen on the validation split where the run has
it) and the end marked, and the fall between them with its interval
(:func:`rtlib.report.estimands.falls`). ``show`` draws a run already in a store the same way.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .. import metrics
from . import estimands as E

BAR = 16  # a point line fits a book page's code column (about 75 characters)


def bar(value: float, width: int = BAR) -> str:
    """``value`` in [0, 1] as a bar of ``width`` characters."""
    full = int(round(max(0.0, min(1.0, value)) * width))
    return "█" * full + "·" * (width - full)


def point_line(row: dict, robust_col: str) -> str:
    """One evaluation point as a terminal line: step, clean and robust accuracy as bars."""
    clean, robust = float(row[metrics.TEST_ACC]), float(row[robust_col])
    return (f"step {int(row[metrics.STEP]):>6}  clean {clean:.3f} {bar(clean)}  "
            f"robust {robust:.3f} {bar(robust)}")


def summary(run: pd.DataFrame, robust_col: str) -> dict[str, Any]:
    """The run's robust peak and end and the fall between them with its 95% interval
    (test images resampled)."""
    fall = E.falls(run, robust_col, by=("task", "strategy", "seed"),
                   rs=E.Resampler(n_boot=1000)).iloc[0]
    return {"peak_step": int(fall.peak_step), "peak": float(fall.peak),
            "final_step": int(run[metrics.STEP].max()), "final": float(fall.final),
            "drop": float(fall["drop"]), "low": float(fall.drop_low),
            "high": float(fall.drop_high), "outcome": fall.outcome, "peak_on": fall.peak_on}


def describe(run: pd.DataFrame, robust_col: str) -> str:
    """Two sentences a newcomer reads: where robust accuracy peaked, where it ended, and
    whether the fall is beyond its interval."""
    s = summary(run, robust_col)
    budget = metrics.qualifier(robust_col) if "@" in robust_col else str(run["eps"].iloc[0])
    clean = run.sort_values(metrics.STEP)[metrics.TEST_ACC]
    return (f"Clean accuracy rose from {clean.iloc[0]:.3f} to {clean.iloc[-1]:.3f}. Robust "
            f"accuracy at {budget} peaked at {s['peak']:.3f} (step {s['peak_step']}, chosen on "
            f"the {s['peak_on']} split) and ended at {s['final']:.3f} (step {s['final_step']}): "
            f"a fall of {s['drop']:+.3f}, 95% interval [{s['low']:+.3f}, {s['high']:+.3f}], "
            f"so {VERDICT[s['outcome']]}.")


#: The fall's outcome (rtlib.report.estimands.fall_outcome) as the demo's last words.
VERDICT = {"falls": "it **falls** beyond its interval",
           "does not fall": "it **does not fall** (the interval rules out a fall of 2 points)",
           "undecided": "whether it falls is **undecided** (the interval allows both)"}


def draw(run: pd.DataFrame, robust_col: str, png: str | Path, title: str | None = None) -> Path:
    """The run's clean and robust accuracy over steps (95% Wilson bands), the robust peak and
    end marked, written to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from ..pareto import wilson_interval

    run = run.sort_values(metrics.STEP)
    s = summary(run, robust_col)
    steps = run[metrics.STEP].to_numpy()
    fig, axes = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for ax, col, name in ((axes[0], metrics.TEST_ACC, "clean accuracy"),
                          (axes[1], robust_col, "robust accuracy")):
        values = run[col].to_numpy()
        low, high = wilson_interval(values, run[metrics.TEST_N].to_numpy())
        ax.fill_between(steps, low, high, alpha=0.25, color="C0")
        ax.plot(steps, values, "o-", color="C0")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].plot([s["peak_step"]], [s["peak"]], "D", color="C3", ms=9, label="peak")
    axes[1].plot([s["final_step"]], [s["final"]], "s", color="C2", ms=8, label="end")
    axes[1].legend(loc="lower right")
    axes[1].set_xscale("symlog", linthresh=max(1, int(steps[1]) if len(steps) > 1 else 1))
    # ticks at the evaluation steps, plainly (symlog's own put 0 and 10^0 on top of each other)
    axes[1].set_xticks(steps, [str(int(s)) for s in steps])
    axes[1].xaxis.set_minor_locator(NullLocator())
    axes[1].set_xlabel("fine-tuning step")
    first = run.iloc[0]
    fig.suptitle(title or f"{first['task']} / {first['strategy']}: fall {s['drop']:+.3f} "
                          f"[{s['low']:+.3f}, {s['high']:+.3f}] ({s['outcome']})")
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def live(config, results_dir: str | Path, png: str | Path | None = None,
         echo: Callable[[str], None] = print, device: str | None = "auto",
         story: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Fine-tune ``config`` (a :class:`rtlib.config.RunConfig`), echoing each evaluation point
    as it is measured, then the run's story (to ``story``; None: ``echo``, as plain text) and,
    with ``png``, its drawing. Returns the run's rows. A run the store already holds is shown
    at once."""
    from .. import store, train
    from ..config import shown_path

    robust_col = metrics.robust(config.eps[0])
    t0 = time.perf_counter()
    stored = store.complete_run(results_dir, config) is not None
    train.run(config, results_dir, device=device, progress=False,
              on_point=lambda row: echo(point_line(row, robust_col)))
    run = store.load(results_dir, [config])
    if stored:  # nothing was trained: say so, and show the points as they were measured
        echo(f"(read from {shown_path(results_dir)}: computed earlier; delete the run to "
             "compute it again)")
        for row in run.sort_values(metrics.STEP).to_dict("records"):
            echo(point_line(row, robust_col))
    told = describe(run, robust_col)
    story(told) if story else echo(told.replace("**", ""))
    if png is not None:
        drawn = draw(run, robust_col, png)
        if story is None:
            echo(f"wrote {drawn}")
    if not stored:
        echo(f"{time.perf_counter() - t0:.0f} s")
    return run


def cell(config=None, results_dir: str | Path | None = None, png: str | Path | None = None
         ) -> pd.DataFrame:
    """The book's demo cell: each point printed as it is measured (or read back), then the
    run's story as Markdown under them and its drawing. Defaults: the demo's run
    (:func:`rtlib.config.demo_config`), kept in the checkout's :data:`rtlib.config.DEMO_STORE`,
    drawn beside the book's executed pages."""
    from IPython.display import Image, Markdown, display

    from ..config import DEMO_STORE, checkout_folder, demo_config

    config = config or demo_config()
    results_dir = results_dir or checkout_folder(DEMO_STORE)
    png = png or Path(checkout_folder("book/executed")) / "demo.png"

    run = live(config, results_dir, png, echo=print,  # one output box (a flush would split it)
               story=lambda text: display(Markdown(text)))
    display(Image(filename=str(png)))
    return run


def picture(frame: pd.DataFrame, folder: str | Path) -> tuple[Path, str]:
    """The trade-off in one picture, from the runs a book shows: the farthest task's full
    fine-tuning run of the first seed (else the strategy whose robust accuracy falls most),
    drawn to ``folder/tradeoff.png``; returns the file and its two sentences."""
    tasks = E.order(frame)
    far = frame[frame["task"] == tasks[-1]]
    strategy = "full" if (far["strategy"] == "full").any() else (
        E.falls(far).sort_values("drop").iloc[-1]["strategy"])
    runs = far[far["strategy"] == strategy]
    run = runs[runs["seed"] == runs["seed"].min()]
    png = draw(run, metrics.ROBUST, Path(folder) / "tradeoff.png",
               title=f"{tasks[-1]} (the farthest task), {strategy}, seed "
                     f"{int(run['seed'].iloc[0])}: clean and robust accuracy over one run")
    return png, describe(run, metrics.ROBUST)
