"""One progress bar for a run: sequences with rate and ETA, tokens/s, live workers."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """Counts sequences and tokens reported by workers; draws a bar unless quiet."""

    def __init__(self, total: int, *, desc: str, quiet: bool = False) -> None:
        self.total = total
        self.sequences = 0
        self.tokens = 0
        self.started = time.monotonic()
        self._last_postfix = 0.0
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit="seq",
            disable=quiet or None,  # None: disabled automatically when not a terminal
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def update(self, sequences: int, tokens: int, workers: int) -> None:
        self.sequences += sequences
        self.tokens += tokens
        self.bar.update(sequences)
        now = time.monotonic()
        if now - self._last_postfix > 0.5:
            self._last_postfix = now
            rate = self.tokens / max(now - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} tok/s, {workers} worker(s)", refresh=False)

    def write(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
