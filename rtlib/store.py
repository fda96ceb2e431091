"""Results store: the one owner of a results folder and of how every project file is written.

Layout of ``<results_dir>``:

- ``runs/<run_id>.parquet``: a completed run, one row per evaluation point (names from
  :mod:`rtlib.metrics`) and, in the file's metadata, the config, library versions, device, seed
  and trainable parameter counts;
- ``partial/<run_id>.pt``: the resumable state of a run in progress (read with
  ``weights_only=True``: a planted file cannot run code); removed once the run's file exists;
- ``weights/<run_id>.safetensors``: the run's trainable parameters at its end (the head
  included), written just before its run file, for analyses that need the fine-tuned model
  (interpolation); the committed study does not commit them (a run can be re-trained);
- ``interpolation/<key>.parquet``: the evaluations along a weight-interpolation path
  (:mod:`rtlib.interpolate`), keyed by its two runs and coefficients;
- ``upstream/<key>.parquet``: an upstream checkpoint's clean and robust accuracy on the upstream
  test images (:func:`rtlib.pretrain.upstream_robustness`), keyed by the checkpoint's bytes and
  the evaluation's settings;
- ``failed/<run_id>.json``: why a run of a sweep failed; removed when it succeeds;
- ``locks/<run_id>.lock``: held (``flock``, released when the process dies) while a process
  computes the run, so two processes never train the same run: the second waits and reads the
  first's result.

Every file the project writes goes through :func:`atomic_write` (a temporary name, then a
rename), so a reader never sees half a file, and gets the permissions the umask allows (a shared
store stays readable to others). :func:`complete_run` is the one place that answers "is this run
complete?": a file that does not read back whole is set aside and redone. Nothing is written, and
no writability is asked, until a run has to be computed: a complete store renders read-only.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import metrics
from .config import RunConfig, eps_label

META_KEY = b"rtlib"


class StoreError(RuntimeError):
    """The results folder cannot be used (read-only, full, not a folder, missing)."""


# -- the folder ------------------------------------------------------------------------------
def runs_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "runs"


def run_path(results_dir: str | Path, config: RunConfig | str) -> Path:
    """The run's file (``config``: the run, or its id)."""
    run_id = config if isinstance(config, str) else config.run_id()
    return runs_dir(results_dir) / f"{run_id}.parquet"


def partial_path(results_dir: str | Path, config: RunConfig) -> Path:
    return Path(results_dir) / "partial" / f"{config.run_id()}.pt"


def weights_path(results_dir: str | Path, config: RunConfig) -> Path:
    return Path(results_dir) / "weights" / f"{config.run_id()}.safetensors"


def interpolation_path(results_dir: str | Path, key: str) -> Path:
    return Path(results_dir) / "interpolation" / f"{key}.parquet"


def upstream_path(results_dir: str | Path, key: str) -> Path:
    return Path(results_dir) / "upstream" / f"{key}.parquet"


def failure_path(results_dir: str | Path, config: RunConfig) -> Path:
    return Path(results_dir) / "failed" / f"{config.run_id()}.json"


#: The folders a store keeps (each one a folder, never a file).
FOLDERS = ("runs", "partial", "weights", "interpolation", "upstream", "failed", "locks")


def check_results_dir(results_dir: Any, field: str = "results_dir") -> Path:
    """Refuse, before any compute, a results folder that cannot be one: empty text, a file,
    or a store whose sub-folders (:data:`FOLDERS`) are files. A folder that does not exist yet
    is fine (it is made when the first run is written)."""
    from .config import ConfigError

    if not isinstance(results_dir, (str, os.PathLike)) or not str(results_dir).strip():
        raise ConfigError(field, results_dir, "the path of a folder", "empty:")
    path = Path(results_dir)
    entry = path if path.exists() and not path.is_dir() else _misplaced_folder(path)
    if entry is not None:
        raise ConfigError(field, str(results_dir), "a folder (or a path where one can be "
                          "made)", f"{entry} is a file, not a folder:")
    return path


def _misplaced_folder(results_dir: Path) -> Path | None:
    """The first of the store's folders (:data:`FOLDERS`) that is something else, if any."""
    return next((entry for entry in (results_dir / name for name in FOLDERS)
                 if entry.exists() and not entry.is_dir()), None)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- writing ---------------------------------------------------------------------------------
