"""The exception a run stops with on SIGINT/SIGTERM (torch-free, so the CLI can catch it
without importing the compute side)."""

from __future__ import annotations

import signal


class Interrupted(Exception):
    """The run was stopped by a signal; committed units are kept."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)
