"""The command line: parse, call, render, exit. No SQL here; see maintctl.tasks and maintctl.db."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from maintctl import __version__
from maintctl.errors import BATCH_ROLLED_BACK, ExitCode, MaintctlError, Terminated, UsageError
from maintctl.log import LOG_FORMATS, StepLog

if TYPE_CHECKING:
    from maintctl import runner
    from maintctl.api import Maintenance
    from maintctl.archive import Destination
    from maintctl.db import Connection
    from maintctl.settings import Settings
    from maintctl.tasks import Task


class _MaintctlGroup(TyperGroup):
    """The command group: errors of Typer's own parser (an unknown option, a value that does not
    parse) come out as every maintctl error does: one line on stderr, exit 2, and with --json
    the error object on stdout."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError

        arguments = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(arguments, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except ClickException as exc:
            context = getattr(exc, "ctx", None)  # a UsageError's; other ClickExceptions have none
            where = context.command_path if context is not None else "maintctl"
            message = exc.format_message().rstrip(".")
            _configure_log(None, quiet=False)
            _fail(f"{message} (see: {where} --help)", exc.exit_code, "--json" in arguments)
            code = exc.exit_code
        if not standalone_mode:
            return code
        sys.exit(code or 0)


app = typer.Typer(
    name="maintctl",
    cls=_MaintctlGroup,
    help="Keeps the PostgreSQL database of a data-import system healthy.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Command = TypeVar("Command", bound=Callable[..., int | None])

# --- options shared by the commands -----------------------------------------------------------

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL URL. Default: MAINTCTL_DATABASE_URL, then DATABASE_URL, then libpq's PG* "
        "variables, service file and .pgpass. Prefer those: a password here is visible in ps.",
        show_default=False,
    ),
]
Schema = Annotated[
    str | None,
    typer.Option(
        "--schema",
        help="Schema of the application's tables [env: MAINTCTL_SCHEMA; default: public].",
        show_default=False,
    ),
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")
]
Debug = Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")]
ConfigFile = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="The policy file (table and column names, thresholds) [env: MAINTCTL_CONFIG; "
        "default: ./maintctl.toml when present].",
        metavar="FILE",
        show_default=False,
    ),
]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Count what would be touched now; change nothing.")
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        help=(
            "The most rows per transaction [env: MAINTCTL_BATCH_SIZE; default: 5000, which a fast "
            "table may exceed up to 100,000 when it is not set]."
        ),
        show_default=False,
    ),
]
MaxRuntime = Annotated[
    str | None,
    typer.Option(
        "--max-runtime",
        help="Stop between batches after this long, e.g. 30m; the next run carries on.",
        metavar="DURATION",
        show_default=False,
    ),
]
OlderThan = Annotated[
    str | None,
    typer.Option(
        "--older-than",
        help="Threshold of this task, e.g. 36h or 1d12h (overrides its MAINTCTL_* setting).",
        metavar="DURATION",
        show_default=False,
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Allow a threshold under 1 hour, and a task far above its recent runs "
        "(the anomaly guard, MAINTCTL_ANOMALY_FACTOR).",
    ),
]
MaxRows = Annotated[
    int | None,
    typer.Option(
        "--max-rows",
        help="Touch at most this many rows per task; the task reports stopped and the next run "
        "carries on [env: MAINTCTL_MAX_ROWS].",
        show_default=False,
    ),
]
MaxReplicaLag = Annotated[
    str | None,
    typer.Option(
        "--max-replica-lag",
        help="Wait while a standby is further behind in replay, a duration or a size "
        "(30s, 256MB) or off [env: MAINTCTL_MAX_REPLICA_LAG; default: 30s].",
        show_default=False,
    ),
]
MaxSlotLag = Annotated[
    str | None,
    typer.Option(
        "--max-slot-lag",
        help="Wait while a replication slot retains more WAL (512MB) or off "
        "[env: MAINTCTL_MAX_SLOT_LAG; default: 1GB].",
        show_default=False,
    ),
]
MaxWalRate = Annotated[
    str | None,
    typer.Option(
        "--max-wal-rate",
        help="Pace batches to write at most this much WAL per second (32MB/s) "
        "[env: MAINTCTL_MAX_WAL_RATE; default: off].",
        show_default=False,
    ),
]
ThrottleWait = Annotated[
    str | None,
    typer.Option(
        "--throttle-wait",
        help="Stop a task that waited this long in one stretch on the health gate; the next run "
        "carries on [env: MAINTCTL_THROTTLE_WAIT; default: 5m].",
        show_default=False,
    ),
]
LogFormat = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="The step lines on stderr: text, or json lines for journald or a log shipper "
        "[env: MAINTCTL_LOG_FORMAT; default: text].",
        metavar="[text|json]",
        autocompletion=lambda: list(LOG_FORMATS),
        show_default=False,
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", help="Errors and warnings only: no step lines, no table (for cron)."
    ),
]
MetricsFile = Annotated[
    str | None,
    typer.Option(
        "--metrics-file",
        help="Write a Prometheus textfile-collector file here, e.g. "
        "/var/lib/node_exporter/textfile_collector/maintctl.prom [env: MAINTCTL_METRICS_FILE].",
        show_default=False,
    ),
]
Vacuum = Annotated[
    bool,
    typer.Option(
        "--vacuum",
        help="Afterwards, VACUUM (ANALYZE) each table the run changed a lot (100,000 rows, or "
        "1,000 rows and 10% of the table); a failed VACUUM is reported, the exit code stays.",
    ),
]
EmitPaths = Annotated[
    str | None,
    typer.Option(
        "--emit-paths",
        help="Write the files of the temp uploads this run deleted to FILE, a new file, as JSON "
        "lines ('-': stdout, not with --json). They stay in the storage outbox for drain-outbox.",
        metavar="FILE",
        show_default=False,
    ),
]

