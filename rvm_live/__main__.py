"""``python -m rvm_live``: signal handlers first, then the heavy imports (torch loads in ``cli.run``)."""

import os
import signal


def _interrupted(signum: int, _frame: object) -> None:
    # until the daemon installs its own handlers there is nothing to save: one line, no traceback
    os.write(2, b"rvm-live: interrupted\n")
    os._exit(130 if signum == signal.SIGINT else 128 + signum)


signal.signal(signal.SIGINT, _interrupted)
signal.signal(signal.SIGTERM, _interrupted)
if hasattr(signal, "SIGHUP"):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no config to re-read yet

from .cli import entry  # noqa: E402  (after the handlers, on purpose)

entry()
