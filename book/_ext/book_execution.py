"""Execute the book's pages with papermill, as part of `jupyter-book build book/`.

Every page of book/_toc.yml has a jupytext MyST source book/<page>.md (the only form under
version control). This module converts it and executes it with papermill in book/ into the
notebook book/<page>.ipynb (gitignored), which Jupyter Book renders (_config.yml excludes
*.md). Pages without code cells are converted, not executed. It is used in two ways:

* as a Sphinx extension (_config.yml, sphinx.local_extensions): at `builder-inited`,
  before Sphinx reads any page, every page whose notebook is missing or stale is executed;
  a failing cell stops the build with a non-zero exit status, naming the page and the cell;
* by scripts/build_book.py (`make book`), which sets the options below and runs the same
  `jupyter-book build book/`.

A notebook is up to date when the fingerprint stored in its metadata (`cmmc_book`) equals the
current one, made of
  source      sha256 of book/<page>.md
  parameters  the parameters papermill injects: `profile`, `results_dir` and the mode's
              parameters from book/modes.toml, then overrides (paths inside the repository
              are written relative to it, so a moved clone stays up to date)
  library     sha256 of cmmc/**/*.py, cmmc/**/*.toml and book/*.py
  records     the committed files under results_dir (their git blob ids; empty when results_dir
              holds no tracked file or the folder is not a git checkout)
  scheme      SCHEME below (raise it when the conversion itself changes)
A page without code cells depends on its source and the scheme only. An up-to-date notebook is
not touched (not even its modification time), so Sphinx does not read it again either.

Options (environment variables; scripts/build_book.py sets them from its command line):
  CMMC_BOOK_MODE      mode of book/modes.toml (default: records, the reader's; the former
                      names CMMC_BOOK_PROFILE and mode "paper" are read as well)
  CMMC_BOOK_PARAMS    JSON object: parameters for every executed page (override the mode's)
  CMMC_BOOK_ONLY      pages (separated by spaces) that may be executed; the others keep their
                      notebook, stale or not (converted without outputs if they have none)
  CMMC_BOOK_RERUN     1: execute the pages that may be executed even when up to date
  CMMC_BOOK_EXECUTE   0: execute nothing (keep the notebooks, convert the missing ones)
  CMMC_BOOK_JOBS      pages executed in parallel (default 1)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1]
ROOT = BOOK.parent
TOC = BOOK / "_toc.yml"
MODES = BOOK / "modes.toml"
DEFAULT_MODE = "records"
FORMER_MODES = {"paper": "full"}  # the former name of the full mode (before 2026-12-05)
SCHEME = "1"
METADATA_KEY = "cmmc_book"

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
HIDE_TAGS = {"remove-cell", "remove-input", "hide-cell", "hide-input"}
# The kernel's own log, not the notebook's output: ipykernel warns about its TCP transport at
# every start, and logs an error when the interrupt that jupyter_client sends before every
# shutdown reaches a message handler. A failing cell or a dead kernel is reported by papermill.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    """What to execute; read from the CMMC_BOOK_* environment variables."""

    mode: str = DEFAULT_MODE
    params: dict = field(default_factory=dict)
    only: tuple[str, ...] | None = None
    rerun: bool = False
    execute: bool = True
    jobs: int = 1

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """The settings named by CMMC_BOOK_* variables (defaults for the absent ones)."""
        env = os.environ if environ is None else environ
        params = json.loads(env.get("CMMC_BOOK_PARAMS") or "{}")
        if not isinstance(params, dict):
            raise ValueError("CMMC_BOOK_PARAMS must be a JSON object")
        only = env.get("CMMC_BOOK_ONLY", "").split()
        return cls(
            mode=env.get("CMMC_BOOK_MODE") or env.get("CMMC_BOOK_PROFILE") or DEFAULT_MODE,
            params=params,
            only=tuple(only) or None,
            rerun=env.get("CMMC_BOOK_RERUN", "0") not in ("", "0"),
            execute=env.get("CMMC_BOOK_EXECUTE", "1") not in ("", "0"),
            jobs=max(1, int(env.get("CMMC_BOOK_JOBS") or 1)),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that :meth:`from_env` reads back into these settings."""
        return {
            "CMMC_BOOK_MODE": self.mode,
            "CMMC_BOOK_PARAMS": json.dumps(self.params),
            "CMMC_BOOK_ONLY": " ".join(self.only or ()),
            "CMMC_BOOK_RERUN": "1" if self.rerun else "0",
            "CMMC_BOOK_EXECUTE": "1" if self.execute else "0",
            "CMMC_BOOK_JOBS": str(self.jobs),
        }


