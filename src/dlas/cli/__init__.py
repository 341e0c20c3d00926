"""The `dlas` command line: one Typer application with a subcommand per pipeline step.

The CLI is thin: it parses, calls the library, and prints. Each group of commands lives in its
own module with a ``register(app)`` function. Heavy libraries are imported inside the commands so
that ``dlas --help`` answers at once. Errors a user can cause (:class:`dlas.errors.DlasError` and
usage errors) print one line, ``error: ...``, and exit with status 2; ``--debug`` adds the
traceback. So do the operating system's refusals to write (a read-only folder, a full disk, a
name too long): they name the file and what to do. An interrupt (Ctrl-C, or SIGINT/SIGTERM sent
by a scheduler, also when the shell started dlas with SIGINT ignored) prints
``interrupted: ...`` with how to resume, and exits with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from types import FrameType
from typing import Any

import typer

from dlas.cli import data, evaluation, model, phantom, report, study
from dlas.cli._common import run_settings, settings, stderr
from dlas.errors import DlasError

__all__ = ["app", "main"]

app = typer.Typer(
    name="dlas",
    help="Localized fine-tuning and clinical evaluation of deep-learning auto-segmentation "
    "for radiotherapy: import DICOM-RT data, train and fine-tune, predict RTSTRUCTs, "
    "evaluate, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logging."),
    quiet: bool = typer.Option(False, "--quiet", help="Hide progress bars and summaries."),
) -> None:
    """Options that apply to every command (they may also be given after the command)."""
    current = settings()
    current.debug, current.quiet = debug, quiet
    _configure_logging(debug)


data.register(app)
phantom.register(app)
model.register(app)
evaluation.register(app)
report.register(app)
study.register(app)


#: How to pick up after an interrupt, per command.
_RESUME = {
    "study": "resume with the same `dlas study` command and --resume",
    "train": "resume with the same `dlas train` command and --resume",
    "import": "run the same `dlas import` again: cases already imported are kept and skipped",
    "predict": "run the same `dlas predict` again: inputs already predicted are skipped",
    "phantom": "run the same `dlas phantom` again: no partial replica was left",
}
#: What an operating-system error number means for the user.
_OS_ERRORS = {
    errno.EACCES: ("permission denied", "write to a folder you may write to"),
    errno.EPERM: ("permission denied", "write to a folder you may write to"),
    errno.EROFS: ("read-only file system", "write to a writable folder"),
    errno.ENOSPC: ("no space left on the device", "free disk space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free disk space or write elsewhere"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter output path"),
    errno.EISDIR: ("a folder is where a file should be", "choose another output path"),
    errno.ENOTDIR: ("a file is where a folder should be", "choose another output path"),
}


class _Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM received."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The signal received during this run, if any (Typer turns an interrupt inside a command
#: into a silent return of 130, so the handler leaves a note here).
_RECEIVED: list[int] = []


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    from dlas import interrupts

    if interrupts.holding():
        # Inside a C library's callback an exception would be discarded (dlas.interrupts):
        # the interrupt is raised again when the library returns.
        interrupts.hold(signum)
        return
    _RECEIVED.append(signum)
    raise _Signalled(signum)


def _install_signal_handlers() -> dict[int, Any]:
    """Turn SIGINT and SIGTERM into an interrupt; returns the handlers replaced.

    Python leaves SIGINT ignored when the shell started it in the background with SIGINT
    ignored: then a ``kill -INT`` did nothing and printed nothing.
    """
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not possible outside the main thread (e.g. main() called from a worker thread).
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, _raise_interrupt)
    return previous


def _interrupted(args: Sequence[str], signum: int) -> str:
    command = next((a for a in args if not a.startswith("-")), "")
    hint = _RESUME.get(command, "run the same command again")
    return (
        f"interrupted: dlas {command} stopped by {signal.Signals(signum).name}; outputs already "
        f"complete are kept, none is half-written ({hint})"
    )


def _os_error(exc: OSError) -> str | None:
    """One line for an operating-system refusal to read or write, or None (not the user's)."""
    known = _OS_ERRORS.get(exc.errno or -1)
    if known is None:
        return None
    what, fix = known
    where = exc.filename if exc.filename is not None else "an output file"
    return f"error: {what}: {where} — {fix}"


def _configure_logging(debug: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=stderr(), show_path=debug, show_time=False, markup=False)
    # The console shows warnings (or everything with --debug) even when a command lowers the
    # library's level to feed its own log file (``dlas study`` writes INFO to study.log).
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )
    # Library warnings (pydicom on over-long values, ...) are for --debug: what matters to the
    # user is in the import report and in dlas's own messages.
    # (pydicom sets its own logger's level when it is imported, so a filter on the handler.)
    logging.captureWarnings(True)
    if not debug:
        warnings.simplefilter("ignore")
        handler.addFilter(_quiet_libraries)


def _quiet_libraries(record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
        return True
    return record.name.split(".")[0] not in ("pydicom", "py", "highdicom", "filelock")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit status."""
    args = _global_options_first(list(sys.argv[1:] if argv is None else argv))
    previous = _install_signal_handlers()
    _RECEIVED.clear()
    try:
        with run_settings():
            status = _run(args)
            # Typer ends any interrupt with 130; one a command handled itself keeps its status.
            if _RECEIVED and status in (130, 143):
                _fail(_interrupted(args, _RECEIVED[0]), _Signalled(_RECEIVED[0]))
                return 128 + _RECEIVED[0]
            return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


#: The root command's options, accepted anywhere on the line.
_GLOBAL_OPTIONS = ("--debug", "--quiet")


def _global_options_first(args: list[str]) -> list[str]:
    """``--debug`` and ``--quiet`` moved before the command, where the root command's callback
    reads them: users put them after the command too (``dlas train ... --quiet``). Only
    before a ``--`` (after it, every word is an argument)."""
    end = args.index("--") if "--" in args else len(args)
    moved = [a for a in args[:end] if a in _GLOBAL_OPTIONS]
    return [
        *dict.fromkeys(moved),
        *(a for a in args[:end] if a not in _GLOBAL_OPTIONS),
        *args[end:],
    ]


def _run(args: list[str]) -> int:
    try:
        result = app(args=args, prog_name="dlas", standalone_mode=False)
    except DlasError as exc:
        _fail(f"error: {exc}", exc)
        return 2
    except (typer.Abort, KeyboardInterrupt) as exc:
        if not _RECEIVED:
            _RECEIVED.append(exc.signum if isinstance(exc, _Signalled) else signal.SIGINT)
        return 128 + _RECEIVED[0]
    except OSError as exc:
        line = _os_error(exc)
        if line is None:
            _fail(
                f"error: internal error ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                "rerun with --debug and report it",
                exc,
            )
            return 1
        _fail(line, exc)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:
        # Typer ships its own copy of Click (or uses Click): recognise its usage errors by shape.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _fail(f"error: {' '.join(str(exc.format_message()).split())}{hint}", exc)
            return 2
        _fail(
            f"error: internal error ({type(exc).__name__}: {' '.join(str(exc).split())}); "
            "rerun with --debug and report it",
            exc,
        )
        return 1
    return int(result) if isinstance(result, int) else 0


def _fail(message: str, exc: BaseException) -> None:
    if settings().debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(message, file=sys.stderr)


def console_main() -> None:  # pragma: no cover - exercised through the installed script
    """Entry point of the ``dlas`` console script."""
    sys.exit(main())
