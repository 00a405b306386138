"""Display helpers of the book's pages: records -> DataFrames, summaries, tables, published
numbers, verdicts.

Only the book imports this module (it needs pandas and IPython: the ``book`` extra); the pages
get their records from :func:`cmmc.experiments.ensure_records`::

    records, info = experiments.ensure_records("main", RESULTS, profile, rerun, quick, full)
    df = report.records_frame(records)
    table = report.summary_table(df, by=["dataset", "variant"])
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from IPython.display import HTML

from cmmc.data import get_spec
from cmmc.metrics import METRIC_KEYS, check_metrics

METRICS: tuple[str, ...] = tuple(METRIC_KEYS)
_CHECKOUT = Path(__file__).resolve().parents[2]  # the source checkout holding cmmc/ and book/
MISSING_COLUMNS = ["dataset", "variant", "seed"]


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------
def find_root(start: str | Path | None = None) -> Path:
    """The repository root (the folder holding ``cmmc/experiments.toml`` and ``book/``), from
    ``start`` (default: the working directory) up.

    Used by: :func:`resolve_results`, :func:`load_published`.
    """
    here = Path(start or Path.cwd()).resolve()
    for p in [here, *here.parents]:
        if (p / "cmmc" / "experiments.toml").exists() and (p / "book").is_dir():
            return p
    return _CHECKOUT


def resolve_results(results_dir: str | Path, root: str | Path | None = None) -> Path:
    """``results_dir`` as an absolute path; a relative one is relative to ``root/book``.

    Used by: book/reproduction.md.
    """
    p = Path(results_dir)
    if not p.is_absolute():
        p = (Path(root or find_root()) / "book" / p).resolve()
    return p


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
def _missing_frame(missing: Iterable[Mapping[str, Any]] | pd.DataFrame | None) -> pd.DataFrame:
    if isinstance(missing, pd.DataFrame):
        return missing
    return pd.DataFrame(list(missing or []), columns=MISSING_COLUMNS)


def missing_summary(missing: Iterable[Mapping[str, Any]] | pd.DataFrame | None) -> pd.DataFrame:
    """Missing runs (``info["missing"]`` of :func:`cmmc.experiments.ensure_records`) grouped:
    dataset, variant -> which seeds.

    Used by: book/exp_main.md, :func:`missing_details`.
    """
    missing = _missing_frame(missing)
    if missing.empty:
        return pd.DataFrame(columns=["dataset", "variant", "missing seeds"])
    g = missing.groupby(["dataset", "variant"], sort=False)["seed"]
    out = g.apply(lambda s: ", ".join(str(x) for x in sorted(s))).rename("missing seeds")
    return out.reset_index()


def missing_details(
    missing: Iterable[Mapping[str, Any]] | pd.DataFrame | None, what: str = "planned run(s)"
) -> HTML:
    """The runs without a record as a collapsed HTML list (``<details>``): a page with many
    missing runs still opens on its results. Grouped by :func:`missing_summary`.

    Used by: book/exp_main.md, exp_ablation.md, exp_convergence.md, exp_scalability.md,
    exp_temperature.md, exp_views.md.
    """
    missing = _missing_frame(missing)
    table = missing_summary(missing)
    n = len(missing)
    inner = table.to_html(index=False, classes="table", border=0)
    return HTML(
        f"<details><summary>{n} {what} without a record: show which</summary>{inner}</details>"
    )


def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record: identity, metrics, losses, time and memory.

    Used by: book/exp_main.md, exp_ablation.md, exp_temperature.md, exp_views.md,
    reproducibility.md, :func:`provenance`.
    """
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ("experiment", "kind", "dataset", "variant", "seed")}
        row.update(
            profile=r.get("profile"),
            device=r.get("device"),
            n_samples=r.get("n_samples"),
            n_views=len(r.get("dims") or []),
        )
        for m in METRICS:
            row[m] = (r.get("metrics") or {}).get(m, np.nan)
        for k in (
            "final_contrastive_loss",
            "final_loss",
            "total_seconds",
            "peak_rss_mb",
            "peak_gpu_mb",
        ):
            v = r.get(k)
            row[k] = np.nan if v is None else v
        cfg = r.get("config") or {}
        for k in ("pretrain_epochs", "contrastive_epochs", "finetune_epochs", "tau_f", "tau_l"):
            row[k] = cfg.get(k)
        row["batch_size"] = (r.get("batch") or {}).get("size", 1)  # runs trained together
        row["key"] = r.get("key")
        rows.append(row)
    cols = [
        "experiment", "kind", "dataset", "variant", "seed", "profile", "device", "n_samples",
        "n_views", *METRICS, "final_contrastive_loss", "final_loss", "total_seconds",
        "peak_rss_mb", "peak_gpu_mb", "pretrain_epochs", "contrastive_epochs",
        "finetune_epochs", "tau_f", "tau_l", "batch_size", "key",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def provenance(records: Sequence[Mapping[str, Any]]) -> str:
    """One sentence on what produced ``records``: profiles, seeds, sample sizes, devices.

    Used by: book/exp_main.md, exp_ablation.md, exp_convergence.md, exp_multilevel.md,
    exp_scalability.md, exp_temperature.md, exp_tsne.md, exp_views.md, reproducibility.md.
    """
    if not records:
        return "no records"
    df = records_frame(records)
    profiles = ", ".join(sorted(df["profile"].astype(str).unique()))
    seeds = sorted(df["seed"].astype(int).unique())
    seed_text = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({_ranges(seeds)})"
    ns = sorted(df["n_samples"].dropna().astype(int).unique())
    n_text = ", ".join(f"{n:,}" for n in ns) if len(ns) <= 6 else f"{ns[0]:,} to {ns[-1]:,}"
    devices = ", ".join(sorted(df["device"].astype(str).unique()))
    sched = df[["pretrain_epochs", "contrastive_epochs", "finetune_epochs"]].dropna()
    sched_text = ""
    if not sched.empty:
        combos = sorted({tuple(int(x) for x in row) for row in sched.to_numpy()})
        sched_text = (
            "; epochs (pre-training/contrastive/fine-tuning) "
            + ", ".join("/".join(str(x) for x in c) for c in combos[:4])
            + (" …" if len(combos) > 4 else "")
        )
    batched = int((df["batch_size"] > 1).sum())
    batch_text = (
        f"; {batched} of them trained in batches of {_ranges(sorted(df.batch_size[df.batch_size > 1].unique()))}"
        " runs at once (stacked: cmmc.train.Trainer.for_members)"
        if batched
        else ""
    )
    return (
        f"{len(df)} run{'s' if len(df) != 1 else ''}, profile {profiles}, {seed_text}, "
        f"N = {n_text} samples, device {devices}{sched_text}{batch_text}"
    )


def _ranges(values: Sequence[int]) -> str:
    values = sorted(values)
    if not values:
        return ""
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}–{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------
def summarize(
    df: pd.DataFrame, by: Sequence[str] = ("dataset", "variant"), metrics: Sequence[str] = METRICS
) -> pd.DataFrame:
    """Per group: n and, per metric, mean, std (ddof=1; NaN for one run), median, best.

    Used by: book/exp_main.md, exp_ablation.md, exp_multilevel.md, exp_temperature.md,
    exp_views.md, reproducibility.md, :func:`summary_table`.
    """
    by = list(by)
    rows = []
    for keys, g in df.groupby(by, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys, strict=True))
        row["n"] = len(g)
        for m in metrics:
            v = g[m].astype(float).dropna()
            row[f"{m}_mean"] = v.mean() if len(v) else np.nan
            row[f"{m}_std"] = v.std(ddof=1) if len(v) > 1 else np.nan
            row[f"{m}_median"] = v.median() if len(v) else np.nan
            row[f"{m}_best"] = v.max() if len(v) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def fmt(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, "–" for a missing one.

    Used by: book/reproducibility.md, book/beyond.md, :func:`summary_table`.
    """
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def fmt_published(x: float | None) -> str:
    """A published number as published (no added or dropped digits), "–" when missing.

    Used by: book/exp_main.md, reproducibility.md.
    """
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:g}"


def fmt_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """ "0.912 ± 0.010" (just the mean when the spread is unknown).

    Used by: book/exp_main.md, reproducibility.md, :func:`summary_table`.
    """
    if mean is None or not math.isfinite(mean):
        return "–"
    if std is None or not math.isfinite(std):
        return fmt(mean, digits)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(
    df: pd.DataFrame,
    by: Sequence[str] = ("dataset", "variant"),
    metrics: Sequence[str] = ("ACC", "NMI", "PUR", "ARI"),
    stats: Sequence[str] = ("mean ± std", "median", "best"),
    digits: int = 3,
    devices: bool = False,
) -> pd.DataFrame:
    """Display table of strings: per group, n and per metric the chosen statistics; with
    ``devices``, which devices computed the group's runs (:func:`device_counts`).

    Used by: book/exp_main.md, exp_ablation.md, exp_multilevel.md, exp_views.md.
    """
    s = summarize(df, by, metrics)
    out = s[list(by)].copy()
    out["n"] = s["n"]
    if devices:
        groups = df.groupby(list(by), sort=False, dropna=False)["device"]
        out["device"] = [device_counts(g) for _, g in groups]
    for m in metrics:
        for st in stats:
            if st == "mean ± std":
                out[f"{m} mean ± std"] = [
                    fmt_mean_std(a, b, digits)
                    for a, b in zip(s[f"{m}_mean"], s[f"{m}_std"], strict=True)
                ]
            else:
                out[f"{m} {st}"] = [fmt(v, digits) for v in s[f"{m}_{st}"]]
    return out


def device_counts(devices: Iterable[str]) -> str:
    """The devices of a group's runs: the name when one device computed them all, else the runs
    per device ("cpu 4, cuda 6"): such a group mixes two streams of random numbers.

    Used by: :func:`summary_table` (``devices=True``).
    """
    counts = pd.Series([str(d) for d in devices]).value_counts().sort_index()
    if len(counts) == 1:
        return str(counts.index[0])
    return ", ".join(f"{d} {n}" for d, n in counts.items())


def label_free_pick(
    df: pd.DataFrame,
    by: Sequence[str] = ("dataset", "variant"),
    criterion: str = "final_contrastive_loss",
) -> pd.DataFrame:
    """Per group, the run a label-free rule picks: the lowest ``criterion`` (training loss).

    Never the best run by a label-based metric. Groups without the criterion are left out.

    Used by: book/exp_main.md.
    """
    d = df.dropna(subset=[criterion])
    if d.empty:
        return d.iloc[0:0]
    idx = d.groupby(list(by), sort=False)[criterion].idxmin()
    return d.loc[idx.values].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Sanity checks
# --------------------------------------------------------------------------------------------
def sanity(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Every metrics dict of every record (final, multi-level, baselines) through
    :func:`cmmc.metrics.check_metrics`. Returns one row per violation (empty: all consistent).

    The frame's ``attrs["checked"]`` holds the number of metric dicts checked.

    Used by: book/exp_main.md.
    """
    rows, checked = [], 0

    def check(rec: Mapping[str, Any], where: str, m: Mapping[str, Any]) -> None:
        nonlocal checked
        checked += 1
        for problem in check_metrics(m):
            rows.append(
                {
                    "experiment": rec.get("experiment"),
                    "dataset": rec.get("dataset"),
                    "variant": rec.get("variant"),
                    "seed": rec.get("seed"),
                    "where": where,
                    "problem": problem,
                }
            )

    for r in records:
        if r.get("metrics"):
            check(r, "final", r["metrics"])
        for v, per_view in enumerate(r.get("multilevel") or []):
            for level, m in per_view.items():
                check(r, f"multilevel view {v} {level}", m)
        for name, m in (r.get("baselines") or {}).items():
            check(r, f"baseline {name}", m)
            for v, pv in enumerate(m.get("per_view") or []):
                check(r, f"baseline {name} view {v}", pv)
    out = pd.DataFrame(
        rows, columns=["experiment", "dataset", "variant", "seed", "where", "problem"]
    )
    out.attrs["checked"] = checked
    return out


# --------------------------------------------------------------------------------------------
# Baselines, multi-level
# --------------------------------------------------------------------------------------------
def baselines_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (record, baseline): dataset, seed, method, metrics, seconds.

    Used by: book/exp_main.md, reproducibility.md.
    """
    rows = []
    for r in records:
        for name, m in (r.get("baselines") or {}).items():
            row = {
                "dataset": r.get("dataset"),
                "seed": r.get("seed"),
                "profile": r.get("profile"),
                "n_samples": r.get("n_samples"),
                "method": name,
                "seconds": m.get("seconds"),
            }
            row.update({k: m.get(k, np.nan) for k in METRICS})
            rows.append(row)
    cols = ["dataset", "seed", "profile", "n_samples", "method", "seconds", *METRICS]
    return pd.DataFrame(rows, columns=cols)


def multilevel_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (record, view, level) of the multi-level read-outs.

    Used by: book/exp_multilevel.md.
    """
    rows = []
    for r in records:
        names = (r.get("data") or {}).get("views") or view_names(r.get("dataset"))
        for v, per_view in enumerate(r.get("multilevel") or []):
            for level, m in per_view.items():
                row = {
                    "dataset": r.get("dataset"),
                    "variant": r.get("variant"),
                    "seed": r.get("seed"),
                    "profile": r.get("profile"),
                    "n_samples": r.get("n_samples"),
                    "view": v,
                    "view_name": names[v] if names and v < len(names) else f"view {v + 1}",
                    "level": level,
                }
                row.update({k: m.get(k, np.nan) for k in METRICS})
                rows.append(row)
    cols = ["dataset", "variant", "seed", "profile", "n_samples", "view", "view_name", "level"]
    return pd.DataFrame(rows, columns=[*cols, *METRICS])


def view_names(dataset: str | None) -> list[str] | None:
    """The registry's view names of a data set (None when unknown).

    Used by: book/exp_tsne.md, :func:`multilevel_frame`.
    """
    try:
        return list(get_spec(dataset).get("view_names") or []) or None
    except (ValueError, TypeError):
        return None


def history_frame(record: Mapping[str, Any]) -> pd.DataFrame:
    """The per-epoch history of one record as a DataFrame.

    Used by: book/exp_convergence.md.
    """
    return pd.DataFrame(record.get("history") or [])


# --------------------------------------------------------------------------------------------
# Published numbers
# --------------------------------------------------------------------------------------------
def load_published(path: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``data/published.toml`` as a DataFrame (one row per published entry) plus its sources.

    Columns: method, dataset, source, cite, what, short, ACC, NMI, PUR, ARI, note, testable
    (false for a source whose table was not identified: no verdict is drawn against it).

    Used by: book/intro.md, exp_main.md, exp_views.md, later_methods.md, reproducibility.md.
    """
    with open(path or find_root() / "data" / "published.toml", "rb") as f:
        pub = tomllib.load(f)
    sources = pub.get("sources", {})
    rows = []
    for e in pub.get("results", []):
        src = sources.get(e["source"], {})
        row = {
            "method": e["method"],
            "dataset": e["dataset"],
            "source": e["source"],
            "cite": src.get("cite", ""),
            "what": src.get("what", e["source"]),
            "short": src.get("short", e["source"]),
            "note": e.get("note", ""),
            "testable": bool(src.get("testable", True)),
        }
        row.update({m: e.get(m, np.nan) for m in METRICS})
        rows.append(row)
    meta = {"sources": sources, "method_cite": pub.get("method_cite", {})}
    return pd.DataFrame(rows), meta


def cite_role(key: str) -> str:
    """The MyST inline role citing ``key`` (empty string for no key).

    Used by: book/exp_main.md, reproducibility.md.
    """
    return f"{{cite}}`{key}`" if key else ""


# Fewer seeds than this: no verdict (one run's std says nothing about the spread).
# Used by: book/exp_main.md, reproducibility.md, :func:`verdict`.
MIN_SEEDS = 3


def verdict(
    mean: float,
    std: float,
    published: float,
    k: float = 2.0,
    tol: float = 0.005,
    n: int | None = None,
    min_n: int = MIN_SEEDS,
) -> str:
    """Verdict "match", "exceed" or "fall short" against a published value.

    Rule: match when |published − mean| ≤ k·std + tol (``tol`` covers the published rounding
    to three decimals; a missing std counts as 0); otherwise exceed when the mean is above the
    published value, fall short when below. "not tested" when either is missing; "too few
    seeds" when ``n`` (the number of seeds behind the mean) is below ``min_n``.

    Used by: book/exp_main.md, reproducibility.md.
    """
    if published is None or mean is None:
        return "not tested"
    if n is not None and n < min_n:
        return "too few seeds"
    if not (math.isfinite(float(published)) and math.isfinite(float(mean))):
        return "not tested"
    s = float(std) if std is not None and math.isfinite(float(std)) else 0.0
    if abs(float(published) - float(mean)) <= k * s + tol:
        return "match"
    return "exceed" if mean > published else "fall short"


def dataset_info(name: str) -> dict[str, Any]:
    """Registry facts used by the pages: N, K, comparable_to_paper, in_paper, note.

    Used by: book/exp_main.md, reproducibility.md, :func:`is_full_schedule`.
    """
    try:
        s = get_spec(name)
    except ValueError:
        return {"N": None, "K": None, "comparable_to_paper": False, "in_paper": False, "note": ""}
    return {k: s.get(k) for k in ("N", "K", "comparable_to_paper", "in_paper", "note")}


def is_full_schedule(df: pd.DataFrame) -> pd.Series:
    """Rows run in the full profile on the whole data set (the only runs that test a claim).

    Used by: book/exp_main.md, reproducibility.md.
    """
    full_n = df["dataset"].map(lambda d: dataset_info(d)["N"])
    return (df["profile"] == "full") & (df["n_samples"] == full_n)


# --------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------
def to_markdown(df: pd.DataFrame, index: bool = False) -> str:
    """A DataFrame as a Markdown (GFM) table, cells as strings.

    Used by: book/exp_main.md, reproducibility.md.
    """
    d = df.reset_index() if index else df
    cols = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in d.itertuples(index=False):
        cells = [str(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Findings: one verdict per data set and published source
# --------------------------------------------------------------------------------------------
# The sources that test the reproduced method: the MFLVC paper's table and the later papers'
# re-runs (the released models of the official code are a listing, not a claim of the paper).
CLAIM_SOURCES: tuple[str, ...] = ("mflvc_table2", "gcfagg", "scmvc", "later_unidentified")

# report.verdict's words as the findings table writes them.
# Used by: book/intro.md, :func:`findings_frame`.
FINDING_WORDS = {"match": "reproduced", "exceed": "above", "fall short": "below"}


def untestable_reason(dataset: str, source: Mapping[str, Any] | None = None) -> str | None:
    """Why our runs on ``dataset`` cannot be set against a published CMMC/MFLVC number, or None.

    "not comparable": our file holds other samples than the published number's (the registry's
    ``comparable_to_paper`` is false and no later paper re-ran MFLVC on the same public file,
    e.g. the rebuilt Fashion; or the published row is for another data set of the same name,
    CCV). "not testable (no identified source)": the published row's source has ``testable =
    false`` in data/published.toml. ``source`` is a row of :func:`load_published` (or None to
    ask about the data set alone).

    Used by: book/intro.md, exp_main.md, reproducibility.md, :func:`findings_frame`.
    """
    facts = dataset_info(dataset)
    src = source.get("source") if source is not None else None
    rerun = src is not None and src not in ("mflvc_table2", "mflvc_released")
    if not facts["comparable_to_paper"] and not rerun:
        return "not comparable"
    if source is not None and not bool(source.get("testable", True)):
        return "not testable (no identified source)"
    return None


def best_baseline(bdf: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Per data set and N: the baseline method with the highest mean ACC over its seeds.

    Columns: dataset, n_samples, method, ACC (its mean), n (its seeds).

    Used by: book/intro.md, exp_main.md (the bar chart), :func:`findings_frame`.
    """
    cols = ["dataset", "n_samples", "method", "ACC", "n"]
    b = bdf[~bdf.method.isin(list(exclude))] if len(bdf) else bdf
    if b.empty:
        return pd.DataFrame(columns=cols)
    g = b.groupby(["dataset", "n_samples", "method"]).ACC.agg(["mean", "count"]).reset_index()
    g = g.rename(columns={"mean": "ACC", "count": "n"})
    best = g.loc[g.groupby(["dataset", "n_samples"]).ACC.idxmax()]
    return best[cols].reset_index(drop=True)


def findings_frame(
    df: pd.DataFrame,
    bdf: pd.DataFrame,
    published: pd.DataFrame,
    k: float = 2.0,
    tol: float = 0.005,
) -> pd.DataFrame:
    """The findings table: one row per data set of the main records (its largest N) and
    published source of :data:`CLAIM_SOURCES` (one row with no published number when there is
    none), plain values (for a CSV).

    Columns: dataset, N, published_ACC, published_source, published_cite, ours_code_n,
    ours_code_ACC_mean, ours_code_ACC_sd, ours_paper_n, ours_paper_ACC_mean, ours_paper_ACC_sd,
    best_baseline, best_baseline_ACC_mean, baseline_beats_code (the best baseline's mean ACC
    above the code form's), verdict_code, verdict_paper. Verdicts: :func:`verdict` (ACC) in
    :data:`FINDING_WORDS`, or "not comparable", "not testable (...)" from
    :func:`untestable_reason`, no published number, fewer than :data:`MIN_SEEDS` seeds, or not
    the paper's schedule on the whole data set.

    Used by: book/intro.md.
    """
    cols = [
        "dataset", "N", "published_ACC", "published_source", "published_cite",
        "ours_code_n", "ours_code_ACC_mean", "ours_code_ACC_sd",
        "ours_paper_n", "ours_paper_ACC_mean", "ours_paper_ACC_sd",
        "best_baseline", "best_baseline_ACC_mean", "baseline_beats_code",
        "verdict_code", "verdict_paper",
    ]  # fmt: skip
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df[df.n_samples == df.groupby("dataset").n_samples.transform("max")]
    full = is_full_schedule(df)
    best = best_baseline(bdf)
    mflvc = published[(published.method == "CMMC/MFLVC") & published.source.isin(CLAIM_SOURCES)]
    rows = []
    for ds in df.dataset.unique():
        n_samples = int(df[df.dataset == ds].n_samples.iloc[0])
        forms = {}
        for form in ("code", "paper"):
            g = df[(df.dataset == ds) & (df.variant == form)]
            forms[form] = (
                len(g),
                g.ACC.mean() if len(g) else np.nan,
                g.ACC.std(ddof=1) if len(g) > 1 else np.nan,
                bool(full[g.index].all()) if len(g) else False,
            )
        bb = best[(best.dataset == ds) & (best.n_samples == n_samples)]
        b_name = bb.method.iloc[0] if len(bb) else ""
        b_acc = float(bb.ACC.iloc[0]) if len(bb) else np.nan
        pubs = mflvc[mflvc.dataset == ds]
        paper_twin = mflvc[mflvc.dataset == f"{ds}-paper"]
        entries = list(pubs.iterrows()) or [(None, None)]
        for _, p in entries:
            row = {"dataset": ds, "N": n_samples}
            row["published_ACC"] = float(p.ACC) if p is not None else np.nan
            row["published_source"] = p.short if p is not None else ""
            row["published_cite"] = p.cite if p is not None else ""
            for form, (n, mean, sd, dfull) in forms.items():
                row[f"ours_{form}_n"] = n
                row[f"ours_{form}_ACC_mean"] = mean
                row[f"ours_{form}_ACC_sd"] = sd
                if n == 0:
                    v = "not run"
                elif p is None:
                    v = (
                        "not comparable"
                        if len(paper_twin)
                        else "not testable (no published number)"
                    )
                elif (why := untestable_reason(ds, p)) is not None:
                    v = why
                elif not dfull:
                    v = "not testable (not the paper's schedule)"
                else:
                    v = verdict(mean, sd, p.ACC, k, tol, n=n)
                    v = FINDING_WORDS.get(v, f"not testable ({v})")
                row[f"verdict_{form}"] = v
            row["best_baseline"] = b_name
            row["best_baseline_ACC_mean"] = b_acc
            row["baseline_beats_code"] = bool(
                np.isfinite(b_acc) and forms["code"][0] and b_acc > forms["code"][1]
            )
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def cpu_machine(record: Mapping[str, Any]) -> tuple | None:
    """The CPU a record ran on, as far as run times compare: processor, vector unit, cores and
    torch; None for a GPU run or a record that does not name its vector unit (apply the errata
    first, :func:`cmmc.experiments.records.corrected`).

    Used by: :func:`robust_comparison`.
    """
    env = record.get("environment") or {}
    if record.get("device") != "cpu" or not env.get("cpu_capability"):
        return None
    return env.get("cpu"), env["cpu_capability"], env.get("cpu_count"), env.get("torch")


def _kind(record: Mapping[str, Any]) -> tuple:
    """(experiment, variant) of a record."""
    return record.get("experiment"), record.get("variant")


def _cpu_time_ratio(
    robust: Sequence[Mapping[str, Any]],
    faithful: Sequence[Mapping[str, Any]],
    stand_ins: Sequence[Mapping[str, Any]],
    robust_stand_ins: Sequence[Mapping[str, Any]] = (),
) -> tuple[float | None, str, str]:
    """Median robust seconds over median faithful seconds, machine by machine
    (:func:`cpu_machine`; the median, so that one run slowed by another process on a shared
    machine does not decide),
    averaged over the machines weighted by their robust runs; where the faithful seconds
    came from ("experiment/variant", joined by ", "; a robust stand-in's kind follows in
    parentheses); and the ratio of each machine ("CPU (vector unit): 2.00x (3 runs)", joined by
    "; "), since the average hides a ratio that differs by CPU. (None, "", "") when no machine
    has both. ``robust_stand_ins`` (robust runs made
    only to be timed) count on a machine where ``robust`` has no run. A run that shared its CPU
    with another (``environment.concurrent_runs`` above 1, as recorded or corrected by an
    erratum) is not timed."""
    robust, faithful, stand_ins, robust_stand_ins = (
        [r for r in rs if ((r.get("environment") or {}).get("concurrent_runs") or 1) <= 1]
        for rs in (robust, faithful, stand_ins, robust_stand_ins)
    )
    ratios, weights, sources, each = [], [], [], []
    machines = {m for r in [*robust, *robust_stand_ins] if (m := cpu_machine(r))}
    for machine in sorted(machines, key=str):
        mine = [r for r in robust if cpu_machine(r) == machine]
        mine_from = ""
        if not mine:
            mine = [r for r in robust_stand_ins if cpu_machine(r) == machine]
            mine_from = " (robust: " + "/".join(map(str, _kind(mine[0]))) + ")"
        ref = [r for r in faithful if cpu_machine(r) == machine]
        here = [r for r in stand_ins if cpu_machine(r) == machine]
        if not ref and here:  # the first kind of stand-in that ran on this machine
            ref = [r for r in here if _kind(r) == _kind(here[0])]
        if ref:
            seconds = np.median([r["total_seconds"] for r in mine])
            ratios.append(seconds / np.median([r["total_seconds"] for r in ref]))
            weights.append(len(mine))
            sources += ["/".join(map(str, _kind(r))) + mine_from for r in ref]
            runs = f"{len(mine)} run{'s' if len(mine) > 1 else ''}"
            each.append(f"{machine[0]} ({machine[1]}): {ratios[-1]:.2f}x ({runs})")
    if not ratios:
        return None, "", ""
    average = float(np.average(ratios, weights=weights))
    return average, ", ".join(dict.fromkeys(sources)), "; ".join(each)


def robust_comparison(
    sets: Sequence[str],
    faithful: Iterable[Mapping[str, Any]],
    robust: Iterable[Mapping[str, Any]],
    baselines: Iterable[Mapping[str, Any]],
    tol: float = 0.01,
    seeds_planned: int | Mapping[str, int] | None = None,
    faithful_time: Iterable[Mapping[str, Any]] = (),
    robust_time: Iterable[Mapping[str, Any]] = (),
    name: str = "robust",
) -> pd.DataFrame:
    """Per data set of ``sets``: the faithful and robust mean ACC (paper schedule), the best
    simple baseline (whole set), the smallest share of the K clusters that a robust run used,
    robust over faithful seconds on the same CPU (:func:`_cpu_time_ratio`), and the verdict of
    the target robust >= max(baseline, faithful) - ``tol`` ("not yet measured" until all three
    exist).

    ``seeds_planned`` (one number, or one per data set): a set with fewer robust seeds gets
    "met so far" / "missed so far", a provisional verdict. ``faithful_time``: stand-ins for the
    faithful form's CPU time (the same schedule), used only for the time ratio and only on a
    machine where the ``faithful`` records have no CPU run; where several kinds ran there, the
    first kind (experiment/variant) listed. ``robust_time``: robust runs made only to be timed,
    likewise used only on a machine where the ``robust`` records have no CPU run (never in ACC).

    Columns starting with ``_`` hold unrounded values (``_faithful``, ``_robust``, ``_base``)
    and the time ratio of each CPU (``_time by CPU``), for the text.
    ``name``: what the columns call the configuration of ``robust`` (e.g. "select"; its
    unrounded column is then ``_select``).

    Used by: book/beyond.md, intro.md.
    """
    faithful = [r for r in faithful if r.get("profile") == "full"]
    robust = [r for r in robust if r.get("profile") == "full"]
    timed = [r for r in faithful_time if r.get("profile") == "full"]
    timed_robust = [r for r in robust_time if r.get("profile") == "full"]

    def acc(recs):
        df = records_frame(recs)
        return df.groupby("dataset").ACC.agg(["mean", "std", "count"]) if len(df) else None

    code, rob = acc(faithful), acc(robust)
    bdf = baselines_frame([r for r in baselines if r.get("profile") == "full"])
    best = best_baseline(bdf) if len(bdf) else pd.DataFrame(columns=["dataset", "n_samples"])
    best = best.sort_values("n_samples").groupby("dataset").tail(1).set_index("dataset")
    rows = []
    for ds in sets:
        k = int(get_spec(ds)["K"])
        row: dict[str, Any] = {"dataset": ds, "K": k}
        for col, table in (("faithful", code), (name, rob)):
            if table is not None and ds in table.index:
                row[col] = fmt_mean_std(table.loc[ds, "mean"], table.loc[ds, "std"])
                row[f"{col} seeds"] = str(int(table.loc[ds, "count"]))
                row[f"_{col}"] = table.loc[ds, "mean"]
        if ds in best.index:
            row["best baseline"] = f"{best.loc[ds, 'ACC']:.3f} ({best.loc[ds, 'method']})"
            row["_base"] = best.loc[ds, "ACC"]
        for col, recs in (("faithful", faithful), (name, robust)):
            shares = [r["clusters_used"] / r["n_clusters"] for r in recs
                      if r["dataset"] == ds and "clusters_used" in r]  # fmt: skip
            if shares:  # records made before clusters_used was recorded have none
                row[f"{col}: min share of K used"] = round(min(shares), 2)
        ratio, source, by_cpu = _cpu_time_ratio(
            [r for r in robust if r["dataset"] == ds],
            [r for r in faithful if r["dataset"] == ds],
            [r for r in timed if r["dataset"] == ds],
            [r for r in timed_robust if r["dataset"] == ds],
        )
        if ratio is not None:
            row[f"time {name} / faithful (CPU)"] = round(ratio, 2)
            row["faithful time from"] = source
            row["_time by CPU"] = by_cpu
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("_faithful", f"_{name}", "_base", "_time by CPU"):
        if col not in out:
            out[col] = np.nan

    def verdict(r):
        if np.isnan(r[f"_{name}"]) or np.isnan(r["_faithful"]) or np.isnan(r["_base"]):
            return "not yet measured"
        verdict = "met" if r[f"_{name}"] >= max(r["_base"], r["_faithful"]) - tol else "missed"
        planned = (
            seeds_planned.get(r["dataset"]) if isinstance(seeds_planned, Mapping) else seeds_planned
        )
        if planned and int(r[f"{name} seeds"]) < planned:
            return f"{verdict} so far"
        return verdict

    out[f"target (≥ max − {tol:g})"] = out.apply(verdict, axis=1)
    return out


def verdict_counts(cmp: pd.DataFrame) -> dict[str, int]:
    """Count the verdicts of a :func:`robust_comparison` table: ``met`` and ``measured`` (sets
    with every planned seed), ``partial`` (a provisional "... so far"), ``sets`` (all rows),
    ``reachable``: the most sets that can still meet the target, whatever the remaining seeds
    give (every set but those already missed with all their seeds), and ``met_so_far`` of
    ``judged`` (final and provisional verdicts together).

    Used by: book/beyond.md, intro.md.
    """
    verdicts = cmp[[c for c in cmp.columns if c.startswith("target")][0]]
    return {
        "met": int((verdicts == "met").sum()),
        "measured": int(verdicts.isin(["met", "missed"]).sum()),
        "partial": int(verdicts.str.endswith("so far").sum()),
        "sets": len(cmp),
        "reachable": len(cmp) - int((verdicts == "missed").sum()),
        "met_so_far": int(verdicts.str.startswith("met").sum()),
        "judged": int((verdicts != "not yet measured").sum()),
    }


def verdict_sentence(counts: Mapping[str, int], goal: int) -> str:
    """How far the ACC target is met, in words, from :func:`verdict_counts`: final once every
    set has all its seeds; else the final count, the provisional one of the other sets and the
    most sets that can still meet it; where no set is final, only the provisional count.

    Used by: book/beyond.md, intro.md.
    """
    met, measured, sets = counts["met"], counts["measured"], counts["sets"]
    if measured == sets:
        return f"met on {met} of the {sets} sets, each with all its seeds (goal: at least {goal})"
    if measured == 0:  # nothing final: say only where it stands
        return (
            f"not final, since no set has all its planned seeds yet; on the seeds so far it is "
            f"met on {counts['met_so_far']} of the {counts['judged']} sets measured (goal: at "
            f"least {goal} of the {sets})"
        )
    partial = counts["partial"]
    have = "has" if partial == 1 else "have"
    return (
        f"met on {met} of the {measured} sets whose seeds are all recorded; {partial} more {have} "
        f"part of their seeds (met so far on {counts['met_so_far'] - met} of them), so at most "
        f"{counts['reachable']} of the {sets} sets can meet it whatever the remaining seeds give "
        f"(goal: at least {goal})"
    )


def target_table(
    cmp: pd.DataFrame,
    tol: float = 0.01,
    max_time: float = 2.0,
    name: str = "robust",
    provisional: bool = False,
) -> pd.DataFrame:
    """The four targets of the robust preset over the sets of a :func:`robust_comparison`
    table whose robust seeds are all recorded (final verdict): per target, the sets where it is
    met, those where it is missed, and those it cannot be judged on (no such records).
    ``provisional``: judge the sets with part of their seeds too, on the seeds recorded so far
    (verdicts "... so far"); a page must say so.

    1. ACC: robust >= max(best baseline, faithful) - ``tol`` (the table's verdict).
    2. Where the faithful form wins (faithful >= best baseline): robust >= faithful - ``tol``.
    3. Every robust run uses at least 90 % of the K clusters.
    4. Robust time at most ``max_time`` times the faithful run's on the same CPU.
    ``name``: the configuration the table compares (its ``name`` in :func:`robust_comparison`).

    Used by: book/beyond.md.
    """
    verdict = cmp[[c for c in cmp.columns if c.startswith("target")][0]]
    judged = ["met", "missed"] + (["met so far", "missed so far"] if provisional else [])
    final = cmp[verdict.isin(judged)]
    share = final.get(f"{name}: min share of K used", pd.Series(np.nan, index=final.index))
    time = final.get(f"time {name} / faithful (CPU)", pd.Series(np.nan, index=final.index))
    wins = final["_faithful"] >= final["_base"]
    names = final["dataset"]
    checks = {
        f"ACC ≥ max(best baseline, faithful) − {tol:g}": (
            verdict[final.index].str.startswith("met"),
            names.notna(),
        ),
        f"where the faithful form beats the baseline: ACC ≥ faithful − {tol:g}": (
            final[f"_{name}"] >= final["_faithful"] - tol,
            wins,
        ),
        "every run uses ≥ 90 % of the K clusters": (share >= 0.9, share.notna()),
        f"time ≤ {max_time:g}x the faithful run's (same CPU)": (time <= max_time, time.notna()),
    }
    rows = []
    for name, (ok, applies) in checks.items():
        rows.append({
            "target": name,
            "met": ", ".join(names[applies & ok]) or "–",
            "missed": ", ".join(names[applies & ~ok]) or "–",
            "not judged": ", ".join(names[~applies]) or "–",
            "n met": int((applies & ok).sum()),
            "n judged": int(applies.sum()),
        })  # fmt: skip
    return pd.DataFrame(rows)


def findings_display(findings: pd.DataFrame, cite: bool = True) -> pd.DataFrame:
    """The findings table for a page: strings, published numbers with their {cite} role (plain
    source names with ``cite=False``, as in the README).

    Used by: book/intro.md, scripts/readme_findings.py.
    """
    rows = []
    for r in findings.itertuples(index=False):
        pub = "–"
        if np.isfinite(r.published_ACC):
            pub = f"{fmt_published(r.published_ACC)} ({r.published_source}"
            pub += f" {cite_role(r.published_cite)})" if r.published_cite and cite else ")"
        rows.append({
            "data set": r.dataset,
            "published ACC (source)": pub,
            "ours, code form (n)": f"{fmt_mean_std(r.ours_code_ACC_mean, r.ours_code_ACC_sd)} ({r.ours_code_n})",
            "ours, paper form (n)": f"{fmt_mean_std(r.ours_paper_ACC_mean, r.ours_paper_ACC_sd)} ({r.ours_paper_n})",
            "best simple baseline (ours)": f"{fmt(r.best_baseline_ACC_mean)} ({r.best_baseline})" if r.best_baseline else "–",
            "verdict, code form": r.verdict_code,
            "verdict, paper form": r.verdict_paper,
        })  # fmt: skip
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, name: str, root: str | Path | None = None) -> str:
    """Write ``df`` to book/_static/tables/<name>.csv (generated at execution, git-ignored) and
    return the path for a page's {download} role, relative to book/.

    Used by: book/intro.md, exp_main.md, later_methods.md.
    """
    book = Path(root or find_root()) / "book"
    out = book / "_static" / "tables" / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.6g")
    return out.relative_to(book).as_posix()


