"""Tests of the book's report helpers against hand computations."""

from __future__ import annotations

import statistics

import numpy as np
import pandas as pd
import pytest

from cmmc.book import report

AVX2 = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "cpu_count": 2, "torch": "2.13.0+cpu"}


def frame(rows):
    return pd.DataFrame(
        rows, columns=["dataset", "variant", "seed", "ACC", "final_contrastive_loss"]
    )


def test_summarize_matches_statistics_module():
    accs = [0.91, 0.95, 0.90, 0.97]
    df = frame(
        [("A", "code", s, a, 1.0 + s) for s, a in enumerate(accs)] + [("B", "code", 0, 0.5, 2.0)]
    )
    out = report.summarize(df, metrics=("ACC",)).set_index("dataset")
    assert out.loc["A", "n"] == 4
    assert out.loc["A", "ACC_mean"] == pytest.approx(statistics.mean(accs))
    assert out.loc["A", "ACC_std"] == pytest.approx(statistics.stdev(accs))  # sample std
    assert out.loc["A", "ACC_median"] == pytest.approx(statistics.median(accs))
    assert out.loc["A", "ACC_best"] == 0.97
    assert np.isnan(out.loc["B", "ACC_std"])  # one run: no spread


def test_summary_table_counts_the_devices_of_each_row():
    df = frame([("A", "paper", s, 0.2, 1.0) for s in range(6)] + [("B", "code", 0, 0.9, 1.0)])
    df["device"] = ["cpu"] * 4 + ["cuda"] * 2 + ["cuda"]
    out = report.summary_table(df, metrics=("ACC",), stats=("mean ± std",), devices=True)
    out = out.set_index("dataset")
    assert out.loc["A", "device"] == "cpu 4, cuda 2"  # mixed: runs per device
    assert out.loc["B", "device"] == "cuda"  # one device: its name alone
    assert "device" not in report.summary_table(df, metrics=("ACC",)).columns  # opt-in


def test_label_free_pick_takes_lowest_loss_not_best_acc():
    # The best ACC (seed 2) has the highest loss; the rule must pick seed 1 (lowest loss).
    df = frame([("A", "code", 0, 0.80, 5.0), ("A", "code", 1, 0.70, 4.0), ("A", "code", 2, 0.99, 9.0),
                ("A", "paper", 0, 0.60, 3.0), ("A", "paper", 1, 0.65, None)])  # fmt: skip
    picked = report.label_free_pick(df).set_index("variant")
    assert picked.loc["code", "seed"] == 1
    assert picked.loc["paper", "seed"] == 0  # a run without the criterion is never picked


def test_sanity_flags_each_inconsistent_metric():
    good = {"ACC": 0.8, "NMI": 0.7, "PUR": 0.85, "ARI": 0.6}
    records = [
        {"experiment": "main", "dataset": "A", "variant": "code", "seed": 0, "metrics": good},
        {"experiment": "main", "dataset": "A", "variant": "code", "seed": 1,
         "metrics": {**good, "PUR": 0.7}},  # PUR < ACC is impossible
        {"experiment": "main", "dataset": "A", "variant": "code", "seed": 2,
         "metrics": {**good, "NMI": 1.2}},  # out of range
    ]  # fmt: skip
    bad = report.sanity(records)
    assert bad.attrs["checked"] == 3
    assert sorted(bad["seed"]) == [1, 2]


@pytest.mark.parametrize(
    ("mean", "std", "published", "expected"),
    [
        (0.990, 0.002, 0.995, "match"),  # within 2 std + 0.005
        (0.950, 0.001, 0.995, "fall short"),
        (0.998, 0.0003, 0.944, "exceed"),
        (0.9, float("nan"), 0.904, "match"),  # one run: std 0, the rounding tolerance only
        (0.9, 0.01, None, "not tested"),
    ],
)
def test_verdict_rule(mean, std, published, expected):
    assert report.verdict(mean, std, published) == expected


def test_verdict_needs_enough_seeds():
    # 0.980 from one seed against 0.992: no verdict; from 10 seeds with std 0.001: falls short
    assert report.verdict(0.980, float("nan"), 0.992, n=1) == "too few seeds"
    assert report.verdict(0.980, 0.004, 0.992, n=2) == "too few seeds"
    assert report.verdict(0.980, 0.001, 0.992, n=10) == "fall short"
    assert report.verdict(0.980, 0.001, 0.992, n=3) == "fall short"
    assert report.verdict(0.980, 0.001, None, n=1) == "not tested"


def test_fmt_mean_std_and_published_digits():
    assert report.fmt_mean_std(0.91234, 0.0101) == "0.912 ± 0.010"
    assert report.fmt_mean_std(0.91234, float("nan")) == "0.912"
    assert report.fmt_published(0.995) == "0.995" and report.fmt_published(None) == "–"


def test_records_frame_reads_the_batch_size():
    base = {"experiment": "main", "dataset": "A", "variant": "code", "device": "cpu"}
    base["metrics"] = {"ACC": 0.5}
    single = {**base, "seed": 0, "total_seconds": 10.0}
    batched = {**base, "seed": 1, "total_seconds": 30.0, "batch": {"size": 3, "members": []}}
    df = report.records_frame([single, batched]).set_index("seed")
    assert df.loc[0, "batch_size"] == 1 and df.loc[1, "batch_size"] == 3
    assert df.loc[1, "total_seconds"] / df.loc[1, "batch_size"] == 10.0
    text = report.provenance([{**single, "profile": "full"}, {**batched, "profile": "full"}])
    assert text.endswith(
        "; 1 of them trained in batches of 3 runs at once (stacked: cmmc.train.Trainer.for_members)"
    )


