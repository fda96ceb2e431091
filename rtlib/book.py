"""Execute the book's notebooks with papermill, then compile them with Jupyter Book 1.

Notebook templates live in ``notebooks/`` without outputs; executed copies are written to
``book/executed/`` (a build product). A notebook that fails stops the build with its name and
the failing cell, and its executed copy is kept for inspection.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "book" / "executed"


STATIC = ROOT / "_static"
VEGA_BUNDLE = "vega-offline.js"


class NotebookFailed(RuntimeError):
    pass


def setup_notebook() -> None:
    """Display settings shared by the book's notebooks: Altair as HTML (drawn by the Vega
    bundle the book serves itself, so no CDN is needed) and readable pandas tables."""
    import altair as alt
    import pandas as pd

    # SVG rather than canvas: the marks are in the page, for readers' tools and our tests.
    alt.renderers.enable("html", embed_options={"renderer": "svg"})
    alt.data_transformers.disable_max_rows()
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.precision", 3)


def write_static_assets(folder: Path = STATIC) -> Path:
    """Write Vega, Vega-Lite and Vega-Embed (from vl-convert, offline) as one script.

    The bundle is wrapped in a function so its top-level names stay private; it sets
    ``window.vega``/``vegaLite``/``vegaEmbed`` and declares their versions in ``VEGA_DEBUG``,
    which is how Altair's HTML output knows not to fetch them from a CDN.
    """
    import altair as alt
    import vl_convert as vlc

    folder.mkdir(parents=True, exist_ok=True)
    vl = ".".join(alt.VEGALITE_VERSION.split(".")[:2])
    bundle = vlc.javascript_bundle(vl_version=vl)
    versions = {"vega_version": alt.VEGA_VERSION, "vegalite_version": alt.VEGALITE_VERSION,
                "vegaembed_version": alt.VEGAEMBED_VERSION}
    text = ("(function () {\n" + bundle + "\n})();\n"
            f"window.VEGA_DEBUG = Object.assign(window.VEGA_DEBUG || {{}}, {json.dumps(versions)});\n")
    path = folder / VEGA_BUNDLE
    path.write_text(text)
    return path


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
    write_static_assets()
    output = Path(output or ROOT)  # Jupyter Book writes OUTPUT/_build/html
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT),
           "--path-output", str(output), "--warningiserror", "--nitpick", "--quiet"]
    subprocess.run(cmd, check=True)
    return output / "_build" / "html" / "index.html"