@dataclass
class Outcome:
    """What happened to one page."""

    page: str
    status: str  # executed | converted | failed | up-to-date | kept
    seconds: float = 0.0
    error: str = ""
    reason: str = ""


class PageExecutionError(Exception):
    """One or more pages failed to execute (the message names them)."""


def toc_pages(toc_path: Path | None = None) -> list[str]:
    """The page stems of the table of contents, in reading order."""
    import yaml

    toc = yaml.safe_load((TOC if toc_path is None else toc_path).read_text())
    pages = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(str(node["file"]))
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in toc.items() if k != "root"})
    stems = [Path(p).with_suffix("").as_posix() if Path(p).suffix else p for p in pages]
    return list(dict.fromkeys(stems))


def load_mode(name: str, path: Path | None = None) -> dict:
    """One mode of book/modes.toml (ValueError naming the known ones if absent)."""
    path = MODES if path is None else path
    modes = tomllib.loads(path.read_text())
    name = FORMER_MODES.get(name, name)
    if name not in modes:
        raise ValueError(f"unknown mode {name!r}; {path.name} defines {sorted(modes)}")
    return modes[name]


def page_parameters(mode_name: str, mode: dict, page: str, overrides: dict) -> dict:
    """The parameters papermill injects into one page (results_dir absolute); a page's schedule
    ``profile`` is the mode's name unless the mode's parameters say otherwise."""
    results_dir = (ROOT / mode.get("results_dir", "results")).resolve()
    params = {"profile": FORMER_MODES.get(mode_name, mode_name), "results_dir": str(results_dir)}
    params.update(mode.get("params", {}))
    params.update(mode.get("pages", {}).get(page, {}))
    params.update(overrides)
    return params


def read_source(md: Path):
    """Read a MyST markdown page as a notebook (with or without a jupytext header)."""
    import jupytext

    nb = jupytext.read(md, fmt="md:myst")
    nb.metadata.setdefault(
        "kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"}
    )
    # jupytext keeps its own header in the metadata; the executed notebook is not paired.
    nb.metadata.pop("jupytext", None)
    return nb


def has_code(nb) -> bool:
    """Whether the notebook has a non-empty code cell."""
    return any(c.cell_type == "code" and c.source.strip() for c in nb.cells)


def tag_cells(nb):
    """Hide the injected-parameters cell; collapse the input of the parameters cell."""
    for cell in nb.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if INJECTED_TAG in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
        elif PARAMETERS_TAG in tags and not HIDE_TAGS.intersection(tags):
            tags.append("hide-input")
    return nb