def test_missing_details_is_collapsed_and_grouped():
    # as cmmc.experiments.ensure_records lists them: one dict per planned run without a record
    missing = [
        {"dataset": "A", "variant": "code", "seed": 3},
        {"dataset": "A", "variant": "code", "seed": 1},
        {"dataset": "B", "variant": "paper", "seed": 0},
    ]
    for given in (missing, pd.DataFrame(missing)):
        html = report.missing_details(given, "CMMC run(s)").data
        assert html.startswith("<details><summary>3 CMMC run(s) without a record")
        assert "<td>1, 3</td>" in html and "<td>0</td>" in html  # seeds grouped and sorted
        assert html.endswith("</details>")
    assert report.missing_summary([]).empty and "0 planned" in report.missing_details([]).data


def test_untestable_reason_for_rebuilt_data_and_unidentified_sources():
    published, _ = report.load_published()
    row = {r.source: r for r in published[published.dataset == "Fashion"].itertuples()}
    assert report.untestable_reason("Fashion", row["mflvc_table2"]._asdict()) == "not comparable"
    assert report.untestable_reason("MNIST-USPS", {"source": "mflvc_table2"}) is None
    syn = published[(published.dataset == "Synthetic3d")].iloc[0].to_dict()
    assert not syn["testable"]
    assert report.untestable_reason("Synthetic3d", syn) == "not testable (no identified source)"
    assert report.untestable_reason("Hdigit", {"source": "gcfagg", "testable": True}) is None


def test_findings_frame_verdicts_and_best_baseline():
    n = report.dataset_info("MNIST-USPS")["N"]
    rows = []
    for ds, accs in (("MNIST-USPS", [0.994, 0.995, 0.996]), ("HW", [0.80, 0.82, 0.81])):
        for form in ("code", "paper"):
            for s, a in enumerate(accs):
                rows.append({"dataset": ds, "variant": form, "seed": s, "ACC": a,
                             "profile": "full",
                             "n_samples": n if ds == "MNIST-USPS" else report.dataset_info("HW")["N"]})  # fmt: skip
    df = pd.DataFrame(rows)
    bdf = pd.DataFrame(
        [{"dataset": "HW", "n_samples": report.dataset_info("HW")["N"], "method": m, "seed": s,
          "ACC": a} for m, a in (("kmeans", 0.7), ("spectral", 0.9)) for s in range(3)]
    )  # fmt: skip
    published, _ = report.load_published()
    f = report.findings_frame(df, bdf, published).set_index("dataset")
    assert f.loc["MNIST-USPS", "verdict_code"] == "reproduced"  # 0.995 within the band
    assert f.loc["HW", "verdict_code"] == "not testable (no published number)"
    assert f.loc["HW", "best_baseline"] == "spectral"
    assert f.loc["HW", "best_baseline_ACC_mean"] == pytest.approx(0.9)
    assert bool(f.loc["HW", "baseline_beats_code"])
    assert not bool(f.loc["MNIST-USPS", "baseline_beats_code"])  # no baseline recorded


def test_robust_comparison_against_hand_computed_means_and_verdicts():
    """Three sets from registry K's: met (robust at the best baseline - 0.005), missed (robust 0.02
    below the faithful form), not yet measured (no robust runs)."""

    def run(ds, variant, seed, acc, used, secs, device="cpu"):
        return {"dataset": ds, "variant": variant, "seed": seed, "profile": "full",
                "device": device, "metrics": {"ACC": acc}, "clusters_used": used,
                "n_clusters": 20 if ds == "Multi-COIL-20" else 10, "total_seconds": secs,
                "environment": AVX2}  # fmt: skip

    def base(ds, seed, accs):
        return {"dataset": ds, "seed": seed, "profile": "full", "n_samples": 480,
                "baselines": {m: {"ACC": a} for m, a in accs.items()}}  # fmt: skip

    faithful = [run("Multi-COIL-20", "code", s, a, 12, 90) for s, a in enumerate([0.5, 0.4])]
    faithful += [run("Multi-COIL-10", "code", s, a, 10, 80) for s, a in enumerate([0.80, 0.84])]
    faithful += [run("ALOI", "code", 0, 0.7, 10, 100, device="cuda")]
    robust = [
        run("Multi-COIL-20", "robust", s, a, u, 200) for s, a, u in [(0, 0.8, 20), (1, 0.78, 18)]
    ]
    # Multi-COIL-10's third robust run was slowed (960 s): the median (160 s) takes no notice
    robust += [
        run("Multi-COIL-10", "robust", s, 0.80, 10, t) for s, t in [(0, 160), (1, 160), (2, 960)]
    ]
    robust += [run("Multi-COIL-20", "robust", 0, 0.1, 2, 1, device="cpu") | {"profile": "quick"}]
    baselines = [
        base("Multi-COIL-20", s, {"kmeans": 0.7, "spectral": a}) for s, a in enumerate([0.8, 0.79])
    ]
    baselines += [base("Multi-COIL-10", 0, {"kmeans": 0.6})]
    out = report.robust_comparison(
        ["Multi-COIL-20", "Multi-COIL-10", "ALOI"], faithful, robust, baselines
    )
    out = out.set_index("dataset")
    verdict = out.columns[-1]
    # Multi-COIL-20: robust 0.79, faithful 0.45, best baseline spectral 0.795: 0.79 >= 0.785.
    assert out.loc["Multi-COIL-20", "_robust"] == pytest.approx(0.79)
    assert out.loc["Multi-COIL-20", "_base"] == pytest.approx(0.795)
    assert out.loc["Multi-COIL-20", "best baseline"] == "0.795 (spectral)"
    assert out.loc["Multi-COIL-20", "robust: min share of K used"] == 0.9  # 18/20; quick ignored
    assert out.loc["Multi-COIL-20", "faithful: min share of K used"] == 0.6
    assert out.loc["Multi-COIL-20", "time robust / faithful (CPU)"] == pytest.approx(
        200 / 90, abs=0.01
    )
    assert out.loc["Multi-COIL-20", verdict] == "met"
    # Multi-COIL-10: faithful 0.82 wins; robust 0.80 is 0.02 below it.
    assert out.loc["Multi-COIL-10", verdict] == "missed"
    assert out.loc["Multi-COIL-10", "time robust / faithful (CPU)"] == pytest.approx(2.0)  # 160/80
    # ALOI: no robust runs, and its faithful run on a GPU gives no CPU time ratio.
    assert out.loc["ALOI", verdict] == "not yet measured"
    assert np.isnan(out.loc["ALOI", "_robust"])


