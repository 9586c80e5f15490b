"""The ``fastcnn`` command's entry point (``fastcnn.cli.main`` does the work).

It lives outside the package on purpose: importing ``fastcnn`` loads NumPy, SciPy and Numba,
which takes half a second, and a Ctrl-C in that half second would otherwise end in a traceback
through the imports. Here it ends as every other interruption of the command does: one line,
exit status 130.
"""

import signal
import sys


def main():
    try:
        from fastcnn.cli import main as run
    except BaseException as e:
        if not _interrupted(e):
            raise
        print("fastcnn: interrupted", file=sys.stderr)
        return 130
    status = run()
    # The command has ended and said so: a Ctrl-C while Python shuts down would only turn that
    # status into a death by signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


def _interrupted(error):
    """Whether ``error`` is a Ctrl-C, or was raised because of one: Python 3.11 turns one that
    lands while a class is being made (``__set_name__``, during an import) into a RuntimeError."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
