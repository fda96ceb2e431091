"""Time how fast each bad input of the test table is answered (CLI in-process, and notebook
parameters through rtlib.study.runs): the message must come before any compute.

    python bench/bad_inputs.py
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtlib import cli, study  # noqa: E402
from rtlib.errors import ConfigError  # noqa: E402
from tests.test_sweep import BAD_INPUTS  # noqa: E402

NOTEBOOK = [{"tasks": ["cifar11"]}, {"strategies": ["lorra"]}, {"eps": [-0.1]}, {"steps": 0},
            {"steps": "ten"}, {"preset": "huge"}, {"seeds": ["a"]}, {"domain": "sketch"},
            {"executor": "slurm"}]


def main() -> None:
    results = tempfile.mkdtemp()
    rows = []
    for argv, _ in BAD_INPUTS:
        err = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
            cli.main(argv + (["--results-dir", results] if argv[0] != "strategies" else []))
        rows.append(("python -m rtlib " + " ".join(argv), time.perf_counter() - t0,
                     err.getvalue().strip().splitlines()[-1]))
    for params in NOTEBOOK:
        t0 = time.perf_counter()
        try:
            study.runs(**{"tasks": ["digits"], "strategies": ["lora"], "results_dir": results,
                          "progress": False, **params})
            message = "ACCEPTED (bug)"
        except ConfigError as e:
            message = str(e)
        rows.append((f"notebook parameter {params}", time.perf_counter() - t0, message))
    width = max(len(r[0]) for r in rows)
    for name, seconds, message in rows:
        print(f"{name:<{width}}  {seconds:6.3f} s  {message[:110]}")
    print(f"{len(rows)} bad inputs; slowest answer {max(r[1] for r in rows):.3f} s")


if __name__ == "__main__":
    main()