def test_robust_comparison_provisional_verdict_and_cpu_time_from_other_records():
    """With 3 planned seeds, a set with 2 robust seeds gets "met so far"; a faithful form that ran
    on a GPU takes its CPU time from ``faithful_time`` records (mean 50 s: ratio 150 / 50 = 3),
    but only where the faithful runs have no CPU time of their own."""

    def run(variant, seed, acc, secs, device="cpu", env=AVX2):
        return {"dataset": "Multi-COIL-10", "variant": variant, "seed": seed, "profile": "full",
                "device": device, "metrics": {"ACC": acc}, "clusters_used": 10,
                "n_clusters": 10, "total_seconds": secs, "environment": env,
                "experiment": "beyond_tried" if variant == "fused" else "main"}  # fmt: skip

    faithful = [run("code", s, 0.6, 9, device="cuda") for s in range(3)]
    robust = [run("robust", s, 0.8, 150) for s in range(2)]
    timed = [run("fused", 0, 0.6, 40), run("fused", 1, 0.6, 60)]
    baselines = [{"dataset": "Multi-COIL-10", "seed": 0, "profile": "full", "n_samples": 240,
                  "baselines": {"kmeans": {"ACC": 0.7}}}]  # fmt: skip
    sets = ["Multi-COIL-10"]
    out = report.robust_comparison(sets, faithful, robust, baselines, seeds_planned=3)
    assert out.iloc[0, -1] == "met so far"
    assert "time robust / faithful (CPU)" not in out  # the faithful runs were on a GPU
    out = report.robust_comparison(
        sets, faithful, robust + [run("robust", 2, 0.8, 150)], baselines, seeds_planned=3,
        faithful_time=timed,
    )  # fmt: skip
    assert out.iloc[0, -1] == "met"
    per_set = report.robust_comparison(sets, faithful, robust, baselines,
                                       seeds_planned={"Multi-COIL-10": 2, "HW": 5})  # fmt: skip
    assert per_set.iloc[0, -1] == "met"  # 2 of 2 planned seeds: final
    assert out.loc[0, "time robust / faithful (CPU)"] == pytest.approx(3.0)
    assert out.loc[0, "faithful time from"] == "beyond_tried/fused"
    # Faithful runs of their own on a CPU (100 s) take precedence over faithful_time's.
    cpu_faithful = [run("code", s, 0.6, 100) for s in range(3)]
    out = report.robust_comparison(
        sets, cpu_faithful, robust, baselines, seeds_planned=3, faithful_time=timed
    )
    assert out.loc[0, "time robust / faithful (CPU)"] == pytest.approx(1.5)


def test_robust_comparison_times_only_runs_of_the_same_cpu():
    """Robust runs on two CPUs: AVX2 (2 runs, 300 s) and AVX-512 (1 run, 100 s). Faithful CPU
    time on AVX2 only in a stand-in (150 s; a later stand-in kind of 10 s is ignored), on
    AVX-512 a faithful run of its own (50 s); a faithful run whose record does not name its
    vector unit (1 s) and one of another torch (1 s) match neither. Ratio, weighted by robust
    runs: (2 * 300/150 + 1 * 100/50) / 3 = 2.0."""
    avx512 = AVX2 | {"cpu_capability": "AVX512"}

    def run(experiment, variant, secs, env):
        return {"dataset": "Multi-COIL-10", "variant": variant, "seed": 0, "profile": "full",
                "device": "cpu", "metrics": {"ACC": 0.7}, "clusters_used": 10, "n_clusters": 10,
                "total_seconds": secs, "environment": env, "experiment": experiment}  # fmt: skip

    robust = [run("beyond", "robust", 300, AVX2)] * 2 + [run("beyond", "robust", 100, avx512)]
    faithful = [run("beyond_code", "code", 50, avx512),
                run("beyond_code", "code", 1, {"cpu": "AMD EPYC", "cpu_count": 2}),
                run("beyond_code", "code", 1, AVX2 | {"torch": "2.12.0+cpu"})]  # fmt: skip
    timed = [run("main", "paper", 150, AVX2), run("beyond_tried", "fused", 10, AVX2)]
    baselines = [{"dataset": "Multi-COIL-10", "seed": 0, "profile": "full", "n_samples": 240,
                  "baselines": {"kmeans": {"ACC": 0.7}}}]  # fmt: skip
    out = report.robust_comparison(["Multi-COIL-10"], faithful, robust, baselines,
                                   faithful_time=timed)  # fmt: skip
    assert out.loc[0, "time robust / faithful (CPU)"] == pytest.approx(2.0)
    assert out.loc[0, "faithful time from"] == "main/paper, beyond_code/code"
    assert out.loc[0, "_time by CPU"] == (
        "AMD EPYC (AVX2): 2.00x (2 runs); AMD EPYC (AVX512): 2.00x (1 run)"
    )
    assert report.cpu_machine(robust[0] | {"device": "cuda"}) is None


