"""Child processes the development box starts (the swtpm simulator, the
model agent): they must end with the process that started them, even when
it is killed, so a crashed broker never leaves them holding ports or sockets."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: SIGTERM the child when its parent dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
