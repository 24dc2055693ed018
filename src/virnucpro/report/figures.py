"""The report's figures as PNG bytes (matplotlib, Agg backend, no metadata)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CALL_COLOURS = {"virus": "#c0392b", "others": "#2471a3"}
REGION_COLOUR = "#f5b041"
BINS = 20


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def histogram_png(counts: Sequence[int], title: str, xlabel: str) -> bytes:
    """Bars of ``counts`` over ``BINS`` equal bins of [0, 1]."""
    fig, ax = plt.subplots(figsize=(5.5, 3.0), layout="constrained")
    width = 1.0 / len(counts)
    ax.bar([i * width for i in range(len(counts))], counts, width=width, align="edge",
           color="#5d6d7e", edgecolor="white")  # fmt: skip
    ax.axvline(0.5, color="#888888", linestyle="--", linewidth=1)
    ax.set(xlim=(0, 1), title=title, xlabel=xlabel, ylabel="count")
    return _png(fig)


def track_png(
    record: str,
    length: int,
    chunks: Sequence[tuple[int, int, float, str]],
    regions: Sequence[tuple[int, int]],
) -> bytes:
    """Chunk scores along a record (segments coloured by call), viral regions shaded.

    ``chunks``: (start, end, max P(virus), call) of the scored chunks; ``regions``: spans.
    """
    fig, ax = plt.subplots(figsize=(7.5, 2.4), layout="constrained")
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
    return _png(fig)