ArchiveDest = Annotated[
    str | None,
    typer.Option(
        "--archive",
        help="Archive every row removed, before its batch commits: a directory, or the "
        "postgresql:// URL of another database [env: MAINTCTL_ARCHIVE].",
        metavar="DEST",
        show_default=False,
    ),
]

# --- error handling: one place --------------------------------------------------------------


# Every password maintctl has seen in this process (flags, environment, .env), so that no message,
# traceback included, ever shows one.
_known_passwords: set[str] = set()


def _remember_passwords(*conninfos: str | None) -> None:
    from maintctl.db import passwords_in

    for conninfo in conninfos:
        if conninfo:
            _known_passwords.update(passwords_in(conninfo))


def _remember_archive_password(dest: str | None) -> None:
    """An archive is a directory (no secret) or a database URL (maybe with a password)."""
    if dest and dest.startswith(("postgresql://", "postgres://")):
        _remember_passwords(dest)


def redact(text: str) -> str:
    """The text with every known password replaced by asterisks."""
    secrets = _known_passwords | {os.environ.get("PGPASSWORD") or ""}
    for secret in sorted(secrets - {""}, key=len, reverse=True):
        text = text.replace(secret, "********")
    return text


# The step log of the command being run (stderr): its format and --quiet are set per command.
_log = StepLog(redact=redact)


def _configure_log(log_format: str | None, quiet: bool) -> None:
    # Before the settings load, so that even a bad setting is reported in the chosen format.
    chosen = log_format or os.environ.get("MAINTCTL_LOG_FORMAT") or "text"
    _log.log_format = chosen if chosen in ("text", "json") else "text"
    _log.quiet = quiet


def _error(message: str) -> None:
    _log.error(message)


def _fail(message: str, exit_code: int, json_output: bool) -> None:
    """Every failure: one line on stderr; with --json also one object on stdout, so that a
    pipeline that parses stdout always gets JSON: {"error": ..., "exitCode": ...}."""
    _error(message)
    if json_output:
        from maintctl.streams import STDOUT

        document = {"error": redact(message), "exitCode": int(exit_code)}
        STDOUT.write(json.dumps(document, ensure_ascii=False) + "\n")


def _traceback() -> None:
    sys.stderr.write(redact(traceback.format_exc()))


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


_ARCHIVE_HELP = "Check and prune the archive of removed rows (MAINTCTL_ARCHIVE)."
archive_app = typer.Typer(
    name="archive",
    help=_ARCHIVE_HELP,
    short_help=_ARCHIVE_HELP,  # whole in the command list, as command() gives every command
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(archive_app)


def command(name: str, example: str, group: typer.Typer = app) -> Callable[[Command], Command]:
    """Register a command whose errors become one line on stderr and the contract's exit code."""

    def register(function: Command) -> Command:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            from maintctl.policy import config_flag_set

            # The file of this command only: a later command in the same process (the Python
            # API, a test) must not inherit it.
            with config_flag_set(kwargs.pop("config", None)):
                debug = bool(kwargs.get("debug"))
                json_output = bool(kwargs.get("json_output"))
                # The driver's own warnings (a rollback that failed after an interrupt, say) would
                # add lines to the one-line error; --debug shows them.
                logging.getLogger("psycopg").setLevel(logging.DEBUG if debug else logging.CRITICAL)
                _configure_log(kwargs.get("log_format"), bool(kwargs.get("quiet")))
                try:
                    code = function(*args, **kwargs)
                except MaintctlError as exc:
                    if debug:
                        _traceback()
                    _fail(exc.message, exc.exit_code, json_output)
                    raise typer.Exit(exc.exit_code) from None
                except KeyboardInterrupt as exc:
                    signal_name, exit_code = (
                        ("SIGTERM", ExitCode.SIGTERM)
                        if isinstance(exc, Terminated)
                        else ("SIGINT", ExitCode.SIGINT)
                    )
                    batch = BATCH_ROLLED_BACK in getattr(exc, "__notes__", ())
                    _error(
                        f"interrupted by {signal_name}"
                        + (f"; {BATCH_ROLLED_BACK}" if batch else "")
                    )
                    raise typer.Exit(exit_code) from None
                except typer.Exit:
                    raise
                except Exception as exc:
                    if debug:
                        _traceback()
                    hint = "" if debug else " (run again with --debug for the traceback)"
                    said = f"internal error: {type(exc).__name__}: {exc}{hint}"
                    _fail(said, ExitCode.SOFTWARE, json_output)
                    raise typer.Exit(ExitCode.SOFTWARE) from None
                raise typer.Exit(code or 0)

        # Every command takes --config: the policy file its settings read.
        signature = inspect.signature(function, eval_str=True)
        parameters = list(signature.parameters.values())
        config = inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigFile
        )
        at = next((i for i, p in enumerate(parameters) if p.name == "debug"), len(parameters))
        parameters.insert(at, config)
        wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in parameters]
        )
        # The whole first line of the docstring in the command list, not cut at 45 characters.
        summary = " ".join((function.__doc__ or "").split("\n\n")[0].split())
        short_help = summary.split(". ")[0].removesuffix(".") + "."
        group.command(name, epilog=f"Example: {example}", short_help=short_help)(wrapper)
        return function

    return register


