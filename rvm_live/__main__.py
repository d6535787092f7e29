"""``rvm-live`` and ``python -m rvm_live``: signal handlers first, then the heavy imports.

Both reach ``main()`` having imported only the light package ``__init__``; OpenCV, PyAV and torch load after
the handlers are in place, so Ctrl-C at any moment of start-up gives one line and no traceback.
"""

import os
import signal


def _interrupted(signum: int, _frame: object) -> None:
    # until the daemon installs its own handlers there is nothing to save: one line, no traceback
    os.write(2, b"rvm-live: interrupted\n")
    os._exit(130 if signum == signal.SIGINT else 128 + signum)


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no config to re-read yet

    from .cli import entry  # after the handlers, on purpose

    entry()


if __name__ == "__main__":
    main()