def test_robust_comparison_leaves_out_the_time_of_runs_that_shared_the_cpu():
    """On one AVX2 CPU: robust runs of 200 s alone and 5000 s beside another process; faithful
    runs of 100 s alone and 1 s marked shared. Ratio 200 / 100 = 2.0 (a median over all four
    robust runs would give (200 + 5000) / 2 / 100 = 26). With every robust run shared: no ratio."""

    def run(experiment, variant, secs, shared=1):
        return {"dataset": "Multi-COIL-10", "variant": variant, "seed": 0, "profile": "full",
                "device": "cpu", "metrics": {"ACC": 0.7}, "clusters_used": 10, "n_clusters": 10,
                "total_seconds": secs, "environment": AVX2 | {"concurrent_runs": shared},
                "experiment": experiment}  # fmt: skip

    robust = [run("beyond", "robust", 200)] * 2 + [run("beyond", "robust", 5000, shared=2)] * 2
    faithful = [run("beyond_code", "code", 100), run("beyond_code", "code", 1, shared=2)]
    baselines = [{"dataset": "Multi-COIL-10", "seed": 0, "profile": "full", "n_samples": 240,
                  "baselines": {"kmeans": {"ACC": 0.7}}}]  # fmt: skip
    out = report.robust_comparison(["Multi-COIL-10"], faithful, robust, baselines)
    assert out.loc[0, "time robust / faithful (CPU)"] == pytest.approx(2.0)
    alone = report.robust_comparison(["Multi-COIL-10"], faithful, robust[2:], baselines)
    col = "time robust / faithful (CPU)"
    assert col not in alone or pd.isna(alone.loc[0, col])


def test_robust_comparison_times_a_robust_stand_in_only_where_robust_runs_are_missing():
    """Robust runs on AVX2 (400 s) with no faithful time there; a faithful stand-in (200 s) and
    a robust stand-in (300 s) on AVX-512: ratio 300 / 200 = 1.5 from AVX-512 alone. A robust
    stand-in on AVX2 (1 s) is ignored: the robust runs of AVX2 come first (and have no faithful
    time), and robust stand-ins never enter the ACC (mean of the robust runs: 0.8)."""
    avx512 = AVX2 | {"cpu_capability": "AVX512"}

    def run(experiment, variant, secs, env, acc=0.8):
        return {"dataset": "Multi-COIL-10", "variant": variant, "seed": 0, "profile": "full",
                "device": "cpu", "metrics": {"ACC": acc}, "clusters_used": 10, "n_clusters": 10,
                "total_seconds": secs, "environment": env, "experiment": experiment}  # fmt: skip

    robust = [run("beyond", "robust", 400, AVX2)]
    faithful = [run("main", "code", 9, AVX2) | {"device": "cuda"}]
    timed = [run("beyond_time", "code", 200, avx512)]
    timed_robust = [
        run("beyond_time_robust", "robust", 300, avx512, acc=0.1),
        run("beyond_time_robust", "robust", 1, AVX2, acc=0.1),
    ]
    baselines = [{"dataset": "Multi-COIL-10", "seed": 0, "profile": "full", "n_samples": 240,
                  "baselines": {"kmeans": {"ACC": 0.7}}}]  # fmt: skip
    out = report.robust_comparison(["Multi-COIL-10"], faithful, robust, baselines,
                                   faithful_time=timed, robust_time=timed_robust)  # fmt: skip
    assert out.loc[0, "time robust / faithful (CPU)"] == pytest.approx(1.5)
    assert (
        out.loc[0, "faithful time from"] == "beyond_time/code (robust: beyond_time_robust/robust)"
    )
    assert out.loc[0, "_time by CPU"] == "AMD EPYC (AVX512): 1.50x (1 run)"  # AVX2 has no ratio
    assert out.loc[0, "_robust"] == pytest.approx(0.8)
    without = report.robust_comparison(["Multi-COIL-10"], faithful, robust, baselines,
                                       faithful_time=timed)  # fmt: skip
    assert "time robust / faithful (CPU)" not in without  # no CPU has a run of each form
    # With a faithful time on AVX2 too (400 s), AVX2 uses its robust run (400 / 400 = 1, not the
    # stand-in's 1 / 400): (1 + 1.5) / 2, one robust run on each machine.
    both = report.robust_comparison(["Multi-COIL-10"], faithful, robust, baselines,
                                    faithful_time=timed + [run("beyond_time", "code", 400, AVX2)],
                                    robust_time=timed_robust)  # fmt: skip
    assert both.loc[0, "time robust / faithful (CPU)"] == pytest.approx(1.25)


def test_target_table_judges_each_target_on_the_final_sets_only():
    """Four sets written by hand (tol 0.01, time limit 2x):
    a: faithful 0.90 wins over base 0.80, robust 0.895: ACC met, not below faithful; 18/20 = 0.9
       of K, time 2.5x (missed).
    b: base 0.70 wins, faithful 0.50, robust 0.65: ACC missed; target 2 does not apply; share
       0.85 (missed); no time ratio (not judged).
    c: faithful 0.60 = base 0.60 (faithful wins), robust 0.58: ACC missed and 0.02 below faithful.
    d: only part of its seeds ("met so far"): judged nowhere."""
    cmp = pd.DataFrame({
        "dataset": list("abcd"),
        "_faithful": [0.90, 0.50, 0.60, 0.5], "_base": [0.80, 0.70, 0.60, 0.5],
        "_robust": [0.895, 0.65, 0.58, 0.9],
        "robust: min share of K used": [0.9, 0.85, 1.0, 0.1],
        "time robust / faithful (CPU)": [2.5, np.nan, 1.0, 9.0],
        "target (≥ max − 0.01)": ["met", "missed", "missed", "met so far"],
    })  # fmt: skip
    t = report.target_table(cmp)
    assert t["met"].tolist() == ["a", "a", "a, c", "c"]
    assert t["missed"].tolist() == ["b, c", "c", "b", "a"]
    assert t["n met"].tolist() == [1, 1, 2, 1]
    assert t["n judged"].tolist() == [3, 2, 3, 2]
    # a final set a target cannot be judged on is named, never counted as met or missed
    assert t["not judged"].tolist() == ["–", "b", "–", "b"]
    # provisional: d joins on its seeds so far (ACC met so far; faithful 0.5 = base 0.5 wins and
    # 0.9 >= 0.49; share 0.1 missed; time 9x missed)
    p = report.target_table(cmp, provisional=True)
    assert p["met"].tolist() == ["a, d", "a, d", "a, c", "c"]
    assert p["missed"].tolist() == ["b, c", "c", "b, d", "a, d"]
    assert p["n judged"].tolist() == [4, 3, 4, 3]