# --- building blocks ------------------------------------------------------------------------

_FLAG_NAMES = {
    "database_url": "--database-url",
    "app_schema": "--schema",
    "batch_size": "--batch-size",
    "log_format": "--log-format",
    "metrics_file": "--metrics-file",
    "public_dashboard": "--public-dashboard",
    "archive": "--archive",
    "max_rows": "--max-rows",
    "max_replica_lag": "--max-replica-lag",
    "max_slot_lag": "--max-slot-lag",
    "max_wal_rate": "--max-wal-rate",
    "throttle_wait": "--throttle-wait",
}


def _settings(
    database_url: str | None,
    schema: str | None,
    *,
    tasks: tuple[Task, ...] = (),
    force: bool = False,
    **flags: Any,
) -> Settings:
    """The settings of a command; the thresholds of the `tasks` it runs must pass the floor."""
    from maintctl.db import conninfo_params
    from maintctl.settings import load_settings

    _remember_passwords(
        database_url,
        os.environ.get("MAINTCTL_DATABASE_URL"),
        os.environ.get("DATABASE_URL"),
    )
    _remember_archive_password(flags.get("archive"))
    _remember_archive_password(os.environ.get("MAINTCTL_ARCHIVE"))
    if database_url and (conninfo_params(database_url) or {}).get("password"):
        sys.stderr.write(
            "maintctl: warning: a password on the command line is visible to other users (ps); "
            "use MAINTCTL_DATABASE_URL, PGPASSWORD or ~/.pgpass instead\n"
        )
    archive = flags.get("archive")
    if (
        archive
        and archive.startswith("postgres")
        and (conninfo_params(archive) or {}).get("password")
    ):
        sys.stderr.write(
            "maintctl: warning: the password in --archive is visible to other users (ps); "
            "use MAINTCTL_ARCHIVE or ~/.pgpass instead\n"
        )
    given = {"database_url": database_url, "app_schema": schema, **flags}
    names = {
        **_FLAG_NAMES,
        **{
            key: "--older-than"
            for key in flags
            if key.endswith(("_after", "_ttl")) or key == "purge_older_than"
        },
    }
    floor = tuple(task.threshold for task in tasks)
    settings = load_settings(given, names, floor=floor, force=force)
    _remember_passwords(settings.conninfo())  # from .env, maybe
    if settings.archive is not None:
        _remember_archive_password(settings.archive.get_secret_value())
    return settings


def _duration_flag(flag: str, value: str | None) -> timedelta | None:
    from maintctl.durations import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _maintenance(settings: Settings) -> Maintenance:
    from maintctl.api import Maintenance

    return Maintenance(settings)


@contextmanager
def _connected(settings: Settings, *, migrated: bool = True) -> Iterator[Connection]:
    """A connection as Maintenance.connect gives it (for commands that need one of their own)."""
    with _maintenance(settings).connect(migrated=migrated) as conn:
        yield conn


def _exit_code_of(exc: BaseException) -> int:
    """The exit code the command handler gives an exception (for metrics and pings)."""
    if isinstance(exc, MaintctlError):
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return int(ExitCode.SIGTERM if isinstance(exc, Terminated) else ExitCode.SIGINT)
    if isinstance(exc, typer.Exit):
        return int(exc.exit_code)
    return int(ExitCode.SOFTWARE)