def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)``, then rename over ``path``: a reader sees the old file or the
    whole new one. On any failure nothing is left behind and :class:`StoreError` names the file
    (a full disk included, whichever library wrote)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise StoreError(f"could not write {path}: {err.strerror or err}") from err
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared store must be readable
        os.replace(tmp, path)
    except BaseException as err:
        full = _disk_full(path.parent)  # before the temporary's space is given back
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception):
            # Libraries word a full disk their own way ("enforce fail at inline_container.cc");
            # the file system says what happened.
            reason = "No space left on device" if full else \
                err.strerror if isinstance(err, OSError) and err.strerror else \
                str(err).splitlines()[0] if str(err) else type(err).__name__
            raise StoreError(f"could not write {path}: {reason}") from err
        raise
    return path


def _disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system holding ``folder`` has less than ``margin`` bytes free."""
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def remove_temporaries(*paths: Path) -> None:
    """Remove the temporaries :func:`atomic_write` left for ``paths`` when a process was killed
    mid-write (``.<name>.*.tmp``). Only under the run's lock: then nobody else writes them."""
    for path in paths:
        if path.parent.is_dir():
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)



def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


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


# -- runs ------------------------------------------------------------------------------------
def read_run(path: str | Path) -> tuple[dict[str, Any], pa.Table]:
    """A run file's metadata and rows, read whole (footer, metadata and every row)."""
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {})[META_KEY])
    if table.num_rows == 0 or metrics.STEP not in table.column_names:
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


@contextlib.contextmanager
def claim(results_dir: str | Path, config: RunConfig, wait: bool = True
          ) -> Iterator[Path | None]:
    """Hold the run's lock; yield its complete file, or ``None`` when it has to be computed.

    The lock is an ``flock`` on ``locks/<run_id>.lock``: the kernel releases it when its process
    dies, so a killed run never blocks the next. A second process asking for the same run waits
    (``wait=True``) and then finds it complete. Creating the lock is the first write a run makes:
    a read-only or missing store fails here, with its reason, before any compute.
    """
    done = complete_run(results_dir, config)
    if done is not None:  # nothing to write: no lock, so a read-only store works
        yield done
        return
    files = (run_path(results_dir, config), partial_path(results_dir, config),
             weights_path(results_dir, config))
    # Either would let the whole run compute and then fail to write: refuse before.
    misplaced = _misplaced_folder(Path(results_dir))
    if misplaced is not None:
        raise StoreError(f"{misplaced} is a file where the store keeps a folder; move it away "
                         "and rerun")
    for path in files:
        if path.exists() and not path.is_file():
            raise StoreError(f"{path} is a folder where the store keeps a file; move it away "
                             "and rerun")
    lock = Path(results_dir) / "locks" / f"{config.run_id()}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a")
    except OSError as err:
        raise StoreError(f"results directory {results_dir} is not writable: "
                         f"{err.strerror or err}") from err
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            if not wait:
                raise StoreError(f"run {config.run_id()} is being computed by another process "
                                 f"(lock {lock})") from None
            print(f"run {config.run_id()} is being computed by another process; waiting for "
                  f"it (lock {lock})", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        # Under the lock, nobody else writes this run: its stale temporary files are ours.
        remove_temporaries(*files)
        done = complete_run(results_dir, config)  # the other process may have finished it
        if waited:
            print(f"run {config.run_id()}: " + (f"read the other process's result, {done}"
                  if done is not None else "the other process stopped before the end; "
                  "computing it here"), file=sys.stderr, flush=True)
        yield done


def write_run(results_dir: str | Path, config: RunConfig, rows: list[dict[str, Any]],
              meta: dict[str, Any]) -> Path:
    """Write a completed run atomically; returns its path."""
    path = run_path(results_dir, config)
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    info = {"run_id": config.run_id(), "config": config.to_dict(), **meta}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           META_KEY: json.dumps(info).encode()})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_weights(results_dir: str | Path, config: RunConfig, tensors: dict) -> Path:
    """A run's final trainable parameters (name -> tensor), atomically, as safetensors."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(weights_path(results_dir, config),
                        lambda tmp: save_file(tensors, tmp, metadata={"run_id": config.run_id()}))


def read_weights(results_dir: str | Path, config: RunConfig) -> dict | None:
    """The run's kept final trainable parameters, or None when they were not kept."""
    from safetensors.torch import load_file

    return _read_or_set_aside(weights_path(results_dir, config), load_file)


def write_table(path: Path, frame: pd.DataFrame) -> Path:
    """A derived table (not a run) as Parquet, atomically."""
    return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_table(path: Path) -> pd.DataFrame | None:
    """A table written by :func:`write_table`; None when absent, and set aside (None) when it
    does not read back whole."""
    return _read_or_set_aside(path, pd.read_parquet)


