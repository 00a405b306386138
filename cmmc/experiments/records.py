"""Run records: key, path, JSON text, provenance, loading.

A record is keyed by a hash of everything that determines its run (dataset, data options,
configuration, seed, device type, kind options), lives at
``<results>/<experiment>/<dataset>/<variant>/seed<k>-<key>.json`` and is written atomically
(temp file + rename): a killed grid resumes where it stopped, and a changed configuration never
reuses a stale record.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import sklearn
import torch

import cmmc
from cmmc.config import FORMER_PROFILES, changed_fields, plain
from cmmc.experiments.kinds import KINDS, kind_of

# Version 2 keys hash the Config fields that differ from their defaults (cmmc.config.
# changed_fields): a new field needs nothing here. Version 1 (the records made up to 2026-12-04)
# hashed every field but those of V1_LATER_FIELDS left at their defaults; its records keep their
# files and keys, and a plan finds them by their version-1 key (record_location). Changing an
# existing default is what takes a version 3.
RECORD_VERSION = 2
V1_LATER_FIELDS: dict[str, Any] = {
    "fused_adam": False,
    "min_batches": 0,
    "min_batches_pretrain": True,
    "entropy_weight": 1.0,
    "pseudo_labels": "kmeans",
    "selection": "none",
    "hidden": [500, 500, 2000],
}
# Identity of one run, whatever its key: a later record of the same identity replaces an earlier
# one. The device belongs to it only for kinds that measure their device (scalability);
# elsewhere the same run recorded on the CPU and on a GPU is one run, counted once.
IDENTITY = ("experiment", "dataset", "variant", "seed", "profile", "n_samples")
_PACKAGE_ROOT = Path(cmmc.__file__).resolve().parent.parent  # the folder holding cmmc/


def _key_config(config: Mapping[str, Any], version: int) -> dict[str, Any]:
    """The part of a configuration that a key of ``version`` hashes."""
    if version == 1:
        return {k: v for k, v in config.items()
                if k not in V1_LATER_FIELDS or plain(v) != V1_LATER_FIELDS[k]}  # fmt: skip
    if version == 2:
        return changed_fields(dict(config))
    raise ValueError(f"unknown record version {version!r}; known: 1, {RECORD_VERSION}")


def run_key(task: Mapping[str, Any], version: int = RECORD_VERSION) -> str:
    """Hash of everything that determines a run's outcome (16 hex digits), by the rule of
    record ``version`` (a record made under version 1 rebuilds to its key with ``version=1``)."""
    device_type = "cpu" if task["device"] == "cpu" else "accelerator:" + task["device"]
    payload = {
        "v": version,
        "kind": task["kind"],
        "dataset": task["dataset"],
        "data": task["data"],
        "config": _key_config(task["config"], version) if kind_of(task).uses_config else {},
        "seed": task["seed"],
        "device": device_type,
        "options": task["options"],
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def record_path(results_dir: str | Path, task: Mapping[str, Any]) -> Path:
    """``<results_dir>/<experiment>/<dataset>/<variant>/seed<k>-<key>.json``"""
    safe = task["variant"].replace("/", "_")
    return (
        Path(results_dir)
        / task["experiment"]
        / task["dataset"]
        / safe
        / f"seed{task['seed']}-{task['key']}.json"
    )


def record_location(results_dir: str | Path, task: Mapping[str, Any]) -> tuple[str, Path]:
    """(key, path) of a planned run: where its version-1 record lies, when one was made and
    no newer one; else the current version's key and path (where it is or will be written)."""
    key = run_key(task)
    path = record_path(results_dir, {**task, "key": key})
    if not path.exists():
        old = run_key(task, version=1)
        old_path = record_path(results_dir, {**task, "key": old})
        if old_path.exists():
            return old, old_path
    return key, path