def _run(
    tasks: tuple[Task, ...],
    command_name: str,
    *,
    database_url: str | None,
    schema: str | None,
    json_output: bool,
    dry_run: bool,
    batch_size: int | None,
    max_runtime: str | None,
    force: bool,
    vacuum: bool = False,
    thresholds: dict[str, Any] | None = None,
    log_format: str | None = None,
    quiet: bool = False,
    metrics_file: str | None = None,
    emit_paths: str | None = None,
    archive: str | None = None,
    gate: dict[str, Any] | None = None,
) -> int:
    from maintctl import db, outbox, render
    from maintctl.log import describe, wants_color

    settings = _settings(
        database_url,
        schema,
        tasks=tasks,
        force=force,
        batch_size=batch_size,
        log_format=log_format,
        metrics_file=metrics_file,
        archive=archive,
        **(thresholds or {}),
        **(gate or {}),
    )
    _log.log_format = settings.log_format
    tasks = _enabled(settings, tasks, command_name)
    deadline = _duration_flag("--max-runtime", max_runtime)
    if emit_paths == outbox.STDOUT and json_output:
        raise UsageError("--emit-paths -: stdout carries the JSON report; name a file instead")
    if emit_paths is not None:
        outbox.check_target(emit_paths, "--emit-paths")
    started, clock = time.time(), time.monotonic()
    # Only a full real run is the daily job a dead man's switch watches (as status --max-age and
    # the metrics' last success count it): a dry run or one task alone pings nothing.
    pings = command_name == "run" and not dry_run
    if pings:
        _ping(settings, "start", f"maintctl {command_name} started")
    # A progress bar only for a person at a terminal (stdout and stderr): not under cron, in a
    # pipe, with --json, --quiet or NO_COLOR.
    show_progress = (
        not (json_output or quiet or dry_run) and sys.stdout.isatty() and wants_color(sys.stderr)
    )

    def connected(conn: Connection) -> None:
        _log(
            "connected", target=db.describe_connection(conn), serverVersion=db.server_version(conn)
        )

    def write_paths(conn: Connection, report: runner.RunReport) -> None:
        if emit_paths is not None:
            outbox.write_run_paths(conn, settings, report.run_id, emit_paths)

    try:
        with render.progress_bar(show_progress) as on_batch:
            report = _maintenance(settings).run(
                tasks,
                command=command_name,
                dry_run=dry_run,
                max_runtime=deadline,
                vacuum=vacuum,
                force=force,
                notify=_log,
                on_batch=on_batch,
                on_connected=connected,
                after=write_paths,
            )
    except BaseException as exc:
        code = _exit_code_of(exc)
        message = exc.message if isinstance(exc, MaintctlError) else type(exc).__name__
        _monitor(settings, command_name, started, clock, code, None, message, pings=pings)
        raise
    # A refused run (disabled, paused) is said once, on stderr; a lock skip is a normal outcome.
    refusal = report.skipped if report.exit_code != ExitCode.OK else None
    finished = _run_finished(report, command_name)
    if refusal is None:
        _log("run_finished", "error" if report.errors else "info", **finished)
    if json_output:
        render.emit_json(render.run_json(report))
    elif refusal is None and not quiet:
        render.print_run(report)
    if refusal is not None:
        _error(refusal)
    for failed in [v for v in report.vacuum or [] if v.status == "failed"]:
        _log.warning(f"VACUUM {failed.table}: {failed.error}")
    if report.archive_pruned:
        _log("archive_pruned", message=f"archive: pruned run(s) {_numbers(report.archive_pruned)}")
    summary = refusal or describe("run_finished", finished)
    exit_code = int(report.exit_code)
    _monitor(settings, command_name, started, clock, exit_code, report, summary, pings=pings)
    return exit_code


def _run_finished(report: runner.RunReport, command_name: str) -> dict[str, Any]:
    """The fields of the run_finished step line (and of the healthcheck ping's summary)."""
    return {
        "runId": report.run_id,
        "command": command_name,
        "status": "skipped" if report.skipped else ("failed" if report.errors else "succeeded"),
        "skipped": report.skipped,
        "rows": sum(result.rows for result in report.tasks),
        "durationMs": report.duration_ms,
        "exitCode": int(report.exit_code),
        "dryRun": report.dry_run,
    }


def _enabled(settings: Settings, tasks: tuple[Task, ...], command_name: str) -> tuple[Task, ...]:
    """The tasks the policy applies: `run` leaves out a rule turned off (enabled = false) and adds
    the [[purge]] rules; the rule's own command refuses."""
    from maintctl.errors import ConfigError

    off = [task for task in tasks if not settings.rule_enabled(task.name)]
    if off and command_name != "run":
        raise ConfigError(
            f"rule {off[0].name} is turned off in the policy file (rules.{off[0].name}.enabled)"
        )
    kept = tuple(task for task in tasks if task not in off)
    # `run` does the [[purge]] rules of the policy file after the four.
    return kept + settings.purge_rules() if command_name == "run" else kept


def _ping(settings: Settings, suffix: str, body: str) -> None:
    if settings.healthcheck_url is None:
        return
    from maintctl.healthcheck import ping

    url = settings.healthcheck_url.get_secret_value()
    ping(url, suffix, redact(body), timeout=settings.healthcheck_timeout, warn=_log.warning)


def _monitor(
    settings: Settings,
    command_name: str,
    started: float,
    clock: float,
    exit_code: int,
    report: runner.RunReport | None,
    summary: str,
    *,
    pings: bool,
) -> None:
    """After a run command, whatever its outcome: the metrics file, then (`pings`) the healthcheck
    ping. Neither changes the exit code; a failure is one warning line on stderr."""
    if settings.metrics_file is not None:
        from maintctl import metrics

        path = settings.metrics_file
        outcome = metrics.RunOutcome(
            command_name, started, time.monotonic() - clock, exit_code, report
        )
        try:
            previous = metrics.previous_value(path, metrics.LAST_SUCCESS)
            metrics.write_atomically(path, metrics.run_registry(outcome, previous))
        except OSError as exc:
            _log.warning(
                f"cannot write the metrics file {path}: {exc.strerror or exc} "
                "(the exit code is unchanged)"
            )
    if pings:
        _ping(settings, "" if exit_code == 0 else str(exit_code), summary)


