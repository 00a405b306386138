"""The book's page execution (book/_ext/book_execution.py): what is executed, when, and failures.

The integration tests build a two-page book in a temporary folder and execute it with papermill
(one Python kernel start per execution).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import book_execution as be  # noqa: E402

PAGE = """\
---
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
# Page {name}

```{{code-cell}} ipython3
:tags: [parameters]

profile = "quick"
results_dir = "."
x = 1
```

```{{code-cell}} ipython3
print("x is", x, "profile", profile)
{extra}
```
"""

PROSE = "# Prose\n\nNo code here.\n"


def _outputs(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    return "".join(
        "".join(out.get("text", ""))
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
    )


@pytest.fixture
def book(tmp_path, monkeypatch):
    """A repository with book/{a,b}.md (a has code, b has none) and a `records` mode."""
    root = tmp_path / "repo"
    book = root / "book"
    book.mkdir(parents=True)
    (book / "_toc.yml").write_text("format: jb-book\nroot: a\nchapters:\n  - file: b\n")
    (book / "modes.toml").write_text(
        '[records]\nresults_dir = "res"\n[records.params]\nprofile = "quick"\n'
        '[quick]\nresults_dir = "book/_build/q"\n'
    )
    (book / "a.md").write_text(PAGE.format(name="a", extra=""))
    (book / "b.md").write_text(PROSE)
    monkeypatch.setattr(be, "BOOK", book)
    monkeypatch.setattr(be, "ROOT", root)
    monkeypatch.setattr(be, "TOC", book / "_toc.yml")
    monkeypatch.setattr(be, "MODES", book / "modes.toml")
    return book


def _statuses(outcomes) -> dict[str, str]:
    return {o.page: o.status for o in outcomes}


def test_settings_round_trip_through_the_environment():
    settings = be.Settings("quick", {"dataset": "BDGP", "seed": 3}, ("a", "b"), True, False, 2)
    assert be.Settings.from_env(settings.to_env()) == settings
    assert be.Settings.from_env({}) == be.Settings(mode="records")
    assert be.Settings.from_env({"CMMC_BOOK_PROFILE": "full"}).mode == "full"  # the former name


def test_stale_reason_names_what_changed():
    fp = be.fingerprint(b"src", {"profile": "quick"}, True, "lib", "rec")
    assert be.stale_reason(fp, dict(fp)) == ""
    assert be.stale_reason(None, fp) == "no executed notebook"
    assert be.stale_reason(fp, be.fingerprint(b"src2", {"profile": "quick"}, True, "lib", "rec"))
    changed = be.fingerprint(b"src", {"profile": "full"}, True, "lib2", "rec")
    assert be.stale_reason(fp, changed) == "parameters, library changed"
    # a page without code depends on its source only
    prose = be.fingerprint(b"src", {"profile": "quick"}, False, "lib", "rec")
    assert be.stale_reason(prose, be.fingerprint(b"src", {}, False, "other", "")) == ""


def test_portable_parameters_do_not_depend_on_the_clone_folder(tmp_path):
    params = {"results_dir": str(tmp_path / "results"), "other": "/elsewhere", "n": 3}
    assert be.portable(params, tmp_path) == {
        "results_dir": "<repository>/results",
        "other": "/elsewhere",
        "n": 3,
    }
    moved = {"results_dir": str(tmp_path / "moved" / "results")}
    assert be.portable(moved, tmp_path / "moved") == {"results_dir": "<repository>/results"}


def test_records_digest_follows_committed_files_only(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    results = tmp_path / "results"
    results.mkdir()
    assert be.records_digest(results, tmp_path) == ""
    (results / "r1.json").write_text("{}")
    git("add", ".")
    git("commit", "-qm", "r1")
    first = be.records_digest(results, tmp_path)
    assert first
    (results / "scratch.json").write_text("{}")  # written by a page, not committed
    assert be.records_digest(results, tmp_path) == first
    git("add", ".")
    git("commit", "-qm", "r2")
    assert be.records_digest(results, tmp_path) not in ("", first)
    assert be.records_digest(tmp_path.parent, tmp_path) == ""  # outside the repository


def test_pages_execute_once_then_are_reused_until_something_changes(book):
    logs: list[str] = []
    out = be.prepare_pages(be.Settings(), log=logs.append)
    assert _statuses(out) == {"a": "executed", "b": "converted"}
    a_nb = book / "a.ipynb"
    assert "x is 1 profile quick" in _outputs(a_nb)
    meta = json.loads(a_nb.read_text())["metadata"][be.METADATA_KEY]
    assert meta["parameters"] == {"profile": "quick", "results_dir": "<repository>/res"}
    assert (book.parent / "res").is_dir()
    mtimes = {p: p.stat().st_mtime_ns for p in (a_nb, book / "b.ipynb")}

    # nothing changed: nothing executed or rewritten
    out = be.prepare_pages(be.Settings(), log=logs.append)
    assert _statuses(out) == {"a": "up-to-date", "b": "up-to-date"}
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # a parameter override: executed again, with the value injected
    out = be.prepare_pages(be.Settings(params={"x": 7}), log=logs.append)
    assert _statuses(out) == {"a": "executed", "b": "up-to-date"}
    assert "x is 7" in _outputs(a_nb)

    # back to the defaults, then a changed source: executed again each time
    assert _statuses(be.prepare_pages(be.Settings(), log=logs.append))["a"] == "executed"
    (book / "a.md").write_text(PAGE.format(name="a", extra='print("new line")'))
    out = be.prepare_pages(be.Settings(), log=logs.append)
    assert _statuses(out)["a"] == "executed" and out[-1].reason == "source changed"
    assert "new line" in _outputs(a_nb)

    # --only elsewhere keeps a stale notebook; rerun executes an up-to-date one
    (book / "a.md").write_text(PAGE.format(name="a", extra=""))
    out = be.prepare_pages(be.Settings(only=("b",)), log=logs.append)
    assert _statuses(out)["a"] == "kept"
    out = be.prepare_pages(be.Settings(), log=logs.append)
    assert _statuses(out)["a"] == "executed"
    out = be.prepare_pages(be.Settings(only=("a",), rerun=True), log=logs.append)
    assert _statuses(out)["a"] == "executed"


def test_a_failing_cell_fails_and_is_executed_again_next_time(book):
    (book / "a.md").write_text(PAGE.format(name="a", extra="1 / 0"))
    with pytest.raises(be.PageExecutionError, match=r"book/a\.md: cell \d+: ZeroDivisionError"):
        be.prepare_pages(be.Settings(), log=lambda line: None)
    a_nb = book / "a.ipynb"
    assert a_nb.exists()  # the partial output, for reading
    assert be.stored_fingerprint(a_nb) is None
    with pytest.raises(be.PageExecutionError):
        be.prepare_pages(be.Settings(), log=lambda line: None)


def test_unknown_mode_or_page_is_an_error(book):
    with pytest.raises(be.PageExecutionError, match="unknown mode 'nosuch'"):
        be.prepare_pages(be.Settings(mode="nosuch"), log=lambda line: None)
    with pytest.raises(be.PageExecutionError, match="not in the table of contents"):
        be.prepare_pages(be.Settings(only=("zzz",)), log=lambda line: None)


def test_the_real_table_of_contents_has_a_source_for_every_page():
    pages = be.toc_pages(ROOT / "book" / "_toc.yml")
    assert pages[0] == "intro" and len(pages) == len(set(pages))
    assert all((ROOT / "book" / f"{page}.md").is_file() for page in pages)
    modes = ROOT / "book" / "modes.toml"
    for mode in ("records", "quick", "full"):
        be.load_mode(mode, modes)
    assert be.load_mode("paper", modes) == be.load_mode("full", modes)  # the former name
    # the full mode's pages run the full schedule; the records mode's experiment pages read it
    assert (
        be.page_parameters("full", be.load_mode("full", modes), "exp_main", {})["profile"] == "full"
    )
    records = be.load_mode("records", modes)
    assert be.page_parameters("records", records, "exp_main", {})["profile"] == "full"
    assert be.page_parameters("records", records, "autoencoders", {})["profile"] == "quick"
