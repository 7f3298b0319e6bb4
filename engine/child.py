"""Set-up shared by every child the supervisor forks (workers, exporter).

Runs first thing after the fork (STYLE §3): default signal dispositions
(SIGINT ignored: the supervisor coordinates Ctrl-C), no inherited signal
wake-up fd, the supervisor's private descriptors closed, and a parent-death
signal so a killed supervisor never leaves children behind holding its data
directory lock.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def prepare(inherited: list[int], supervisor_pid: int) -> None:
    die_with_parent()
    if supervisor_pid and os.getppid() != supervisor_pid:
        os._exit(1)  # the supervisor died before the death signal was armed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for fd in inherited:  # the supervisor's data-dir lock and signal pipe are not ours
        try:
            os.close(fd)
        except OSError:
            pass
