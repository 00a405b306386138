"""Useful fp32 work per second of each recorded GPU job: the schedule's matrix products
(``speed.epoch_gflop``) of the records that finished during the job, over the job's length.

A job's window is its ``results/logs/*-gpu_util.csv`` (nvidia-smi every 5 s); work lost at the
end of a job (a batch still running) is not counted, so this is the rate that became records.

    python benchmarks/gpu_throughput.py
"""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from speed import epoch_gflop  # noqa: E402

from cmmc.experiments import load_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def job_window(util_csv: Path) -> tuple[datetime, datetime, float]:
    """First and last sample of an nvidia-smi log, and the mean utilisation (%)."""
    rows = list(csv.reader(util_csv.open()))[1:]
    stamp = [
        datetime.strptime(r[0].strip(), "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=UTC) for r in rows
    ]
    busy = [float(r[1].strip().rstrip(" %")) for r in rows]
    return stamp[0], stamp[-1], sum(busy) / len(busy)


def record_tflop(r: dict) -> float:
    """TFLOP of a record's schedule (pre-training, contrastive and fine-tuning epochs)."""
    c = r["config"]
    per = epoch_gflop(r["dims"], r["n_samples"], c["batch_size"], r["n_clusters"],
                      c["low_dim"], c["high_dim"])  # fmt: skip
    epochs = {"pretrain": c["pretrain_epochs"], "contrastive": c["contrastive_epochs"],
              "finetune": c["finetune_epochs"]}  # fmt: skip
    if r.get("pretrain_from_cache"):  # its pre-training was read, not computed
        epochs["pretrain"] = 0
    return sum(per[k] * epochs[k] for k in per) / 1e3


def main() -> None:
    records = [
        r
        for r in load_records(ROOT / "results")
        if str(r.get("device", "")).startswith("cuda") and r.get("kind") != "baselines"
    ]
    print(f"{'job':<32} {'s':>5} {'busy%':>6} {'runs':>5} {'TFLOP':>7} {'TFLOP/s':>8}")
    for util in sorted((ROOT / "results" / "logs").glob("*-gpu_util.csv")):
        start, end, busy = job_window(util)
        done = [r for r in records if start <= datetime.fromisoformat(r["finished"]) <= end]
        work = sum(record_tflop(r) for r in done)
        secs = (end - start).total_seconds()
        name = util.name.removesuffix("-gpu_util.csv")
        print(
            f"{name:<32} {secs:>5.0f} {busy:>6.1f} {len(done):>5} {work:>7.0f} {work / secs:>8.1f}"
        )


if __name__ == "__main__":
    main()
