"""Experiment machinery: the plan of ``cmmc/experiments.toml`` as tasks, one JSON record per run,
engines that run tasks (in this process, local worker processes or Dask), verification of a
record by recomputing it, and grids that must fit a job's wall-time limit.

The core library (data, model, training, estimator, metrics, ...) never imports this package.

    from cmmc.experiments import plan, run_grid
    tasks = plan("main", datasets=["BDGP"], seeds=3, results_dir="results")
    records = run_grid(tasks, workers=2)
"""

from cmmc.experiments.engines import (
    batch_key,
    batchable,
    batches,
    ensure_records,
    run_batch,
    run_grid,
    run_task,
    worker_init,
)
from cmmc.experiments.kinds import KINDS, Kind, Task, kind_of, task_data
from cmmc.experiments.plan import expand_variants, experiment_specs, plan, planned_seeds
from cmmc.experiments.records import (
    RECORD_VERSION,
    corrected,
    dedupe,
    dumps_record,
    environment,
    errata_for,
    field_value,
    identity,
    load_corrected,
    load_errata,
    load_records,
    rebuild_tasks,
    record_path,
    run_key,
    write_json_atomic,
)
from cmmc.experiments.verify import machine_difference, verify_record

__all__ = [
    "KINDS",
    "RECORD_VERSION",
    "Kind",
    "Task",
    "batch_key",
    "batchable",
    "batches",
    "corrected",
    "dedupe",
    "dumps_record",
    "ensure_records",
    "environment",
    "errata_for",
    "expand_variants",
    "experiment_specs",
    "field_value",
    "identity",
    "kind_of",
    "load_errata",
    "load_corrected",
    "load_records",
    "machine_difference",
    "plan",
    "planned_seeds",
    "rebuild_tasks",
    "record_path",
    "run_batch",
    "run_grid",
    "run_key",
    "run_task",
    "task_data",
    "verify_record",
    "worker_init",
    "write_json_atomic",
]
