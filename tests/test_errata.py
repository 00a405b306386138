"""results/errata.toml: well-formed, every correction applies to committed records, and with the
corrections applied every committed CPU record names its vector unit."""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ERRATA = ROOT / "results" / "errata.toml"
REQUIRED = {"date", "records", "field", "correction", "reason"}
OPTIONAL = {"where", "started_before", "started_after", "recorded"}


def _errata() -> list[dict]:
    return tomllib.loads(ERRATA.read_text()).get("erratum", [])


def _value(record: dict, dotted: str) -> object:
    node: object = record
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _applies(e: dict, record: dict, path: Path) -> bool:
    rel = path.relative_to(ROOT)
    if not any(rel in _globbed(g) for g in e["records"]):
        return False
    if any(_value(record, k) != v for k, v in (e.get("where") or {}).items()):
        return False
    started = dt.datetime.fromisoformat(record["started"])
    if "started_before" in e and started >= e["started_before"]:
        return False
    if "started_after" in e and started < e["started_after"]:
        return False
    return _value(record, e["field"]) == e.get("recorded")


_GLOBS: dict[str, set[Path]] = {}


def _globbed(pattern: str) -> set[Path]:
    if pattern not in _GLOBS:
        _GLOBS[pattern] = {p.relative_to(ROOT) for p in ROOT.glob(pattern)}
    return _GLOBS[pattern]


@pytest.fixture(scope="module")
def committed() -> list[tuple[Path, dict]]:
    paths = sorted((ROOT / "results").rglob("seed*-*.json"))
    return [(p, json.loads(p.read_text())) for p in paths]


def test_errata_are_well_formed():
    data = tomllib.loads(ERRATA.read_text())
    assert data["schema_version"] == 1
    for e in data.get("erratum", []):
        assert REQUIRED <= set(e) <= REQUIRED | OPTIONAL, set(e) ^ REQUIRED
        assert isinstance(e["date"], dt.date) and not isinstance(e["date"], dt.datetime)
        assert e["records"] and all(isinstance(g, str) for g in e["records"])
        for key in ("started_before", "started_after"):
            if key in e:
                assert isinstance(e[key], dt.datetime) and e[key].tzinfo is not None
        assert len(e["reason"].split()) >= 8, e["reason"]  # a reason, not a label
        if e.get("recorded") is not None and e["field"].endswith("git_commit"):
            assert len(e["recorded"]) == len(e["correction"]) == 40


@pytest.mark.records
def test_every_erratum_applies_to_committed_records(committed):
    for e in _errata():
        hits = [p for p, r in committed if _applies(e, r, p)]
        assert hits, f"erratum on {e['field']} ({e['reason'][:60]}...) matches no record"


@pytest.mark.records
def test_cpu_records_name_their_vector_unit_once_corrected(committed):
    missing = []
    for path, record in committed:
        if record["device"] != "cpu":
            continue
        fixes = [
            e["correction"]
            for e in _errata()
            if e["field"] == "environment.cpu_capability" and _applies(e, record, path)
        ]
        assert len(fixes) <= 1, (path, fixes)  # corrections never overlap
        unit = record.get("environment", {}).get("cpu_capability") or (fixes or [None])[0]
        if unit is None:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, missing[:5]
