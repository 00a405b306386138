"""Sphinx extension: the built book's site, offline and with optional repository buttons.

Jupyter Book always loads sphinx-thebe, which writes an inline script holding the address of
thebe's JavaScript on a CDN into every page (used only by "launch" buttons, which this book
does not have). This extension drops that script and sphinx-thebe's loader from every page, so
that the site makes no request outside its own folder; scripts/check_site.py verifies it.

The repository, "suggest edit" and "open issue" buttons follow ONE setting, `repository.url`
in _config.yml (the theme option `repository_url`): all three are shown when it is set,
none when it is empty. The edit button opens the page's source book/<page>.md, not the
executed notebook book/<page>.ipynb that Sphinx renders (which is not under version control).
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


REPOSITORY_BUTTONS = ("use_repository_button", "use_edit_page_button", "use_issues_button")
# where a provider's web interface edits a file: {url}/<edit path>/{branch}/{path}
EDIT_PATHS = {"github": "edit", "gitlab": "-/edit"}


def _repository_buttons(app, config) -> None:
    """Show the three repository buttons if and only if repository.url is set."""
    options = config.html_theme_options
    url = str(options.get("repository_url") or "").strip().rstrip("/")
    for key in REPOSITORY_BUTTONS:
        options[key] = bool(url)
    if not url:
        options["repository_url"] = ""
        return
    options["repository_url"] = url
    provider = next((name for name in EDIT_PATHS if f"{name}." in url.lower()), None)
    if provider is None:
        return  # the theme's own edit link (to the rendered .ipynb)
    branch = options.get("repository_branch") or "main"
    folder = str(options.get("path_to_docs") or "").strip("/")
    prefix = f"{folder}/" if folder else ""
    # pydata-sphinx-theme renders this with jinja2; file_name is "<page>.ipynb"
    config.html_context["edit_page_url_template"] = (
        f"{url}/{EDIT_PATHS[provider]}/{branch}/{prefix}"
        "{{ file_name | replace('.ipynb', '.md') }}"
    )
    config.html_context["edit_page_provider_name"] = provider.capitalize()


def setup(app):
    """Register the asset filter and the repository buttons' switch."""
    app.connect("config-inited", _repository_buttons)
    app.connect("html-page-context", _filter_assets, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
