"""Compiled core: text parsing and the training / scoring kernels."""

import os

# GNU OpenMP reads GOMP_SPINCOUNT once, when the extension loads it.  Its
# default lets a thread that finished a parallel region spin some 300,000
# times for the next one: between two blocks of rows that is a core taken
# from the thread that reads and parses the next block (fm predict on 2 CPUs
# ran 10-15% slower).  A count of 10,000 (well under a millisecond) keeps
# the regions' hand-overs quick.  A value set in the environment is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def _load():
    """Import the extensions, keeping what a signal raises meanwhile.

    A Cython module's initialisation registers its memoryview types with
    the abc module inside a bare ``except:``, so a KeyboardInterrupt raised
    by a signal handler in that moment (Ctrl-C; SIGTERM under the fm
    command) would be swallowed and the command would go on.  While the
    extensions load, the handlers of SIGINT and SIGTERM are wrapped so that
    what they raise is also kept, and raised again once the imports are
    done."""
    import signal
    import threading

    raised: list[BaseException] = []
    wrapped = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if callable(handler):

                def keep(num, frame, handler=handler):
                    try:
                        handler(num, frame)
                    except BaseException as exc:
                        raised.append(exc)
                        raise

                wrapped[signum] = handler
                signal.signal(signum, keep)
    try:
        from . import _kernels, _parse  # noqa: F401
    finally:
        for signum, handler in wrapped.items():
            signal.signal(signum, handler)
    if raised:
        raise raised[0]


_load()

from ._kernels import openmp_info  # noqa: E402  (after the setting above)

__all__ = ["openmp_info"]
