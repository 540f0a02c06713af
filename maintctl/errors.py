"""The errors maintctl reports: each carries its exit code and a one-line message.

Driver errors are translated into these once, in `maintctl.db`; the CLI prints the message and
exits with the code. The docstring of each class is its default message.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of DESIGN.md."""

    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    UNAVAILABLE = 69
    SOFTWARE = 70
    DISABLED = 75
    NO_PERMISSION = 77
    CONFIG = 78
    SIGINT = 130
    SIGTERM = 143


class MaintctlError(Exception):
    """maintctl failed."""

    exit_code: ExitCode = ExitCode.SOFTWARE

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class UsageError(MaintctlError):
    """A command-line option has a value maintctl cannot use."""

    exit_code = ExitCode.USAGE


class ConfigError(MaintctlError):
    """A setting has a value maintctl cannot use."""

    exit_code = ExitCode.CONFIG


class NotMigrated(ConfigError):
    """The maintenance schema is missing or out of date; run: maintctl migrate"""


class DatabaseUnavailable(MaintctlError):
    """The database could not be reached."""

    exit_code = ExitCode.UNAVAILABLE


class PermissionDenied(MaintctlError):
    """The database refused: wrong credentials or a missing privilege."""

    exit_code = ExitCode.NO_PERMISSION


class Busy(MaintctlError):
    """The database was busy: a lock or statement timeout ran out; try again later."""

    exit_code = ExitCode.TASK_FAILED


class LeaseLost(MaintctlError):
    """another run took the run lease over; this run stopped and its batch in flight rolled back"""

    exit_code = ExitCode.TASK_FAILED


class TaskError(MaintctlError):
    """A task failed; the run goes on with the next task."""

    exit_code = ExitCode.TASK_FAILED


class BatchTimedOut(TaskError):
    """A batch ran longer than MAINTCTL_STATEMENT_TIMEOUT."""


# Added (as a note) to an interrupt that rolled a batch back, so that the message mentions a batch
# only when one was in flight.
BATCH_ROLLED_BACK = "the batch in flight was rolled back"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as a KeyboardInterrupt so that psycopg cancels the running statement."""
