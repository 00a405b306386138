"""Build the book: `jupyter-book build book/` with options, warnings as errors.

The reader's command `jupyter-book build book/` executes every page whose notebook is missing
or stale (book/_ext/book_execution.py: jupytext + papermill, the `records` mode) and builds
the HTML; a second build executes nothing when nothing changed. This script (`make book`) runs
that same command with the options below passed as CMMC_BOOK_* environment variables, and adds
`-W --keep-going`: any Sphinx warning fails the build.

    python scripts/build_book.py                            # = make book (mode records)
    python scripts/build_book.py --mode quick               # CI: every page computes short runs
    python scripts/build_book.py --mode full                # the real thing, results/ filled
    python scripts/build_book.py --only intro data          # execute at most these pages
    python scripts/build_book.py --only autoencoders -p dataset BDGP
    python scripts/build_book.py --only data --rerun        # execute even if up to date
    python scripts/build_book.py --skip-execute             # only build (prose edits)
    python scripts/build_book.py --skip-build               # only execute the notebooks

A failing cell fails the command (exit status 1, the failing pages named); the book is then not
built.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
sys.path.insert(0, str(BOOK / "_ext"))

from book_execution import (  # noqa: E402
    DEFAULT_MODE,
    PageExecutionError,
    Settings,
    prepare_pages,
)

# a Sphinx message: "path:line: WARNING: ...", "WARNING: ...", "ERROR: ..." (colours removed)
SPHINX_PROBLEM = re.compile(r"(^|: )(WARNING|ERROR|CRITICAL|SEVERE):")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_value(text: str):
    """A command-line parameter value: a Python literal if it parses, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def jupyter_book_command() -> list[str]:
    """The jupyter-book executable beside this Python, or the one on PATH."""
    exe = Path(sys.executable).parent / "jupyter-book"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("jupyter-book")
    if not found:
        raise SystemExit("jupyter-book not found: run `make setup` first")
    return [found]


def build_book(settings: Settings, fresh: bool) -> tuple[int, list[str], float]:
    """Run `jupyter-book build book/ -W --keep-going`; return (status, problem lines, seconds)."""
    cmd = [*jupyter_book_command(), "build", "book/", "-W", "--keep-going"]
    if fresh:
        cmd.append("--all")
    env = {**os.environ, **settings.to_env()}
    shown = " ".join(f"{k}={v}" for k, v in settings.to_env().items() if v not in ("", "0", "{}"))
    print(f"$ {shown} {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    problems = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        plain = ANSI.sub("", line).rstrip()
        if SPHINX_PROBLEM.search(plain):
            problems.append(plain)
    status = proc.wait()
    return status, problems, time.perf_counter() - start


def main(argv=None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode",
        "--profile",  # the former name
        dest="mode",
        default=DEFAULT_MODE,
        help="mode in book/modes.toml (records)",
    )
    parser.add_argument("--only", nargs="+", metavar="PAGE", help="execute at most these pages")
    parser.add_argument("--rerun", action="store_true", help="execute even if up to date")
    parser.add_argument("--skip-execute", action="store_true", help="do not execute notebooks")
    parser.add_argument("--skip-build", action="store_true", help="execute, do not build")
    parser.add_argument("--fresh", action="store_true", help="rewrite every HTML page (--all)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="notebooks run in parallel")
    parser.add_argument("--results-dir", type=Path, help="override the mode's results_dir")
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
    args = parser.parse_args(argv)

    params = {}
    if args.results_dir:
        params["results_dir"] = str(args.results_dir.resolve())
    if args.data_dir:
        params["data_dir"] = str(args.data_dir.resolve())
    params.update({name: parse_value(value) for name, value in args.param})
    settings = Settings(
        mode=args.mode,
        params=params,
        only=tuple(args.only) if args.only else None,
        rerun=args.rerun,
        execute=not args.skip_execute,
        jobs=args.jobs,
    )

    if args.skip_build:
        try:
            prepare_pages(settings)
        except PageExecutionError as exc:
            print(f"\nFAILED: {exc}")
            return 1
        return 0

    status, problems, seconds = build_book(settings, args.fresh)
    print(f"jupyter-book build: {seconds:.1f} s, exit status {status}, {len(problems)} warning(s)")
    if status != 0 or problems:
        print("\nFAILED: the book build reported warnings or errors (-W):")
        for line in problems:
            print(f"  {line}")
        return 1
    print(f"book: {(ROOT / '_build' / 'html' / 'index.html').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