def _sha256(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def library_digest(root: Path | None = None) -> str:
    """sha256 over the library's code and data files (cmmc/**/*.py, *.toml) and book/*.py."""
    root = ROOT if root is None else root
    files = [
        *(p for pattern in ("*.py", "*.toml") for p in (root / "cmmc").rglob(pattern)),
        *(root / "book").glob("*.py"),
    ]
    files = sorted(p for p in files if "__pycache__" not in p.parts)
    return _sha256(
        part for p in files for part in (p.relative_to(root).as_posix().encode(), p.read_bytes())
    )


def records_digest(results_dir: Path, root: Path | None = None) -> str:
    """sha256 of the committed files under results_dir (git blob ids); "" if there are none."""
    root = ROOT if root is None else root
    try:
        rel = Path(results_dir).resolve().relative_to(root)
    except ValueError:
        return ""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-s", "-z", "--", rel.as_posix() or "."],
            cwd=root,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return _sha256([listing]) if listing else ""


def portable(params: dict, root: Path | None = None) -> dict:
    """The parameters with paths inside the repository written relative to it."""
    root = ROOT if root is None else root
    prefix = str(root) + os.sep

    def rel(value):
        if isinstance(value, str) and (value == str(root) or value.startswith(prefix)):
            return "<repository>/" + Path(value).relative_to(root).as_posix()
        return value

    return {key: rel(value) for key, value in params.items()}


def fingerprint(source: bytes, params: dict, code: bool, library: str, records: str) -> dict:
    """The fingerprint stored in an executed notebook's metadata (see the module docstring)."""
    fp = {"scheme": SCHEME, "source": hashlib.sha256(source).hexdigest()}
    if code:
        fp["parameters"] = portable(params)
        fp["library"] = library
        fp["records"] = records
    return fp


def stored_fingerprint(notebook: Path) -> dict | None:
    """The fingerprint in a notebook's metadata, or None (no notebook, failed, unreadable)."""
    try:
        with notebook.open(encoding="utf-8") as f:
            return json.load(f).get("metadata", {}).get(METADATA_KEY)
    except (OSError, ValueError, AttributeError):
        return None


def stale_reason(stored: dict | None, current: dict) -> str:
    """Why a notebook must be executed again ("" when it is up to date)."""
    if stored is None:
        return "no executed notebook"
    names = [k for k in ("scheme", "source", "parameters", "library", "records") if k in current]
    changed = [k for k in names if stored.get(k) != current[k]]
    return (", ".join(changed) + " changed") if changed else ""


def _write_notebook(nb, path: Path, fp: dict | None) -> None:
    import nbformat

    if fp is not None:
        nb.metadata[METADATA_KEY] = fp
    else:
        nb.metadata.pop(METADATA_KEY, None)
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def convert_page(page: str, fp: dict | None) -> Outcome:
    """Write book/<page>.ipynb from the source without executing it."""
    start = time.perf_counter()
    _write_notebook(tag_cells(read_source(BOOK / f"{page}.md")), BOOK / f"{page}.ipynb", fp)
    return Outcome(page, "converted", time.perf_counter() - start)


def execute_page(page: str, params: dict, cell_timeout: float | None, fp: dict) -> Outcome:
    """Execute book/<page>.md with papermill into book/<page>.ipynb.

    On success the notebook carries the fingerprint `fp`; a failed notebook (partial output
    kept for reading) carries none, so that the next build executes it again.
    """
    import nbformat
    import papermill as pm

    md = BOOK / f"{page}.md"
    out = BOOK / f"{page}.ipynb"
    start = time.perf_counter()
    nb = tag_cells(read_source(md))
    nb.metadata.pop(METADATA_KEY, None)
    try:
        pm.execute_notebook(
            nb,
            str(out),
            parameters=params,
            kernel_name="python3",
            cwd=str(BOOK),
            progress_bar=False,
            log_output=False,
            execution_timeout=cell_timeout,
            extra_arguments=KERNEL_ARGUMENTS,
        )
        status, error = "executed", ""
    except pm.PapermillExecutionError as exc:
        status = "failed"
        error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel died, timeout, bad notebook...
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    if out.exists():
        executed = nbformat.read(out, as_version=4)
        _write_notebook(tag_cells(executed), out, fp if status == "executed" else None)
    return Outcome(page, status, time.perf_counter() - start, error)


def prepare_pages(settings: Settings, log: Log = print, toc: Path | None = None) -> list[Outcome]:
    """Bring every page's notebook up to date; PageExecutionError if a page fails."""
    toc = TOC if toc is None else toc
    pages = toc_pages(toc)
    missing = [p for p in pages if not (BOOK / f"{p}.md").exists()]
    if missing:
        raise PageExecutionError(f"pages in {toc.name} without a source book/<page>.md: {missing}")
    if settings.only:
        unknown = sorted(set(settings.only) - set(pages))
        if unknown:
            raise PageExecutionError(f"pages not in the table of contents: {unknown}")
    try:
        mode = load_mode(settings.mode)
    except ValueError as exc:
        raise PageExecutionError(str(exc)) from exc
    cell_timeout = mode.get("cell_timeout")
    library = library_digest()
    records: dict[str, str] = {}

    start = time.perf_counter()
    outcomes: list[Outcome] = []
    to_execute: list[tuple[str, dict, dict, str]] = []
    for page in pages:
        md, nb_path = BOOK / f"{page}.md", BOOK / f"{page}.ipynb"
        source = md.read_bytes()
        code = has_code(read_source(md))
        params = page_parameters(settings.mode, mode, page, settings.params)
        if code and params["results_dir"] not in records:
            records[params["results_dir"]] = records_digest(Path(params["results_dir"]))
        fp = fingerprint(source, params, code, library, records.get(params["results_dir"], ""))
        reason = stale_reason(stored_fingerprint(nb_path), fp)
        selected = settings.execute and (settings.only is None or page in settings.only)
        if not code:
            if reason:
                outcome = convert_page(page, fp)
                outcome.reason = reason
                outcomes.append(outcome)
            else:
                outcomes.append(Outcome(page, "up-to-date"))
        elif selected and (reason or settings.rerun):
            to_execute.append((page, params, fp, reason or "rerun asked"))
        elif not reason:
            outcomes.append(Outcome(page, "up-to-date"))
        elif nb_path.exists():
            outcomes.append(Outcome(page, "kept", reason=reason))
            log(f"book/{page}.ipynb kept although stale ({reason})")
        else:
            outcomes.append(convert_page(page, None))
            log(f"book/{page}.ipynb converted without outputs (not executed this time)")

    if to_execute:
        results_dirs = {Path(params["results_dir"]) for _, params, _, _ in to_execute}
        for folder in sorted(results_dirs):
            folder.mkdir(parents=True, exist_ok=True)
        log(
            f"executing {len(to_execute)} page(s) of {len(pages)} with papermill "
            f"(mode {settings.mode!r}, {settings.jobs} job(s))"
        )
        if "CMMC_DATA_DIR" in os.environ:
            log(f"data: CMMC_DATA_DIR={os.environ['CMMC_DATA_DIR']}")

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        name = f"book/{outcome.page}.md"
        line = f"  {outcome.status:9s} {name:28s} {outcome.seconds:7.1f} s"
        if outcome.error:
            line += f"   {outcome.error.splitlines()[0][:200]}"
        log(line)

    reasons = {page: reason for page, _, _, reason in to_execute}
    if settings.jobs > 1 and len(to_execute) > 1:
        # spawn: a fresh interpreter per worker, never a fork of the Sphinx process
        with ProcessPoolExecutor(settings.jobs, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(execute_page, page, params, cell_timeout, fp)
                for page, params, fp, _ in to_execute
            ]
            for page, _, _, reason in to_execute:
                log(f"  queued    book/{page}.md ({reason})")
            for future in as_completed(futures):
                report(future.result())
    else:
        for page, params, fp, reason in to_execute:
            log(f"  running   book/{page}.md ({reason}) ...")
            report(execute_page(page, params, cell_timeout, fp))
    for outcome in outcomes:
        outcome.reason = outcome.reason or reasons.get(outcome.page, "")

    counts = {s: sum(o.status == s for o in outcomes) for s in ("executed", "up-to-date")}
    failed = [o for o in outcomes if o.status == "failed"]
    converted = sum(o.status == "converted" for o in outcomes)
    kept = sum(o.status == "kept" for o in outcomes)
    log(
        f"notebooks (mode {settings.mode!r}): {counts['executed']} executed, "
        f"{counts['up-to-date']} up to date, {converted} converted, {kept} kept stale, "
        f"{len(failed)} failed; {time.perf_counter() - start:.1f} s"
    )
    if failed:
        lines = [f"book/{o.page}.md: {o.error}" for o in failed]
        raise PageExecutionError(
            f"{len(failed)} page(s) failed (partial output in book/<page>.ipynb):\n  "
            + "\n  ".join(lines)
        )
    return outcomes


# ---------------------------------------------------------------------------- Sphinx extension


def _on_builder_inited(app) -> None:
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    if Path(app.srcdir).resolve() != BOOK:
        return
    toc = Path(str(app.config["external_toc_path"] or TOC))
    if not toc.is_absolute():
        toc = BOOK / toc
    try:
        settings = Settings.from_env()
        prepare_pages(settings, log=logger.info, toc=toc)
    except (PageExecutionError, ValueError) as exc:
        raise ExtensionError(f"executing the book's pages: {exc}", modname=__name__) from None


def setup(app) -> dict:
    """Register the execution of stale pages before Sphinx reads any of them."""
    app.connect("builder-inited", _on_builder_inited)
    return {"version": SCHEME, "parallel_read_safe": True, "parallel_write_safe": True}