def test_verdict_counts_counts_final_and_provisional_verdicts_apart():
    """Five rows written by hand: 2 met, 1 missed, 1 "missed so far", 1 not yet measured."""
    cmp = pd.DataFrame({
        "dataset": list("abcde"),
        "target (≥ max − 0.01)": ["met", "missed", "met", "missed so far", "not yet measured"],
    })  # fmt: skip
    # reachable: all 5 but the one missed with all its seeds ("missed so far" can still change)
    assert report.verdict_counts(cmp) == {
        "met": 2, "measured": 3, "partial": 1, "sets": 5, "reachable": 4,
        "met_so_far": 2, "judged": 4,
    }  # fmt: skip


def test_verdict_sentence_is_final_only_when_every_set_has_all_its_seeds():
    """Counts written by hand: all 14 measured (final: no bound), and 12 of 14 (a bound)."""
    final = {"met": 7, "measured": 14, "partial": 0, "sets": 14, "reachable": 7,
             "met_so_far": 7, "judged": 14}  # fmt: skip
    text = report.verdict_sentence(final, goal=12)
    assert text.startswith("met on 7 of the 14 sets")
    assert "at most" not in text and "goal: at least 12" in text
    open_ = {"met": 5, "measured": 12, "partial": 2, "sets": 14, "reachable": 7,
             "met_so_far": 6, "judged": 14}  # fmt: skip
    text = report.verdict_sentence(open_, goal=12)
    assert "met on 5 of the 12 sets" in text and "2 more" in text
    assert "met so far on 1 of them" in text  # 6 met or met so far, 5 of them final
    assert "at most 7 of the 14 sets" in text
    # nothing final yet: the sentence gives the provisional count alone, never "0 of the 0"
    none = {"met": 0, "measured": 0, "partial": 13, "sets": 14, "reachable": 14,
            "met_so_far": 10, "judged": 13}  # fmt: skip
    text = report.verdict_sentence(none, goal=12)
    assert "met on 10 of the 13 sets measured" in text and "not final" in text
    assert "0 of the 0" not in text and "at least 12 of the 14" in text


def fast_record(dataset, variant, seed, acc, seconds, **env):
    base = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "cpu_count": 2, "torch": "2.13.0+cpu",
            "cpu_bf16_units": ["avx512_bf16"]}  # fmt: skip
    return {"experiment": "fastpath", "dataset": dataset, "variant": variant, "seed": seed,
            "profile": "full", "device": "cpu", "metrics": {"ACC": acc},
            "total_seconds": seconds, "environment": {**base, **env}}  # fmt: skip


def test_fastpath_table_groups_by_machine_and_form_with_hand_computed_minutes():
    recs = [fast_record("M", "bf16_fused", 0, 0.995, 240), fast_record("M", "bf16_fused", 1, 0.993, 300),
            fast_record("M", "fp32_fused", 0, 0.994, 420),
            fast_record("M", "fp32_fused", 1, 0.990, 900, cpu_capability="AVX2", cpu_bf16_units=[]),
            fast_record("M", "fp32_fused", 2, 0.991, 960, cpu_capability="AVX2", cpu_bf16_units=None),
            {**fast_record("M", "code", 0, 0.5, 1), "variant": "code"}]  # fmt: skip
    t = report.fastpath_table(recs)
    assert len(t) == 4  # AVX512 bf16, AVX512 fp32, AVX2 (none), AVX2 (not recorded); "code" out
    b = t[(t.precision == "bf16")].iloc[0]
    assert b.seeds == "0–1" and b["minutes (mean)"] == 4.5 and b["minutes (slowest)"] == 5.0
    assert b._acc == pytest.approx(0.994) and b["lowest ACC"] == "0.9930"
    assert "(AVX512, bf16: avx512_bf16), 2 cores" in b.machine
    machines = set(t.machine)
    assert any("(AVX2, bf16: none)" in m for m in machines)
    assert any("(AVX2, bf16 units not recorded)" in m for m in machines)


def test_fastpath_gap_uses_only_seeds_both_forms_have():
    recs = [fast_record("M", "fp32_fused", 0, 0.99, 1), fast_record("M", "fp32_fused", 1, 0.97, 1),
            fast_record("M", "fp32_fused", 2, 0.10, 1),  # no bf16 seed 2: left out
            fast_record("M", "bf16_fused", 0, 0.98, 1), fast_record("M", "bf16_fused", 1, 0.96, 1),
            fast_record("B", "bf16_fused", 0, 0.9, 1)]  # no fp32 at all: no row  # fmt: skip
    g = report.fastpath_acc_gap(recs).set_index("dataset")
    assert list(g.index) == ["M"]
    assert g.loc["M", "seeds"] == "0–1"
    assert g.loc["M", "_gap"] == pytest.approx((0.98 + 0.96) / 2 - (0.99 + 0.97) / 2)  # -0.01
    assert g.loc["M", "fp32 sd over seeds"] == pytest.approx(0.01 * 2**0.5, abs=1e-4)  # 0.0141


