"""stdout and stderr for a reader that may go away: `maintctl run | head -1`, a dying logger.

A write to a closed pipe raises BrokenPipeError (Python ignores SIGPIPE). maintctl's output is a
report of work done in the database, so a reader that left must neither fail nor stop that work:
the run goes on, the ledger and the exit code are what they would have been, and what was left
to say is dropped. The stream is then pointed at /dev/null so that the interpreter's last flush at
exit has nowhere to fail either.
"""

from __future__ import annotations

import io
import os
import sys
from typing import TextIO, cast


class ClosedPipeSafe(io.TextIOBase):
    """sys.stdout or sys.stderr (looked up at each write, so a test harness's swap is honoured)
    that drops its writes once its reader has gone."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self._gone: TextIO | None = None  # the stream whose reader went away

    def _target(self) -> TextIO:
        stream: TextIO = getattr(sys, self._name)
        return stream

    def write(self, text: str) -> int:
        target = self._target()
        if target is self._gone:
            return len(text)
        try:
            target.write(text)
            target.flush()  # now, so that a closed pipe is found here and not at exit
        except (BrokenPipeError, ValueError):  # ValueError: the stream itself was closed
            self._gone = target
            discard(target)
        return len(text)

    def flush(self) -> None:
        target = self._target()
        if target is not self._gone:
            try:
                target.flush()
            except (BrokenPipeError, ValueError):
                self._gone = target
                discard(target)

    def isatty(self) -> bool:
        target = self._target()
        return target is not self._gone and target.isatty()

    def writable(self) -> bool:
        return True


def discard(stream: TextIO) -> None:
    """Point the stream's file descriptor at /dev/null: what is still in its buffer, and whatever
    is written later, goes nowhere instead of failing at exit."""
    try:
        descriptor = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, io.UnsupportedOperation):
        return  # not a file descriptor (a test harness's buffer): nothing flushes it at exit
    os.dup2(devnull, descriptor)
    os.close(devnull)


# Typed as the streams they stand in for (typeshed's TextIOBase is not a TextIO).
STDOUT = cast(TextIO, ClosedPipeSafe("stdout"))
STDERR = cast(TextIO, ClosedPipeSafe("stderr"))
