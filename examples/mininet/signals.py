"""Ctrl-C handling: SIGTERM behaves like Ctrl-C, steps that create resources finish before it takes effect,
and teardown runs to the end whatever arrives meanwhile."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install_handlers() -> None:
    """Make SIGTERM raise KeyboardInterrupt too, so both run the same teardown."""
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then raise KeyboardInterrupt if one came.

    Used around steps that create something the teardown must know about (a Mininet node, a process): an
    interrupt half-way through would leave a shell or process nobody recorded.
    """
    received: list[int] = []

    def remember(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt(signal.Signals(received[0]).name)


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM during teardown (every teardown step has its own deadline)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