def rebuild_tasks(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tasks of a record, rebuilt from the record alone: one per member of its batch (the
    record's own run alone when it was not trained in a batch), each with its key recomputed
    (``key``) next to the key the record gives it (``recorded_key``)."""
    missing = [
        k for k in ("key", "kind", "dataset", "data", "config", "seed", "device") if k not in rec
    ]
    if missing:
        raise ValueError(f"not a run record, missing {missing}")
    members = (rec.get("batch") or {}).get("members") or [{"seed": rec["seed"], "key": rec["key"]}]
    tasks = []
    for m in members:
        config = dict(rec["config"])
        config.update({k: m[k] for k in ("tau_f", "tau_l") if k in m})
        task = {k: rec[k] for k in ("experiment", "kind", "dataset", "variant", "profile")}
        task.update(data=rec["data"], config=config, options=rec.get("options", {}))
        task.update(seed=m["seed"], device=rec["device"], cache_pretrain=False)
        version = rec.get("record_version", 1)
        task.update(key=run_key(task, version), recorded_key=m["key"], record_version=version)
        tasks.append(task)
    return tasks


def dumps_record(obj: Any) -> str:
    """JSON text of a record: one top-level key per line, each value compact on its line, and a
    list of objects (the per-epoch history) one object per line. Readable in a diff, and about
    a quarter of the size of ``indent=1``."""
    if not isinstance(obj, dict):
        return json.dumps(obj, indent=1, default=_jsonable) + "\n"

    def compact(v: Any) -> str:
        return json.dumps(v, separators=(",", ":"), default=_jsonable)

    lines = []
    for key, value in obj.items():
        if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            text = "[\n  " + ",\n  ".join(compact(x) for x in value) + "\n ]"
        else:
            text = compact(value)
        lines.append(f" {compact(str(key))}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON (:func:`dumps_record`) to a temp file in the same folder, fsync, then rename
    over the target: a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = dumps_record(obj)  # fails (unserialisable value) before the file is opened
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def round_floats(x: Any) -> Any:
    """Every float in a nested record rounded to 6 significant digits."""
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: round_floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [round_floats(v) for v in x]
    return x


def read_record(path: str | Path) -> dict[str, Any]:
    """One record file, its profile under its current name (a record made before 2026-12-05
    says "paper" for the full schedule: :data:`cmmc.config.FORMER_PROFILES`)."""
    rec = json.loads(Path(path).read_text())
    if rec.get("profile") in FORMER_PROFILES:
        rec["profile"] = FORMER_PROFILES[rec["profile"]]
    return rec


def load_records(results_dir: str | Path, experiment: str | None = None) -> list[dict[str, Any]]:
    """Every record under ``results_dir`` (optionally one experiment's), in path order."""
    root = Path(results_dir) / experiment if experiment else Path(results_dir)
    if not root.exists():
        return []
    return [read_record(p) for p in sorted(root.rglob("seed*-*.json"))]


def identity(rec: Mapping[str, Any]) -> tuple[str, ...]:
    """What makes two records the same run (:data:`IDENTITY`, plus the device for a kind that
    measures its device)."""
    kind = KINDS.get(str(rec.get("kind")))
    keys = IDENTITY + (("device",) if kind is not None and kind.device_in_identity else ())
    return tuple(str(rec.get(k)) for k in keys)


def dedupe(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per run :func:`identity`, the latest (``finished``) one.

    A run recorded twice (before and after a configuration change, or on two devices) keeps
    its latest record, so tables never count one seed twice.
    """
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        k = identity(r)
        if k not in best or str(r.get("finished", "")) >= str(best[k].get("finished", "")):
            best[k] = dict(r)
    return sorted(best.values(), key=identity)


def field_value(record: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path of a record (``environment.cpu_capability``); None when absent."""
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def load_errata(path: str | Path, root: str | Path) -> list[dict[str, Any]]:
    """The ``[[erratum]]`` entries of an errata file (``results/errata.toml``): corrections to
    the provenance of committed records, which are never rewritten. Each entry names its records
    by globs relative to ``root`` (the repository), optionally a ``where`` (dotted field ->
    value, all must hold) and a ``started_before``/``started_after`` range, the ``field`` it
    corrects, the value the records hold (``recorded``; omitted: the records lack the field),
    the ``correction`` and the ``reason``. The entries come back with the resolved paths of
    their records (``paths``)."""
    path = Path(path)
    if not path.exists():
        return []
    entries = tomllib.loads(path.read_text()).get("erratum", [])
    for e in entries:
        e["paths"] = {p.resolve() for g in e["records"] for p in Path(root).glob(g)}
    return entries


def errata_for(
    record: Mapping[str, Any], path: str | Path, errata: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The errata (:func:`load_errata`) that apply to the record stored at ``path``."""
    path = Path(path).resolve()
    found = []
    for e in errata:
        if path not in e["paths"]:
            continue
        if any(field_value(record, k) != v for k, v in (e.get("where") or {}).items()):
            continue
        started = dt.datetime.fromisoformat(record["started"])
        if "started_before" in e and not started < e["started_before"]:
            continue
        if "started_after" in e and started < e["started_after"]:
            continue
        if field_value(record, e["field"]) != e.get("recorded"):
            continue
        found.append(e)
    return found


def corrected(
    record: Mapping[str, Any], path: str | Path, errata: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """A copy of the record with the errata that apply to it applied (the record is left as
    it is)."""
    out = dict(record)
    for e in errata_for(record, path, errata):
        *parents, leaf = e["field"].split(".")
        node = out
        for part in parents:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[leaf] = e["correction"]
    return out


def load_corrected(
    results_dir: str | Path, experiment: str | None = None, errata_file: str | Path | None = None
) -> list[tuple[Path, dict[str, Any]]]:
    """(path, record) of every record under ``results_dir`` (optionally one experiment's), in
    path order, each with the errata of ``errata_file`` applied (:func:`corrected`; default:
    ``results_dir/errata.toml``, whose globs are relative to the folder above ``results_dir``).
    The one way pages read records whose provenance was corrected."""
    results_dir = Path(results_dir)
    errata_file = Path(errata_file) if errata_file else results_dir / "errata.toml"
    errata = load_errata(errata_file, errata_file.resolve().parent.parent)
    root = results_dir / experiment if experiment else results_dir
    paths = sorted(root.rglob("seed*-*.json")) if root.exists() else []
    return [(p, corrected(read_record(p), p, errata)) for p in paths]


@functools.cache
def git_state() -> tuple[str, bool]:
    """(commit, cmmc/ modified) of this process's code, taken once: at its first run, close to
    when the code was imported. Asked again at the end of a long run, git would name whatever
    was committed meanwhile, not the code that ran."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_PACKAGE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(_PACKAGE_ROOT), "status", "--porcelain", "--", "cmmc"],
            capture_output=True,
            text=True,
        ).stdout
        return commit, bool(status.strip())
    except OSError:
        return "", False


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_bf16_units() -> list[str]:
    units = []
    if torch.cpu._is_avx512_bf16_supported():
        units.append("avx512_bf16")
    if torch.cpu._is_amx_tile_supported():
        units.append("amx")
    return units


def environment() -> dict[str, Any]:
    """Library versions, git commit, host and CPU/GPU of this process.

    A launcher that copied the tree to another machine names the commit it copied in
    ``CMMC_GIT_COMMIT`` (and ``CMMC_GIT_DIRTY=1`` for uncommitted changes under cmmc/): the
    copy's own ``.git``, if any, may be older than the code. ``CMMC_CONCURRENT_RUNS`` and
    ``CMMC_GPU_SHARING`` say how the machine was shared (set by the engines and launchers).
    """
    commit = os.environ.get("CMMC_GIT_COMMIT", "")
    dirty = os.environ.get("CMMC_GIT_DIRTY", "") == "1"
    if not commit:
        commit, dirty = git_state()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "cmmc": cmmc.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "host": socket.gethostname(),
        "cpu": _cpu_model(),
        # the vector unit torch's CPU kernels use (AVX2, AVX512, ...): "AMD EPYC" alone names
        # machines whose float rounding, and speed, can differ
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # the CPU's native bf16 units (avx512_bf16, amx): where bf16 runs are not emulated
        "cpu_bf16_units": _cpu_bf16_units(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        # how many processes (runs or batches) shared the machine (None: not recorded)
        "concurrent_runs": int(os.environ["CMMC_CONCURRENT_RUNS"])
        if os.environ.get("CMMC_CONCURRENT_RUNS")
        else None,
        # "mps": those processes ran their kernels side by side (CUDA MPS), not time-sliced
        "gpu_sharing": os.environ.get("CMMC_GPU_SHARING") or None,
    }
