"""The signals that stop a measuring command (Ctrl-C, SIGTERM from CI or ``timeout``, SIGHUP from a closed
terminal), told apart from what plugin code raises.

While a command runs (``catch``), each of them raises ``Signalled`` where it lands, so the command keeps
what it measured. A ``KeyboardInterrupt`` or ``SystemExit`` that no signal raised came from the code being
measured: ``plugin_fault`` says so, and the runner fails that provider instead of ending the run. A
signal a plugin swallowed is still pending, and ``raise_pending`` raises it after the item.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
from typing import Iterator

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_pending: list[int] = []  # signals received whose Signalled has not yet reached the command


class Signalled(KeyboardInterrupt):
    """A stopping signal, raised where Ctrl-C would be so every one is handled the same way."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_signalled(signum, frame):
    _pending.append(signum)
    raise Signalled(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def catch() -> dict:
    """Every stopping signal raises ``Signalled`` while a command runs; returns the handlers to put back."""
    _pending.clear()
    if not _main_thread():
        return {}
    _show_stacks_on_usr1()
    # one ignored on the way in stays ignored: `nohup mfbench run` must outlive its terminal
    return {signum: signal.signal(signum, raise_signalled) for signum in STOPPING
            if signal.getsignal(signum) is not signal.SIG_IGN}


_usr1: list[bool] = []  # whether catch() registered the stack dump on SIGUSR1, for restore()


def _show_stacks_on_usr1() -> None:
    """`kill -USR1 PID` prints where a long command is (every thread's stack, on stderr) and it goes on. Left
    out where SIGUSR1 has a handler already, there is none (Windows) or stderr has no file descriptor."""
    if _usr1 or not hasattr(signal, "SIGUSR1") or signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL:
        return
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (RuntimeError, ValueError, OSError):  # a captured or closed stderr
        return
    _usr1.append(True)


def restore(previous: dict) -> None:
    for signum, handler in previous.items():
        if handler is not None:  # None: set outside Python, and cannot be put back from here
            signal.signal(signum, handler)
    if _usr1:
        faulthandler.unregister(signal.SIGUSR1)
        _usr1.clear()


def caught() -> bool:
    """Whether ``catch``'s handlers are in place (or SIGINT is ignored), so a KeyboardInterrupt is told
    apart from a signal."""
    return signal.getsignal(signal.SIGINT) in (raise_signalled, signal.SIG_IGN)


def plugin_fault(exc: BaseException) -> bool:
    """Whether ``exc``, raised while a provider's code ran, is that provider's failure: any Exception, a
    SystemExit, and a KeyboardInterrupt that no signal raised. Without ``catch``'s handlers a
    KeyboardInterrupt may be a real Ctrl-C, and it stops the run."""
    if isinstance(exc, Signalled):
        return False
    if isinstance(exc, KeyboardInterrupt):
        return caught()
    return isinstance(exc, (Exception, SystemExit))


def raise_pending() -> None:
    """Raise a stopping signal that arrived and was swallowed on its way (by plugin code)."""
    if _pending:
        raise Signalled(_pending[-1])


def quiet_stdout() -> None:
    """Send what is left of stdout to /dev/null (its reader went away, or its terminal closed)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (captured in-process)
        pass


def stopped(exc: BaseException) -> int:
    """The signal that stopped a measuring command (SIGPIPE for a reader that went away); from now on the
    stopping signals are ignored, so a second Ctrl-C must not cost the rows being written."""
    _pending.clear()
    if _main_thread():
        for signum in STOPPING:
            signal.signal(signum, signal.SIG_IGN)
    if isinstance(exc, BrokenPipeError):
        quiet_stdout()
        return signal.SIGPIPE
    return getattr(exc, "signum", signal.SIGINT)


@contextlib.contextmanager
def held() -> Iterator[list[int]]:
    """Stopping signals are recorded in the yielded list instead of raised, for a write that must not be
    cut between its two files; the caller stops after it."""
    got: list[int] = []
    if not _main_thread():
        yield got
        return
    previous = {signum: signal.signal(signum, lambda signum, frame: got.append(signum)) for signum in STOPPING
                if signal.getsignal(signum) is not signal.SIG_IGN}  # ignored: the command is stopping already
    try:
        yield got
    finally:
        restore(previous)


def tell(message: str) -> None:
    """A line on stderr that must not fail the command (a closed terminal)."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def say(message: str) -> None:
    """A line on stdout; where its reader or terminal went away, stdout goes quiet instead of failing."""
    try:
        print(message, flush=True)
    except OSError:
        quiet_stdout()
