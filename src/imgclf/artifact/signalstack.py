"""A process-lifetime alternate signal stack for threads that run OpenVINO's CPU plugin.

OpenVINO's CPU plugin changes the thread's alternate signal stack (the stack signal handlers run
on; Python installs its handlers to use it). Each plugin instance (one per `ov.Core` that
compiles, NNCF makes several) maps a stack of its own for the thread and, when it goes, puts back
the one that was current when it came, if its own is still current, and unmaps its own. Plugins
that go in any order but the reverse of the one they came in leave the thread on an unmapped
stack: the next signal handled there (a DataLoader's SIGCHLD, say) kills the process with
SIGSEGV, or, once the addresses are reused, writes its frame over the Python heap.

`keep_signal_stack()`, called after each OpenVINO call that may start or drop a plugin (export.py
does, for training and serving alike), gives the thread a stack of ours for the life of the
process; no plugin restores over it.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import os
import sys
import threading

log = logging.getLogger(__name__)

SIGNAL_STACK_BYTES = 256 * 1024  # room for a signal frame with AMX state (about 11 KB) and the handler


class _StackT(ctypes.Structure):  # <signal.h> stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.cache
def _signal_stack(thread: int) -> tuple[ctypes.Array, _StackT]:
    """Anonymous memory for one thread's stack, held (and so mapped) by this cache for the life of
    the process; one per thread, as two threads may handle signals at once."""
    memory = (ctypes.c_char * SIGNAL_STACK_BYTES).from_buffer(mmap.mmap(-1, SIGNAL_STACK_BYTES))
    return memory, _StackT(ctypes.addressof(memory), 0, SIGNAL_STACK_BYTES)


def keep_signal_stack() -> None:
    """Put the calling thread on an alternate signal stack that lives as long as the process (see
    the module's docstring); a no-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sigaltstack(ctypes.byref(_signal_stack(threading.get_ident())[1]), None) != 0:
        log.warning("could not set the alternate signal stack: %s", os.strerror(ctypes.get_errno()))