# --- commands -------------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        typer.echo(f"maintctl {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Keeps the PostgreSQL database of a data-import system healthy.

    Run `maintctl migrate` once, then `maintctl run` daily from cron.
    """


def _task_options(
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    dry_run: DryRun = False,
    batch_size: BatchSize = None,
    max_runtime: MaxRuntime = None,
    older_than: OlderThan = None,
    force: Force = False,
    log_format: LogFormat = None,
    quiet: Quiet = False,
    metrics_file: MetricsFile = None,
    vacuum: Vacuum = False,
    emit_paths: EmitPaths = None,
    archive: ArchiveDest = None,
    max_rows: MaxRows = None,
    max_replica_lag: MaxReplicaLag = None,
    max_slot_lag: MaxSlotLag = None,
    max_wal_rate: MaxWalRate = None,
    throttle_wait: ThrottleWait = None,
    debug: Debug = False,
) -> None:
    """The options of `run`, of each task command and of `purge`, in one list (a command may
    leave some out: `run` has no --older-than, a rule without files no --emit-paths)."""


# The health gate's and the row limit's options: _run takes them as settings, by these names.
_GATE_OPTIONS = ("max_rows", "max_replica_lag", "max_slot_lag", "max_wal_rate", "throttle_wait")


def _with_task_options(*without: str) -> Callable[[Command], Command]:
    """Give a command taking **options the parameters of _task_options (but those `without`),
    after its own: the signature Typer reads its options from."""

    def give(function: Command) -> Command:
        own = [
            p
            for p in inspect.signature(function, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        shared = inspect.signature(_task_options, eval_str=True).parameters.values()
        parameters = own + [p for p in shared if p.name not in without]
        function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return function

    return give


def _run_with(
    tasks: tuple[Task, ...],
    command_name: str,
    options: dict[str, Any],
    thresholds: dict[str, Any] | None = None,
) -> int:
    """_run with the options of _task_options, as a command received them."""
    given = {k: v for k, v in options.items() if k not in ("debug", "older_than")}
    gate = {name: given.pop(name) for name in _GATE_OPTIONS}
    return _run(tasks, command_name, thresholds=thresholds, gate=gate, **given)


@command("run", "maintctl run --json   (daily from cron: 0 3 * * * maintctl run --json)")
@_with_task_options("older_than")
def run(**options: Any) -> int:
    """Run every task in order: stuck, purge-temp, compact, purge-raw."""
    from maintctl.tasks import TASKS

    return _run_with(TASKS, "run", options)


def _task_command(task: Task) -> None:
    """Register the command that runs one task alone."""

    def single_task(**options: Any) -> int:
        thresholds = {task.threshold: options["older_than"]}
        return _run_with((task,), task.command, options, thresholds)

    # Only a rule whose rows have files takes --emit-paths.
    _with_task_options(*(() if task.emits_paths else ("emit_paths",)))(single_task)
    single_task.__doc__ = task.summary
    single_task.__name__ = task.command.replace("-", "_")
    command(task.command, task.example)(single_task)


def _task_commands() -> None:
    from maintctl.rules import RULES

    for rule in RULES:
        _task_command(rule)


_task_commands()


@command("purge", "maintctl purge audit-log --dry-run   (a [[purge]] rule of maintctl.toml)")
@_with_task_options("emit_paths")
def purge(
    name: Annotated[
        str,
        typer.Argument(help="The name of a [[purge]] rule of the policy file.", show_default=False),
    ],
    **options: Any,
) -> int:
    """Run one [[purge]] rule of the policy file alone: delete the rows of its table older than
    its threshold (and selected by its where)."""
    from maintctl.errors import ConfigError
    from maintctl.policy import nearest

    settings = _settings(options["database_url"], options["schema"])
    rules = {rule.name: rule for rule in settings.purge_rules()}
    if name not in rules:
        raise ConfigError(
            f"no [[purge]] rule named {name!r} in the policy file{nearest(name, rules)}"
        )
    older_than = options["older_than"]
    thresholds = {"purge_older_than": {name: older_than}} if older_than else None
    return _run_with((rules[name],), f"purge {name}", options, thresholds)


@command("status", "maintctl status --max-age 26h   (exit 1 when no successful run in 26h)")
def status(
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    max_age: Annotated[
        str | None,
        typer.Option(
            "--max-age",
            help="Exit 1 when the last successful full run is older than this, or there is none.",
            metavar="DURATION",
            show_default=False,
        ),
    ] = None,
    metrics_file: MetricsFile = None,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help="Count every waiting row (slow on a large backlog); by default each count "
            "stops at 100,000 and shows 100,000+.",
        ),
    ] = False,
    debug: Debug = False,
) -> int:
    """Show what is waiting for maintenance, the pause switch and the last run."""
    from maintctl import render

    settings = _settings(database_url, schema, metrics_file=metrics_file)
    age = _duration_flag("--max-age", max_age)
    report = _maintenance(settings).status(max_age=age, exact=exact, max_age_text=max_age)
    if settings.metrics_file is not None:
        from maintctl import metrics

        try:
            metrics.write_atomically(settings.metrics_file, metrics.status_registry(report))
        except OSError as exc:
            _log.warning(
                f"cannot write the metrics file {settings.metrics_file}: {exc.strerror or exc} "
                "(the exit code is unchanged)"
            )
    if json_output:
        render.emit_json(render.status_json(report))
    else:
        render.print_status(report)
    return int(report.exit_code)


@command("migrate", "maintctl migrate --database-url postgresql://admin@db.internal/imports")
def migrate(
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> None:
    """Install or upgrade the maintenance schema (idempotent; safe to start twice at once)."""
    from maintctl import render

    result = _maintenance(_settings(database_url, schema)).migrate()
    if json_output:
        render.emit_json(render.migrate_json(result))
    else:
        render.print_migrate(result)


@command("history", "maintctl history --limit 5 --json")
def history(
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000, help="How many runs.")] = 20,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only runs started since then: a duration (7d, 36h) or an ISO date or time in "
            "UTC unless it says otherwise (2026-11-01, 2026-11-01T03:00Z).",
            show_default=False,
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """List recent runs from the ledger, newest first."""
    from maintctl import render

    since_time, since_age = _since(since)
    maintenance = _maintenance(_settings(database_url, schema))
    runs = maintenance.history(limit, since_time=since_time, since_age=since_age)
    if json_output:
        render.emit_json([render.run_record_json(run) for run in runs])
    else:
        render.print_history(runs, since)


def _since(value: str | None) -> tuple[datetime | None, timedelta | None]:
    """--since: a moment (an ISO date or time, UTC when it names no zone) or an age."""
    from maintctl.durations import parse_duration

    if value is None:
        return None, None
    try:
        return None, parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--since: {value!r} is neither a duration (e.g. 7d, 36h) nor an ISO date or time "
            "(e.g. 2026-11-01, 2026-11-01T03:00Z)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), None


def _set_pause(
    database_url: str | None,
    schema: str | None,
    json_output: bool,
    *,
    paused: bool,
    reason: str | None,
) -> None:
    from maintctl import render

    maintenance = _maintenance(_settings(database_url, schema))
    state, changed = maintenance.pause(reason) if paused else maintenance.resume()
    if json_output:
        render.emit_json({**render.pause_json(state), "changed": changed})
    else:
        render.print_pause(state, changed)


@command("pause", 'maintctl pause --reason "restoring a backup"')
def pause(
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why, for whoever finds it paused.")
    ] = None,
    debug: Debug = False,
) -> None:
    """Pause maintenance in the database: task commands exit 75 until resume (a dry run still
    counts, noting the pause)."""
    _set_pause(database_url, schema, json_output, paused=True, reason=reason)


@command("resume", "maintctl resume")
def resume(
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> None:
    """Resume maintenance after a pause."""
    _set_pause(database_url, schema, json_output, paused=False, reason=None)


@command("drain-outbox", "maintctl drain-outbox /var/spool/maintctl/files-$(date +%s).jsonl")
def drain_outbox(
    file: Annotated[
        str,
        typer.Argument(
            help="New file to write (never overwritten), or - for stdout: one JSON line per "
            "file to delete.",
            metavar="FILE",
            show_default=False,
        ),
    ],
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="Hand over at most this many paths.", show_default=False
        ),
    ] = None,
    batch_size: BatchSize = None,
    debug: Debug = False,
) -> None:
    """Hand the storage outbox to the storage cleaner: write the files of deleted temp uploads to
    FILE (durably), then clear exactly those from the outbox. A crash may hand a path over twice,
    never lose one: the cleaner must treat a missing file as done."""
    from maintctl import outbox, render

    if file == outbox.STDOUT and json_output:
        raise UsageError("drain-outbox -: stdout carries the paths; drop --json or name a file")
    settings = _settings(database_url, schema)
    with _connected(settings) as conn:
        result = outbox.drain(conn, settings, file)
    if json_output:
        render.emit_json(render.drain_json(result))
    elif file == outbox.STDOUT:  # stdout is the hand-over itself: the summary goes to stderr
        _log("drained", message=render.drain_sentence(result))
    else:
        render.print_drain(result)


@command("doctor", "maintctl doctor --json   (the CI smoke check)")
def doctor(
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> int:
    """Check the connection, migrations, privileges and a dry run; exit 0 when healthy."""
    from maintctl import render

    checks = _maintenance(_settings(database_url, schema)).doctor()
    if json_output:
        render.emit_json(render.doctor_json(checks))
    else:
        render.print_doctor(checks)
    failed = [check for check in checks if not check.ok]
    return int(failed[0].exit_code) if failed else 0


def _this_maintctl() -> str:
    """The absolute path of this maintctl's console script (what cron and systemd must run)."""
    import shutil
    from pathlib import Path

    beside = shutil.which("maintctl", path=str(Path(sys.executable).parent))
    found = beside or shutil.which("maintctl") or sys.argv[0]
    return str(Path(found).absolute())


