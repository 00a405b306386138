"""Sphinx extension: keep the built book free of references to remote scripts.

Jupyter Book always loads sphinx-thebe, which writes an inline script holding the address of
thebe's JavaScript on a CDN into every page (used only by "launch" buttons, which this book
does not have). This extension drops that script and sphinx-thebe's loader from every page, so
that the site makes no request outside its own folder; scripts/check_site.py verifies it.
"""

from __future__ import annotations

REMOTE_MARKERS = ("THEBE_JS_URL", "unpkg.com")
DROPPED_FILES = ("sphinx-thebe.js", "sphinx-thebe.css")


def _keep(asset) -> bool:
    filename = str(getattr(asset, "filename", asset) or "")
    body = str(getattr(asset, "attributes", {}).get("body", ""))
    if filename.startswith(("http://", "https://", "//")):
        return False
    if any(marker in body for marker in REMOTE_MARKERS):
        return False
    return not filename.split("?")[0].endswith(DROPPED_FILES)


def _filter_assets(app, pagename, templatename, context, doctree):
    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [asset for asset in context[key] if _keep(asset)]


def setup(app):
    app.connect("html-page-context", _filter_assets, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
