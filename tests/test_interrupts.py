"""Interrupts held while a C library calls back into Python (dlas.interrupts)."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
from collections.abc import Iterator

import pytest

from dlas import interrupts
from dlas.cli import _RECEIVED, _install_signal_handlers, _Signalled


@pytest.fixture
def handlers() -> Iterator[None]:
    previous = _install_signal_handlers()
    _RECEIVED.clear()
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    _RECEIVED.clear()


def _sort_with_a_python_callback(on_compare: object) -> None:
    """libc's qsort calling a Python comparison: a C library running a Python callback, as
    threadpoolctl's library scan does."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    compare_type = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)
    )

    def compare(a: ctypes._Pointer, b: ctypes._Pointer) -> int:  # type: ignore[type-arg]
        on_compare()  # type: ignore[operator]
        return a[0] - b[0]

    values = (ctypes.c_int * 4)(3, 1, 2, 0)
    libc.qsort(values, 4, ctypes.sizeof(ctypes.c_int), compare_type(compare))


def test_an_interrupt_inside_a_c_callback_is_raised_when_the_block_ends(handlers: None) -> None:
    sent: list[bool] = []
    reached: list[bool] = []

    def interrupt_once() -> None:
        if not sent:
            sent.append(True)
            signal.raise_signal(signal.SIGINT)

    def sort_held() -> None:
        with interrupts.held():
            _sort_with_a_python_callback(interrupt_once)
            reached.append(True)  # the interrupt waits for the block's end

    with pytest.raises(_Signalled) as caught:
        sort_held()
    assert sent and reached
    assert caught.value.signum == signal.SIGINT and _RECEIVED == [signal.SIGINT]
    assert not interrupts.holding()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_inside_a_c_callback_is_lost_without_holding(handlers: None) -> None:
    """Why holding exists: raised inside the callback, the interrupt is discarded."""
    sent: list[bool] = []

    def interrupt_once() -> None:
        if not sent:
            sent.append(True)
            signal.raise_signal(signal.SIGINT)

    _sort_with_a_python_callback(interrupt_once)  # no exception comes out: it was discarded
    assert sent and _RECEIVED == [signal.SIGINT]


def test_without_an_interrupt_the_block_runs_through(handlers: None) -> None:
    with interrupts.held():
        assert interrupts.holding()
        _sort_with_a_python_callback(lambda: None)
    assert not interrupts.holding() and _RECEIVED == []