@command("cron", "maintctl cron --schedule '30 2 * * *' > /etc/cron.d/maintctl")
def cron(
    schedule: Annotated[
        str,
        typer.Option(
            "--schedule",
            help="When to run, a five-field cron schedule in UTC (written in the host's zone "
            "unless --cron-tz).",
        ),
    ] = "0 3 * * *",
    env_file: Annotated[
        str,
        typer.Option("--env-file", help="The file of NAME=value settings the job reads."),
    ] = "/etc/maintctl.env",
    user: Annotated[
        str,
        typer.Option(
            "--user",
            help="The system user the job runs as; create it with: useradd --system "
            "--user-group --no-create-home --shell /usr/sbin/nologin maintctl",
        ),
    ] = "maintctl",
    maintctl_path: Annotated[
        str | None,
        typer.Option(
            "--maintctl",
            help="Path of the maintctl to run [default: this one].",
            show_default=False,
        ),
    ] = None,
    metrics_file: Annotated[
        str | None,
        typer.Option("--metrics-file", help="Have each run write this metrics file."),
    ] = None,
    cron_tz: Annotated[
        bool,
        typer.Option(
            "--cron-tz",
            help="This cron honours CRON_TZ (cronie: Fedora, RHEL, Arch): write CRON_TZ=UTC and "
            "the UTC schedule. Debian's and Ubuntu's cron ignore it.",
        ),
    ] = False,
    host_timezone: Annotated[
        str | None,
        typer.Option(
            "--host-timezone",
            help="The zone cron runs in [default: this host's, from /etc/timezone or "
            "/etc/localtime].",
            show_default=False,
        ),
    ] = None,
    systemd: Annotated[
        bool, typer.Option("--systemd", help="A systemd .service and .timer instead.")
    ] = False,
    on_calendar: Annotated[
        str | None,
        typer.Option(
            "--on-calendar",
            help="With --systemd: the timer's OnCalendar, when the schedule has no exact "
            "equivalent.",
            show_default=False,
        ),
    ] = None,
    randomized_delay: Annotated[
        str | None,
        typer.Option(
            "--randomized-delay",
            help="With --systemd: the timer's RandomizedDelaySec [default: 15m].",
            metavar="DURATION",
            show_default=False,
        ),
    ] = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir",
            help="With --systemd: write maintctl.service and maintctl.timer there.",
            show_default=False,
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Print a crontab entry (or, with --systemd, a service and a timer) for the daily run."""
    from pathlib import Path

    from maintctl import schedule as scheduling

    given = {
        "--on-calendar": on_calendar,
        "--randomized-delay": randomized_delay,
        "--output-dir": output_dir,
        "--cron-tz": cron_tz or None,
        "--host-timezone": host_timezone,
    }
    systemd_only = ("--on-calendar", "--randomized-delay", "--output-dir")
    for flag, value in given.items():
        if value is not None and (flag in systemd_only) != systemd:
            needs = "only with --systemd" if flag in systemd_only else "only without --systemd"
            raise UsageError(f"{flag} does something {needs}")
    try:
        when = scheduling.check_schedule(schedule)
        job = scheduling.Job(
            maintctl=maintctl_path or _this_maintctl(),
            schedule=when,
            env_file=env_file,
            user=user,
            metrics_file=metrics_file,
        )
        if not systemd:
            zone = host_timezone or scheduling.host_zone()
            cron_time = scheduling.cron_time(when, zone, cron_tz=cron_tz)
            sys.stdout.write(scheduling.crontab(job, cron_time))
            return
        if on_calendar is not None:
            calendar = scheduling.check_on_calendar(on_calendar)
        else:
            calendar = scheduling.on_calendar(when)
        delay = scheduling.check_randomized_delay(randomized_delay or "15m")
    except scheduling.ScheduleError as exc:
        message = str(exc)
        raise UsageError(
            message if message.startswith("--") else f"--schedule: {message}"
        ) from None
    units = scheduling.systemd_units(job, calendar, delay)
    if output_dir is None:
        sys.stdout.write("\n".join(units.values()))
        return
    for name, text in units.items():
        target = Path(output_dir) / name
        try:
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--output-dir: cannot write {target}: {exc.strerror}") from None
        typer.echo(f"wrote {target}")


@command("config", "maintctl config --config /etc/maintctl.toml --json")
def config(
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> None:
    """Show the policy as resolved: each rule's table, columns and threshold, and where each
    value came from (flag, environment, .env, the policy file, or the default)."""
    from maintctl import render

    # Connects nowhere: the settings alone, as every other command would resolve them.
    report = _maintenance(_settings(database_url, schema)).config({"app_schema": schema})
    if json_output:
        render.emit_json(render.config_json(report))
    else:
        render.print_config(report)


@command("grant", "maintctl grant maintctl_runner   (as the owner, after migrate)")
def grant(
    role: Annotated[
        str,
        typer.Argument(
            help="An existing role, e.g. made with: create role maintctl_runner login",
            show_default=False,
        ),
    ],
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Take back what grant gave; nothing else.")
    ] = False,
    debug: Debug = False,
) -> None:
    """Give a role exactly what run, status, doctor and history need (idempotent)."""
    from maintctl import render

    result = _maintenance(_settings(database_url, schema)).grant(role, revoke=revoke)
    if json_output:
        render.emit_json(render.grant_json(result))
    else:
        render.print_grant(result)


@command(
    "serve",
    'maintctl serve --port 8080   (then: curl -H "x-cron-secret: $S" '
    "localhost:8080/api/admin/maintenance)",
)
def serve(
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 8080,
    public_dashboard: Annotated[
        bool,
        typer.Option(
            "--public-dashboard",
            help="Show the dashboard and /metrics without the secret "
            "[env: MAINTCTL_PUBLIC_DASHBOARD].",
        ),
    ] = False,
    log_format: LogFormat = None,
    debug: Debug = False,
) -> None:
    """Serve the HTTP trigger (GET or POST /api/admin/maintenance runs `maintctl run`, secret
    MAINTCTL_CRON_SECRET), /metrics, /healthz, /readyz and a dashboard at /."""
    from maintctl import web
    from maintctl.tasks import TASKS

    settings = _settings(
        database_url,
        schema,
        tasks=TASKS,
        log_format=log_format,
        public_dashboard=public_dashboard or None,
    )
    _log.log_format = settings.log_format
    if settings.cron_secret is None:
        _log.warning("MAINTCTL_CRON_SECRET is not set: /api/admin/maintenance answers 500")
    web.serve(settings, host, port)


def _archive_destination(settings: Settings, dest: str | None) -> Destination | None:
    """The archive named by an argument, else by --archive / MAINTCTL_ARCHIVE; None when neither."""
    from maintctl.archive import open_destination

    if dest is not None:
        _remember_archive_password(dest)
        return open_destination(dest)
    return _maintenance(settings).archive()


def _numbers(values: list[int]) -> str:
    return ", ".join(str(value) for value in values)


def _required_archive(settings: Settings, dest: str | None) -> Destination:
    found = _archive_destination(settings, dest)
    if found is None:
        raise UsageError("name the archive: DEST, --archive or MAINTCTL_ARCHIVE")
    return found


ArchiveArgument = Annotated[
    str | None,
    typer.Argument(
        help="The archive: a directory or a postgresql:// URL [default: MAINTCTL_ARCHIVE].",
        metavar="[DEST]",
        show_default=False,
    ),
]


@command("verify", "maintctl archive verify /var/lib/maintctl/archive", group=archive_app)
def archive_verify(
    dest: ArchiveArgument = None,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> int:
    """Re-read every run of the archive (files, row counts, checksums); exit 1 naming each
    problem."""
    from maintctl import render

    settings = _settings(None, None)
    with closing(_required_archive(settings, dest)) as archive:
        report = archive.verify()
    if json_output:
        render.emit_json(render.verify_json(report))
    else:
        render.print_verify(report)
    for problem in report.problems:
        _error(problem)
    return 0 if report.ok else int(ExitCode.TASK_FAILED)


@command("prune", "maintctl archive prune --older-than 90d", group=archive_app)
def archive_prune(
    dest: ArchiveArgument = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Delete the runs that ended longer ago [default: MAINTCTL_ARCHIVE_RETENTION].",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOutput = False,
    debug: Debug = False,
) -> None:
    """Delete the archived runs older than the retention (run does this after each run too)."""
    from maintctl import render

    settings = _settings(None, None)
    retention = _duration_flag("--older-than", older_than) or settings.archive_retention
    if retention is None:
        raise UsageError("say how old: --older-than or MAINTCTL_ARCHIVE_RETENTION")
    with closing(_required_archive(settings, dest)) as archive:
        pruned = archive.prune(retention)
    if json_output:
        render.emit_json({"pruned": pruned})
    else:
        render.print_pruned(pruned)


@command("restore", "maintctl restore --run 42 --dry-run")
def restore(
    run_id: Annotated[
        int, typer.Option("--run", help="The run to undo (maintctl history shows its id).")
    ],
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    json_output: JsonOutput = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be put back; change nothing.")
    ] = False,
    archive: ArchiveDest = None,
    debug: Debug = False,
) -> None:
    """Put back what a run removed, from the archive: rows whose key exists again are left alone."""
    from maintctl import ledger, render
    from maintctl.archive.restore import restore_run

    settings = _settings(database_url, schema, archive=archive)
    with closing(_required_archive(settings, None)) as destination, _connected(settings) as conn:
        result = restore_run(conn, settings, destination, run_id, dry_run=dry_run)
        paused = ledger.pause_state(conn).paused
    if not dry_run and not paused and result.restored:
        _log.warning(
            "maintenance is not paused: the next run removes these rows again unless their rule "
            "or threshold changed (maintctl pause, until it has)"
        )
    if json_output:
        render.emit_json(render.restore_json(result))
    else:
        render.print_restore(result)


def main() -> None:
    """The console script: SIGTERM ends the run like Ctrl-C, with its own exit code."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    app(prog_name="maintctl")
