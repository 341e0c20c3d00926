"""The `dlas` command line: one Typer application with a subcommand per pipeline step.

The CLI is thin: it parses, calls the library, and prints. Each group of commands lives in its
own module with a ``register(app)`` function. Heavy libraries are imported inside the commands so
that ``dlas --help`` answers at once. Errors a user can cause (:class:`dlas.errors.DlasError` and
usage errors) print one line, ``error: ...``, and exit with status 2; ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence

import typer

from dlas.cli import data, evaluation, model, phantom, report, study
from dlas.cli._common import SETTINGS, stderr
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


data.register(app)
phantom.register(app)
model.register(app)
evaluation.register(app)
report.register(app)
study.register(app)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    # --debug and --quiet are accepted anywhere on the line, not only before the command.
    SETTINGS.debug = "--debug" in args
    SETTINGS.quiet = "--quiet" in args
    args = [a for a in args if a not in ("--debug", "--quiet")]
    _configure_logging(SETTINGS.debug)
    try:
        result = app(args=args, prog_name="dlas", standalone_mode=False)
    except DlasError as exc:
        _fail(f"error: {exc}", exc)
        return 2
    except (typer.Abort, KeyboardInterrupt) as exc:
        _fail("error: interrupted; outputs already complete are kept, none is half-written", exc)
        return 130
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
    if SETTINGS.debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(message, file=sys.stderr)


def console_main() -> None:  # pragma: no cover - exercised through the installed script
    """Entry point of the ``dlas`` console script."""
    sys.exit(main())
