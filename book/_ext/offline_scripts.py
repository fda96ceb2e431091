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


def build_label(root) -> str:
    """``rtlib <version>, commit <sha>`` of the checkout the book is built from (``+ local
    changes`` when its working tree differs from the commit), for every page's footer."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    try:
        label = f"rtlib {version('rtlib')}"
    except PackageNotFoundError:
        label = "rtlib (not installed)"

    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return label + (f", commit {sha}" + (" + local changes" if dirty else "") if sha
                    else ", not built from a git checkout")


def _footer(app, config):
    options = dict(config.html_theme_options or {})
    footer = options.get("extra_footer", "")
    options["extra_footer"] = (footer + " " if footer else "") + \
        f"<p>Built with {build_label(app.srcdir)}.</p>"
    config.html_theme_options = options


def setup(app):
    app.connect("html-page-context", _drop_thebe, priority=900)
    app.connect("config-inited", _footer)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