def _read_or_set_aside(path: Path, read: Callable[[Path], Any]) -> Any:
    """``read(path)``; None when the file is absent, and set aside (None) when it does not read
    back whole: the caller recomputes it."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is redone
        set_aside(path, f"unreadable: {err}")
        return None


def record_failure(results_dir: str | Path, config: RunConfig, message: str,
                   traceback_text: str) -> Path | None:
    """Write why a run failed (``failed/<run_id>.json``); ``None`` when even that cannot be
    written (a full disk): the caller still has the message."""
    record = {"config": config.to_dict(), "error": message, "traceback": traceback_text}
    try:
        return write_text(failure_path(results_dir, config), json.dumps(record))
    except StoreError:
        return None


def clear_failure(results_dir: str | Path, config: RunConfig) -> None:
    with contextlib.suppress(OSError):
        failure_path(results_dir, config).unlink(missing_ok=True)


# -- resumable training state ----------------------------------------------------------------
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
        data = path.read_bytes()
        if data.startswith(STATE_MAGIC):  # (states written before the digest load as they are)
            digest, data = data[len(STATE_MAGIC):len(STATE_MAGIC) + 64], \
                data[len(STATE_MAGIC) + 65:]
            if hashlib.sha256(data).hexdigest().encode() != digest:
                raise ValueError("its content does not match its digest (a damaged file)")
        state = torch.load(io.BytesIO(data), weights_only=True, **load_kwargs)
        if not isinstance(state, dict):
            raise ValueError("not a training state")
        return state
    except Exception as err:  # noqa: BLE001 - unreadable: start fresh, keep the file aside
        set_aside(path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return None


def save_state(path: Path, state: dict) -> None:
    """Write a resumable training state atomically (read back by :func:`load_state`)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    header = STATE_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n"
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(header + data))


#: A training state's first bytes: this tag, then the SHA-256 of the rest (a bit flipped on
#: disk is caught when it is read, not as a diverging loss later).
STATE_MAGIC = b"RTLIB-STATE-1\n"


# -- reading ---------------------------------------------------------------------------------
def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads(pq.read_schema(path).metadata[META_KEY])


def run_files(results_dir: str | Path) -> list[Path]:
    """Completed run files (temporary files of interrupted writes are ignored)."""
    folder = runs_dir(results_dir)
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(".")) \
        if folder.is_dir() else []


CONFIG_COLUMNS = ("task", "strategy", "model", "weights", "domain", "seed", "steps", "lr",
                  "batch_size", "train_size", "val_fraction", "train_eval_size", "attack",
                  "attack_steps")


def with_first_budget(frame: pd.DataFrame, eps: float) -> pd.DataFrame:
    """Add the run's first budget under one name for every task (tasks may use other
    budgets): :data:`rtlib.metrics.ROBUST` and its mask (in place; returned for chaining)."""
    frame[metrics.ROBUST] = frame[metrics.robust(eps)]
    if metrics.robust_mask(eps) in frame:  # runs stored before the masks lack it
        frame[metrics.ROBUST_MASK] = frame[metrics.robust_mask(eps)]
    return frame


def load(results_dir: str | Path, configs: Iterable[RunConfig] | None = None) -> pd.DataFrame:
    """One row per run and evaluation point.

    Columns: ``run_id``, the config fields of :data:`CONFIG_COLUMNS`, ``hparams`` (JSON),
    ``eps`` (the run's first budget), ``trainable`` and ``total`` parameters, ``precision`` (fp32
    or bf16, as run), then the run's rows (:mod:`rtlib.metrics`), and ``robust_acc``, robust
    accuracy at ``eps``. With ``configs``, only those runs (the ones not yet run are absent).
    A missing folder is an error; a file that cannot be read is named in a warning and left out.
    """
    if not Path(results_dir).is_dir():
        raise StoreError(f"results directory {results_dir} does not exist or is not a folder")
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
        with_first_budget(frame, cfg["eps"][0])
        front = {"run_id": meta["run_id"], **{k: cfg.get(k) for k in CONFIG_COLUMNS},
                 "eps": eps_label(cfg["eps"][0]),
                 "hparams": json.dumps(cfg.get("hparams", {}), sort_keys=True),
                 "trainable": meta.get("trainable"), "total": meta.get("total"),
                 # what the run computed in (stores from before the field: fp32)
                 "precision": meta.get("precision", "fp32")}
        for i, (k, v) in enumerate(front.items()):
            frame.insert(i, k, [v] * len(frame))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run_id", *CONFIG_COLUMNS, "hparams", metrics.STEP])
    return pd.concat(frames, ignore_index=True).sort_values(
        ["task", "strategy", "seed", "run_id", metrics.STEP], kind="stable").reset_index(drop=True)
