"""Execute the book's notebooks with papermill, then compile them with Jupyter Book 1.

Notebook templates live in ``notebooks/`` without outputs; executed copies are written to
``book/executed/`` (a build product). A notebook that fails stops the build with its name and
the failing cell, and its executed copy is kept for inspection.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "book" / "executed"


class NotebookFailed(RuntimeError):
    pass


def execute(names: list[str] | None = None, parameters: Mapping[str, Any] | None = None,
            output_dir: Path = EXECUTED) -> list[Path]:
    """Run each notebook of ``notebooks/`` (or the ``names`` given) with ``parameters``.

    A parameter a notebook does not declare is not injected into it.
    """
    import papermill as pm

    output_dir.mkdir(parents=True, exist_ok=True)
    paths = sorted(NOTEBOOKS.glob("*.ipynb")) if not names else [NOTEBOOKS / f"{n}.ipynb"
                                                                   for n in names]
    written = []
    for path in paths:
        declared = pm.inspect_notebook(str(path))
        params = {k: v for k, v in (parameters or {}).items() if k in declared}
        out = output_dir / path.name
        try:
            pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(ROOT),
                                kernel_name="python3", progress_bar=False)
        except pm.PapermillExecutionError as err:
            raise NotebookFailed(f"notebook {path.name} failed in cell {err.exec_count}: "
                                 f"{err.ename}: {err.evalue}\nexecuted copy kept at {out}") from err
        written.append(out)
    return written


def build(parameters: Mapping[str, Any] | None = None, output: Path | None = None) -> Path:
    """Execute every notebook and build the HTML book into ``output/_build/html``.

    Returns the path of the book's index page."""
    execute(parameters=parameters)
    output = Path(output or ROOT)  # Jupyter Book writes OUTPUT/_build/html
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT),
           "--path-output", str(output), "--warningiserror", "--nitpick", "--quiet"]
    subprocess.run(cmd, check=True)
    return output / "_build" / "html" / "index.html"
