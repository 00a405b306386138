"""The core library stands alone: it imports neither the experiment machinery nor the book's
helpers, and works without what only they need (pandas, IPython, Dask)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = [
    "cmmc",
    "cmmc.data",
    "cmmc.synthetic",
    "cmmc.model",
    "cmmc.losses",
    "cmmc.matching",
    "cmmc.config",
    "cmmc.train",
    "cmmc.estimator",
    "cmmc.metrics",
    "cmmc.baselines",
    "cmmc.analysis",
    "cmmc.validation",
]
# pandas is installed here, and scikit-learn imports it when it can: so the probe hides pandas
# and IPython (an import of them fails, as where they are not installed) and notes who asked.
PROBE = """
import importlib, json, sys, traceback
BLOCKED = ("pandas", "IPython")
asked = []
class Hide:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            files = [f.filename for f in traceback.extract_stack()[:-1]
                     if not f.filename.startswith("<")]
            asked.append([name, files[-1] if files else ""])
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
error = None
try:
    for m in MODULES:
        importlib.import_module(m)
except ImportError as e:
    error = str(e)
outer = sorted(m for m in sys.modules if m.startswith(("cmmc.experiments", "cmmc.book"))
               or m.split(".")[0] in ("distributed", "dask"))
print(json.dumps({"error": error, "outer": outer, "asked": asked}))
"""


def probe(modules: list[str]) -> dict:
    """Import ``modules`` in a fresh interpreter without pandas and IPython: the import error
    (None), the experiment/book/Dask modules loaded, and who asked for pandas or IPython."""
    code = PROBE.replace("MODULES", repr(modules))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_core_imports_no_experiments_book_pandas_or_ipython():
    got = probe(CORE)
    assert got["error"] is None  # the core imports without pandas and IPython
    assert got["outer"] == []
    cmmc_dir = str(ROOT / "cmmc")
    assert [a for a in got["asked"] if a[1].startswith(cmmc_dir)] == []  # only third parties


def test_the_probe_sees_what_the_book_and_experiments_need():
    # the same probe on the outer layers: an empty answer above is not a blind probe
    got = probe(["cmmc.experiments", "cmmc.book.report"])
    assert got["error"] == "No module named 'pandas'"
    assert any(a[1].endswith("cmmc/book/report.py") for a in got["asked"])
    assert "cmmc.experiments.engines" in got["outer"]
