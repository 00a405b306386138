"""Lint the book's pages as Python: each MyST notebook (book/*.md) is converted with jupytext and
checked by ruff's pyflakes rules (unused or undefined names, syntax), named by page and line.

    python scripts/lint_pages.py          # exit 1 when a page has a finding (run by make lint)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parents[1]
RULES = "F,E9"  # pyflakes and syntax errors; E402 is the pages' way (imports after set-up)


def main() -> int:
    pages = sorted(p for p in (ROOT / "book").glob("*.md") if "kernelspec" in p.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for page in pages:
            nb = jupytext.read(page)
            jupytext.write(nb, Path(tmp) / f"{page.stem}.py", fmt="py:percent")
        out = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--isolated", "--select", RULES,
             "--output-format", "concise", tmp],
            capture_output=True, text=True,
        )  # fmt: skip
    findings = [line.replace(tmp + "/", "book/").replace(".py:", ".md (as .py):")
                for line in out.stdout.splitlines() if line.startswith(tmp)]  # fmt: skip
    print("\n".join(findings) or f"{len(pages)} pages: no findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
