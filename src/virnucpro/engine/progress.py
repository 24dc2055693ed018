"""Progress of a run: a bar on a terminal, one plain line at a time in a log file.

Both count tokens, because the work is tokens: units are planned longest first, so the early
sequences are the long ones and an ETA from the sequence count is several times too long at
the start. Every unit's planned token count is known, so the ETA is the planned tokens still
to compute over the token rate seen so far.

When stderr is not a terminal (a batch log), a line is written when another 5% of the tokens
is done or ``VIRNUCPRO_PROGRESS_SECONDS`` (default 30) have passed since the last line,
whichever comes first; plus one line at the start and one at the end. ``quiet``: nothing.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

from virnucpro.engine.units import Unit

PERIOD_VARIABLE = "VIRNUCPRO_PROGRESS_SECONDS"
DEFAULT_PERIOD = 30.0
STEP = 0.05  # a line per 5% of the tokens


def progress_period() -> float:
    """Seconds between two progress lines in a log (``VIRNUCPRO_PROGRESS_SECONDS``)."""
    text = os.environ.get(PERIOD_VARIABLE, "")
    try:
        value = float(text) if text else DEFAULT_PERIOD
    except ValueError:
        return DEFAULT_PERIOD
    return value if value > 0 else DEFAULT_PERIOD


def clock(seconds: float | None) -> str:
    """``1:02:03`` (or ``?`` when unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts sequences and tokens reported by workers; credits each unit's planned tokens."""

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        quiet: bool = False,
        tokens: int | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.total_tokens = int(tokens) if tokens else 0
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.sequences = 0  # sequences credited (each unit counted once, retries included)
        self.tokens = 0  # real tokens computed (what workers report; for tokens/s)
        self.done_tokens = 0  # planned tokens credited (for the fraction and the ETA)
        self.workers = 0
        self.started = time.monotonic()
        self._credit: dict[str, list[int]] = {}  # unit key -> [sequences, planned tokens]
        self._first: tuple[float, int] | None = None  # (time, planned tokens) at 1st report
        self._last_postfix = 0.0
        self.lines = not quiet and not _is_terminal(self.stream)
        self._last_line = self.started
        self._last_fraction = 0.0
        self.bar = None
        if not quiet and not self.lines:
            self.bar = tqdm(
                total=self.total_tokens or total,
                desc=desc,
                unit="tok" if self.total_tokens else "seq",
                unit_scale=bool(self.total_tokens),
                file=self.stream,
                dynamic_ncols=True,
                smoothing=0.05,
            )
        if self.lines:
            self._line(
                f"{total:,} sequences, {self.total_tokens:,} tokens to compute "
                f"(a line every {STEP:.0%} or {progress_period():g} s)"
            )

    # -- counting ---------------------------------------------------------------------------
    def update(
        self, sequences: int, tokens: int, workers: int, *, unit: Unit | None = None
    ) -> None:
        """A batch (or a whole unit) of ``unit`` is done: ``tokens`` real tokens."""
        self.workers = workers
        self.tokens += tokens
        if unit is None:
            self._add(sequences, tokens)
        else:
            credit = self._credit.setdefault(unit.key, [0, 0])
            n = max(0, min(sequences, len(unit) - credit[0]))
            t = max(0, min(tokens, unit.tokens - credit[1]))
            credit[0] += n
            credit[1] += t
            self._add(n, t)
        self._show()

    def unit_done(self, unit: Unit, workers: int | None = None) -> None:
        """``unit`` is committed: credit what its batches did not (planned over real tokens)."""
        if workers is not None:
            self.workers = workers
        credit = self._credit.setdefault(unit.key, [0, 0])
        n, t = max(0, len(unit) - credit[0]), max(0, unit.tokens - credit[1])
        credit[0] += n
        credit[1] += t
        self._add(n, t)
        self._show()

    def _add(self, sequences: int, planned: int) -> None:
        sequences = min(sequences, self.total - self.sequences)
        self.sequences += sequences
        if self.total_tokens:
            planned = min(planned, self.total_tokens - self.done_tokens)
        self.done_tokens += planned
        if self._first is None:  # the rate counts from here: model loading is left out
            self._first = (time.monotonic(), self.done_tokens)
        if self.bar is not None:
            self.bar.update(planned if self.total_tokens else sequences)

    # -- figures ------------------------------------------------------------------------------
    @property
    def fraction(self) -> float:
        if self.total_tokens:
            return self.done_tokens / self.total_tokens
        return self.sequences / self.total if self.total else 1.0

    def rate(self) -> float | None:
        """Planned tokens per second since the first report (model loading left out)."""
        if self._first is None:
            return None
        t0, done0 = self._first
        elapsed = time.monotonic() - t0
        if elapsed <= 0 or self.done_tokens <= done0:
            return None
        return (self.done_tokens - done0) / elapsed

    def eta(self) -> float | None:
        """Seconds left: planned tokens still to compute over the token rate."""
        rate = self.rate()
        if not self.total_tokens or rate is None:
            return None
        return (self.total_tokens - self.done_tokens) / rate

    def status_line(self) -> str:
        rate = self.rate()
        speed = f"{rate:,.0f} tokens/s" if rate else "? tokens/s"
        return (
            f"{self.fraction:.0%} | {self.sequences:,}/{self.total:,} sequences | "
            f"{self.done_tokens:,}/{self.total_tokens:,} tokens | {speed} | "
            f"elapsed {clock(time.monotonic() - self.started)} | ETA {clock(self.eta())} | "
            f"{self.workers} worker(s)"
        )

    # -- output ---------------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        print(f"[{stamp} UTC] {self.desc}: {text}", file=self.stream, flush=True)

    def _show(self) -> None:
        now = time.monotonic()
        if self.bar is not None:
            if now - self._last_postfix > 0.5:
                self._last_postfix = now
                self.bar.set_postfix_str(
                    f"{self.sequences}/{self.total} seq, {self.workers} worker(s)", refresh=False
                )
            return
        if not self.lines:
            return
        if (
            self.fraction - self._last_fraction >= STEP - 1e-9
            or now - self._last_line >= progress_period()
        ):
            self._emit(now)

    def _emit(self, now: float) -> None:
        self._last_line = now
        self._last_fraction = self.fraction
        self._line(self.status_line())

    def tick(self) -> None:
        """Called by the backends' loops about once a second: the time rule without reports."""
        if self.lines and time.monotonic() - self._last_line >= progress_period():
            self._emit(time.monotonic())

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines:
            end = "done" if self.fraction >= 1 else "stopped"
            self._line(f"{end}: {self.status_line()}")
            self.lines = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
