"""Recompute a recorded run from its record alone and compare the outcome with the record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cmmc.experiments.engines import run_batch, run_task
from cmmc.experiments.records import rebuild_tasks, record_path

_MACHINE_KEYS = {"cpu": ("cpu", "cpu_capability", "torch"), "cuda": ("gpu", "torch")}


def verify_record(
    path: str | Path,
    scratch: str | Path,
    device: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Recompute a recorded run from its record alone and compare it with the record.

    The run is rebuilt from the record's data, configuration, options and seed (its key must
    come out the same: otherwise the record or the code changed what a run means); a run
    trained in a batch is recomputed with its whole batch (``batch.members``), since a batch's
    rounding may differ from a lone run's. The new records go under ``scratch``. ``device``
    overrides the record's device (then only the metrics can be compared, not expected equal).
    Returns ``same`` (label hash and metrics equal; for baselines, every method's metrics),
    ``same_labels`` (None where the record keeps no label hash), both sets of metrics and
    ``machine`` (:func:`machine_difference`: None when the rerun ran on the same kind of
    processor and torch as the record, else what differs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"record {path}: no such file")
    rec = json.loads(path.read_text())
    try:
        tasks = rebuild_tasks(rec)
    except ValueError as err:
        raise ValueError(f"record {path}: {err}") from None
    if device is None and rec["device"].startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"record {path} was computed on {rec['device']}, and this machine has no CUDA "
            "device; pass device='cpu' (--device cpu) to recompute it on the CPU, where the "
            "metrics are not expected to be equal"
        )
    for task in tasks:
        if task["key"] != task["recorded_key"]:
            raise ValueError(
                f"record {path}: the run rebuilt from it has key {task['key']}, the record says "
                f"{task['recorded_key']} (seed {task['seed']}): the record or the meaning of a "
                "run changed"
            )
        if device is not None:
            task["device"] = device
        task["path"] = str(record_path(scratch, task))
        task["results"] = str(scratch)
    # records from before shared pre-training existed do not say so: they did not share
    share = bool((rec.get("batch") or {}).get("shared_pretraining", False))
    out = run_batch(tasks, threads, share) if len(tasks) > 1 else [run_task(tasks[0], threads)]
    new = next(r for r in out if r["key"] == rec["key"])
    had, got = _outcome(rec), _outcome(new)
    return {
        "record": str(path),
        "rerun": next(t["path"] for t in tasks if t["key"] == rec["key"]),
        "device": new["device"],
        "batch_seeds": [t["seed"] for t in tasks],
        "same": had == got,
        "same_labels": (
            rec["labels_sha256"] == new.get("labels_sha256") if "labels_sha256" in rec else None
        ),
        "metrics_record": had["metrics"],
        "metrics_rerun": got["metrics"],
        "machine": machine_difference(
            rec.get("environment", {}), new["environment"], new["device"]
        ),
    }


def machine_difference(recorded: dict[str, Any], here: dict[str, Any], device: str) -> str | None:
    """Why a rerun may round differently from its record (None: same machine kind).

    Float rounding depends on the processor's kernels: a CPU with another vector unit (AVX2 or
    AVX-512), another GPU or another torch can change labels, so there a difference does not
    point at the code. Records from before ``cpu_capability`` existed do not name theirs.
    """
    keys = _MACHINE_KEYS["cpu" if device == "cpu" else "cuda"]
    missing = [k for k in keys if recorded.get(k) is None]
    differ = [k for k in keys if k not in missing and recorded[k] != here.get(k)]
    if differ:
        return "; ".join(f"{k}: recorded {recorded[k]}, here {here.get(k)}" for k in differ)
    if missing:
        here_too = ", ".join(f"{k} {here.get(k)}" for k in missing)
        return f"the record does not name its {', '.join(missing)}; here {here_too}"
    return None


def _outcome(rec: dict[str, Any]) -> dict[str, Any]:
    """What a rerun must reproduce: the label hash and metrics (for baselines, each method's
    metrics); times are left out."""
    if "baselines" in rec:
        return {
            "labels": None,
            "metrics": {
                m: {k: v for k, v in res.items() if k != "seconds"}
                for m, res in rec["baselines"].items()
            },
        }
    return {"labels": rec.get("labels_sha256"), "metrics": rec.get("metrics")}