# --------------------------------------------------------------------------------------------
# The fast path: minutes and ACC per CPU kind
# --------------------------------------------------------------------------------------------
FAST_FORMS = {"fp32_fused": "fp32", "bf16_fused": "bf16"}  # fastpath variants -> precision


def cpu_kind(record: Mapping[str, Any]) -> str:
    """The machine a record's time belongs to, in words: CPU model, vector unit, cores and its
    native bf16 units ("bf16 units not recorded" for records made before they were); the GPU
    for a GPU run.

    Used by: :func:`fastpath_table`.
    """
    env = record.get("environment") or {}
    if str(record.get("device", "cpu")) != "cpu":
        return env.get("gpu") or str(record.get("device"))
    units = env.get("cpu_bf16_units")
    bf16 = "bf16 units not recorded" if units is None else f"bf16: {', '.join(units) or 'none'}"
    return (
        f"{env.get('cpu', '?')} ({env.get('cpu_capability') or 'vector unit not recorded'}, "
        f"{bf16}), {env.get('cpu_count', '?')} cores, torch {env.get('torch', '?')}"
    )


def fastpath_table(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Per data set, machine (:func:`cpu_kind`) and form of the ``fastpath`` records: seeds,
    minutes of the whole run (mean and slowest), ACC mean ± std and the lowest ACC.

    Used by: book/exp_scalability.md.
    """
    rows = []
    for r in records:
        if r.get("variant") not in FAST_FORMS or r.get("profile") != "full":
            continue
        rows.append({"dataset": r["dataset"], "machine": cpu_kind(r),
                     "precision": FAST_FORMS[r["variant"]], "seed": r["seed"],
                     "minutes": r["total_seconds"] / 60, "ACC": r["metrics"]["ACC"],
                     "_native": bool((r.get("environment") or {}).get("cpu_bf16_units")),
                     "_cores": (r.get("environment") or {}).get("cpu_count")})  # fmt: skip
    cols = ["dataset", "machine", "precision", "seeds", "minutes (mean)", "minutes (slowest)",
            "ACC", "lowest ACC", "_acc", "_minutes_max", "_acc_min", "_native", "_cores"]  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=cols)
    out = []
    df = pd.DataFrame(rows)
    for (ds, machine, prec), g in df.groupby(["dataset", "machine", "precision"], sort=True):
        std = g.ACC.std(ddof=1) if len(g) > 1 else np.nan
        out.append({
            "dataset": ds, "machine": machine, "precision": prec,
            "seeds": _ranges(sorted(int(s) for s in g.seed)),
            "minutes (mean)": round(g.minutes.mean(), 1),
            "minutes (slowest)": round(g.minutes.max(), 1),
            "ACC": fmt_mean_std(g.ACC.mean(), std, 4), "lowest ACC": f"{g.ACC.min():.4f}",
            "_acc": g.ACC.mean(), "_minutes_max": g.minutes.max(), "_acc_min": g.ACC.min(),
            "_native": g._native.iloc[0], "_cores": g._cores.iloc[0],
        })  # fmt: skip
    return pd.DataFrame(out, columns=cols)


def fastpath_acc_gap(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Per data set: mean ACC of bf16 minus fp32 over the seeds both forms have (fused Adam in
    both, whatever machine each ran on), with the seeds compared and the spread of the fp32
    seeds (sample sd), the scale against which a gap reads.

    Used by: book/exp_scalability.md.
    """
    acc: dict[tuple[str, str], dict[int, float]] = {}
    for r in records:
        if r.get("variant") in FAST_FORMS and r.get("profile") == "full":
            key = (r["dataset"], FAST_FORMS[r["variant"]])
            acc.setdefault(key, {})[int(r["seed"])] = r["metrics"]["ACC"]
    rows = []
    for ds in sorted({d for d, _ in acc}):
        fp32, bf16 = acc.get((ds, "fp32"), {}), acc.get((ds, "bf16"), {})
        seeds = sorted(set(fp32) & set(bf16))
        if not seeds:
            continue
        a = float(np.mean([fp32[s] for s in seeds]))
        b = float(np.mean([bf16[s] for s in seeds]))
        sd = float(np.std([fp32[s] for s in seeds], ddof=1)) if len(seeds) > 1 else np.nan
        rows.append({"dataset": ds, "seeds": _ranges(seeds), "fp32 ACC": round(a, 4),
                     "fp32 sd over seeds": round(sd, 4), "bf16 ACC": round(b, 4),
                     "bf16 − fp32": round(b - a, 4), "_gap": b - a})  # fmt: skip
    return pd.DataFrame(rows, columns=["dataset", "seeds", "fp32 ACC", "fp32 sd over seeds",
                                       "bf16 ACC", "bf16 − fp32", "_gap"])  # fmt: skip


def fastpath_whole_runs(table: pd.DataFrame, dataset: str = "MNIST-USPS") -> list[str]:
    """One sentence per CPU with native bf16 that ran ``dataset`` in both precisions: minutes
    (mean, slowest seed) and ACC of the bf16 runs against the fp32 ones (:func:`fastpath_table`).

    Used by: book/exp_scalability.md, scripts/readme_findings.py.
    """
    native = table[table._native.astype(bool) & (table.dataset == dataset)]
    out = []
    for machine, g in native.groupby("machine"):
        by = g.set_index("precision")
        if {"bf16", "fp32"} <= set(by.index):
            b, f = by.loc["bf16"], by.loc["fp32"]
            out.append(
                f"{b['minutes (mean)']:.1f} minutes in bf16 (slowest seed "
                f"{b['minutes (slowest)']:.1f}, ACC {b.ACC}) against {f['minutes (mean)']:.1f} in "
                f"fp32 (slowest {f['minutes (slowest)']:.1f}, ACC {f.ACC}) on {machine}"
            )
    return out


def fastpath_targets(
    table: pd.DataFrame,
    gaps: pd.DataFrame,
    dataset: str = "MNIST-USPS",
    bf16_minutes: float = 5.0,
    fp32_minutes: float = 8.0,
    min_acc: float = 0.99,
    tol: float = 0.005,
) -> pd.DataFrame:
    """The fast path's targets, judged from :func:`fastpath_table` and :func:`fastpath_acc_gap`:
    on each 2-core CPU with native bf16, the slowest bf16 run of ``dataset`` within
    ``bf16_minutes`` and its lowest ACC at least ``min_acc``, the slowest fp32 run of the same
    CPU within ``fp32_minutes``; on every set, |bf16 − fp32| mean ACC at most ``tol``.

    Used by: book/exp_scalability.md.
    """
    rows = []
    native = table[(table.dataset == dataset) & table._native.astype(bool) & (table._cores == 2)]
    for machine, g in native.groupby("machine"):
        by = g.set_index("precision")
        if "bf16" in by.index:
            b = by.loc["bf16"]
            rows.append({"target": f"{dataset}, bf16: slowest run ≤ {bf16_minutes:g} min",
                         "machine": machine, "value": f"{b._minutes_max:.1f} min",
                         "met": bool(b._minutes_max <= bf16_minutes)})  # fmt: skip
            rows.append({"target": f"{dataset}, bf16: every seed ACC ≥ {min_acc:g}",
                         "machine": machine, "value": f"lowest {b._acc_min:.4f}",
                         "met": bool(b._acc_min >= min_acc)})  # fmt: skip
        if "fp32" in by.index:
            f = by.loc["fp32"]
            rows.append({"target": f"{dataset}, fp32: slowest run ≤ {fp32_minutes:g} min",
                         "machine": machine, "value": f"{f._minutes_max:.1f} min",
                         "met": bool(f._minutes_max <= fp32_minutes)})  # fmt: skip
    for g in gaps.to_dict("records"):
        rows.append({"target": f"{g['dataset']}: |bf16 − fp32| mean ACC ≤ {tol:g}",
                     "machine": f"seeds {g['seeds']}", "value": f"{g['_gap']:+.4f}",
                     "met": bool(abs(g["_gap"]) <= tol)})  # fmt: skip
    return pd.DataFrame(rows, columns=["target", "machine", "value", "met"])


Rule = Callable[[list[dict[str, Any]]], str | None]


def _best_score(cands: list[dict[str, Any]], key: Callable[[dict[str, Any]], float]) -> str:
    eligible = [c for c in cands if c["eligible"]] or cands
    return max(eligible, key=key)["candidate"]


def _needs(*keys: str) -> Callable[[Rule], Rule]:
    """A rule that answers None (nothing to judge the run by) where a candidate lacks a key: a
    record made before that score existed, without labels to compute it again."""

    def wrap(rule: Rule) -> Rule:
        return lambda cs: rule(cs) if all(k in c for c in cs for k in keys) else None

    return wrap


def _keep_cmmc_unless(margin: float) -> Rule:
    def rule(cands: list[dict[str, Any]]) -> str:
        best = _best_score(cands, lambda c: c["graph_score"])
        score = {c["candidate"]: c["graph_score"] for c in cands}
        return best if score[best] > score["cmmc"] + margin else "cmmc"

    return _needs("graph_score")(rule)


# Label-free rules over the candidates a select record scored (each sees the candidates without
# their metrics, as :func:`criterion_rows` writes them): the preset's rule and others one could
# have chosen, compared on the same runs. A rule answering None is left out of that run's means.
# The last two weigh how central a candidate is among the others (its agreement); they were
# added after the joint graph's records were seen, so they are judged on runs made later.
SELECTION_RULES: dict[str, Rule] = {
    "joint graph (second form)": _needs("joint_score")(
        lambda cs: _best_score(cs, lambda c: c["joint_score"])
    ),
    "mean view modularity (first form)": _needs("graph_score")(
        lambda cs: _best_score(cs, lambda c: c["graph_score"])
    ),
    "CMMC's own labels": lambda cs: "cmmc",
    "CMMC unless beaten by 0.01": _keep_cmmc_unless(0.01),
    "CMMC unless beaten by 0.02": _keep_cmmc_unless(0.02),
    "views and h": _needs("view_scores", "h_score")(
        lambda cs: _best_score(
            cs, lambda c: (sum(c["view_scores"]) + c["h_score"]) / (len(c["view_scores"]) + 1)
        )
    ),  # fmt: skip
    "worst view": _needs("view_scores")(
        lambda cs: _best_score(cs, lambda c: min(c["view_scores"]))
    ),
    "agreement": _needs("agreement_score")(
        lambda cs: _best_score(cs, lambda c: c["agreement_score"])
    ),
    "joint graph + agreement (the preset)": _needs("joint_score", "agreement_score")(
        lambda cs: _best_score(cs, lambda c: c["joint_score"] + c["agreement_score"])
    ),
}


def criterion_rows(
    records: Iterable[Mapping[str, Any]],
    views_of: Callable[[str, int], Sequence[np.ndarray]] | None = None,
) -> list[dict[str, Any]]:
    """Copies of ``records`` whose selection rows name every score by its criterion: the
    record's own ``score`` becomes ``<criterion>_score`` (criterion: the record's
    ``config.selection``), the other criteria's scores stay as recorded, ``view_scores`` stay
    only where they are per view (criterion ``"graph"``). Where the rows keep their packed
    labels and lack it, each gains its ``agreement_score``
    (:func:`cmmc.selection.agreement_scores`). With ``views_of(dataset, seed)`` (the views a
    run saw), a criterion's score that a record lacks is computed from its packed labels
    (:func:`add_criterion_scores`).

    Used by: book/beyond.md.
    """
    out = []
    for r in records:
        sel = r.get("selection")
        if not sel:
            out.append(dict(r))
            continue
        own = (r.get("config") or {}).get("selection", "graph")
        rows = []
        for c in sel:
            row = {k: v for k, v in c.items() if k not in ("score", "view_scores")}
            row[f"{own}_score"] = c["score"]
            if own == "graph":
                row["view_scores"] = c["view_scores"]
            rows.append(row)
        if all("labels" in c for c in rows) and any("agreement_score" not in c for c in rows):
            rows = _with_agreement(rows)
        out.append({**r, "selection": rows})
    if views_of is not None:
        from cmmc.selection import GRAPHS

        for graph in GRAPHS:
            out = add_criterion_scores(out, graph, views_of)
    return out


def _blind(sel: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's candidates as a rule sees them: without their metrics, choice or labels."""
    return [{k: v for k, v in c.items() if k not in ("metrics", "chosen", "labels")} for c in sel]


#: The rule of :data:`SELECTION_RULES` that the select preset's criterion ("consensus") applies.
PRESET_RULE = "joint graph + agreement (the preset)"


def preset_runs(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The select preset's runs among ``rows`` (as :func:`criterion_rows` writes them): its own
    (variant ``consensus``) and, for each experiment, data set and seed without one, the joint
    variant's run with its choice made again by :data:`PRESET_RULE` (:func:`rechoose`; the same
    training, so the same candidates).

    Used by: book/beyond.md, scripts/readme_findings.py.
    """
    rows = list(rows)
    own = [r for r in rows if r.get("variant") == "consensus"]
    done = {(r["experiment"], r["dataset"], r["seed"]) for r in own}
    joint = [r for r in rows if r.get("variant") == "joint"
             and (r["experiment"], r["dataset"], r["seed"]) not in done]  # fmt: skip
    return own + rechoose(joint, SELECTION_RULES[PRESET_RULE], "consensus")


def pretrain_limit_binds(record: Mapping[str, Any]) -> bool:
    """Whether the select preset's pre-training limit (``pretrain_batch_factor`` of
    :data:`cmmc.config.PRESETS`) changes the batches of a run on the record's set (its
    ``n_samples``): there a run made without the limit is not the preset's run."""
    return _select_config().pretrain_limit_binds(int(record["n_samples"]))


