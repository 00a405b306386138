"""Minutes of a whole CMMC run at the ACC it reaches, on this machine; seconds per epoch of
each phase against the machine's FLOP floor as a diagnostic.

    python benchmarks/speed.py                                   # MNIST-USPS, faithful, fp32
    python benchmarks/speed.py --preset fast                     # the fast path (bf16 if native)
    python benchmarks/speed.py --preset fast --json benchmarks/results/speed-....json
    python benchmarks/speed.py --estimate-only --profile         # epoch estimates only (quick)

The headline is what a user feels: the wall time of the whole paper schedule (k-means
included, no evaluation during training) and the ACC it ends at, judged against ``--min-acc``
(0.99 for MNIST-USPS, where the published ACC is 0.995). The diagnostic counts the multiply-adds
of the forward and backward passes of every linear layer (backward = 2x forward, except the
first layer, which needs no input gradient) and divides by the matmul rate measured here
(2048 x 2048 float32 / bfloat16 products): the "rate ratio", the schedule's FLOP per second over
the fp32 matmul rate, is 1.0 when the run goes as fast as one large fp32 matrix product.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime

import numpy as np
import torch

from cmmc import CMMC, evaluate, load_dataset, make_config
from cmmc.config import PRESETS, preset_fields
from cmmc.device import bf16_native, resolve_precision
from cmmc.model import HIDDEN
from cmmc.train import Trainer


def cpu_name() -> str:
    """The CPU's model name and its widest vector units (what the figures depend on)."""
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def layer_macs(sizes: list[int], rows: int, first_needs_grad_input: bool = False) -> int:
    """Forward + backward multiply-adds of a chain of linear layers for ``rows`` samples."""
    total = 0
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        fwd = rows * a * b
        total += fwd + fwd + (fwd if (i > 0 or first_needs_grad_input) else 0)
    return total


