"""Errors a job raises that the command line turns into a message and an exit status."""

from __future__ import annotations

from typing import Any


class JobFailedError(RuntimeError):
    """The job ran and its answer is no (a refused promotion, failed checks): the message
    explains, ``results`` still goes to --results-json, the exit status is non-zero."""

    def __init__(self, message: str, results: dict[str, Any]) -> None:
        super().__init__(message)
        self.results = results


class UntrustedStateError(ValueError):
    """Stored state that the job would unpickle is not what the project wrote (tampered with,
    unsigned, or signed with another key): it is refused before anything is loaded."""
