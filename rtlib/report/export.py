"""One executed notebook as one HTML page that opens offline (``python -m rtlib view``).

A chapter rerun with papermill is a notebook file; nothing installed here opens one (no
nbconvert, no Jupyter server), and ``jupyter-book build`` of a single notebook loads Vega from a
CDN. This page inlines everything: the Markdown cells rendered, each code cell's outputs (HTML,
images as data URIs, text), and the Vega bundle the book serves itself, so the charts draw
without a network. Cells tagged ``remove-cell`` are left out, as in the book; code is shown
folded.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

from ..config import ConfigError

STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
line-height:1.5;color:#222}pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.85em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 6px}
details{margin:.5em 0}summary{color:#666;cursor:pointer}img{max-width:100%}
@media (prefers-color-scheme: dark){body{background:#fff}}"""


def export_html(notebook: str | Path, out: str | Path | None = None) -> Path:
    """Write ``notebook`` (an executed .ipynb) as one self-contained HTML page; returns it
    (default: beside the notebook, ``.html``)."""
    from markdown_it import MarkdownIt

    from .book import vega_bundle

    notebook = Path(notebook)
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError("notebook", str(notebook), "an executed .ipynb file",
                          f"unreadable ({type(err).__name__}):") from None
    markdown = MarkdownIt("commonmark").enable("table")
    glued = _glued(cells)
    parts = []
    for cell in cells:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if "remove-cell" in tags:
            continue
        source = "".join(cell.get("source", []))
        if cell.get("cell_type") == "markdown":
            parts.append(markdown.render(_plain_roles(source, glued)))
        elif cell.get("cell_type") == "code":
            if "remove-input" not in tags and source.strip():
                parts.append(f"<details><summary>code</summary><pre>{html.escape(source)}"
                             "</pre></details>")
            if "remove-output" not in tags:
                parts += [_output(o, markdown) for o in cell.get("outputs", [])]
    out = Path(out) if out else notebook.with_suffix(".html")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(notebook.stem)}</title><style>{STYLE}</style>"
            f"<script>{vega_bundle()}</script></head><body>{''.join(parts)}</body></html>")
    from ..store import write_text

    return write_text(out, page)


#: A MyST role: {doc}`text <target>`, {term}`word`, {glue:text}`name`, {cite:t}`key`.
ROLE = re.compile(r"\{([\w:-]+)\}`([^`]*?)(?:\s*<[^>`]*>)?`")


def _plain_roles(text: str, glued: dict[str, str]) -> str:
    """MyST roles as a plain page reads them: a glued value in its place, a link's text."""
    return ROLE.sub(lambda m: glued.get(m.group(2), m.group(2)) if m.group(1).startswith("glue")
                    else m.group(2), text)


def _glued(cells: list[dict]) -> dict[str, str]:
    """Values glued by the notebook (myst_nb.glue): name -> text."""
    values = {}
    for cell in cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            text = next((v for k, v in output.get("data", {}).items()
                         if k.endswith("text/plain")), None)
            if name and text is not None:
                text = "".join(text) if isinstance(text, list) else text
                values[name] = text.strip("'\"")
    return values


def _output(output: dict, markdown) -> str:
    """One cell output as HTML: the richest form it carries."""
    if output.get("output_type") == "stream":
        return f"<pre>{html.escape(''.join(output.get('text', [])))}</pre>"
    if output.get("output_type") == "error":
        return f"<pre>{html.escape(output.get('ename', ''))}: " \
               f"{html.escape(output.get('evalue', ''))}</pre>"
    data = output.get("data", {})

    def text(key: str) -> str:
        value = data[key]
        return "".join(value) if isinstance(value, list) else value

    if "text/html" in data:
        return text("text/html")
    if "image/png" in data:
        return f"<img src='data:image/png;base64,{text('image/png').strip()}'>"
    if "image/svg+xml" in data:
        return text("image/svg+xml")
    if "text/markdown" in data:
        return markdown.render(text("text/markdown"))
    if "text/plain" in data:
        return f"<pre>{html.escape(text('text/plain'))}</pre>"
    return ""
