"""Exceptions with messages meant for users.

The CLI prints ``str(error)`` on one line and exits non-zero; anything that is not a
``VirnucproError`` is a bug and is shown with a traceback only under ``--debug``.
"""


class VirnucproError(Exception):
    """An error whose message is complete, one line, and meant for the user."""

    exit_code = 1


class InputError(VirnucproError):
    """Bad or unreadable input: names the file, the record and, where it helps, the line."""


class ModelError(VirnucproError):
    """A model that cannot be found, downloaded, verified or loaded."""


class NumericalError(VirnucproError):
    """A batch produced NaN or Inf values."""


class ValidationError(VirnucproError):
    """The output failed validation (count, duplicates, missing ids)."""
