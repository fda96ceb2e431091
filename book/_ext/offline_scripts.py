"""Sphinx extension: keep pages free of scripts that reach for the network or clash.

Jupyter Book 1 always loads sphinx-thebe, which adds its inline configuration twice per page
(``const THEBE_JS_URL`` declared twice is a SyntaxError in the browser console) and points at
unpkg.com. This book has no live-code buttons, so both thebe scripts are dropped from every page.
"""


def _drop_thebe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    kept = []
    for script in scripts:
        name = str(getattr(script, "filename", script) or "")
        body = str(getattr(script, "attributes", {}).get("body", ""))
        if "sphinx-thebe" in name or "THEBE_JS_URL" in body:
            continue
        kept.append(script)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _drop_thebe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
