"""Draw the CMMC architecture with matplotlib.

Used twice: `python scripts/draw_architecture.py` writes book/_static/architecture.png (the
picture in the README), and book/intro.md imports `draw_architecture` to draw the same figure
on the introduction page. The layer sizes are read from the network that `cmmc` trains
(`cmmc.model.CMMCNetwork` with the default `cmmc.config.Config`), which follows the official
MFLVC code: per-view encoder D_m -> 500 -> 500 -> 2000 -> 512, decoder the mirror image, shared
feature head Linear(512, 128) + L2 normalisation, shared label head Linear(512, K) + softmax.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Rectangle
from torch import nn

from cmmc.config import Config
from cmmc.model import CMMCNetwork


def linear_widths(stack: nn.Module) -> list[int]:
    """Input width of the first nn.Linear of ``stack``, then the output width of each."""
    linears = [m for m in stack.modules() if isinstance(m, nn.Linear)]
    return [linears[0].in_features, *(m.out_features for m in linears)]


_DEFAULTS = Config()
_PROBE = CMMCNetwork([1], 1, low_dim=_DEFAULTS.low_dim, high_dim=_DEFAULTS.high_dim)
ENCODER_HIDDEN = tuple(linear_widths(_PROBE.encoders[0])[1:-1])  # (500, 500, 2000)
LATENT_DIM = _PROBE.feature_head.in_features  # 512: z, the input of both heads
FEATURE_DIM = _PROBE.feature_head.out_features  # 128: h

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "book" / "_static" / "architecture.png"

COLORS = {
    "input": "#dbe9f6",
    "encoder": "#4c72b0",
    "decoder": "#8da0cb",
    "latent": "#fdd49e",
    "feature": "#55a868",
    "label": "#c44e52",
    "loss": "#f2f2f2",
    "pseudo": "#fff2cc",
}


def layer_sizes(input_dim: int) -> list[int]:
    """Encoder layer widths for one view (D_m -> 500 -> 500 -> 2000 -> 512), read from the
    encoder that cmmc.model.CMMCNetwork builds for an input of width ``input_dim``."""
    net = CMMCNetwork([input_dim], 1, low_dim=LATENT_DIM, high_dim=FEATURE_DIM)
    return linear_widths(net.encoders[0])


def decoder_sizes(input_dim: int) -> list[int]:
    """Decoder layer widths for one view (512 -> 2000 -> 500 -> 500 -> D_m), from the network."""
    net = CMMCNetwork([input_dim], 1, low_dim=LATENT_DIM, high_dim=FEATURE_DIM)
    return linear_widths(net.decoders[0])


def linear_stack_parameters(sizes: list[int]) -> int:
    """Number of weights + biases of a stack of nn.Linear layers with these widths."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def encoder_parameters(input_dim: int) -> int:
    """Weights + biases of one view's encoder."""
    return linear_stack_parameters(layer_sizes(input_dim))


def decoder_parameters(input_dim: int) -> int:
    """Weights + biases of one view's decoder."""
    return linear_stack_parameters(decoder_sizes(input_dim))


def _box(ax, x, y, w, h, text, color, fontsize=9, text_color="black", lw=1.0, ls="-", alpha=1.0):
    patch = FancyBboxPatch(
        (x, y),
        w,
        h,
        boxstyle="round,pad=0.3,rounding_size=0.8",
        facecolor=color,
        edgecolor="#333333",
        linewidth=lw,
        linestyle=ls,
        alpha=alpha,
    )
    ax.add_patch(patch)
    if text:
        ax.text(
            x + w / 2,
            y + h / 2,
            text,
            ha="center",
            va="center",
            fontsize=fontsize,
            color=text_color,
            wrap=True,
        )
    return patch


def _arrow(ax, start, end, color="#333333", style="-|>", lw=1.2, ls="-", rad=0.0):
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops=dict(
            arrowstyle=style,
            color=color,
            lw=lw,
            linestyle=ls,
            shrinkA=0,
            shrinkB=0,
            connectionstyle=f"arc3,rad={rad}",
        ),
    )


