"""The report's figures as PNG bytes (matplotlib, Agg backend, no metadata).

Figures are plain ``Figure`` objects with fixed margins (no pyplot state, no constrained
layout: measured 1.65x faster per track figure, which matters with 50 tracks per report).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CALL_COLOURS = {"virus": "#c0392b", "others": "#2471a3"}
REGION_COLOUR = "#f5b041"
BINS = 20


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return buffer.getvalue()


def _axes(size: tuple[float, float], left: float, bottom: float, top: float) -> Axes:
    """One axes on a new figure of ``size`` inches with fixed margins (fractions)."""
    fig = Figure(figsize=size)
    fig.subplots_adjust(left=left, right=0.98, bottom=bottom, top=top)
    return fig.add_subplot()


def histogram_png(counts: Sequence[int], title: str, xlabel: str) -> bytes:
    """Bars of ``counts`` over ``BINS`` equal bins of [0, 1]."""
    ax = _axes((5.5, 3.0), left=0.13, bottom=0.17, top=0.9)
    width = 1.0 / len(counts)
    ax.bar([i * width for i in range(len(counts))], counts, width=width, align="edge",
           color="#5d6d7e", edgecolor="white")  # fmt: skip
    ax.axvline(0.5, color="#888888", linestyle="--", linewidth=1)
    ax.set(xlim=(0, 1), title=title, xlabel=xlabel, ylabel="count")
    return _png(ax.figure)


def track_png(
    record: str,
    length: int,
    chunks: Sequence[tuple[int, int, float, str]],
    regions: Sequence[tuple[int, int]],
) -> bytes:
    """Chunk scores along a record (segments coloured by call), viral regions shaded.

    ``chunks``: (start, end, max P(virus), call) of the scored chunks; ``regions``: spans.
    """
    ax = _axes((7.5, 2.4), left=0.09, bottom=0.2, top=0.88)
    for start, end in regions:
        ax.axvspan(start, end, color=REGION_COLOUR, alpha=0.35, linewidth=0)
    for call, colour in CALL_COLOURS.items():
        spans = [(s, e, v) for s, e, v, c in chunks if c == call]
        if spans:
            ax.hlines([v for _, _, v in spans], [s for s, _, _ in spans], [e for _, e, _ in spans],
                      colors=colour, linewidth=3, label=call)  # fmt: skip
    ax.axhline(0.5, color="#888888", linestyle="--", linewidth=1)
    ax.set(xlim=(0, max(length, 1)), ylim=(0, 1.02), xlabel="position (nt)", ylabel="P(virus)")
    ax.set_title(record, fontsize=9, loc="left", parse_math=False)
    if chunks:
        ax.legend(loc="lower right", fontsize=7, frameon=False, ncols=2)
    return _png(ax.figure)
