"""The errors of reading sources: bad input, told in one sentence."""

from __future__ import annotations


class SourceError(ValueError):
    """Bad input: one clear sentence naming the file, the variable and the problem."""


class MissingSourceError(SourceError):
    """A file, glob or variable that is not there (an optional covariate may be skipped)."""
