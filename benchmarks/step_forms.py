"""One pre-training step written four ways, timed against the FLOP floor of this machine.

    python benchmarks/step_forms.py --dataset MNIST-USPS --json out.json

Forms (each: reconstruction loss of every view, backward, one fused Adam step):

- ``per_view``: the network as trained, one matrix product per view and layer;
- ``views_batched``: the inner layers, equal in shape for every view (500-500-2000-512 and back),
  run as one batched product over the views; the weights stay per view and are stacked each step
  (what the library would have to do to keep its parameters and checkpoints as they are);
- ``views_prestacked``: the same with weights already stacked (no copy: the best case);
- ``compiled``: ``torch.compile`` of the per-view loss.

Reps alternate between the forms, so a change in the machine's speed hits all of them alike.
It prints, per form, the best and median milliseconds per step, the floor (forward and backward
multiply-adds over the 2048 x 2048 fp32 matmul rate), whether the batched forward equals the
per-view one bit for bit, and the largest gradient difference between the two.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

import torch
import torch.nn.functional as F
from speed import cpu_name, layer_macs, matmul_gflops

from cmmc import load_dataset
from cmmc.model import HIDDEN, CMMCNetwork


def linears(seq: torch.nn.Sequential) -> list[torch.nn.Linear]:
    return [m for m in seq if isinstance(m, torch.nn.Linear)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="MNIST-USPS")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=12, help="alternating rounds of --steps steps")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    torch.manual_seed(0)
    net = CMMCNetwork(ds.dims, ds.n_clusters)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(ds.n_samples, generator=g)[: args.batch]
    xs = [torch.from_numpy(v)[idx] for v in ds.views]
    encs = [linears(e) for e in net.encoders]
    decs = [linears(d) for d in net.decoders]
    # Inner layers: encoder layers 1-3 (500-500-2000-512), decoder layers 0-2 (512-2000-500-500).
    inner = [[e[i] for e in encs] for i in (1, 2, 3)] + [[d[i] for d in decs] for i in (0, 1, 2)]

    def recon(xrs, xs):
        return sum(F.mse_loss(xr, x) for xr, x in zip(xrs, xs, strict=True))

    def stacked():
        """The inner layers' weights and biases, stacked over the views (a copy with grads)."""
        return ([torch.stack([m.weight for m in layer]) for layer in inner],
                [torch.stack([m.bias for m in layer]) for layer in inner])  # fmt: skip

    def per_view(xs):
        return recon(net.reconstruct(xs), xs)

    def forward_batched(xs, ws, bs):
        h = torch.stack([F.relu(e[0](x)) for e, x in zip(encs, xs, strict=True)])
        for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i != 2:  # z (the encoder's output) has no ReLU
                h = F.relu(h)
        return [d[3](h[v]) for v, d in enumerate(decs)]

    def views_batched(xs):
        return recon(forward_batched(xs, *stacked()), xs)

    stacked_w, stacked_b = ([t.detach().requires_grad_() for t in ts] for ts in stacked())

    def views_prestacked(xs):
        return recon(forward_batched(xs, stacked_w, stacked_b), xs)

    # Same weights, same batch: is the batched computation the per-view one?
    with torch.no_grad():
        ref = net.reconstruct(xs)
        bat = forward_batched(xs, *stacked())
    forward_equal = all(torch.equal(a, b) for a, b in zip(ref, bat, strict=True))
    grads = []
    for fn in (per_view, views_batched):
        net.zero_grad(set_to_none=True)
        fn(xs).backward()
        grads.append([q.grad.clone() for q in net.parameters() if q.grad is not None])
    grad_diff = max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))
    grad_scale = max(a.abs().max().item() for a in grads[0])

    pre_params = [*net.parameters(), *stacked_w, *stacked_b]
    forms = {
        "per_view": (per_view, list(net.parameters())),
        "views_batched": (views_batched, list(net.parameters())),
        "views_prestacked": (views_prestacked, pre_params),
        "compiled": (torch.compile(per_view), list(net.parameters())),
    }
    opts = {k: torch.optim.Adam(ps, lr=3e-4, fused=True) for k, (_, ps) in forms.items()}

    def step(name):
        fn, _ = forms[name]
        opts[name].zero_grad(set_to_none=True)
        fn(xs).backward()
        opts[name].step()

    for name in forms:  # warm-up (compiles)
        for _ in range(3):
            step(name)
    rate_before = matmul_gflops(torch.float32)
    ms: dict[str, list[float]] = {k: [] for k in forms}
    for _ in range(args.reps):
        for name in forms:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            ms[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    rate = (rate_before + matmul_gflops(torch.float32)) / 2
    macs = sum(
        layer_macs([d, *HIDDEN, 512], args.batch)
        + layer_macs([512, *HIDDEN[::-1], d], args.batch, True)
        for d in ds.dims
    )
    floor_ms = 2 * macs / (rate * 1e9) * 1e3
    print(f"{args.dataset}: batch {args.batch}, {len(ds.dims)} views, {cpu_name()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"fp32 matmul {rate:.0f} GFLOP/s; floor {floor_ms:.1f} ms/step")
    summary = {}
    for name, v in ms.items():
        v = sorted(v)
        best, median = v[0], v[len(v) // 2]
        summary[name] = {"best_ms": best, "median_ms": median, "floor_over_best": floor_ms / best}
        print(
            f"{name:17s} best {best:6.1f}  median {median:6.1f} ms/step  floor/best {floor_ms / best:.2f}"
        )
    print(f"batched forward equals per-view bit for bit: {forward_equal}; largest gradient "
          f"difference {grad_diff:.2e} (largest gradient {grad_scale:.2e})")  # fmt: skip
    if args.json:
        from cmmc.experiments import environment

        result = dict(
            dataset=args.dataset, batch=args.batch, reps=args.reps, steps=args.steps,
            cpu=cpu_name(), threads=torch.get_num_threads(), matmul_gflops_fp32=rate,
            floor_ms=floor_ms, forms=summary, ms=ms, forward_equal=forward_equal,
            grad_max_abs_diff=grad_diff, grad_max_abs=grad_scale, environment=environment(),
            finished=datetime.now(UTC).isoformat(),
        )  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
