"""The CMMC network: one autoencoder per view, a shared feature head and a shared label head.

Layer sizes follow the official MFLVC code (``Config.hidden`` may make them smaller): encoder
D->500->500->2000->512 with ReLU between layers, the mirrored decoder, PyTorch's default initialisation, no normalisation layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = (500, 500, 2000)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them and none after the last."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CMMCNetwork(nn.Module):
    """Per-view autoencoders plus the shared feature (h) and label (q) heads."""

    def __init__(
        self,
        dims: Sequence[int],
        n_clusters: int,
        low_dim: int = 512,
        high_dim: int = 128,
        hidden: Sequence[int] = HIDDEN,
    ) -> None:
        super().__init__()
        hidden = list(hidden)
        self.encoders = nn.ModuleList(mlp([d, *hidden, low_dim]) for d in dims)
        self.decoders = nn.ModuleList(mlp([low_dim, *hidden[::-1], d]) for d in dims)
        self.feature_head = nn.Linear(low_dim, high_dim)
        self.label_head = nn.Linear(low_dim, n_clusters)

    def encode(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Low-level features z^m of every view."""
        return [enc(x) for enc, x in zip(self.encoders, xs, strict=True)]

    def heads(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """High-level features h (L2-normalised) and soft assignments q of one view's z."""
        h = F.normalize(self.feature_head(z), dim=1)
        q = torch.softmax(self.label_head(z), dim=1)
        return h, q

    def forward(
        self, xs: Sequence[torch.Tensor], decode: bool = True, heads: bool = True
    ) -> dict[str, list]:
        """Return per-view lists ``z``, ``h``, ``q`` (when ``heads``) and reconstructions ``xr``
        (when ``decode``)."""
        zs = self.encode(xs)
        out: dict[str, list] = {"z": zs}
        if heads:
            hs, qs = zip(*(self.heads(z) for z in zs), strict=True)
            out.update(h=list(hs), q=list(qs))
        if decode:
            out["xr"] = [dec(z) for dec, z in zip(self.decoders, zs, strict=True)]
        return out

    def reconstruct(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reconstructions only (the pre-training phase needs nothing else)."""
        return [dec(enc(x)) for enc, dec, x in zip(self.encoders, self.decoders, xs, strict=True)]
