"""Kicking a vCPU thread out of KVM_RUN.

The stopping thread sets ``kvm_run.immediate_exit = 1`` (so a KVM_RUN about to start
returns EINTR at once) and sends ``KICK_SIGNAL`` to the vCPU thread with
``signal.pthread_kill`` (so a KVM_RUN in progress returns EINTR).  The signal needs a
handler that is neither SIG_DFL (would kill the process) nor SIG_IGN (would be discarded
without interrupting the ioctl): a no-op Python handler, installed from the main thread.
"""

from __future__ import annotations

import signal
import threading

from ..errors import InvalidState

KICK_SIGNAL = signal.SIGUSR1


def _noop(signum, frame) -> None:
    pass


def ensure_kick_handler() -> None:
    """Install the no-op handler for KICK_SIGNAL unless some handler is already installed.

    Raises InvalidState if that needs the main thread and this is not it."""
    current = signal.getsignal(KICK_SIGNAL)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        return
    if threading.current_thread() is not threading.main_thread():
        raise InvalidState(f"{signal.Signals(KICK_SIGNAL).name} has no handler and one can only be "
                           "installed from the main thread; create the first machine there")
    signal.signal(KICK_SIGNAL, _noop)


def kick(thread_ident: int) -> None:
    """Interrupt a KVM_RUN in progress on thread ``thread_ident`` (must be alive)."""
    signal.pthread_kill(thread_ident, KICK_SIGNAL)