@functools.cache
def _select_config():  # built once: pretrain_limit_binds runs for every record of a page
    from cmmc.config import make_config

    return make_config(None, "full", preset="select")


def with_pretrain_limit(
    runs: Iterable[Mapping[str, Any]], limited: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The select preset's runs as the preset is now: ``runs`` (made without its pre-training
    limit, e.g. :func:`preset_runs`) on the sets where the limit does not bind, ``limited``
    (made with it; renamed variant ``consensus``, ``limited_from`` naming their own) where it
    does (:func:`pretrain_limit_binds`, run by run). A set whose limited runs are missing is
    missing, never filled with runs made without the limit.

    Used by: book/beyond.md, scripts/readme_findings.py.
    """
    out = [dict(r) for r in runs if not pretrain_limit_binds(r)]
    out += [{**r, "variant": "consensus", "limited_from": r.get("variant")}
            for r in limited if pretrain_limit_binds(r)]  # fmt: skip
    return out


def rechoose(
    records: Iterable[Mapping[str, Any]], rule: Rule, variant: str
) -> list[dict[str, Any]]:
    """Copies of select records (rows as :func:`criterion_rows` writes them) with the choice made
    again by ``rule`` from the recorded scores: ``metrics``, ``clusters_used`` and the chosen flags
    become those of the candidate the rule picks, ``variant`` is renamed and ``rechosen_from``
    names the record's own variant; training, time and machine stay the record's. The rule sees
    the candidates without their metrics or labels. A run the rule cannot judge is left out.

    Used by: book/beyond.md.
    """
    out = []
    for r in records:
        sel = r.get("selection")
        if not sel:
            continue
        pick = rule(_blind(sel))
        if pick is None:
            continue
        got = next(c for c in sel if c["candidate"] == pick)
        out.append({
            **{k: v for k, v in r.items() if k != "labels_sha256"},
            "variant": variant, "rechosen_from": r.get("variant"), "metrics": dict(got["metrics"]),
            "clusters_used": got["clusters_used"],
            "selection": [{**c, "chosen": c["candidate"] == pick} for c in sel],
        })  # fmt: skip
    return out


def _with_agreement(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from cmmc.experiments.kinds import unpack_labels
    from cmmc.selection import agreement_scores

    score = agreement_scores({c["candidate"]: unpack_labels(c["labels"]) for c in rows})
    return [{**c, "agreement_score": round(score[c["candidate"]], 6)} for c in rows]


def selection_rules(
    records: Iterable[Mapping[str, Any]],
    rules: Mapping[str, Rule] | None = None,
) -> pd.DataFrame:
    """Per data set of records with a ``selection`` (as :func:`criterion_rows` names their
    scores): the mean ACC of the candidate each
    label-free rule of ``rules`` (default :data:`SELECTION_RULES`) picks in each run, and of
    the best candidate by ACC (the oracle, which reads labels); a last row counts the sets where
    a rule is within 0.01 of the oracle on the runs that rule judged. A rule is given each run's candidates without their
    metrics, so it cannot read labels.

    Used by: book/beyond.md.
    """
    rules = SELECTION_RULES if rules is None else rules
    rows = []
    for r in records:
        sel = r.get("selection")
        if not sel:
            continue
        acc = {c["candidate"]: c["metrics"]["ACC"] for c in sel}
        blind = _blind(sel)
        picks = {name: rule(blind) for name, rule in rules.items()}
        row = {name: np.nan if c is None else acc[c] for name, c in picks.items()}
        rows.append({"dataset": r["dataset"], **row, "oracle": max(acc.values())})
    columns = ["dataset", "seeds", *rules, "oracle"]
    if not rows:
        return pd.DataFrame(columns=columns)
    df = pd.DataFrame(rows)
    out = df.groupby("dataset", sort=False).mean().round(3).reset_index()
    out.insert(1, "seeds", df.groupby("dataset", sort=False).size().to_numpy())
    near = {}
    for name in rules:  # each rule against the oracle of the runs it judged
        judged = df[df[name].notna()].groupby("dataset", sort=False)[[name, "oracle"]].mean()
        hits = int((judged[name].round(3) >= judged["oracle"].round(3) - 0.01).sum())
        near[name] = f"{hits} of {len(judged)}"
    tally = pd.DataFrame([{"dataset": "within 0.01 of the oracle", "seeds": "", **near,
                           "oracle": ""}])  # fmt: skip
    return pd.concat([out, tally], ignore_index=True)[columns]


def add_criterion_scores(
    records: Iterable[Mapping[str, Any]],
    criterion: str,
    views_of: Callable[[str, int], Sequence[np.ndarray]],
) -> list[dict[str, Any]]:
    """Copies of ``records`` whose selection rows gain ``<criterion>_score`` (the candidate's
    mean modularity on the graphs of that name, :data:`cmmc.selection.GRAPHS`) where the row
    keeps its packed labels and lacks the score; ``views_of(dataset, seed)`` gives the views a
    run of that seed saw (a generated set is drawn from the run's seed). Reads
    no label of the data: the same score the selection would have computed during the run.

    Used by: book/beyond.md.
    """
    from cmmc.experiments.kinds import unpack_labels
    from cmmc.selection import GRAPHS, modularity

    graphs: dict[tuple[str, int], list] = {}
    out = []
    for r in records:
        sel = r.get("selection") or []
        key = f"{criterion}_score"
        if not sel or all(key in c for c in sel) or any("labels" not in c for c in sel):
            out.append(dict(r))
            continue
        run = (r["dataset"], r["seed"])
        if run not in graphs:
            graphs[run] = GRAPHS[criterion](views_of(*run))
        g = graphs[run]
        rows = [{**c, key: float(np.mean([modularity(x, unpack_labels(c["labels"])) for x in g]))}
                for c in sel]  # fmt: skip
        out.append({**r, "selection": rows})
    return out


def ensemble_runs(
    records: Iterable[Mapping[str, Any]],
    data_of: Callable[[str, int], Any],
) -> pd.DataFrame:
    """Per select run whose candidates keep their packed labels: the cluster ensemble of its
    candidates (:func:`cmmc.selection.ensemble_partition`, the run's seed), and the preset's
    criterion (joint graph + agreement, :func:`cmmc.selection.select`) applied to the run's
    candidates and again with the ensemble added; each with its ACC and clusters used.
    ``data_of(dataset, seed)`` gives the run's :class:`~cmmc.data.Dataset`: its views build the
    graph, its labels score the partitions afterwards and take no part in the choice.

    Used by: book/beyond.md.
    """
    from cmmc.experiments.kinds import unpack_labels
    from cmmc.metrics import evaluate
    from cmmc.selection import agreement_scores, ensemble_partition, joint_graph, select

    graphs: dict[tuple[str, int], Any] = {}
    rows = []
    for r in records:
        sel = r.get("selection") or []
        if not sel or any("labels" not in c for c in sel):
            continue
        ds = data_of(r["dataset"], r["seed"])
        run = (r["dataset"], r["seed"])
        if run not in graphs:
            graphs[run] = joint_graph(ds.views)
        k = int(r["n_clusters"])
        cands = {c["candidate"]: unpack_labels(c["labels"]) for c in sel}
        with_ens = {**cands, "ensemble": ensemble_partition(cands, k, int(r["seed"]))}
        row = {"dataset": r["dataset"], "seed": r["seed"], "K": k}
        for name, cs in (("preset", cands), ("with ensemble", with_ens)):
            got = select(ds.views, cs, k, graphs=[graphs[run]], agreement=agreement_scores(cs))
            row[name] = evaluate(ds.labels, got.labels)["ACC"]
            row[f"{name}: choice"] = got.chosen
            row[f"{name}: used"] = len(np.unique(got.labels)) / k
        row["ensemble alone"] = evaluate(ds.labels, with_ens["ensemble"])["ACC"]
        rows.append(row)
    return pd.DataFrame(rows)


def selection_summary(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Per data set of records with a ``selection`` (``Config.selection="graph"``): seeds, what
    the label-free choice took (candidate x times, most often first), the mean ACC of the
    choice, of CMMC's own labels (candidate "cmmc") and of the candidate that was best by ACC in
    each run (an oracle: labels used, to show what the choice left on the table), how often the
    choice was that best candidate (ties within 0.001 count), and the selection's mean seconds.

    Used by: book/beyond.md.
    """
    rows = []
    for r in records:
        sel = r.get("selection")
        if not sel:
            continue
        accs = {c["candidate"]: c["metrics"]["ACC"] for c in sel}
        chosen = next(c["candidate"] for c in sel if c["chosen"])
        rows.append({
            "dataset": r["dataset"], "chosen": chosen, "ACC": accs[chosen],
            "cmmc": accs.get("cmmc", np.nan), "best": max(accs.values()),
            "hit": accs[chosen] >= max(accs.values()) - 1e-3,
            "seconds": (r.get("phase_seconds") or {}).get("selection", np.nan),
        })  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=["dataset", "seeds", "chosen", "ACC", "CMMC's own ACC",
                                     "best candidate ACC (oracle)", "choice = best",
                                     "selection s"])  # fmt: skip
    df = pd.DataFrame(rows)
    out = []
    for ds, g in df.groupby("dataset", sort=False):
        counts = g.chosen.value_counts()
        out.append({
            "dataset": ds, "seeds": len(g),
            "chosen": ", ".join(f"{c} ×{n}" for c, n in counts.items()),
            "ACC": round(g.ACC.mean(), 3), "CMMC's own ACC": round(g.cmmc.mean(), 3),
            "best candidate ACC (oracle)": round(g.best.mean(), 3),
            "choice = best": f"{int(g.hit.sum())} of {len(g)}",
            "selection s": round(g.seconds.mean(), 1),
        })  # fmt: skip
    return pd.DataFrame(out)