def test_fastpath_targets_judge_slowest_run_lowest_acc_and_gap():
    recs = [fast_record("M", "bf16_fused", 0, 0.995, 240), fast_record("M", "bf16_fused", 1, 0.989, 310),
            fast_record("M", "fp32_fused", 0, 0.994, 470), fast_record("M", "fp32_fused", 1, 0.992, 420),
            fast_record("M", "bf16_fused", 2, 0.999, 60, cpu_count=16),  # not a 2-core CPU
            fast_record("M", "bf16_fused", 3, 0.999, 60, cpu_capability="AVX2", cpu_bf16_units=[])]  # fmt: skip
    table = report.fastpath_table(recs)
    t = report.fastpath_targets(table, report.fastpath_acc_gap(recs), dataset="M").set_index(
        "target"
    )
    # one sentence for the 2-core native CPU with both precisions: (240 + 310) / 2 s = 4.6 min,
    # slowest 5.2; fp32 (470 + 420) / 2 s = 7.4 min; the 16-core CPU ran no fp32, the AVX2 one no bf16
    (run,) = report.fastpath_whole_runs(table, "M")
    assert run.startswith("4.6 minutes in bf16 (slowest seed 5.2, ACC 0.9920 ± 0.0042) against 7.4")
    assert t.loc["M, bf16: slowest run ≤ 5 min", "value"] == "5.2 min"  # 310 s
    assert not t.loc["M, bf16: slowest run ≤ 5 min", "met"]
    assert not t.loc["M, bf16: every seed ACC ≥ 0.99", "met"]  # seed 1: 0.989
    assert t.loc["M, fp32: slowest run ≤ 8 min", "met"]  # 470 s = 7.8 min
    # gap over seeds 0-1: (0.995 + 0.989) / 2 - (0.994 + 0.992) / 2 = -0.001
    assert t.loc["M: |bf16 − fp32| mean ACC ≤ 0.005", "value"] == "-0.0010"
    assert len(t) == 4  # the 16-core and the AVX2 runs are judged by no minutes target


def test_a_comparison_names_its_configuration_in_every_column():
    def run(variant, seed, acc, secs):
        return {"dataset": "HW", "variant": variant, "seed": seed, "profile": "full",
                "device": "cpu", "metrics": {"ACC": acc}, "clusters_used": 10,
                "n_clusters": 10, "total_seconds": secs, "environment": AVX2}  # fmt: skip

    faithful = [run("code", 0, 0.85, 100)]
    chosen = [run("select", s, a, t) for s, a, t in [(0, 0.97, 250), (1, 0.95, 350)]]
    base = [{"dataset": "HW", "seed": 0, "profile": "full", "n_samples": 2000,
             "baselines": {"spectral_concat": {"ACC": 0.975}}}]  # fmt: skip
    out = report.robust_comparison(["HW"], faithful, chosen, base, name="select")
    row = out.set_index("dataset").loc["HW"]
    assert row["_select"] == pytest.approx(0.96) and row["select seeds"] == "2"
    assert row["time select / faithful (CPU)"] == pytest.approx(3.0)
    assert row[out.columns[-1]] == "missed"  # 0.96 < 0.975 - 0.01
    targets = report.target_table(out, max_time=3.0, name="select").set_index("target")
    assert targets.loc["time ≤ 3x the faithful run's (same CPU)", "met"] == "HW"
    assert targets.loc["every run uses ≥ 90 % of the K clusters", "met"] == "HW"


def test_selection_summary_counts_choices_and_the_oracle_by_hand():
    def rec(ds, accs, chosen, secs):
        sel = [{"candidate": c, "chosen": c == chosen, "metrics": {"ACC": a}}
               for c, a in accs.items()]  # fmt: skip
        return {"dataset": ds, "selection": sel, "phase_seconds": {"selection": secs}}

    recs = [
        rec("HW", {"cmmc": 0.85, "spectral_concat": 0.97}, "spectral_concat", 10.0),
        rec("HW", {"cmmc": 0.99, "spectral_concat": 0.97}, "spectral_concat", 20.0),
        rec("HW", {"cmmc": 0.80, "spectral_concat": 0.9992}, "cmmc", 30.0),
        {"dataset": "HW"},  # no selection: left out
    ]
    out = report.selection_summary(recs).set_index("dataset").loc["HW"]
    assert out["seeds"] == 3
    assert out["chosen"] == "spectral_concat ×2, cmmc ×1"
    assert out["ACC"] == pytest.approx((0.97 + 0.97 + 0.80) / 3, abs=5e-4)
    assert out["CMMC's own ACC"] == pytest.approx((0.85 + 0.99 + 0.80) / 3, abs=5e-4)
    assert out["best candidate ACC (oracle)"] == pytest.approx((0.97 + 0.99 + 0.9992) / 3, abs=5e-4)
    assert out["choice = best"] == "1 of 3"
    assert out["selection s"] == pytest.approx(20.0)
    assert report.selection_summary([{"dataset": "HW"}]).empty


