"""Results store: one Parquet file per run, named by the run's config hash.

``<results_dir>/runs/<run_id>.parquet`` holds the run's rows (one per evaluation point) and, in
the file's metadata, the config, library versions, device, seed and trainable parameter counts.
Files appear atomically (written to a temporary name, then renamed), so a reader never sees half
a run. A run in progress keeps a resumable checkpoint under ``<results_dir>/partial/``; it is
removed only after the run's file exists.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .config import RunConfig, eps_label
from .pareto import wilson_interval

META_KEY = b"rtlib"


class StoreError(RuntimeError):
    """The results directory cannot be used (read-only, full, not a directory)."""


def runs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs"


def run_path(results_dir: str | Path, config: RunConfig) -> Path:
    return runs_dir(results_dir) / f"{config.run_id()}.parquet"


def partial_path(results_dir: str | Path, config: RunConfig) -> Path:
    return Path(results_dir) / "partial" / f"{config.run_id()}.pt"


def set_aside(path: Path, reason: str) -> Path | None:
    """Rename an unreadable file out of the way (``<name>.corrupt-<time>``), warning with its
    name, so that the run is redone; returns the new name (``None`` when it cannot be moved,
    e.g. in a read-only store)."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        path.replace(aside)
    except OSError:
        aside = None
    warnings.warn(f"{path} cannot be read ({reason}); "
                  + (f"set aside as {aside.name}" if aside else "it could not be moved")
                  + ": the run will be redone", RuntimeWarning, stacklevel=2)
    return aside


def read_run(path: str | Path) -> tuple[dict[str, Any], pa.Table]:
    """A run file's metadata and rows, read whole (footer, metadata and every row)."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {})[META_KEY])
    if table.num_rows == 0 or "step" not in table.column_names:
        raise ValueError("no evaluation rows")
    return meta, table


def complete_run(results_dir: str | Path, config: RunConfig) -> Path | None:
    """The run's file when it exists and reads back whole; a file that does not is set aside
    (:func:`set_aside`) and ``None`` is returned, so the run is redone. The one place that
    answers "is this run complete?"."""
    path = run_path(results_dir, config)
    if not path.is_file():
        return None
    try:
        meta, _ = read_run(path)
        if meta.get("run_id") != config.run_id():
            raise ValueError(f"it holds run {meta.get('run_id')!r}, not {config.run_id()}")
    except Exception as err:  # noqa: BLE001 - any reason a file cannot be read means "redo"
        set_aside(path, f"{type(err).__name__}: {err}")
        return None
    return path


def is_complete(results_dir: str | Path, config: RunConfig) -> bool:
    return complete_run(results_dir, config) is not None


def load_state(path: Path, **load_kwargs) -> dict | None:
    """A resumable training state written by :func:`save_state`, or ``None`` when there is
    none or it cannot be read (then it is set aside and training starts fresh).

    Loaded with ``weights_only=True``: tensors, numbers, strings and containers only, so a
    file planted in a results folder cannot run code when it is read.
    """
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True, **load_kwargs)
        if not isinstance(state, dict):
            raise ValueError("not a training state")
        return state
    except Exception as err:  # noqa: BLE001 - unreadable: start fresh, keep the file aside
        set_aside(path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return None


def save_state(path: Path, state: dict) -> None:
    """Write a resumable training state atomically (read back by :func:`load_state`)."""
    import torch

    atomic_write_bytes(path, lambda tmp: torch.save(state, tmp))


def check_writable(results_dir: str | Path) -> None:
    """Fail early, with the reason, when runs cannot be written into ``results_dir``."""
    path = Path(results_dir)
    try:
        runs_dir(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=runs_dir(path), prefix=".probe-"):
            pass
    except OSError as err:
        raise StoreError(f"results directory {path} is not writable: {err.strerror or err}") \
            from err


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``; on failure nothing is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise StoreError(f"could not write {path}: {err.strerror or err}") from err
        raise


def write_run(results_dir: str | Path, config: RunConfig, rows: list[dict[str, Any]],
              meta: dict[str, Any]) -> Path:
    """Write a completed run atomically; returns its path."""
    path = run_path(results_dir, config)
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    info = {"run_id": config.run_id(), "config": config.to_dict(), **meta}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           META_KEY: json.dumps(info).encode()})
    atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp))
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads(pq.read_schema(path).metadata[META_KEY])


def run_files(results_dir: str | Path) -> list[Path]:
    """Completed run files (temporary files of interrupted writes are ignored)."""
    folder = runs_dir(results_dir)
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")) \
        if folder.is_dir() else []


CONFIG_COLUMNS = ("task", "strategy", "model", "weights", "domain", "seed", "steps", "lr",
                  "batch_size", "train_size", "attack", "attack_steps")


def load(results_dir: str | Path, configs: Iterable[RunConfig] | None = None) -> pd.DataFrame:
    """A tidy DataFrame: one row per run and evaluation point.

    Columns: ``run_id``, the config fields of :data:`CONFIG_COLUMNS`, ``hparams`` (JSON),
    ``eps`` (the run's first budget), ``trainable`` and ``total`` parameters, ``precision`` (fp32
    or bf16, as run), then the evaluation columns (``step``, ``epoch``, ``images_seen``,
    ``train_loss``, ``train_acc``, ``test_acc``, ``robust_acc@<eps>`` per budget,
    ``robust_acc`` (at ``eps``),
    ``test_acc_lo/hi`` and ``robust_acc_lo/hi`` (95% Wilson intervals over the ``test_n``
    evaluation images), ``ood_acc@<domain>``, ``train_seconds``, ``eval_seconds``,
    ``attack_seconds`` and ``attacked``). With ``configs``, only those runs (the ones not yet
    run are absent).
    """
    wanted = None if configs is None else {c.run_id() for c in configs}
    frames = []
    for path in run_files(results_dir):
        if wanted is not None and path.stem not in wanted:
            continue
        try:
            meta, table = read_run(path)
        except Exception as err:  # noqa: BLE001 - name the file; the next run redoes it
            warnings.warn(f"{path} cannot be read ({type(err).__name__}: {err}); left out. "
                          "Rerunning its configuration sets it aside and redoes the run.",
                          RuntimeWarning, stacklevel=2)
            continue
        frame = table.to_pandas()
        cfg = meta["config"]
        eps0 = eps_label(cfg["eps"][0])
        # The run's first budget, under one name for every task (tasks may use other budgets).
        frame["robust_acc"] = frame[f"robust_acc@{eps0}"]
        if "test_n" in frame:  # 95% intervals from the number of evaluation images
            for col in ("test_acc", "robust_acc"):
                frame[f"{col}_lo"], frame[f"{col}_hi"] = wilson_interval(frame[col],
                                                                         frame["test_n"])
        front = {"run_id": meta["run_id"], **{k: cfg.get(k) for k in CONFIG_COLUMNS},
                 "eps": eps0,
                 "hparams": json.dumps(cfg.get("hparams", {}), sort_keys=True),
                 "trainable": meta.get("trainable"), "total": meta.get("total"),
                 # what the run computed in (stores from before the field: fp32)
                 "precision": meta.get("precision", "fp32")}
        for i, (k, v) in enumerate(front.items()):
            frame.insert(i, k, [v] * len(frame))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run_id", *CONFIG_COLUMNS, "hparams", "step"])
    return pd.concat(frames, ignore_index=True).sort_values(
        ["task", "strategy", "seed", "run_id", "step"], kind="stable").reset_index(drop=True)


def robust_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("robust_acc@")]


def ood_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("ood_acc@")]
