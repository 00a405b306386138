"""The README's findings are those the committed records give now (scripts/readme_findings.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "readme_findings", ROOT / "scripts" / "readme_findings.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.records
def test_readme_findings_are_not_stale():
    findings = _script()
    text = (ROOT / "README.md").read_text()
    block = (
        findings.START + text.split(findings.START, 1)[1].split(findings.END, 1)[0] + findings.END
    )
    assert block == findings.render(ROOT), "run: python scripts/readme_findings.py"


def test_the_block_is_written_between_the_markers_only(tmp_path, monkeypatch):
    findings = _script()
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{findings.START}\nold numbers\n{findings.END}\ntail\n")
    monkeypatch.setattr(findings, "ROOT", tmp_path)
    monkeypatch.setattr(
        findings, "render", lambda root=tmp_path: f"{findings.START}\nnew\n{findings.END}"
    )
    monkeypatch.setattr("sys.argv", ["readme_findings.py", "--check"])
    assert findings.main() == 1  # stale
    monkeypatch.setattr("sys.argv", ["readme_findings.py"])
    assert findings.main() == 0
    assert readme.read_text() == f"head\n{findings.START}\nnew\n{findings.END}\ntail\n"
    monkeypatch.setattr("sys.argv", ["readme_findings.py", "--check"])
    assert findings.main() == 0