def test_selection_rules_pick_by_their_scores_by_hand_and_never_see_metrics():
    def cand(name, views, h, acc, eligible=True, joint=None, agree=None):
        return {"candidate": name, "graph_score": sum(views) / len(views), "view_scores": views,
                "h_score": h, "eligible": eligible, "chosen": False, "metrics": {"ACC": acc},
                **({} if joint is None else {"joint_score": joint}),
                **({} if agree is None else {"agreement_score": agree})}  # fmt: skip

    # run 1: spectral's mean view score (0.50) beats CMMC's (0.485) by 0.015; CMMC wins on h
    # run 2: k-means has the best mean (0.70) but is not eligible (empty clusters): spectral next
    runs = [
        [cand("cmmc", [0.47, 0.50], 0.9, 0.95, joint=0.6, agree=0.5),
         cand("spectral_concat", [0.48, 0.52], 0.6, 0.80, joint=0.5, agree=0.7),
         cand("kmeans_concat", [0.30, 0.40], 0.5, 0.70, joint=0.55, agree=0.6)],
        [cand("cmmc", [0.40, 0.40], 0.8, 0.60), cand("spectral_concat", [0.45, 0.47], 0.5, 0.90),
         cand("kmeans_concat", [0.70, 0.70], 0.7, 0.99, eligible=False)],
    ]  # fmt: skip
    recs = [{"dataset": "D", "selection": run} for run in runs] + [{"dataset": "D"}]
    out = report.selection_rules(recs).set_index("dataset")
    row = out.loc["D"]
    assert row["seeds"] == 2
    # picks: preset spectral, spectral; keep-CMMC-unless-0.01: spectral (0.015 > 0.01), spectral
    # (0.06); unless-0.02: cmmc, spectral; views and h: (0.47+0.5+0.9)/3 = 0.623 against
    # (0.48+0.52+0.6)/3 = 0.533 -> cmmc, then (0.4+0.4+0.8)/3 = 0.533 against 0.473 -> cmmc;
    # worst view: spectral (0.48 > 0.47), spectral (0.45 > 0.40); oracle 0.95, 0.99; joint
    # graph: cmmc in run 1, nothing to judge run 2 by (no joint scores); agreement: spectral
    # (0.7) in run 1; joint + agreement: 1.1, 1.2, 1.15 -> spectral in run 1
    expected = {
        "joint graph (second form)": 0.95,
        "mean view modularity (first form)": (0.80 + 0.90) / 2,
        "CMMC's own labels": (0.95 + 0.60) / 2,
        "CMMC unless beaten by 0.01": (0.80 + 0.90) / 2,
        "CMMC unless beaten by 0.02": (0.95 + 0.90) / 2,
        "views and h": (0.95 + 0.60) / 2,
        "worst view": (0.80 + 0.90) / 2,
        "agreement": 0.80,
        "joint graph + agreement (the preset)": 0.80,
        "oracle": (0.95 + 0.99) / 2,
    }
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, abs=5e-4), name
    # within 0.01 of the oracle on the runs each rule judged: the joint graph judged run 1 only,
    # where it took the best (0.95); the others fall short (at most 0.95 against 0.97, or 0.80
    # against run 1's 0.95)
    tally = out.loc["within 0.01 of the oracle"]
    assert tally["joint graph (second form)"] == "1 of 1"
    assert all(tally[name] == "0 of 1" for name in report.SELECTION_RULES
               if name != "joint graph (second form)")  # fmt: skip
    assert row["oracle"] == pytest.approx(0.97)  # over both runs, though joint judged run 1 only

    def peeks(cands):
        return max(cands, key=lambda c: c["metrics"]["ACC"])["candidate"]

    with pytest.raises(KeyError, match="metrics"):
        report.selection_rules(recs, {"reads labels": peeks})


def test_add_criterion_scores_recomputes_the_joint_score_from_packed_labels():
    from cmmc.experiments.kinds import pack_labels
    from cmmc.synthetic import make_multiview_blobs

    views, y = make_multiview_blobs(n_samples=60, n_clusters=3, seed=1)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 3, 60)
    # the joint graph by brute force: 10 nearest rows by summed cosine distance over the views
    d = sum(1 - (v / np.linalg.norm(v, axis=1, keepdims=True))
            @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T for v in views)  # fmt: skip
    np.fill_diagonal(d, np.inf)
    a = np.zeros((60, 60))
    for i in range(60):
        a[i, np.argsort(d[i])[:10]] = 1
    a = ((a + a.T) > 0).astype(float)

    def q(labels):  # Newman's Q by its definition
        k, two_m = a.sum(1), a.sum()
        same = labels[:, None] == labels[None, :]
        return float(((a - np.outer(k, k) / two_m) * same).sum() / two_m)

    sel = [{"candidate": "truth", "labels": pack_labels(y)},
           {"candidate": "noise", "labels": pack_labels(noise)}]  # fmt: skip
    recs = [{"dataset": "B", "seed": 0, "selection": sel}, {"dataset": "B"},
            {"dataset": "B", "selection": [{"candidate": "old"}]}]  # fmt: skip
    out = report.add_criterion_scores(recs, "joint", lambda name, seed: views)
    got = {c["candidate"]: c["joint_score"] for c in out[0]["selection"]}
    assert got["truth"] == pytest.approx(q(y)) and got["noise"] == pytest.approx(q(noise))
    assert got["truth"] > got["noise"] + 0.2  # the true partition stands out
    assert "joint_score" not in recs[0]["selection"][0]  # the records themselves untouched
    assert out[1] == recs[1] and out[2] == recs[2]  # nothing to score: unchanged


def test_criterion_rows_name_each_score_by_its_criterion():
    graph_rec = {
        "dataset": "D",
        "config": {"selection": "graph"},
        "selection": [
            {"candidate": "cmmc", "score": 0.5, "view_scores": [0.4, 0.6], "joint_score": 0.7}
        ],
    }
    joint_rec = {"dataset": "D", "config": {"selection": "joint"}, "selection": [
        {"candidate": "cmmc", "score": 0.8, "view_scores": [0.8], "graph_score": 0.3}]}  # fmt: skip
    g, j, bare = report.criterion_rows([graph_rec, joint_rec, {"dataset": "D"}])
    assert g["selection"][0] == {"candidate": "cmmc", "graph_score": 0.5,
                                 "view_scores": [0.4, 0.6], "joint_score": 0.7}  # fmt: skip
    assert j["selection"][0] == {"candidate": "cmmc", "joint_score": 0.8, "graph_score": 0.3}
    assert bare == {"dataset": "D"}
    assert graph_rec["selection"][0]["score"] == 0.5  # the records themselves untouched


def test_add_criterion_scores_uses_the_views_of_each_runs_seed():
    from cmmc.experiments.kinds import pack_labels
    from cmmc.synthetic import make_multiview_blobs

    draws = {s: make_multiview_blobs(n_samples=60, n_clusters=3, seed=s) for s in (0, 1)}
    asked = []

    def views_of(name, seed):
        asked.append((name, seed))
        return draws[seed][0]

    recs = [{"dataset": "B", "seed": s, "selection": [
        {"candidate": "truth", "labels": pack_labels(draws[s][1])}]} for s in (0, 1, 0)]  # fmt: skip
    out = report.add_criterion_scores(recs, "joint", views_of)
    assert asked == [("B", 0), ("B", 1)]  # one graph per run's draw, reused for the same seed
    # each run's true labels fit its own draw: well above what the other draw's labels score
    own = [r["selection"][0]["joint_score"] for r in out]
    from cmmc.selection import joint_graph, modularity

    crossed = modularity(joint_graph(draws[1][0]), draws[0][1])
    assert min(own) > crossed + 0.1