def epoch_gflop(dims: list[int], n: int, batch: int, k: int, low: int = 512, high: int = 128):
    """GFLOP per epoch of each phase (2 FLOP per multiply-add)."""
    rows = (n // batch) * batch
    enc = lambda d: [d, *HIDDEN, low]  # noqa: E731
    dec = lambda d: [low, *HIDDEN[::-1], d]  # noqa: E731
    ae = sum(layer_macs(enc(d), rows) + layer_macs(dec(d), rows, True) for d in dims)
    m = len(dims)
    heads = m * (layer_macs([low, high], rows, True) + layer_macs([low, k], rows, True))
    pairs = m * (m - 1) // 2
    sims = pairs * (n // batch) * 3 * ((2 * batch) ** 2 * high + (2 * k) ** 2 * batch)
    finetune = sum(layer_macs(enc(d), n) for d in dims) + m * layer_macs([low, k], n, True)
    return {
        "pretrain": 2 * ae / 1e9,
        "contrastive": 2 * (ae + heads + sims) / 1e9,
        "finetune": 2 * finetune / 1e9,
    }


def time_epochs(ds, config, seed: int, epochs: int) -> dict[str, float]:
    tr = Trainer.for_data(ds.views, None, ds.n_clusters, config, seed, progress=False)
    targets = [np.random.default_rng(0).integers(0, ds.n_clusters, ds.n_samples)] * ds.n_views
    tr.pseudo_labels = [targets]  # fine-tuning steps against fixed labels (no k-means)
    out = {}
    for phase in ("pretrain", "contrastive", "finetune"):
        tr.epoch_losses(phase)  # warm-up
        t0 = time.perf_counter()
        for _ in range(epochs):
            tr.epoch_losses(phase)
        out[phase] = (time.perf_counter() - t0) / epochs
    return out


def profile_epoch(tr: Trainer, phase: str) -> dict[str, float]:
    """Seconds of one epoch split into matrix products, the optimiser's step and the rest
    (element-wise kernels, losses, autograd and Python overhead), from torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        tr.epoch_losses(phase)
        wall = time.perf_counter() - t0
    matmul = optimizer = 0.0
    for ev in prof.key_averages():
        if ev.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
            matmul += ev.self_cpu_time_total / 1e6
        elif ev.key.startswith("Optimizer.step"):
            optimizer += ev.cpu_time_total / 1e6  # the step with everything it calls
    # the profiler's own overhead inflates the total: shares are of the profiled time
    scale = wall / max(sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6, 1e-9)
    return {"matmul": matmul * scale, "optimizer": optimizer * scale,
            "other": wall - (matmul + optimizer) * scale, "wall": wall}  # fmt: skip


def schedule_gflop(flop: dict[str, float], config) -> float:
    """GFLOP of the whole schedule (k-means and evaluation not counted)."""
    return (
        flop["pretrain"] * config.pretrain_epochs
        + flop["contrastive"] * config.contrastive_epochs
        + flop["finetune"] * config.finetune_epochs
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="MNIST-USPS")
    p.add_argument("--preset", "--variant", dest="preset", default="faithful",
                   choices=list(PRESETS), help="named configuration (cmmc.config.PRESETS)")  # fmt: skip
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], help="override the preset's")
    p.add_argument("--fused-adam", action="store_true", help="one fused Adam kernel per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-acc", type=float, default=0.99, help="ACC the whole run must reach")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per phase (diagnostic)")
    p.add_argument("--profile", action="store_true", help="split an epoch of each phase")
    p.add_argument("--estimate-only", action="store_true", help="skip the whole run")
    p.add_argument("--json", help="write the measurements to this file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    ds = load_dataset(args.dataset)
    fields = preset_fields(args.preset)
    if args.precision:
        fields["precision"] = args.precision
    if args.fused_adam:
        fields["fused_adam"] = True
    fields["precision"] = resolve_precision(fields.get("precision", "fp32"), "cpu")
    config = make_config(ds.name, "paper", **{**fields, "eval_every": 0})
    precision = config.precision
    rate = {"fp32": matmul_gflops(torch.float32)}
    if precision == "bf16":  # CPUs without bf16 units emulate it, far slower: opt-in only
        rate["bf16"] = matmul_gflops(torch.bfloat16, n=1024, reps=2)
    print(f"{ds.name}: N={ds.n_samples} dims={ds.dims} threads={torch.get_num_threads()}")
    print(f"cpu: {cpu_name()}  bf16 native: {bf16_native('cpu')}  preset: {args.preset}  "
          f"precision: {precision}  fused adam: {config.fused_adam}")  # fmt: skip
    result: dict = {
        "dataset": ds.name, "cpu": cpu_name(), "bf16_native": bf16_native("cpu"),
        "preset": args.preset, "precision": precision, "fused_adam": config.fused_adam,
        "threads": torch.get_num_threads(), "matmul_gflops": rate,
    }  # fmt: skip
    flop = epoch_gflop(ds.dims, ds.n_samples, config.batch_size, ds.n_clusters)
    total_gflop = schedule_gflop(flop, config)
    result.update(gflop_per_epoch=flop, schedule_gflop=total_gflop)

    if not args.estimate_only:  # the headline: one whole run, as a user runs it
        t0 = time.perf_counter()
        model = CMMC(ds.n_clusters, random_state=args.seed, config=config).fit(ds.views)
        total = time.perf_counter() - t0
        rate["fp32_after"] = matmul_gflops(torch.float32)  # the machine may change under a run
        metrics = evaluate(ds.labels, model.labels_)
        ratio = total_gflop / total / ((rate["fp32"] + rate["fp32_after"]) / 2)
        met = metrics["ACC"] >= args.min_acc
        print(f"whole run: {total / 60:.1f} min, ACC {metrics['ACC']:.4f} "
              f"({'reaches' if met else 'below'} {args.min_acc:g})")  # fmt: skip
        phases = {k: round(v, 1) for k, v in model.phase_seconds_.items()}
        print(f"  phases (s) {json.dumps(phases)}; rate ratio {ratio:.2f} (diagnostic)")
        result.update(full_seconds=total, minutes=total / 60, metrics=metrics,
                      min_acc=args.min_acc, acc_met=met, full_rate_ratio=ratio,
                      phase_seconds=model.phase_seconds_)  # fmt: skip

    # diagnostic: epoch times against the FLOP floor of this machine
    secs = time_epochs(ds, config, args.seed, args.epochs)
    epochs = {p: getattr(config, f"{p}_epochs") for p in ("pretrain", "contrastive", "finetune")}
    print("matmul rate: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rate.items()))
    print(f"{'phase':<12} {'s/epoch':>8} {'GFLOP':>8} {'floor s':>8} {'ratio':>6} {'epochs':>6}")
    for ph in epochs:
        floor = flop[ph] / rate[precision]
        print(f"{ph:<12} {secs[ph]:>8.3f} {flop[ph]:>8.1f} {floor:>8.3f} "
              f"{secs[ph] / floor:>6.2f} {epochs[ph]:>6}")  # fmt: skip
    est = sum(secs[ph] * epochs[ph] for ph in epochs)
    print(f"estimated schedule (epochs x s/epoch, no k-means): {est:.0f} s, "
          f"rate ratio {total_gflop / est / rate['fp32']:.2f}")  # fmt: skip
    result.update(seconds_per_epoch=secs, estimated_total_s=est)
    if args.profile:
        result["profile"] = profile_phases(ds, config, args.seed)
    if args.json:
        from cmmc.experiments import environment

        result.update(seed=args.seed, config=config.to_dict(), environment=environment())
        result["command"] = "python benchmarks/speed.py " + " ".join(sys.argv[1:])
        result["finished"] = datetime.now(UTC).isoformat()
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def profile_phases(ds, config, seed: int) -> dict:
    """Each phase's epoch split (:func:`profile_epoch`) and the pseudo-label step's seconds."""
    tr = Trainer.for_data(ds.views, None, ds.n_clusters, config, seed, progress=False)
    tr.pseudo_labels = [[np.zeros(ds.n_samples, dtype=np.int64)] * ds.n_views]
    split: dict = {}
    print(f"{'phase':<12} {'matmul':>8} {'adam':>8} {'other':>8}   (s/epoch, profiled)")
    for ph in ("pretrain", "contrastive", "finetune"):
        tr.epoch_losses(ph)  # warm-up
        split[ph] = s = profile_epoch(tr, ph)
        print(f"{ph:<12} {s['matmul']:>8.3f} {s['optimizer']:>8.3f} {s['other']:>8.3f}")
    t0 = time.perf_counter()
    tr._pseudo_label()
    split["pseudo_labels"] = time.perf_counter() - t0
    print(f"pseudo labels (embed + k-means, {config.kmeans_restarts} restarts per view): "
          f"{split['pseudo_labels']:.1f} s")  # fmt: skip
    return split


if __name__ == "__main__":
    main()
