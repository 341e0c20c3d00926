"""Shared pieces of the CLI: the options every command takes, consoles, progress display."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "Settings",
    "print_json",
    "progress_callback",
    "run_settings",
    "settings",
    "stderr",
    "stdout",
]


@dataclass
class Settings:
    """The options of every command (``--debug``, ``--quiet``), set by the root command's
    Typer callback for the run in progress."""

    debug: bool = False
    quiet: bool = False


#: The settings of the run in progress: :func:`dlas.cli.main` gives each run its own, so that
#: nothing carries over from one run to the next (tests call ``main`` many times in a process).
_SETTINGS: ContextVar[Settings] = ContextVar("dlas_cli_settings")


def settings() -> Settings:
    """The settings of the run in progress (the defaults outside a run)."""
    return _SETTINGS.get(Settings())


@contextmanager
def run_settings() -> Iterator[Settings]:
    """Fresh settings for one run of the CLI, in force until it ends."""
    token = _SETTINGS.set(Settings())
    try:
        yield _SETTINGS.get()
    finally:
        _SETTINGS.reset(token)


def stdout() -> Console:
    """Console for results."""
    from rich.console import Console

    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def stderr() -> Console:
    """Console for progress and messages."""
    from rich.console import Console

    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Print JSON to stdout (machine-readable output)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def progress_bar(*extra_columns: Any) -> Any:
    """A transient Rich progress bar on standard error: description, bar, count, elapsed and
    remaining time, then ``extra_columns``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=stderr(),
        transient=True,
    )


@contextmanager
def progress_callback(description: str) -> Iterator[Any]:
    """A ``(done, total, label)`` callback that drives a Rich progress bar.

    Silent with ``--quiet`` and when standard error is not a terminal (logs, pipes, CI).
    """
    console = stderr()
    if settings().quiet or not console.is_terminal:
        yield lambda done, total, label: None
        return
    from rich.progress import TextColumn

    with progress_bar(TextColumn("{task.fields[label]}")) as progress:
        task = progress.add_task(description, total=None, label="")

        def update(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, label=label)

        yield update