def _bars(ax, x0, yc, sizes, color, step=2.6, width=1.6):
    """Draw one bar per layer, height growing with the layer width; return the x-extent."""
    largest = max(*sizes, *ENCODER_HIDDEN)
    for i, size in enumerate(sizes):
        height = 3.0 + 13.0 * size / largest
        x = x0 + i * step
        ax.add_patch(
            Rectangle(
                (x, yc - height / 2), width, height, facecolor=color, edgecolor="#222222", lw=0.6
            )
        )
        ax.text(
            x + width / 2, yc - 9.6, str(size), ha="center", va="top", fontsize=6.5, rotation=90
        )
    return x0, x0 + (len(sizes) - 1) * step + width


def draw_architecture(dims=(784, 784), n_clusters=10, dataset="MNIST-USPS", ax=None):
    """Draw the CMMC architecture for views with input dimensions `dims`; return the figure."""
    if len(dims) != 2:
        raise ValueError("the drawing shows two views; pass two input dimensions")
    if ax is None:
        fig, ax = plt.subplots(figsize=(15, 7.2), dpi=110)
    else:
        fig = ax.figure
    ax.set_xlim(0, 150)
    ax.set_ylim(-4, 76)
    ax.axis("off")

    rows = {1: 56.0, 2: 24.0}
    z_right = {}
    for m, yc in rows.items():
        d = dims[m - 1]
        # input
        _box(ax, 0.5, yc - 4, 8, 8, f"$x^{m}$\n$\\in\\mathbb{{R}}^{{{d}}}$", COLORS["input"], 9)
        ax.text(4.5, yc + 6.3, f"view {m}", ha="center", fontsize=9, weight="bold")
        # encoder bars
        x0, x1 = _bars(ax, 12.5, yc, layer_sizes(d), COLORS["encoder"])
        _arrow(ax, (9.1, yc), (x0 - 0.3, yc))
        ax.text((x0 + x1) / 2, yc + 9.3, f"encoder $E^{m}$", ha="center", fontsize=9)
        # latent z
        _box(ax, x1 + 2.5, yc - 3.5, 6.5, 7, f"$z^{m}$\n{LATENT_DIM}", COLORS["latent"], 9)
        _arrow(ax, (x1 + 0.2, yc), (x1 + 2.2, yc))
        zx = x1 + 9.3
        # decoder bars
        d0, d1 = _bars(ax, zx + 3.0, yc, decoder_sizes(d), COLORS["decoder"])
        _arrow(ax, (zx, yc), (d0 - 0.3, yc))
        ax.text((d0 + d1) / 2, yc + 9.3, f"decoder $D^{m}$", ha="center", fontsize=9)
        _box(ax, d1 + 2.5, yc - 3.5, 6.5, 7, f"$\\hat{{x}}^{m}$", COLORS["input"], 10)
        _arrow(ax, (d1 + 0.2, yc), (d1 + 2.2, yc))
        ax.text(
            d1 + 5.75,
            yc - 6.2,
            f"$\\mathcal{{L}}_{{rec}}$: MSE$(x^{{{m}}},\\hat{{x}}^{{{m}}})$",
            ha="center",
            va="top",
            fontsize=8,
        )
        z_right[m] = (zx, yc)

    # shared heads panel
    hx, hw = 80.0, 20.0
    _box(ax, hx - 1.5, 8.5, hw + 3, 62, "", "#fafafa", lw=1.0, ls="--")
    ax.text(hx + hw / 2, 72.5, "shared by all views", ha="center", fontsize=9, style="italic")
    _box(
        ax,
        hx,
        46,
        hw,
        20,
        f"feature head\nLinear({LATENT_DIM}, {FEATURE_DIM})\n+ L2 normalisation",
        COLORS["feature"],
        9,
        text_color="white",
    )
    _box(
        ax,
        hx,
        12,
        hw,
        20,
        f"label head\nLinear({LATENT_DIM}, K={n_clusters})\n+ softmax",
        COLORS["label"],
        9,
        text_color="white",
    )
    # z -> heads (route below each row, then into the panel)
    for m, (zx, yc) in z_right.items():
        drop = yc - 15.5
        ax.plot([zx - 3.25, zx - 3.25], [yc - 3.8, drop], color="#333333", lw=1.2)
        ax.plot([zx - 3.25, hx - 6], [drop, drop], color="#333333", lw=1.2)
        _arrow(ax, (hx - 6, drop), (hx - 0.4, 56 if m == 1 else 50))
        _arrow(ax, (hx - 6, drop), (hx - 0.4, 22 if m == 1 else 16))
        ax.text(hx - 7.0, drop + 0.8, f"$z^{m}$", ha="right", fontsize=9)

    # outputs
    outs = {
        "h1": (62.0, f"$h^1\\in\\mathbb{{R}}^{{{FEATURE_DIM}}}$", COLORS["feature"]),
        "h2": (50.0, f"$h^2\\in\\mathbb{{R}}^{{{FEATURE_DIM}}}$", COLORS["feature"]),
        "q1": (28.0, "$q^1\\in\\Delta^{K}$", COLORS["label"]),
        "q2": (16.0, "$q^2\\in\\Delta^{K}$", COLORS["label"]),
    }
    ox = 104.0
    for _key, (y, text, color) in outs.items():
        _box(ax, ox, y - 3, 11, 6, text, "white", 9)
        ax.add_patch(Rectangle((ox - 0.3, y - 3.3), 0.9, 6.6, color=color, lw=0))
        _arrow(ax, (hx + hw + 0.3, y), (ox - 0.5, y))

    # contrastive losses
    lx, lw_ = 121.0, 27.0
    _box(
        ax,
        lx,
        49,
        lw_,
        14,
        "feature contrast $\\mathcal{L}_F$\n$\\tau_F=0.5$, positive: same sample\nin the other view, "
        "$2B-2$ negatives",
        COLORS["loss"],
        8,
    )
    _box(
        ax,
        lx,
        15,
        lw_,
        14,
        "label contrast $\\mathcal{L}_L$ on the\n$K$ columns of $q$, $\\tau_L=1$\n+ entropy regulariser",
        COLORS["loss"],
        8,
    )
    for key, target in (("h1", 58), ("h2", 54), ("q1", 24), ("q2", 20)):
        y = outs[key][0]
        _arrow(ax, (ox + 11.4, y), (lx - 0.4, target))

    # pseudo labels and fine-tuning
    _box(
        ax,
        40,
        -3,
        108,
        7.5,
        "pseudo labels: k-means on $h^m$ gives $P^m$; maximum matching (Hungarian) of $P^m$ "
        "to argmax $q^m$ renames it $\\hat{P}^m$\n"
        "fine-tuning: cross-entropy$(q^m,\\hat{P}^m)$, 50 full-batch steps; "
        "read-out: $\\arg\\max_k \\frac{1}{M}\\sum_m q^m_k$",
        COLORS["pseudo"],
        8.5,
    )
    # h^m feeds k-means, q^m the matching: dashed arrows down to the pseudo-label box
    ax.plot([ox + 11.4, ox + 13.2, ox + 13.2], [48.5, 48.5, 33], color="#7f6000", lw=1.2, ls="--")
    _arrow(ax, (ox + 13.2, 33), (ox + 13.2, 4.9), ls="--", color="#7f6000")
    _arrow(ax, (ox + 5.5, 12.7), (ox + 5.5, 4.9), ls="--", color="#7f6000")
    ax.text(ox + 13.8, 40, "$h^m$", fontsize=8, color="#7f6000")

    ax.set_title(
        f"CMMC for {dataset} ({len(dims)} views, K = {n_clusters}): phase 1 reconstruction, "
        "phase 2 $\\mathcal{L}_F+\\mathcal{L}_L+\\mathcal{L}_{rec}$, phase 3 pseudo-label "
        "fine-tuning",
        fontsize=11,
    )
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    plt.switch_backend("Agg")  # as a script only: importing it must not change a notebook's backend
    fig = draw_architecture()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, bbox_inches="tight", metadata={"Software": None})
    print(f"wrote {args.out} (encoder parameters for D=784: {encoder_parameters(784):,})")


if __name__ == "__main__":
    main()
