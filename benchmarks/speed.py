"""Seconds per epoch of each CMMC phase against the FLOP floor of this machine.

    python benchmarks/speed.py --dataset MNIST-USPS            # per-epoch table (a few epochs)
    python benchmarks/speed.py --dataset MNIST-USPS --full     # + the whole paper schedule

The floor counts the multiply-adds of the forward and backward passes of every linear layer
(backward = 2x forward, except the first layer, which needs no input gradient) and divides by
the matmul rate measured here (2048 x 2048 float32 / bfloat16 products).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

import numpy as np
import torch

from cmmc import CMMC, evaluate, load_dataset, make_config
from cmmc.model import HIDDEN
from cmmc.train import Trainer


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="MNIST-USPS")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--full", action="store_true", help="also run the whole paper schedule")
    p.add_argument("--json", help="write the measurements to this file")
    args = p.parse_args()

    ds = load_dataset(args.dataset)
    config = make_config(ds.name, "paper", precision=args.precision, eval_every=0)
    rate = {"fp32": matmul_gflops(torch.float32)}
    if args.precision == "bf16":  # CPUs without bf16 units emulate it ~50x slower: opt-in only
        rate["bf16"] = matmul_gflops(torch.bfloat16, n=1024, reps=2)
    flop = epoch_gflop(ds.dims, ds.n_samples, config.batch_size, ds.n_clusters)
    secs = time_epochs(ds, config, args.seed, args.epochs)
    epochs = {
        "pretrain": config.pretrain_epochs,
        "contrastive": config.contrastive_epochs,
        "finetune": config.finetune_epochs,
    }
    print(f"{ds.name}: N={ds.n_samples} dims={ds.dims} threads={torch.get_num_threads()}")
    print("matmul rate: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rate.items()))
    floor_rate = rate[args.precision]
    print(f"{'phase':<12} {'s/epoch':>8} {'GFLOP':>8} {'floor s':>8} {'ratio':>6} {'epochs':>6}")
    for ph in ("pretrain", "contrastive", "finetune"):
        floor = flop[ph] / floor_rate
        print(
            f"{ph:<12} {secs[ph]:>8.3f} {flop[ph]:>8.1f} {floor:>8.3f} "
            f"{secs[ph] / floor:>6.2f} {epochs[ph]:>6}"
        )
    est = sum(secs[ph] * epochs[ph] for ph in epochs)
    print(f"estimated schedule (epochs x s/epoch, no k-means): {est:.0f} s")
    result = {
        "dataset": ds.name,
        "precision": args.precision,
        "matmul_gflops": rate,
        "gflop_per_epoch": flop,
        "seconds_per_epoch": secs,
        "estimated_total_s": est,
        "threads": torch.get_num_threads(),
    }
    if args.full:
        t0 = time.perf_counter()
        model = CMMC(ds.n_clusters, random_state=args.seed, config=config).fit(ds.views)
        total = time.perf_counter() - t0
        metrics = evaluate(ds.labels, model.labels_)
        print(
            f"full schedule: {total:.0f} s  phases {json.dumps({k: round(v, 1) for k, v in model.phase_seconds_.items()})}"
        )
        print(f"metrics: {json.dumps({k: round(v, 4) for k, v in metrics.items()})}")
        result.update(full_seconds=total, phase_seconds=model.phase_seconds_, metrics=metrics)
    if args.json:
        from cmmc.experiments import environment

        result.update(seed=args.seed, config=config.to_dict(), environment=environment())
        result["finished"] = datetime.now(UTC).isoformat()
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