def test_criterion_rows_add_each_candidates_agreement_from_packed_labels():
    from sklearn.metrics import normalized_mutual_info_score as nmi

    from cmmc.experiments.kinds import pack_labels

    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, 50)
    b = a.copy()
    b[:5] = (b[:5] + 1) % 3  # close to a
    c = rng.integers(0, 3, 50)  # unrelated
    rec = {"dataset": "D", "config": {"selection": "joint"}, "selection": [
        {"candidate": n, "score": 0.1, "labels": pack_labels(x)}
        for n, x in (("a", a), ("b", b), ("c", c))]}  # fmt: skip
    (out,) = report.criterion_rows([rec])
    got = {r["candidate"]: r["agreement_score"] for r in out["selection"]}
    assert got["a"] == pytest.approx((nmi(a, b) + nmi(a, c)) / 2, abs=1e-6)
    assert got["c"] == pytest.approx((nmi(c, a) + nmi(c, b)) / 2, abs=1e-6)
    assert got["a"] > got["c"] + 0.3  # the odd one out agrees least


def test_rechoose_takes_the_rules_pick_and_never_shows_it_metrics():
    def cand(name, joint, agree, acc, used=3):
        return {"candidate": name, "joint_score": joint, "agreement_score": agree,
                "eligible": True, "chosen": name == "spectral_concat", "clusters_used": used,
                "metrics": {"ACC": acc, "NMI": acc / 2}, "labels": "u1:AAAA"}  # fmt: skip

    rec = {"dataset": "D", "seed": 0, "variant": "joint", "metrics": {"ACC": 0.5, "NMI": 0.25},
           "clusters_used": 3, "labels_sha256": "x", "total_seconds": 10.0,
           "selection": [cand("cmmc", 0.30, 0.90, 0.95, used=2),
                         cand("spectral_concat", 0.40, 0.60, 0.50)]}  # fmt: skip
    old = {"dataset": "D", "seed": 1, "variant": "joint", "selection": [{"candidate": "cmmc",
           "eligible": True, "metrics": {"ACC": 0.1}}]}  # fmt: skip
    rule = report.SELECTION_RULES["joint graph + agreement (the preset)"]  # 1.2 against 1.0
    (out,) = report.rechoose([rec, old, {"dataset": "D"}], rule, "consensus")
    assert out["metrics"] == {"ACC": 0.95, "NMI": 0.475} and out["clusters_used"] == 2
    assert [c["chosen"] for c in out["selection"]] == [True, False]
    assert out["variant"] == "consensus" and out["rechosen_from"] == "joint"
    assert out["total_seconds"] == 10.0 and "labels_sha256" not in out
    assert rec["metrics"]["ACC"] == 0.5 and rec["selection"][1]["chosen"]  # record untouched

    def peeks(cands):
        return max(cands, key=lambda c: c["metrics"]["ACC"])["candidate"]

    with pytest.raises(KeyError, match="metrics"):
        report.rechoose([rec], peeks, "x")


def test_preset_runs_keep_own_runs_and_rechoose_joint_runs_without_one():
    def cand(name, joint, agree, acc):
        return {"candidate": name, "joint_score": joint, "agreement_score": agree,
                "eligible": True, "chosen": False, "clusters_used": 3,
                "metrics": {"ACC": acc}}  # fmt: skip

    def rec(variant, seed, acc):
        return {"experiment": "E", "dataset": "D", "seed": seed, "variant": variant,
                "metrics": {"ACC": acc}, "clusters_used": 3,
                "selection": [cand("cmmc", 0.3, 0.9, 0.95), cand("kmeans_concat", 0.5, 0.5, 0.6)]}  # fmt: skip

    own, twin, alone = rec("consensus", 0, 0.95), rec("joint", 0, 0.6), rec("joint", 1, 0.6)
    graph = rec("select", 2, 0.6)  # another form: neither the preset's nor re-chosen
    out = report.preset_runs([twin, own, alone, graph])
    assert out[0] is own and len(out) == 2  # seed 0 has its own run; seed 1 only a joint one
    # seed 1: cmmc 0.3 + 0.9 = 1.2 against 1.0 -> cmmc, 0.95
    assert out[1]["seed"] == 1 and out[1]["metrics"]["ACC"] == 0.95
    assert out[1]["variant"] == "consensus" and out[1]["rechosen_from"] == "joint"


def test_with_pretrain_limit_takes_limited_runs_only_where_the_limit_binds():
    # the select preset's limit: 4 x max(1, N // 256) batches against min_batches = 8 -> binds
    # iff N < 512 (worked by hand, not by the code's batch_for)
    def rec(variant, n, seed=0):
        return {"dataset": f"N{n}", "n_samples": n, "seed": seed, "variant": variant}

    unlimited = [rec("consensus", n) for n in (240, 511, 512, 10000)]
    limited = [rec("consensus_pretrain_x4", n) for n in (240, 511, 600)]
    out = report.with_pretrain_limit(unlimited, limited)
    got = sorted((r["n_samples"], r.get("limited_from")) for r in out)
    assert got == [(240, "consensus_pretrain_x4"), (511, "consensus_pretrain_x4"),
                   (512, None), (10000, None)]  # fmt: skip
    assert all(r["variant"] == "consensus" for r in out)
    assert limited[0]["variant"] == "consensus_pretrain_x4"  # the inputs untouched
    # a binding set without limited runs is left out, not filled with unlimited ones
    assert [r["n_samples"] for r in report.with_pretrain_limit(unlimited, [])] == [512, 10000]
