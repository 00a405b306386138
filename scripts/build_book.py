"""Execute the book's notebooks with papermill and build the book with Jupyter Book.

Scheme: every page listed in book/_toc.yml has a jupytext MyST markdown source book/<page>.md
(the only file under version control). This script converts each source to a notebook and
writes the executed notebook book/<page>.ipynb next to it (gitignored). Jupyter Book renders
only the .ipynb files (_config.yml excludes *.md), so a source and its notebook never clash.
Pages without code cells (e.g. references) are converted, not executed.

    python scripts/build_book.py --profile quick            # CI: short schedules
    python scripts/build_book.py --profile paper            # the real thing, results/ filled
    python scripts/build_book.py --only intro data          # execute some pages, build all
    python scripts/build_book.py --skip-execute             # only build (prose edits)
    python scripts/build_book.py -p dataset BDGP --only autoencoders

A failing cell fails the command (exit status 1, the failing notebooks named); the book is then
not built. Any Sphinx warning fails the build too.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
TOC = BOOK / "_toc.yml"
PROFILES = BOOK / "profiles.toml"
BUILD_DIR = BOOK / "_build"

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
HIDE_TAGS = {"remove-cell", "remove-input", "hide-cell", "hide-input"}


@dataclass
class Outcome:
    page: str
    status: str  # executed | converted | failed | kept
    seconds: float = 0.0
    error: str = ""
    extra: dict = field(default_factory=dict)


def toc_pages(toc_path: Path = TOC) -> list[str]:
    """The page stems of the table of contents, in reading order."""
    import yaml

    toc = yaml.safe_load(toc_path.read_text())
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


def load_profile(name: str, path: Path = PROFILES) -> dict:
    profiles = tomllib.loads(path.read_text())
    if name not in profiles:
        raise SystemExit(f"unknown profile {name!r}; {path} defines {sorted(profiles)}")
    return profiles[name]


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


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def execute_page(page: str, parameters: dict, cell_timeout: float | None) -> Outcome:
    """Convert book/<page>.md and execute it with papermill into book/<page>.ipynb."""
    import nbformat
    import papermill as pm

    md = BOOK / f"{page}.md"
    out = BOOK / f"{page}.ipynb"
    start = time.perf_counter()
    nb = tag_cells(read_source(md))
    if not has_code(nb):
        nbformat.write(nb, out)
        return Outcome(page, "converted", time.perf_counter() - start)
    try:
        pm.execute_notebook(
            nb,
            str(out),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(md.parent),
            progress_bar=False,
            log_output=False,
            execution_timeout=cell_timeout,
        )
        status, error = "executed", ""
    except pm.PapermillExecutionError as exc:
        status = "failed"
        error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel died, timeout, bad notebook...
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    if out.exists():
        executed = nbformat.read(out, as_version=4)
        nbformat.write(tag_cells(executed), out)
    return Outcome(page, status, time.perf_counter() - start, error)


def convert_only(page: str) -> Outcome:
    """Write an unexecuted book/<page>.ipynb (used when a page is not executed this time)."""
    import nbformat

    start = time.perf_counter()
    nbformat.write(tag_cells(read_source(BOOK / f"{page}.md")), BOOK / f"{page}.ipynb")
    return Outcome(page, "converted", time.perf_counter() - start)


def jupyter_book_command() -> list[str]:
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if not found:
        raise SystemExit("jupyter-book not found: run `make setup` first")
    return [found]


def build_book(incremental: bool) -> tuple[int, list[str], float]:
    """Run Jupyter Book with warnings as errors; return (status, warning lines, seconds)."""
    cmd = [
        *jupyter_book_command(),
        "build",
        "book/",
        "--path-output",
        "book",
        "-W",
        "-n",
        "--keep-going",
    ]
    if not incremental:
        cmd.append("--all")
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    warnings = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        if "WARNING" in line or "ERROR" in line or "CRITICAL" in line:
            warnings.append(line.rstrip())
    status = proc.wait()
    return status, warnings, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="quick", help="profile in book/profiles.toml")
    parser.add_argument("--only", nargs="+", metavar="PAGE", help="execute only these pages")
    parser.add_argument("--skip-execute", action="store_true", help="do not execute notebooks")
    parser.add_argument("--skip-build", action="store_true", help="execute, do not build")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="notebooks run in parallel")
    parser.add_argument("--results-dir", type=Path, help="override the profile's results_dir")
    parser.add_argument("--data-dir", type=Path, help="passed to the notebooks as data_dir")
    parser.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="extra parameter for every executed notebook (value parsed as a Python literal)",
    )
    parser.add_argument(
        "--incremental", action="store_true", help="let Sphinx reuse its environment (no --all)"
    )
    args = parser.parse_args(argv)

    pages = toc_pages()
    missing = [p for p in pages if not (BOOK / f"{p}.md").exists()]
    if missing:
        print(f"error: pages in {TOC.relative_to(ROOT)} without a source book/<page>.md: {missing}")
        return 2
    if args.only:
        unknown = sorted(set(args.only) - set(pages))
        if unknown:
            print(f"error: --only names pages that are not in the table of contents: {unknown}")
            return 2
    to_execute = [] if args.skip_execute else [p for p in pages if not args.only or p in args.only]

    profile = load_profile(args.profile)
    results_dir = (args.results_dir or ROOT / profile.get("results_dir", "results")).resolve()
    base = {"profile": args.profile, "results_dir": str(results_dir)}
    if args.data_dir:
        base["data_dir"] = str(args.data_dir.resolve())
    base.update(profile.get("params", {}))
    cli_params = {name: parse_value(value) for name, value in args.param}
    cell_timeout = profile.get("cell_timeout")

    def params_for(page: str) -> dict:
        return {**base, **profile.get("pages", {}).get(page, {}), **cli_params}

    if to_execute:
        results_dir.mkdir(parents=True, exist_ok=True)
        print(f"profile {args.profile!r}: results_dir={results_dir}", flush=True)
        if "CMMC_DATA_DIR" in os.environ and "data_dir" not in base:
            print(f"data: CMMC_DATA_DIR={os.environ['CMMC_DATA_DIR']}", flush=True)

    outcomes: list[Outcome] = []
    total_start = time.perf_counter()

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        line = f"  {outcome.status:9s} {outcome.page:20s} {outcome.seconds:8.1f} s"
        if outcome.error:
            line += f"   {outcome.error.splitlines()[0][:200]}"
        print(line, flush=True)

    if to_execute:
        print(f"executing {len(to_execute)} page(s) with {args.jobs} job(s)", flush=True)
    if args.jobs > 1 and len(to_execute) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {
                pool.submit(execute_page, p, params_for(p), cell_timeout): p for p in to_execute
            }
            for future in as_completed(futures):
                report(future.result())
    else:
        for page in to_execute:
            print(f"  running   {page} ...", flush=True)
            report(execute_page(page, params_for(page), cell_timeout))

    # pages not executed this time: keep their notebook, or convert the source if there is none
    for page in pages:
        if page in to_execute:
            continue
        nb_path = BOOK / f"{page}.ipynb"
        if nb_path.exists():
            stale = nb_path.stat().st_mtime < (BOOK / f"{page}.md").stat().st_mtime
            outcomes.append(Outcome(page, "kept", extra={"stale": stale}))
            if stale:
                print(f"  note: book/{page}.ipynb is older than its source; rerun it with --only")
        else:
            report(convert_only(page))

    failed = [o for o in outcomes if o.status == "failed"]
    executed_time = sum(o.seconds for o in outcomes if o.status in ("executed", "failed"))
    if to_execute:
        print(
            f"notebooks: {sum(o.status == 'executed' for o in outcomes)} executed, "
            f"{sum(o.status == 'converted' for o in outcomes)} converted, {len(failed)} failed; "
            f"{time.perf_counter() - total_start:.1f} s wall, {executed_time:.1f} s in notebooks",
            flush=True,
        )
    if failed:
        print("\nFAILED notebooks (the partial output is in book/<page>.ipynb):")
        for o in failed:
            print(f"  book/{o.page}.md: {o.error}")
        return 1
    if args.skip_build:
        return 0

    status, warnings, seconds = build_book(args.incremental)
    print(f"jupyter-book build: {seconds:.1f} s, exit status {status}, {len(warnings)} warning(s)")
    if status != 0 or warnings:
        print("\nFAILED: the book build reported warnings or errors (-W):")
        for w in warnings:
            print(f"  {w}")
        return 1
    print(f"book: {BUILD_DIR.relative_to(ROOT)}/html/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
