"""Interrupts held back while a C library calls back into Python.

Why this exists: ``dlas`` turns SIGINT and SIGTERM into an exception (:mod:`dlas.cli`), so that a
command stops cleanly. Python runs a signal handler between bytecodes, also inside a Python
callback that a C library is running; an exception raised there is discarded by the library's
caller ("Exception ignored on calling ctypes callback function") and the interrupt is lost:
the command runs on. threadpoolctl's scan of the loaded libraries is such a callback (ctypes,
``dl_iterate_phdr``), and the phantom calls it for every case; the minimum-versions CI job
caught an interrupt lost that way. Code that calls such a library wraps the call in
:func:`held`: an interrupt arriving meanwhile is only noted, and raised again when the block ends.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

__all__ = ["held", "hold", "holding"]

_depth = [0]
_pending: list[int] = []


def holding() -> bool:
    """Whether interrupts are held now (the signal handler asks)."""
    return _depth[0] > 0


def hold(signum: int) -> None:
    """Note a signal that arrived while interrupts are held."""
    _pending.append(signum)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold interrupts in the block; the first one that arrived is raised again at its end."""
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if _depth[0] == 0 and _pending:
            signum = _pending[0]
            _pending.clear()
            signal.raise_signal(signum)
