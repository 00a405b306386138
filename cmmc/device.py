"""Where and how a run computes: the device, bf16 where it is native, CUDA determinism, the
Adam kernel, threads for host work, and the seeding helper of scripts and pages."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from cmmc.config import Config


def set_seed(seed: int) -> None:
    """Fix torch's global generators (for scripts and book cells that build a network by hand;
    the Trainer seeds its own networks without touching global state)."""
    torch.manual_seed(seed)


def use_deterministic_cuda() -> None:
    """Ask CUDA for run-to-run identical results (cuBLAS workspace, deterministic kernels).

    Process-wide: the cuBLAS variable must be set before the process's first CUDA matrix
    product, so an engine's workers call this when they start, and direct users on a GPU call it
    once at the top of their script. Kernels without a deterministic version warn.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu', 'cuda[:i]', or 'auto' (CUDA when available, else CPU)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch finds no CUDA device")
    return dev


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16, or
    a CPU with AVX512_BF16 or AMX (elsewhere the CPU emulates bf16, many times slower than fp32)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision a run uses on ``device``: "auto" becomes "bf16" where bf16 is native, else
    "fp32"; "bf16" where it is emulated runs as asked, with a warning."""
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    if precision == "bf16" and not bf16_native(device):
        warnings.warn(
            f"precision 'bf16' on {torch.device(device).type} without native bf16 (no AVX512_BF16 "
            "or AMX on this CPU) is emulated and far slower than fp32; 'auto' picks fp32 here",
            stacklevel=3,
        )
    return precision


def autocast(device: torch.device, config: Config):
    """bf16 autocast when the config's precision resolves to bf16, else a no-op context."""
    precision = config.precision  # a Trainer's configs are resolved already; "auto" for others
    if precision == "bf16" or (precision == "auto" and bf16_native(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adam(params: Sequence[torch.Tensor], config: Config) -> torch.optim.Adam:
    """The run's Adam: torch's default per-tensor loop (the official code's), or one fused kernel
    per step with ``config.fused_adam`` (about 3x faster a step on a CPU; it rounds differently,
    so labels may differ from the loop's)."""
    return torch.optim.Adam(list(params), lr=config.lr, fused=config.fused_adam or None)


def map_threads(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` over as many Python threads as torch may use here.

    Each member's k-means is CPU work that would otherwise run one after another; sklearn's
    k-means releases the GIL. Each call gets one OpenMP thread: k-means with several threads
    sums in a varying order, and the labels of a seed must not depend on the machine's load.
    """
    from threadpoolctl import threadpool_limits

    def one(x):
        with threadpool_limits(1, user_api="openmp"):
            return fn(x)

    items = list(items)
    workers = max(1, min(torch.get_num_threads(), len(items)))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, items))
